"""Small building blocks of the HDR models, every weight with logical axis names."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_XAVIER = nn.initializers.xavier_uniform()


def dense(features: int, name: str | None = None, axes: tuple[str, str] = ("embed", "mlp"),
          use_bias: bool = True, kernel_init=_XAVIER) -> nn.Dense:
    """nn.Dense whose kernel is [in, out] on logical axes `axes` (bias on axes[1])."""
    return nn.Dense(features, use_bias=use_bias, name=name,
                    kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def layer_norm(name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class MLP(nn.Module):
    """dense -> relu -> dense (the second layer's axes mirror the first's)."""
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(dense(self.hidden, "fc1")(x))
        return dense(self.out, "fc2", axes=("mlp", "embed"))(x)


def grid_coords(h: int, w: int) -> np.ndarray:
    """float32 [h, w, 2]: (y, x) of pixel centres in [-1, 1] (a constant)."""
    ys = (np.arange(h) + 0.5) / h * 2 - 1
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).astype(np.float32)


class PositionEmbedding(nn.Module):
    """Adds a learned projection of (y, x, 1 - y, 1 - x)-style coordinates (SAVi's)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = grid_coords(x.shape[-3], x.shape[-2])
        g = jnp.concatenate([g, -g], -1)
        return x + dense(x.shape[-1], "proj", axes=("pos", "embed"))(g)
