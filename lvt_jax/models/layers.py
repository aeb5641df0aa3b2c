"""Conv layers with PyTorch-equivalent padding, initialisation and logical axis names.

PyTorch's default init (kaiming-uniform with a = sqrt(5)) is uniform(+-1/sqrt(fan_in)) for
both weights and biases; we keep it so training dynamics match the reference release.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lvt_jax.models.precision import add_bias, compute_cast

KERNEL_AXES = ("kernel_h", "kernel_w", "conv_in", "conv_out")
_DN = ("NHWC", "HWIO", "NHWC")


def torch_uniform(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """2D conv (NHWC) with PyTorch's symmetric zero padding `padding` on each side.

    kernel (kh, kw, in, out): torch weight[o, i, k, l] == kernel[k, l, i, o].
    `dtype`: compute dtype (None: promote the input's and the float32 parameters').
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = torch_uniform(x.shape[-1] * self.kernel * self.kernel)
        k = self.param("kernel", nn.with_logical_partitioning(init, KERNEL_AXES),
                       (self.kernel, self.kernel, x.shape[-1], self.features))
        b = self.param("bias", nn.with_logical_partitioning(init, ("conv_out",)), (self.features,))
        x, k = compute_cast(self.dtype, x, k)
        p = self.padding
        y = lax.conv_general_dilated(x, k, (self.stride,) * 2, ((p, p), (p, p)),
                                     dimension_numbers=_DN)
        return add_bias(y, b)


class ConvTranspose(nn.Module):
    """Equivalent of torch.nn.ConvTranspose2d(in, features, kernel, stride, padding).

    kernel (kh, kw, out, in): torch weight[i, o, k, l] == kernel[k, l, o, i] (no flip).
    Computed as stride-1 sub-pixel convolutions (one per output phase) followed by
    depth-to-space: the same result as a dilated-input transposed conv (tested), but its
    gradients are plain stride-1 convs, which XLA:CPU runs ~9x faster.
    `dtype`: compute dtype (None: promote the input's and the float32 parameters').
    """

    features: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s, kk, p = self.stride, self.kernel, self.padding
        # PyTorch's fan_in for ConvTranspose weights (in, out, kh, kw) is out * kh * kw.
        init = torch_uniform(self.features * kk * kk)
        k = self.param("kernel", nn.with_logical_partitioning(
            init, ("kernel_h", "kernel_w", "conv_out", "conv_in")),
            (kk, kk, self.features, x.shape[-1]))
        b = self.param("bias", nn.with_logical_partitioning(init, ("conv_out",)), (self.features,))
        x, k = compute_cast(self.dtype, x, k)
        if kk % s == 0 and kk - 2 * p == s:
            y = subpixel_conv_transpose(x, k, s, p)
        else:
            y = lax.conv_transpose(x, k, (s, s), ((kk - 1 - p,) * 2,) * 2,
                                   dimension_numbers=_DN, transpose_kernel=True)
        return add_bias(y, b)


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array, s: int, p: int) -> jax.Array:
    """torch conv_transpose2d (no bias) for kernel K with K % s == 0 and K - 2p == s.

    1D: out[s*i + r] = sum_m x[m] W[s*(i-m) + r + p]. With q = r + p = s*a + b, phase r
    reads a window of D = K/s inputs starting at i + a - D + 1, tap W[s*(D-1-w) + b] at
    window position w. All s*s phases run as one stride-1 conv over a shared padded input
    (windows may start at different offsets; each phase slices its own rows/columns).
    """
    kk = kernel.shape[0]
    d = kk // s
    taps = jnp.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, in, out): torch tap order
    phase = []   # per phase: (start offset e, tap indices per window position)
    for r in range(s):
        a, b = divmod(r + p, s)
        phase.append((a - d + 1, [s * (d - 1 - w) + b for w in range(d)]))
    lo = -min(e for e, _ in phase)
    hi = max(e for e, _ in phase) + d - 1
    n_h, n_w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (max(lo, 0), max(hi, 0)), (max(lo, 0), max(hi, 0)), (0, 0)))
    ker = jnp.stack([jnp.stack([taps[np.ix_(th, tw)] for _, tw in phase], axis=-1)
                     for _, th in phase], axis=-2)  # (d, d, in, out, s_r, s_c)
    cout = taps.shape[-1]
    y = lax.conv_general_dilated(xp, ker.reshape(d, d, taps.shape[2], cout * s * s), (1, 1),
                                 "VALID", dimension_numbers=_DN)
    y = y.reshape(*y.shape[:3], cout, s, s)
    shift = max(lo, 0)
    rows = []
    for r, (er, _) in enumerate(phase):
        cols = [y[:, er + shift:er + shift + n_h, ec + shift:ec + shift + n_w, :, r, c]
                for c, (ec, _) in enumerate(phase)]
        rows.append(jnp.stack(cols, axis=3))           # (B, H, W, s_c, out)
    out = jnp.stack(rows, axis=2)                       # (B, H, s_r, W, s_c, out)
    return out.reshape(x.shape[0], n_h * s, n_w * s, cout)


def constrain_batch(x: jax.Array, names: Sequence[str | None] | None = None) -> jax.Array:
    """Annotates an activation's leading axis as the data-parallel 'batch' axis."""
    names = tuple(names) if names is not None else ("batch",) + (None,) * (x.ndim - 1)
    return nn.with_logical_constraint(x, names)
