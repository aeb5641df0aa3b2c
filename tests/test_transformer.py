"""The stage-2 model: exact parameter counts, autoregressive structure, API pieces."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt import transformer as tr

PAPER_COUNTS = {
    'dsfvt': dict(encoder=22_902_848, decoder=23_294_400, channel_predictor=3_675_136,
                  total=49_872_384),
    'dstsvt': dict(encoder=32_862_656, decoder=23_292_736, channel_predictor=3_675_136,
                   total=59_830_528),
}


@pytest.mark.parametrize('variant', ['dsfvt', 'dstsvt'])
def test_paper_size_parameter_counts(variant):
  cfg = tr.default_transformer_config(variant)
  assert (cfg.d_model, cfg.head_dim, cfg.emb_dim, cfg.num_heads) == (512, 128, 128, 8)
  assert (cfg.enc_layers, cfg.dec_layers, cfg.num_codebooks, cfg.vocab_size) == (8, 8, 4, 512)
  model = tr.build_model(cfg)
  shapes = jax.eval_shape(lambda r: tr.init_variables(model, r), jax.random.PRNGKey(0))
  assert tr.count_params(shapes) == PAPER_COUNTS[variant]
  # the count does not depend on scanning the layers
  cfg.scan_layers = False
  shapes = jax.eval_shape(lambda r: tr.init_variables(tr.build_model(cfg), r),
                          jax.random.PRNGKey(0))
  assert tr.count_params(shapes) == PAPER_COUNTS[variant]


# ----------------------------------------------------------------------------
# Tiny models with random parameters (one RNG call: init's per-parameter RNG
# compiles slowly on CPU; structure tests do not need the real initialisers).
# ----------------------------------------------------------------------------


def _tiny(variant, **overrides):
  cfg = tr.default_transformer_config(variant)
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _random_params(model, seed=0):
  c = model.config
  codes = jnp.zeros((1, *c.clip_shape, c.num_codebooks), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), codes,
                                        jnp.zeros((1,), jnp.int32)))
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  sizes = [int(np.prod(l.shape)) for _, l in leaves]
  flat = np.random.default_rng(seed).normal(size=sum(sizes)).astype(np.float32)
  out, off = [], 0
  for (path, l), n in zip(leaves, sizes):
    v = flat[off:off + n].reshape(l.shape)
    off += n
    name = jax.tree_util.keystr(path)
    if "'scale'" in name:
      v = 1.0 + 0.1 * v
    elif l.ndim >= 2 and 'rel_' not in name and 'embedding' not in name:
      v = v / np.sqrt(l.shape[-2])
    else:
      v = 0.3 * v
    out.append(jnp.asarray(v))
  return jax.tree_util.tree_unflatten(tree, out)


@functools.lru_cache(maxsize=None)
def _setup(variant, block_shape=None, scan=True):
  overrides = {'scan_layers': scan}
  if block_shape is not None:
    overrides['block_shape'] = block_shape
  model = tr.build_model(_tiny(variant, **overrides))
  return model, _random_params(model)


def _random_codes(cfg, batch, seed):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, cfg.vocab_size,
                                  size=(batch, *cfg.clip_shape, cfg.num_codebooks)), jnp.int32)


AR_CASES = [
    ('dsfvt_tiny', None),
    ('dstsvt_tiny', None),
    ('dstsvt_tiny', (1, 2, 1)),  # several attention blocks per slice
]


@pytest.mark.parametrize('variant,block', AR_CASES)
def test_autoregressive_structure(variant, block):
  """Perturb every code of a clip in turn; only later codes' logits may change."""
  model, params = _setup(variant, block)
  c = model.config
  T, H, W = c.clip_shape
  nc, nv = c.num_codebooks, c.vocab_size
  base = _random_codes(c, 1, seed=1)
  # one perturbed clip per (position, codebook), plus the unperturbed clip first
  rng = np.random.default_rng(2)
  n = T * H * W * nc
  pert = np.repeat(np.asarray(base), n + 1, axis=0)
  flat = pert.reshape(n + 1, n)
  shift = rng.integers(1, nv, size=n)
  flat[np.arange(1, n + 1), np.arange(n)] = (flat[np.arange(1, n + 1), np.arange(n)] + shift) % nv
  logits = jax.jit(functools.partial(model.apply, method='clip_logits'))(params, jnp.asarray(pert))
  logits = np.asarray(logits)  # [n+1, T, H, W, nc, nv]
  assert logits.shape == (n + 1, T, H, W, nc, nv)
  diff = np.abs(logits[1:] - logits[:1]).max(-1).reshape(n, n)  # [perturbed code, logit code]

  # generation order of codes (flat index over (t, h, w, k))
  rank = (subscale.generation_rank(c.clip_shape, c.stride)[..., None] * nc
          + np.arange(nc)).reshape(n)
  later = rank[None, :] > rank[:, None]  # [perturbed, logit]: logit's code comes later
  assert diff[~later].max() < 1e-5, 'a logit changed that precedes the perturbed code'
  # non-vacuous: every code except the very last one influences some later logit
  last = np.argmax(rank)
  influences = (diff > 1e-3).any(axis=1)
  assert influences[np.arange(n) != last].all()
  # ... including across slices (through the encoder) when there are several slices
  sid = np.repeat(subscale.slice_id_map(c.clip_shape, c.stride).reshape(-1), nc)
  cross = (diff > 1e-3) & (sid[None, :] > sid[:, None])
  assert cross.any(axis=1)[sid < sid.max()].all()


def test_pieces_agree_with_call_and_clip_logits():
  model, params = _setup('dstsvt_tiny')
  c = model.config
  codes = _random_codes(c, 3, seed=3)
  slice_idx = jnp.array([0, 3, 7], jnp.int32)
  sid = jnp.asarray(subscale.slice_id_map(c.clip_shape, c.stride))
  # pads (-1) in the current and later slices: the encoder must not read them
  junk = jnp.where(sid[None, ..., None] >= slice_idx[:, None, None, None, None], -1, codes)

  @jax.jit
  def run(params, codes, slice_idx, junk):
    logits = model.apply(params, codes, slice_idx)
    enc = model.apply(params, codes, slice_idx, method='encode_context')
    enc_junk = model.apply(params, junk, slice_idx, method='encode_context')
    sl = subscale.get_slice(codes, c.stride, slice_idx)
    hid = model.apply(params, sl, enc, method='decode')
    lg = model.apply(params, hid, sl, method='predict_channels')
    per_k = jnp.stack([model.apply(params, hid, sl, k, method='predict_codebook')
                       for k in range(c.num_codebooks)], axis=-2)
    full = model.apply(params, codes, method='clip_logits')
    return logits, enc, enc_junk, hid, lg, per_k, full

  logits, enc, enc_junk, hid, lg, per_k, full = run(params, codes, slice_idx, junk)
  assert logits.shape == (3, 2, 2, 2, c.num_codebooks, c.vocab_size)
  assert hid.shape == enc.shape == (3, 2, 2, 2, c.d_model)
  np.testing.assert_allclose(lg, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_k, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(enc, enc_junk)
  assert full.shape == (3, *c.clip_shape, c.num_codebooks, c.vocab_size)
  split = subscale.split_slices(full, c.stride)  # [B, S, t, h, w, nc, nv]
  np.testing.assert_allclose(split[jnp.arange(3), slice_idx], logits, rtol=1e-5, atol=1e-5)

  with pytest.raises(AssertionError):  # chex shape checks at the boundary
    jax.eval_shape(model.apply, params, codes[:, :2], slice_idx)


def test_real_init_zero_relative_bias_and_finite_loss():
  model = tr.build_model(_tiny('dsfvt_tiny'))
  # rbg keys: the per-parameter RNG compiles ~2.5x faster than threefry on CPU
  variables = tr.init_variables(model, jax.random.key(0, impl='rbg'))
  params = nn.meta.unbox(variables)
  for part in ('encoder', 'decoder'):
    att = params['params'][part]['attention']
    layers = [att['layers']['layer']] if 'layers' in att else list(att.values())
    assert layers
    for layer in layers:  # scanned (stacked) or one entry per layer
      for ax in 'thw':
        assert np.all(np.asarray(layer[f'rel_{ax}']) == 0)
  codes = _random_codes(model.config, 2, seed=5)
  logits = jax.jit(model.apply)(variables, codes, jnp.array([1, 2], jnp.int32))
  lp = jax.nn.log_softmax(logits)
  loss = -jnp.take_along_axis(lp, subscale.get_slice(codes, (4, 1, 1), jnp.array([1, 2]))[
      ..., None], -1).mean()
  assert np.isfinite(loss) and 0.5 * np.log(16) < loss < 3 * np.log(16)
