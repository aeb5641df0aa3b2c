"""Building blocks of the stage-2 transformer: masked conv, context conv,
block-local attention, position encoding, logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax.models.lvt import attention, context, masked_conv, position, subscale
from lvt_jax.models.lvt import transformer as tr

HI = jax.lax.Precision.HIGHEST


def _random_params(module, *args, seed=0, scale=0.3):
  """Random values in the shapes ``module.init`` would give (no RNG compile)."""
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


# ----------------------------------------------------------------------------
# Decoder masked conv
# ----------------------------------------------------------------------------


def test_masked_conv_tap_layout():
  m = masked_conv.tap_mask((3, 3, 3))
  assert m.sum() == 25
  assert set(zip(*np.nonzero(~m))) == {(2, 2, 1), (2, 2, 2)}
  assert masked_conv.conv_padding((3, 3, 3)) == ((2, 0), (2, 0), (1, 1))


@pytest.mark.parametrize('kernel', [(3, 3, 3), (1, 5, 3)])
def test_masked_conv_equals_dense_conv_with_masked_weights(kernel):
  kx, kk, kb = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (2, 4, 5, 6, 3))
  n = int(np.prod(kernel))
  w = jax.random.normal(kk, (n, 3, 4))
  b = jax.random.normal(kb, (4,))
  got = jax.jit(masked_conv.masked_conv3d, static_argnums=3)(x, w, b, kernel)
  kt, kh, kw = kernel
  dense = w.reshape(kt, kh, kw, 3, 4) * masked_conv.tap_mask(kernel)[..., None, None]
  want = jax.lax.conv_general_dilated(
      x, dense, window_strides=(1, 1, 1),
      padding=[(kt - 1, 0), (kh - 1, 0), (kw // 2, kw // 2)],
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'), precision=HI) + b
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_masked_conv_module_receptive_field():
  """Output (t, h, w) reads only strictly earlier positions; previous frame rows h-2..h."""
  mod = masked_conv.MaskedConv3D(features=2)
  x = jnp.zeros((1, 4, 5, 5, 3))
  params = _random_params(mod, x)
  assert params['params']['kernel'].shape == (27, 3, 2)
  p = (2, 2, 2)

  def out_at(x):
    return mod.apply(params, x)[0, p[0], p[1], p[2]].sum()

  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  g = np.abs(np.asarray(jax.jit(jax.grad(out_at))(x)))
  g = g[0].sum(-1)  # [T, H, W]
  dep = set(zip(*np.nonzero(g > 0)))
  want = set()
  for dt in (-2, -1, 0):
    for dh in (-2, -1, 0):
      for dw in (-1, 0, 1):
        if dt == 0 and dh == 0 and dw >= 0:
          continue
        want.add((p[0] + dt, p[1] + dh, p[2] + dw))
  assert dep == want
  assert (1, 2, 3) in dep and (1, 3, 2) not in dep  # the quirk: no row h+1 in frame t-1


# ----------------------------------------------------------------------------
# Encoder context conv == one-hot conv
# ----------------------------------------------------------------------------


def _ss_shift(x, offsets, stride, kernel, clip):
  """Reference-style shift: crop/zero-pad so a strided conv is centred on the slice."""
  crops, pads = [], []
  for a, s, k, n in zip(offsets, stride, kernel, clip):
    t = n // s
    lo, hi = a, a + (t - 1) * s
    front, back = k // 2 - lo, k // 2 - (n - hi - 1)
    crops.append(slice(max(0, -front), n - max(0, -back)))
    pads.append((max(0, front), max(0, back)))
  x = x[:, crops[0], crops[1], crops[2]]
  return np.pad(x, [(0, 0)] + pads + [(0, 0)])


@pytest.mark.parametrize('clip,stride,kernel', [
    ((16, 4, 4), (16, 1, 1), (7, 1, 1)),   # DSFVT layout
    ((8, 8, 8), (4, 2, 2), (5, 3, 3)),      # DSTSVT layout, smaller clip
    ((4, 4, 4), (2, 2, 2), (5, 3, 3)),      # tiny DSTSVT
    ((6, 6, 4), (3, 2, 1), (3, 5, 3)),      # odd mix
])
def test_context_lookup_equals_one_hot_conv(clip, stride, kernel):
  nc, nv, de = 3, 5, 4
  rng = np.random.default_rng(0)
  S = int(np.prod(stride))
  B = S
  codes = rng.integers(0, nv, size=(B, *clip, nc)).astype(np.int32)
  codes[rng.random(codes.shape) < 0.05] = -1  # pads inside the visible part too
  slice_idx = np.arange(S, dtype=np.int32)  # every slice once
  n = int(np.prod(kernel))
  w = rng.normal(size=(n, nc * nv, de)).astype(np.float32)
  b = rng.normal(size=(de,)).astype(np.float32)
  got = np.asarray(jax.jit(lambda c, i: context.context_conv(
      c, i, w, b, stride=stride, kernel_shape=kernel, vocab_size=nv))(codes, slice_idx))

  onehot = np.asarray(context.one_hot_context(jnp.asarray(codes), jnp.asarray(slice_idx),
                                              stride=stride, vocab_size=nv))
  # independent check of the one-hot context: visible = slice id < current, code >= 0
  sid = subscale.slice_id_map(clip, stride)
  for bi in range(B):
    vis = (sid < slice_idx[bi])[..., None] & (codes[bi] >= 0)
    assert onehot[bi].reshape(*clip, nc, nv).sum(-1).astype(bool).tolist() == vis.tolist()
  dense = w.reshape(*kernel, nc * nv, de)
  for bi in range(B):
    offs = subscale.slice_order(stride)[slice_idx[bi]]
    xs = _ss_shift(onehot[bi:bi + 1], offs, stride, kernel, clip)
    want = jax.lax.conv_general_dilated(
        xs, dense, window_strides=stride, padding='VALID',
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'), precision=HI)[0] + b
    assert want.shape == got.shape[1:]
    np.testing.assert_allclose(got[bi], want, rtol=1e-5, atol=1e-4)


def test_dsfvt_context_sees_only_three_previous_frames():
  clip, stride, kernel, nv = (16, 2, 2), (16, 1, 1), (7, 1, 1), 4
  w = jax.random.normal(jax.random.PRNGKey(0), (7, nv, 3))
  # one clip per (slice, perturbed frame) plus unperturbed ones, in one jitted call
  frames = np.arange(16)
  batch = np.zeros((4, 17, *clip, 1), np.int32)
  batch[:, frames + 1, frames] = 1  # clip f+1 has frame f changed
  slices = np.repeat(np.array([0, 2, 5, 15]), 17)
  out = jax.jit(lambda c, i: context.context_conv(c, i, w, None, stride=stride,
                                                  kernel_shape=kernel, vocab_size=nv))(
                                                      batch.reshape(68, *clip, 1), slices)
  out = np.asarray(out).reshape(4, 17, -1)
  for row, a in enumerate((0, 2, 5, 15)):
    changed = [t for t in frames if not np.allclose(out[row, t + 1], out[row, 0])]
    assert changed == list(range(max(0, a - 3), a))


# ----------------------------------------------------------------------------
# Block-local attention
# ----------------------------------------------------------------------------


def _layer(block, masked, d=16, heads=2, da=4):
  return attention.BlockLocalAttentionLayer(num_heads=heads, head_dim=da, block_shape=block,
                                            masked=masked)


def _reference_layer(p, x, block, masked):
  """Plain numpy formula of one layer on a single block x [L, d]."""
  def ln(v, q):
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * q['scale'] + q['bias']
  bt, bh, bw = block
  pos = [(t, h, w) for t in range(bt) for h in range(bh) for w in range(bw)]
  L = len(pos)
  y = ln(x, p['ln_attn'])
  q = np.einsum('ld,dhk->hlk', y, p['query'])
  k = np.einsum('ld,dhk->hlk', y, p['key'])
  v = np.einsum('ld,dhk->hlk', y, p['value'])
  da = q.shape[-1]
  logits = np.einsum('hqk,hsk->hqs', q, k) / np.sqrt(da)
  for i in range(L):
    for j in range(L):
      (ti, hi, wi), (tj, hj, wj) = pos[i], pos[j]
      logits[:, i, j] += (p['rel_t'][:, ti - tj + bt - 1] + p['rel_h'][:, hi - hj + bh - 1]
                          + p['rel_w'][:, wi - wj + bw - 1])
      if masked and j > i:
        logits[:, i, j] = -1e4
  e = np.exp(logits - logits.max(-1, keepdims=True))
  a = e / e.sum(-1, keepdims=True)
  o = np.einsum('hqs,hsk->qhk', a, v)
  x = x + np.einsum('qhk,hkd->qd', o, p['out'])
  y = ln(x, p['ln_mlp'])
  y = np.maximum(y @ p['mlp_in']['kernel'] + p['mlp_in']['bias'], 0)
  return x + y @ p['mlp_out']['kernel'] + p['mlp_out']['bias']


@pytest.mark.parametrize('masked', [False, True])
def test_block_local_attention_matches_formula_per_block(masked):
  block = (2, 2, 3)
  layer = _layer(block, masked)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 2, 6, 16))
  params = _random_params(layer, x)  # also non-zero relative biases
  with jax.default_matmul_precision('highest'):
    got = np.asarray(jax.jit(layer.apply)(params, x))
  p = jax.tree_util.tree_map(np.asarray, params['params'])
  assert p['mlp_in']['kernel'].shape == (16, 16)  # feed-forward width d, not 4d
  xn = np.asarray(x, np.float64)
  for b in range(2):
    for t0 in range(0, 4, 2):
      for w0 in range(0, 6, 3):
        blk = xn[b, t0:t0 + 2, 0:2, w0:w0 + 3].reshape(-1, 16)
        want = _reference_layer(p, blk, block, masked).reshape(2, 2, 3, 16)
        np.testing.assert_allclose(got[b, t0:t0 + 2, 0:2, w0:w0 + 3], want, rtol=2e-4,
                                   atol=2e-4)


def test_scanned_stack_equals_unrolled_layers():
  kw = dict(num_layers=3, num_heads=2, head_dim=4, block_shape=(1, 2, 2), masked=True)
  scanned = attention.AttentionStack(scan=True, **kw)
  unrolled = attention.AttentionStack(scan=False, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 2, 4, 8))
  ps = _random_params(scanned, x)
  stacked = ps['params']['layers']['layer']
  pu = {'params': {f'layer_{i}': jax.tree_util.tree_map(lambda v: v[i], stacked)
                   for i in range(3)}}
  assert jax.tree_util.tree_structure(pu) == jax.tree_util.tree_structure(
      _random_params(unrolled, x))
  np.testing.assert_allclose(jax.jit(scanned.apply)(ps, x), jax.jit(unrolled.apply)(pu, x),
                             rtol=1e-5, atol=1e-5)


def test_relative_bias_index_and_zero_init():
  block = (2, 3, 4)
  rng = np.random.default_rng(0)
  banks = [rng.normal(size=(3, 2 * n - 1)) for n in block]
  bias = np.asarray(attention.relative_bias([jnp.asarray(b) for b in banks], block))
  pos = [(t, h, w) for t in range(2) for h in range(3) for w in range(4)]
  for i, (ti, hi, wi) in enumerate(pos):
    for j, (tj, hj, wj) in enumerate(pos):
      np.testing.assert_allclose(
          bias[:, i, j], banks[0][:, ti - tj + 1] + banks[1][:, hi - hj + 2]
          + banks[2][:, wi - wj + 3], rtol=1e-5, atol=1e-5)
  # zero-initialised, one bank of 2*extent-1 per head and axis (per layer when scanned)
  stack = attention.AttentionStack(2, 3, 4, block, masked=True, scan=True)
  x = jnp.zeros((1, 2, 3, 8, 12))
  params = nn.meta.unbox(jax.jit(stack.init)(jax.random.key(0, impl='rbg'), x))
  layer = params['params']['layers']['layer']
  for ax, n in zip('thw', block):
    assert layer[f'rel_{ax}'].shape == (2, 3, 2 * n - 1)
    assert np.all(np.asarray(layer[f'rel_{ax}']) == 0)


def test_masked_value_is_minus_1e4():
  # A masked logit equal to -1e4 (not -inf) is still "visible" when the real logits
  # are far below it: with huge negative relative bias on the diagonal the first
  # query of a block sees only masked keys at -1e4 and itself at ~-3e4.
  layer = _layer((1, 1, 2), masked=True, d=8, heads=1, da=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 2, 8))
  params = _random_params(layer, x)
  params['params']['rel_t'] = jnp.zeros((1, 1))
  params['params']['rel_h'] = jnp.zeros((1, 1))
  params['params']['rel_w'] = jnp.array([[0.0, -3e4, 0.0]])  # index 1 = dw 0 (diagonal)
  params['params']['value'] = jax.random.normal(jax.random.PRNGKey(3), (8, 1, 4))
  apply = jax.jit(layer.apply)
  out = apply(params, x)
  # position 0 must then read (almost only) position 1's value: output changes with x[1]
  x2 = x.at[0, 0, 0, 1].add(jax.random.normal(jax.random.PRNGKey(4), (8,)))
  assert not np.allclose(apply(params, x2)[0, 0, 0, 0], out[0, 0, 0, 0], atol=1e-3)
  # ... whereas with the diagonal bias at 0 the masked key gets no weight at all
  params['params']['rel_w'] = jnp.zeros((1, 3))
  np.testing.assert_array_equal(apply(params, x2)[0, 0, 0, 0], apply(params, x)[0, 0, 0, 0])
  assert attention.MASK_VALUE == -1e4


# ----------------------------------------------------------------------------
# Position encoding, logical names
# ----------------------------------------------------------------------------


def test_position_encoding_layout():
  pe = position.sinusoidal_3d((3, 4, 5), 512)
  n = 85
  assert pe.shape == (3, 4, 5, 512)
  np.testing.assert_array_equal(pe[..., 6 * n:], 0)  # zero padding to d
  inv = np.exp(-np.arange(n) * np.log(1e4) / n)
  t, h, w = 2, 3, 4
  np.testing.assert_allclose(pe[t, h, w, :n], np.sin(t * inv), atol=1e-6)
  np.testing.assert_allclose(pe[t, h, w, n:2 * n], np.cos(t * inv), atol=1e-6)
  np.testing.assert_allclose(pe[t, h, w, 2 * n:3 * n], np.sin(h * inv), atol=1e-6)
  np.testing.assert_allclose(pe[t, h, w, 5 * n:6 * n], np.cos(w * inv), atol=1e-6)


VOCAB = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'emb', 'norm', 'relpos', 'kernel', 'slices'}


@pytest.mark.parametrize('scan', [True, False])
def test_every_param_has_logical_names(scan):
  cfg = tr.default_transformer_config('dstsvt_tiny')
  cfg.scan_layers = scan
  shapes = jax.eval_shape(lambda r: tr.init_variables(tr.build_model(cfg), r),
                          jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(shapes['params'],
                                     is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
  for l in leaves:
    assert len(l.names) == len(l.value.shape)
    named = [n for n in l.names if n is not None]
    assert set(named) <= VOCAB, l.names
    assert len(named) == len(set(named)), l.names
  # the names map to mesh axes through rules, e.g. an fsdp/tensor layout
  rules = (('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('vocab', 'tensor'))
  specs = nn.get_partition_spec(shapes)
  with nn.logical_axis_rules(rules):
    mesh_specs = nn.logical_to_mesh(specs)
  P = jax.sharding.PartitionSpec
  layers = mesh_specs['params']['decoder']['attention']
  mlp_in = (layers['layers']['layer'] if scan else layers['layer_0'])['mlp_in']['kernel']
  assert mlp_in == (P(None, 'fsdp', 'tensor') if scan else P('fsdp', 'tensor'))
  assert mesh_specs['params']['encoder']['context_conv']['kernel'] == P(None, 'tensor', None)
  counts = tr.count_params(shapes)
  assert counts['total'] == sum(counts[p] for p in tr.PARTS)


@pytest.mark.parametrize('shape', [(1, 5, 6), (1, 1, 6), (2, 1, 1)])
def test_masked_conv_skips_taps_that_read_only_padding(shape):
  """A single-frame slice (DSFVT) drops the previous-frame taps; the result is unchanged."""
  kernel = (3, 3, 3)
  used = masked_conv.used_taps(kernel, shape)
  assert len(used) < 25 and set(used) <= set(np.flatnonzero(masked_conv.tap_mask(kernel)))
  kx, kk, kb = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, (2, *shape, 3))
  w = jax.random.normal(kk, (27, 3, 4))
  b = jax.random.normal(kb, (4,))
  got = jax.jit(masked_conv.masked_conv3d, static_argnums=3)(x, w, b, kernel)
  dense = w.reshape(3, 3, 3, 3, 4) * masked_conv.tap_mask(kernel)[..., None, None]
  want = jax.lax.conv_general_dilated(
      x, dense, window_strides=(1, 1, 1), padding=[(2, 0), (2, 0), (1, 1)],
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'), precision=HI) + b
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shared_bias_gradient_equals_autodiff_of_plain_add():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 2, 4, 6, 6)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(4, 6, 6)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
  f = lambda l, b: jnp.sum(jnp.tanh(attention.add_shared_bias(l, b)) * ct)
  g = lambda l, b: jnp.sum(jnp.tanh(l + b[None, None]) * ct)
  np.testing.assert_array_equal(attention.add_shared_bias(logits, bias), logits + bias)
  for got, want in zip(jax.grad(f, (0, 1))(logits, bias), jax.grad(g, (0, 1))(logits, bias)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
