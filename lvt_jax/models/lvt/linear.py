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

from typing import Sequence, Tuple

import jax


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


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None):
  """Drop-in ``dot_general`` for ``nn.Dense`` (same parameters, faster gradient).

  ``nn.Dense`` contracts the last axis of its input with the kernel's first; any other
  contraction (or a precision / result-type request) falls back to ``lax.dot_general``.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  plain = (tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb
           and rhs.ndim == 2 and precision is None and preferred_element_type is None)
  if not plain:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return dense_nd(lhs, rhs)


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
