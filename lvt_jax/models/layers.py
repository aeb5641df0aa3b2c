"""Conv layers with PyTorch-equivalent padding, initialisation and logical axis names.

PyTorch's default init (kaiming-uniform with a = sqrt(5)) is uniform(+-1/sqrt(fan_in)) for
both weights and biases; we keep it so training dynamics match the reference release.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KERNEL_AXES = ("kernel_h", "kernel_w", "conv_in", "conv_out")


def torch_uniform(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """2D conv (NHWC) with PyTorch's symmetric padding `padding` on each side."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * self.kernel * self.kernel
        init = torch_uniform(fan_in)
        return nn.Conv(
            self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
            padding=((self.padding, self.padding),) * 2,
            kernel_init=nn.with_logical_partitioning(init, KERNEL_AXES),
            bias_init=nn.with_logical_partitioning(init, ("conv_out",)),
            name="conv")(x)


class ConvTranspose(nn.Module):
    """Equivalent of torch.nn.ConvTranspose2d(k, stride, padding).

    Kernel stored as the forward conv's kernel (kh, kw, out, in) with `transpose_kernel=True`,
    so torch's weight[i, o, k, l] == kernel[k, l, o, i] (no flip); explicit padding k - 1 - p
    on the dilated input reproduces PyTorch's output exactly (tested).
    """

    features: int
    kernel: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # PyTorch's fan_in for ConvTranspose weights (in, out, kh, kw) is out * kh * kw.
        init = torch_uniform(self.features * self.kernel * self.kernel)
        pad = self.kernel - 1 - self.padding
        return nn.ConvTranspose(
            self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
            padding=((pad, pad),) * 2, transpose_kernel=True,
            kernel_init=nn.with_logical_partitioning(init, ("kernel_h", "kernel_w", "conv_out", "conv_in")),
            bias_init=nn.with_logical_partitioning(init, ("conv_out",)),
            name="conv")(x)


def constrain_batch(x: jax.Array, names: Sequence[str | None] | None = None) -> jax.Array:
    """Annotates an activation's leading axis as the data-parallel 'batch' axis."""
    names = tuple(names) if names is not None else ("batch",) + (None,) * (x.ndim - 1)
    return nn.with_logical_constraint(x, names)
