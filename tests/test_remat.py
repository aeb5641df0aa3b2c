"""Rematerialisation policies of the attention stack: same function and gradients as no
remat (scanned and unrolled), less step memory when scanned (XLA's memory analysis is
deterministic), clear error for an unknown policy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax.bench import common
from lvt_jax.models.lvt import attention

KW = dict(num_layers=3, num_heads=2, head_dim=4, block_shape=(1, 4, 4), masked=True)


def _loss_and_grads(scan: bool, remat: str, x: jax.Array):
  stack = attention.AttentionStack(scan=scan, remat=remat, **KW)
  params = stack.init(jax.random.key(0), x)  # same values under every policy
  loss = lambda p, x: jnp.sum(jnp.sin(stack.apply(p, x)))
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return compiled(params, x), compiled


@pytest.mark.parametrize('scan', [True, False])
def test_remat_policies_give_the_same_loss_and_gradients(scan):
  x = jax.random.normal(jax.random.key(1), (4, 1, 8, 8, 16))
  (want, _), base = _loss_and_grads(scan, 'none', x)
  for policy in ('full', 'dots') if scan else ('full',):
    (got, _), compiled = _loss_and_grads(scan, policy, x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if scan:  # inside the layer loop XLA cannot hoist the recomputation: memory drops
      assert common.step_memory_bytes(compiled) < common.step_memory_bytes(base), policy


def test_remat_config_values():
  assert attention.remat_kind(False) == attention.remat_kind('false') == 'none'
  assert attention.remat_kind(True) == attention.remat_kind('FULL') == 'full'
  with pytest.raises(ValueError, match="remat='sometimes'.*'none', 'full', 'dots'"):
    attention.remat_kind('sometimes')
