"""Hand-written gradients (lvt_jax.models.linear, attention.block_attention) equal autodiff
of the plain formulas: values, input and parameter gradients, and the layer's parameter
tree. Speed lives in `python -m lvt_jax.bench train_transformer`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax.models import linear
from lvt_jax.models.lvt import attention

HI = jax.lax.Precision.HIGHEST
TOL = dict(rtol=2e-5, atol=2e-5)


def _normal(seed, *shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _assert_grads_equal(f, g, args, ct):
  """Same value and same gradient of <f(args), ct> w.r.t. every argument."""
  fv, gv = f(*args), g(*args)
  for a, b in zip(jax.tree_util.tree_leaves(fv), jax.tree_util.tree_leaves(gv)):
    np.testing.assert_allclose(a, b, **TOL)
  loss = lambda h: lambda *a: sum(jnp.vdot(o, c) for o, c in zip(
      jax.tree_util.tree_leaves(h(*a)), jax.tree_util.tree_leaves(ct)))
  argnums = tuple(range(len(args)))
  got = jax.jit(jax.grad(loss(f), argnums))(*args)
  want = jax.jit(jax.grad(loss(g), argnums))(*args)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, **TOL)


def test_dense_and_shared_products_match_autodiff():
  x, w = _normal(0, 6, 5), _normal(1, 5, 7)
  with jax.default_matmul_precision('highest'):
    _assert_grads_equal(linear.dense, lambda a, b: a @ b, (x, w), _normal(2, 6, 7))
    x3 = _normal(3, 2, 3, 5)
    _assert_grads_equal(linear.dense_nd, lambda a, b: jnp.einsum('bnk,km->bnm', a, b),
                        (x3, w), _normal(4, 2, 3, 7))
    ws = (w, _normal(5, 5, 3), _normal(6, 5, 7))
    ct = (_normal(7, 6, 7), _normal(8, 6, 3), _normal(9, 6, 7))
    _assert_grads_equal(linear.dense_shared, lambda a, b: tuple(a @ v for v in b), (x, ws), ct)
  with pytest.raises(ValueError, match='need x'):
    linear.dense_nd(x3, w.T)


def test_dense_module_keeps_the_dense_layer():
  """linear.Dense has nn.Dense's parameters (tree and initial values) and function."""
  plain = nn.Dense(4, bias_init=nn.initializers.normal(1.0))
  fast = linear.Dense(4, bias_init=nn.initializers.normal(1.0))
  x = _normal(0, 2, 3, 5)
  params = plain.init(jax.random.PRNGKey(0), x)
  fast_params = fast.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(fast_params) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(fast_params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  with jax.default_matmul_precision('highest'):
    _assert_grads_equal(lambda p, a: fast.apply(p, a), lambda p, a: plain.apply(p, a),
                        (params, x), _normal(1, 2, 3, 4))


def _plain_attention(q, k, v, bias, masked):
  logits = jnp.einsum('bhqk,bhsk->bhqs', q, k, precision=HI) + bias
  if masked:
    logits = jnp.where(attention.causal_mask(q.shape[-2]), logits, -1e4)
  return jnp.einsum('bhqs,bhsk->bhqk', jax.nn.softmax(logits, -1), v, precision=HI)


@pytest.mark.parametrize('masked', [False, True])
def test_block_attention_matches_autodiff(masked):
  q, k, v = (_normal(i, 3, 2, 6, 4) for i in range(3))
  bias = _normal(3, 2, 6, 6)
  with jax.default_matmul_precision('highest'):
    _assert_grads_equal(lambda *a: attention.block_attention(*a, masked),
                        lambda *a: _plain_attention(*a, masked), (q, k, v, bias),
                        _normal(4, 3, 2, 6, 4))


def test_block_attention_gradient_with_visible_masked_keys():
  # A diagonal bias of -3e4 leaves the first query only masked keys at -1e4: they get all
  # the weight (the value -1e4 is set, not -inf) but, being set, no gradient.
  q, k, v = (_normal(i, 1, 1, 3, 4) for i in range(3))
  bias = jnp.asarray(np.diag([-3e4, 0.0, 0.0])[None], jnp.float32)
  with jax.default_matmul_precision('highest'):
    out = attention.block_attention(q, k, v, bias, True)
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 1:].mean(0), rtol=1e-5, atol=1e-5)
    _assert_grads_equal(lambda *a: attention.block_attention(*a, True),
                        lambda *a: _plain_attention(*a, True), (q, k, v, bias),
                        _normal(4, 1, 1, 3, 4))


class _PlainLayer(nn.Module):
  """The layer written with autodiff-only operations (same parameter names)."""
  heads: int
  da: int
  block: tuple
  masked: bool

  @nn.compact
  def __call__(self, x):
    B, T, H, W, d = x.shape
    ln = lambda name: nn.LayerNorm(epsilon=attention.LN_EPS, name=name)
    wq, wk, wv = (self.param(n, nn.initializers.normal(), (d, self.heads, self.da))
                  for n in ('query', 'key', 'value'))
    wo = self.param('out', nn.initializers.normal(), (self.heads, self.da, d))
    banks = [self.param(f'rel_{a}', nn.initializers.normal(), (self.heads, 2 * n - 1))
             for a, n in zip('thw', self.block)]
    yb = attention.split_blocks(ln('ln_attn')(x), self.block)
    q, k, v = (jnp.einsum('bnld,dhk->bnhlk', yb, w, precision=HI) for w in (wq, wk, wv))
    logits = jnp.einsum('bnhqk,bnhsk->bnhqs', q, k, precision=HI) / np.sqrt(self.da)
    logits = logits + attention.relative_bias(banks, self.block)
    if self.masked:
      logits = jnp.where(attention.causal_mask(q.shape[-2]), logits, -1e4)
    o = jnp.einsum('bnhqs,bnhsk->bnqhk', jax.nn.softmax(logits, -1), v, precision=HI)
    x = x + attention.merge_blocks(jnp.einsum('bnqhk,hkd->bnqd', o, wo, precision=HI),
                                   (T, H, W), self.block)
    y = nn.relu(nn.Dense(d, name='mlp_in', precision=HI)(ln('ln_mlp')(x)))
    return x + nn.Dense(d, name='mlp_out', precision=HI)(y)


@pytest.mark.parametrize('masked', [False, True])
def test_layer_gradients_match_plain_autodiff(masked):
  block = (1, 2, 3)
  fast = attention.BlockLocalAttentionLayer(2, 4, block, masked)
  plain = _PlainLayer(2, 4, block, masked)
  x = _normal(0, 2, 2, 2, 6, 8)
  shapes = nn.meta.unbox(jax.eval_shape(fast.init, jax.random.PRNGKey(0), x))
  assert (jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(
      jax.eval_shape(plain.init, jax.random.PRNGKey(0), x)))
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)
  with jax.default_matmul_precision('highest'):
    _assert_grads_equal(lambda p, a: fast.apply(p, a), lambda p, a: plain.apply(p, a),
                        (params, x), _normal(2, *x.shape))
