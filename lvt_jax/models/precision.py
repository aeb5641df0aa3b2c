"""Mixed-precision helpers shared by every model: parameters stay float32 in the state.

Under a bfloat16 compute dtype, parameters are cast where they are used, so their
gradients come back in float32 through the cast. Two kinds of gradient are sums over
every position of the batch and must not be accumulated in bfloat16 (8 significant bits:
measured 50-100% error on the bias gradients of a tiny model): a bias's gradient and an
embedding table's (a scatter-add). The helpers below keep those in float32.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def compute_cast(dtype: Any, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays in the compute dtype: `dtype`, or (None) their promoted dtype."""
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(*arrays)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` computed in (at least) float32, returned in y's dtype, so that the
    bias gradient is a float32 sum."""
    wide = jnp.promote_types(y.dtype, jnp.float32)
    return (y.astype(wide) + bias.astype(wide)).astype(y.dtype)


def take_rows(table: jax.Array, index: jax.Array, dtype: Any) -> jax.Array:
    """``table[index]`` (rows of a float32 table) cast to `dtype` after the gather, so the
    table's gradient (a scatter-add) accumulates in float32."""
    return jnp.take(table, index, axis=0).astype(dtype)
