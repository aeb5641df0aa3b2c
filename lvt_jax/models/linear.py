"""Matrix products with hand-written gradients in the forms XLA:CPU runs fast.

The values are plain products; only the backward pass differs from autodiff. Autodiff's
weight gradient ``dW = x^T @ dy`` contracts the first axis of both operands, which XLA:CPU
(YNNPACK) runs as a transposed-lhs product at about 0.55x the speed of a plain one, or
after transposing a weight-sized operand it chose itself. Here ``x^T`` is materialised
once (behind an optimisation barrier, so XLA cannot fold it back into the product) and
every product of the backward pass is a plain ``[M, K] @ [K, N]`` or ``[M, K] @ [N, K]^T``.
On accelerators the extra transpose is a small memory copy. Measured in
``docs/benchmarks.md`` (stage 2).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lvt_jax.models.precision import add_bias


def _transposed(x: jax.Array) -> jax.Array:
  """``x.T`` as an array of its own (see the module docstring)."""
  return jax.lax.optimization_barrier(x.T)


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x [N, K] @ w [K, M]``."""
  return x @ w


def _dense_fwd(x, w):
  return x @ w, (x, w)


def _dense_bwd(res, dy):
  x, w = res
  return dy @ w.T, _transposed(x) @ dy


dense.defvjp(_dense_fwd, _dense_bwd)


def dense_nd(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x [..., K] @ w [K, M] -> [..., M]`` through :func:`dense`."""
  if w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f'dense_nd: need x [..., K] and w [K, M], got {x.shape} and {w.shape}')
  y = dense(x.reshape(-1, x.shape[-1]), w)
  return y.reshape(x.shape[:-1] + w.shape[1:])


class Dense(nn.Module):
  """``nn.Dense`` (same parameters ``kernel [in, features]``, ``bias``; same init order)
  through :func:`dense_nd`, with the bias added in float32 (mixed precision)."""
  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    y = dense_nd(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype))
    return add_bias(y, bias)


@jax.custom_vjp
def dense_shared(x: jax.Array, ws: Sequence[jax.Array]) -> Tuple[jax.Array, ...]:
  """``tuple(x @ w for w in ws)`` for ``x [N, K]``, each ``w [K, M_i]``; the backward pass
  materialises ``x^T`` once for all weight gradients."""
  return tuple(x @ w for w in ws)


def _dense_shared_fwd(x, ws):
  return dense_shared(x, ws), (x, ws)


def _dense_shared_bwd(res, dys):
  x, ws = res
  xt = _transposed(x)
  dx = sum(dy @ w.T for dy, w in zip(dys, ws))
  return dx, type(ws)(xt @ dy for dy in dys)


dense_shared.defvjp(_dense_shared_fwd, _dense_shared_bwd)
