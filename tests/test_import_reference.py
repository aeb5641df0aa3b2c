"""Importing checkpoints of the reference PyTorch release (lvt_jax.tools.import_reference).

The state dicts are built here with the reference's tensor names and shapes
(written out independently of the tool's own spec, following the module
structure of ``vidgen``); numerical checks compare our model on the imported
weights with direct numpy implementations of the reference layers. Tests that
need torch are skipped individually when it is not installed.
"""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bair
from lvt_jax.models.lvt import attention as attn_lib
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.transformer import build_model, default_transformer_config, init_variables
from lvt_jax.models.lvt.vqvae import Decoder, Encoder
from lvt_jax.tools import import_reference as tool
from lvt_jax.tools import reference_mapping as rm
from lvt_jax.tools.reference_mapping import ReferenceImportError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Reference-named state dicts (names follow the vidgen module tree)
# ---------------------------------------------------------------------------


def _conv(out, name, o, i, k):
  out[f'{name}.weight'] = (o, i, k, k)
  out[f'{name}.bias'] = (o,)


def reference_vqvae_shapes(nf, res, n_layers, n_codebooks, size):
  """ResEncoder(3, nf, res, n_layers) / ResDecoder(nf, nf, res, 3, n_layers) / DVQEmbedding."""
  enc = {}
  # layers: conv, relu, conv, relu, conv, ResBlock x n   (ResBlock.block: relu, conv, relu, conv)
  _conv(enc, 'layers.0', nf // 2, 3, 4)
  _conv(enc, 'layers.2', nf, nf // 2, 4)
  _conv(enc, 'layers.4', nf, nf, 3)
  for j in range(n_layers):
    _conv(enc, f'layers.{5 + j}.block.1', res, nf, 3)
    _conv(enc, f'layers.{5 + j}.block.3', nf, res, 1)
  dec = {}
  # layers: conv, ResBlock x n, relu, convT, relu, convT, tanh
  _conv(dec, 'layers.0', nf, nf, 3)
  for j in range(n_layers):
    _conv(dec, f'layers.{1 + j}.block.1', res, nf, 3)
    _conv(dec, f'layers.{1 + j}.block.3', nf, res, 1)
  i = 1 + n_layers + 1
  dec[f'layers.{i}.weight'] = (nf, nf // 2, 4, 4)  # ConvTranspose2d weight: [in, out, kh, kw]
  dec[f'layers.{i}.bias'] = (nf // 2,)
  dec[f'layers.{i + 2}.weight'] = (nf // 2, 3, 4, 4)
  dec[f'layers.{i + 2}.bias'] = (3,)
  cb = {}
  for k in range(n_codebooks):
    cb[f've.{k}.embedding.weight'] = (size, nf // n_codebooks)
    cb[f've.{k}.running_size'] = (size,)
    cb[f've.{k}.running_sum'] = (size, nf // n_codebooks)
  return enc, dec, cb


def random_vqvae_state(mc, seed=0, scale=0.15):
  rng = np.random.default_rng(seed)
  enc, dec, cb = reference_vqvae_shapes(mc.channels, mc.res_channels, mc.num_res_blocks,
                                        mc.num_codebooks, mc.codebook_size)
  e = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in enc.items()}
  g = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in dec.items()}
  c = {}
  for k in range(mc.num_codebooks):
    counts = rng.uniform(0.5, 20.0, mc.codebook_size).astype(np.float32)
    sums = rng.standard_normal((mc.codebook_size, mc.channels // mc.num_codebooks)).astype(
        np.float32)
    size = rm.smoothed_sizes(counts[None])[0]
    c[f've.{k}.running_size'] = counts
    c[f've.{k}.running_sum'] = sums
    c[f've.{k}.embedding.weight'] = (sums / size[:, None]).astype(np.float32)
  return e, g, c


def _rel_index(block):
  t, h, w = block
  grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing='ij'), -1)
  grid = grid.reshape(-1, 3)
  return [(grid[:, None, a] - grid[None, :, a] + n - 1).reshape(-1).astype(np.int64)
          for a, n in enumerate(block)]


def reference_transformer_state(c, seed=0, scale=0.2):
  """VideoTransformer state dict for our config ``c`` (random values, real buffers)."""
  rng = np.random.default_rng(seed)
  nc, nv, d, de, da, nh = c.num_codebooks, c.vocab_size, c.d_model, c.emb_dim, c.head_dim, \
      c.num_heads

  def rnd(*shape, s=scale):
    return (rng.standard_normal(shape) * s).astype(np.float32)

  def inv_ts(width):
    n = width // 6
    return np.exp(np.arange(n, dtype=np.float32) * np.float32(-np.log(1e4) / n)).astype(
        np.float32)

  def bla(prefix, n_layers, masked):
    out = {}
    block = tuple(c.block_shape)
    length = int(np.prod(block))
    for i in range(n_layers):
      p = f'{prefix}.block_local_attention.{i}.'
      out[p + 'mha.w_q'] = rnd(nh, d, da)
      out[p + 'mha.w_k'] = rnd(nh, d, da)
      out[p + 'mha.w_v'] = rnd(nh, d, da)
      out[p + 'mha.layer_norm.weight'] = 1 + rnd(d)
      out[p + 'mha.layer_norm.bias'] = rnd(d)
      out[p + 'mha.proj.weight'] = rnd(d, nh * da)
      out[p + 'ffn.0.weight'] = 1 + rnd(d)
      out[p + 'ffn.0.bias'] = rnd(d)
      out[p + 'ffn.1.weight'] = rnd(d, d)
      out[p + 'ffn.1.bias'] = rnd(d)
      out[p + 'ffn.3.weight'] = rnd(d, d)
      out[p + 'ffn.3.bias'] = rnd(d)
      for ax, n in zip('thw', block):
        out[p + f'd{ax}_bank'] = rnd(nh, 2 * n - 1, s=1.0)
      for ax, idx in zip('thw', _rel_index(block)):
        out[p + f'd{ax}'] = idx
      if masked:
        out[p + 'mask'] = np.triu(np.ones((1, 1, length, length), np.float32), 1)
    return out

  sd = {}
  sd['encoder.conv.weight'] = rnd(de, nc * nv, *c.context_kernel)
  sd['encoder.conv.bias'] = rnd(de)
  sd['encoder.positional_encoder.inv_timescales'] = inv_ts(de)
  sd.update(bla('encoder', c.enc_layers, masked=False))
  sd['encoder.slice_embedding.weight'] = rnd(subscale.num_slices(c.stride), de)
  classes = int(c.get('num_classes', 0))
  if classes:  # VTEncoder(class_num > 0)
    sd['encoder.class_embedding.weight'] = rnd(classes, de, s=1.0)
  sd['encoder.linear_projector.weight'] = rnd(d, 2 * de if classes else de, 1, 1, 1)
  for k in range(nc):
    sd[f'decoder.ch_embedder.{k}.weight'] = rnd(nv, de)
  w = rnd(d, de, 3, 3, 3)
  w[:, :, -1, -1, 1:] = 0  # the reference zeroes these taps in place before every forward
  sd['decoder.conv.conv.weight'] = w
  sd['decoder.conv.conv.bias'] = rnd(d)
  sd['decoder.positional_encoder.inv_timescales'] = inv_ts(d)
  sd['decoder.linear_projector.weight'] = rnd(d, d, 1, 1, 1)
  sd.update(bla('decoder', c.dec_layers, masked=True))
  sd['ch_predictor.layer_norm.weight'] = 1 + rnd(d)
  sd['ch_predictor.layer_norm.bias'] = rnd(d)
  for k in range(nc):
    sd[f'ch_predictor.U.{k}.weight'] = rnd(d, d + k * nv)
    sd[f'ch_predictor.U.{k}.bias'] = rnd(d)
    sd[f'ch_predictor.P.{k}.weight'] = rnd(nv, d)
    sd[f'ch_predictor.P.{k}.bias'] = rnd(nv)
  return sd


def tiny_transformer_config(variant='dsfvt_tiny', **overrides):
  c = default_transformer_config(variant)
  c.update(overrides)
  return c


# ---------------------------------------------------------------------------
# numpy implementations of the reference layers (NCHW / NCTHW, as in torch)
# ---------------------------------------------------------------------------


def np_conv2d(x, w, b, stride=1, pad=0):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  _, _, hh, ww = x.shape
  _, _, kh, kw = w.shape
  ho, wo = (hh - kh) // stride + 1, (ww - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out = out + np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
  return out + b[None, :, None, None]


def np_conv_transpose2d(x, w, b, stride, pad):
  n, _, hh, ww = x.shape
  _, o, kh, kw = w.shape
  full = np.zeros((n, o, (hh - 1) * stride + kh, (ww - 1) * stride + kw))
  for i in range(kh):
    for j in range(kw):
      full[:, :, i:i + stride * hh:stride, j:j + stride * ww:stride] += np.einsum(
          'nchw,co->nohw', x, w[:, :, i, j])
  ho, wo = (hh - 1) * stride - 2 * pad + kh, (ww - 1) * stride - 2 * pad + kw
  return full[:, :, pad:pad + ho, pad:pad + wo] + b[None, :, None, None]


def relu(x):
  return np.maximum(x, 0)


def np_resblock(sd, name, x, inplace_skip):
  """``x + block(x)`` with block = ReLU(inplace) -> conv3x3 -> ReLU -> conv1x1.

  In the release the first ReLU is in place, so the skip actually adds relu(x)
  (``inplace_skip=True``); the spec describes the pre-activation skip.
  """
  h = np_conv2d(relu(x), sd[f'{name}.block.1.weight'], sd[f'{name}.block.1.bias'], pad=1)
  h = np_conv2d(relu(h), sd[f'{name}.block.3.weight'], sd[f'{name}.block.3.bias'])
  return (relu(x) if inplace_skip else x) + h


def np_reference_encoder(sd, x, n, inplace_skip):
  x = relu(np_conv2d(x, sd['layers.0.weight'], sd['layers.0.bias'], 2, 1))
  x = relu(np_conv2d(x, sd['layers.2.weight'], sd['layers.2.bias'], 2, 1))
  x = np_conv2d(x, sd['layers.4.weight'], sd['layers.4.bias'], 1, 1)
  for j in range(n):
    x = np_resblock(sd, f'layers.{5 + j}', x, inplace_skip)
  return x


def np_reference_decoder(sd, z, n, inplace_skip):
  x = np_conv2d(z, sd['layers.0.weight'], sd['layers.0.bias'], 1, 1)
  for j in range(n):
    x = np_resblock(sd, f'layers.{1 + j}', x, inplace_skip)
  x = relu(x)
  x = relu(np_conv_transpose2d(x, sd[f'layers.{n + 2}.weight'], sd[f'layers.{n + 2}.bias'], 2, 1))
  x = np_conv_transpose2d(x, sd[f'layers.{n + 4}.weight'], sd[f'layers.{n + 4}.bias'], 2, 1)
  return np.tanh(x)


def np_conv3d(x, w, b, stride=(1, 1, 1)):
  """torch F.conv3d, no padding: x [N, C, T, H, W], w [O, C, kt, kh, kw]."""
  _, _, tt, hh, ww = x.shape
  _, _, kt, kh, kw = w.shape
  st, sh, sw = stride
  to, ho, wo = (tt - kt) // st + 1, (hh - kh) // sh + 1, (ww - kw) // sw + 1
  out = 0.0
  for i in range(kt):
    for j in range(kh):
      for k in range(kw):
        patch = x[:, :, i:i + st * to:st, j:j + sh * ho:sh, k:k + sw * wo:sw]
        out = out + np.einsum('ncthw,oc->nothw', patch, w[:, :, i, j, k])
  return out + b[None, :, None, None, None] if b is not None else out


def np_window(x, axis, start, stop, fill):
  """x restricted to indices [start, stop) along axis; out-of-range entries = fill."""
  idx = np.arange(start, stop)
  ok = (idx >= 0) & (idx < x.shape[axis])
  y = np.take(x, np.clip(idx, 0, x.shape[axis] - 1), axis=axis)
  shape = [1] * x.ndim
  shape[axis] = len(idx)
  return np.where(ok.reshape(shape), y, fill)


def np_context(video, slice_idx, stride, kernel, pad_value=-1):
  """The reference's context for slice ``slice_idx``: later slices -> pad, then shifted/padded so
  that a stride-``stride`` conv lands centred on each position of the slice."""
  _, _, T, H, W = video.shape
  a, b, c = subscale.slice_offsets(slice_idx, stride)
  sid = subscale.slice_id_map((T, H, W), stride)
  x = np.where((sid < slice_idx)[None, None], video, pad_value)
  for axis, (off, s, k, n) in enumerate(zip((a, b, c), stride, kernel, (T, H, W))):
    first, last = off - k // 2, off + (n // s - 1) * s + k // 2
    x = np_window(x, axis + 2, first, last + 1, pad_value)
  return x


def np_one_hot_padded(x, nv, pad_value=-1):
  """(b, nc, T, H, W) ints -> (b, nc*nv, T, H, W) float, pad positions all zero."""
  b, nc = x.shape[:2]
  oh = (x[:, :, None] == np.arange(nv)[None, None, :, None, None, None]).astype(np.float64)
  oh = oh * (x != pad_value)[:, :, None]
  return oh.reshape(b, nc * nv, *x.shape[2:])


def np_layer_norm(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def np_block_local_attention(sd, p, x, block, masked):
  """The reference BlockLocalAttention on x [B, C, T, H, W] (per-head w_q/w_k/w_v)."""
  B, C, T, H, W = x.shape
  t, h, w = block
  L = t * h * w
  y = x.reshape(B, C, T // t, t, H // h, h, W // w, w).transpose(0, 2, 4, 6, 3, 5, 7, 1)
  y = y.reshape(-1, L, C)  # blocks, positions (raster), channels
  res = y
  z = np_layer_norm(y, sd[p + 'mha.layer_norm.weight'], sd[p + 'mha.layer_norm.bias'])
  bias = sum(sd[p + f'd{ax}_bank'][:, sd[p + f'd{ax}']] for ax in 'thw')  # [heads, L*L]
  heads = []
  for hd in range(sd[p + 'mha.w_q'].shape[0]):
    q = z @ sd[p + 'mha.w_q'][hd]
    k = z @ sd[p + 'mha.w_k'][hd]
    v = z @ sd[p + 'mha.w_v'][hd]
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + bias[hd].reshape(L, L)
    if masked:
      logits = np.where(sd[p + 'mask'][0, 0].astype(bool), -1e4, logits)
    pr = np.exp(logits - logits.max(-1, keepdims=True))
    pr = pr / pr.sum(-1, keepdims=True)
    heads.append(pr @ v)
  y = np.concatenate(heads, -1) @ sd[p + 'mha.proj.weight'].T + res
  f = np_layer_norm(y, sd[p + 'ffn.0.weight'], sd[p + 'ffn.0.bias'])
  f = relu(f @ sd[p + 'ffn.1.weight'].T + sd[p + 'ffn.1.bias'])
  y = y + f @ sd[p + 'ffn.3.weight'].T + sd[p + 'ffn.3.bias']
  y = y.reshape(B, T // t, H // h, W // w, t, h, w, C).transpose(0, 7, 1, 4, 2, 5, 3, 6)
  return y.reshape(B, C, T, H, W)


def np_position_encoding(x):
  _, d, *shape = x.shape
  n = d // 6
  inv = np.exp(np.arange(n) * -np.log(1e4) / n)
  out = x.copy()
  for dim, length in enumerate(shape):
    ang = np.arange(length)[:, None] * inv[None]
    sig = np.concatenate([np.sin(ang), np.cos(ang)], 1)  # [length, 2n]
    full = np.zeros((length, d))
    full[:, dim * 2 * n:(dim + 1) * 2 * n] = sig
    bshape = [1, d, 1, 1, 1]
    bshape[2 + dim] = length
    out = out + full.T.reshape(bshape)
  return out


def np_reference_transformer(sd, c, codes, slice_idx, class_idx=None):
  """Logits [B, t, h, w, nc, nv] of the reference VideoTransformer (mode 'logits')."""
  nc, nv = c.num_codebooks, c.vocab_size
  video = np.moveaxis(codes, -1, 1)  # (B, nc, T, H, W)
  # encoder
  ctx = np_context(video, slice_idx, c.stride, c.context_kernel)
  x = np_conv3d(np_one_hot_padded(ctx, nv), sd['encoder.conv.weight'], sd['encoder.conv.bias'],
                stride=c.stride)
  x = x + sd['encoder.slice_embedding.weight'][slice_idx][None, :, None, None, None]
  if class_idx is not None:  # torch.cat([x, class_emb.expand_as(x)], dim=1)
    emb = sd['encoder.class_embedding.weight'][np.atleast_1d(class_idx)]  # (B, de)
    x = np.concatenate([x, np.broadcast_to(emb[:, :, None, None, None], x.shape)], axis=1)
  x = np_conv3d(x, sd['encoder.linear_projector.weight'], None)
  for i in range(c.enc_layers):
    x = np_block_local_attention(sd, f'encoder.block_local_attention.{i}.', x, c.block_shape,
                                 masked=False)
  zl = x
  # decoder
  a, b, cc = subscale.slice_offsets(slice_idx, c.stride)
  st, sh, sw = c.stride
  sl = video[:, :, a::st, b::sh, cc::sw]
  emb = sum(sd[f'decoder.ch_embedder.{k}.weight'][sl[:, k]] for k in range(nc))
  y = np.moveaxis(emb, -1, 1)
  w = sd['decoder.conv.conv.weight'].copy()
  w[:, :, -1, -1, 1:] = 0
  y = np.pad(y, ((0, 0), (0, 0), (2, 0), (2, 0), (1, 1)))
  y = np_conv3d(y, w, sd['decoder.conv.conv.bias'])
  y = np_position_encoding(y)
  y = y + np_conv3d(zl, sd['decoder.linear_projector.weight'], None)
  for i in range(c.dec_layers):
    y = np_block_local_attention(sd, f'decoder.block_local_attention.{i}.', y, c.block_shape,
                                 masked=True)
  # channel predictor
  yl = np_layer_norm(np.moveaxis(y, 1, -1), sd['ch_predictor.layer_norm.weight'],
                     sd['ch_predictor.layer_norm.bias'])  # (B, t, h, w, d)
  onehot = (np.moveaxis(sl, 1, -1)[..., None] == np.arange(nv)).astype(np.float64)
  onehot = onehot.reshape(*onehot.shape[:-2], nc * nv)
  out = []
  for k in range(nc):
    inp = yl if k == 0 else np.concatenate([yl, onehot[..., :k * nv]], -1)
    u = relu(inp @ sd[f'ch_predictor.U.{k}.weight'].T + sd[f'ch_predictor.U.{k}.bias'])
    out.append(u @ sd[f'ch_predictor.P.{k}.weight'].T + sd[f'ch_predictor.P.{k}.bias'])
  return np.stack(out, -2)


def f64(sd):
  return {k: (v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v)
          for k, v in sd.items()}


# ---------------------------------------------------------------------------
# Names and shapes
# ---------------------------------------------------------------------------


def test_vqvae_spec_is_the_reference_layout_and_counts():
  mc = bair.get_config().vqvae.model
  enc, dec, cb = reference_vqvae_shapes(256, 128, 2, 4, 512)
  spec = rm.reference_vqvae_spec(mc)
  for part, ref in (('netE', enc), ('netG', dec), ('netC', cb)):
    assert {k: e.shape for k, e in spec[part].items()} == ref, part
  # The specification's parameter counts (BAIR, N = 2).
  assert rm.count_reference_parameters(spec['netE']) == 1_777_024
  assert rm.count_reference_parameters(spec['netG']) == 1_776_771
  assert rm.count_reference_parameters(spec['netC']) == 131_072


@pytest.mark.parametrize('variant,count', [('dsfvt', 49_872_384), ('dstsvt', 59_830_528)])
def test_paper_size_transformer_names_shapes_and_tree(variant, count):
  c = default_transformer_config(variant)
  spec = rm.reference_transformer_spec(c)
  assert rm.count_reference_parameters(spec) == count
  # The independently written layout has exactly the same names and shapes.
  small = tiny_transformer_config(variant + '_tiny')
  ref = reference_transformer_state(small)
  assert {k: tuple(v.shape) for k, v in ref.items()} == {
      k: e.shape for k, e in rm.reference_transformer_spec(small).items()}
  # Converting (zeros, shapes only) gives exactly the model's parameter tree, both scan settings.
  sd = {k: (e.value if e.value is not None else np.zeros(e.shape, np.float32))
        for k, e in spec.items()}
  for scan in (True, False):
    c.scan_layers = scan
    params = rm.transformer_from_reference(sd, c)
    want = nn.meta.unbox(jax.eval_shape(lambda r: init_variables(build_model(c), r),
                                        jax.random.key(0)))['params']
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: tuple(x.shape), want)


# ---------------------------------------------------------------------------
# VQ-VAE numerics
# ---------------------------------------------------------------------------


def _vqvae_setup():
  mc = bair.get_config('tiny').vqvae.model
  e, g, c = random_vqvae_state(mc)
  params, vq = rm.vqvae_from_reference(e, g, c, mc)
  return mc, e, g, c, params, vq


def test_vqvae_layers_match_numpy_reference():
  mc, e, g, _, params, _ = _vqvae_setup()
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 3, 16, 16))
  # Every conv / deconv layer individually (weights in torch layout, numpy NCHW maths).
  from lvt_jax.models.layers import Conv, ConvTranspose
  n = mc.num_res_blocks
  cases = [  # (our layer, its imported params, reference dict, reference name, NCHW input)
      (Conv(mc.hidden, 4, 2, 1), params['encoder']['conv1'], e, 'layers.0', x),
      (Conv(mc.channels, 4, 2, 1), params['encoder']['conv2'], e, 'layers.2',
       rng.standard_normal((2, mc.hidden, 8, 8))),
      (Conv(mc.res_channels, 3, 1, 1), params['encoder']['res0']['conv1'], e,
       'layers.5.block.1', rng.standard_normal((2, mc.channels, 4, 4))),
      (ConvTranspose(mc.hidden, 4, 2, 1), params['decoder']['deconv1'], g, f'layers.{n + 2}',
       rng.standard_normal((2, mc.channels, 4, 4))),
      (ConvTranspose(3, 4, 2, 1), params['decoder']['deconv2'], g, f'layers.{n + 4}',
       rng.standard_normal((2, mc.hidden, 8, 8))),
  ]
  for module, p, sd, name, inp in cases:
    got = module.apply({'params': p}, jnp.asarray(np.moveaxis(inp, 1, -1), jnp.float32))
    w, b = sd[f'{name}.weight'].astype(np.float64), sd[f'{name}.bias']
    k = w.shape[-1]
    if isinstance(module, ConvTranspose):
      want = np_conv_transpose2d(inp, w, b, 2, 1)
    else:
      want = np_conv2d(inp, w, b, 2 if k == 4 else 1, 1)
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, atol=2e-5, rtol=1e-4,
                               err_msg=name)


def _our_encoder_decoder(mc, params, x_nchw, z_nchw):
  kw = dict(hidden=mc.hidden, channels=mc.channels, res_channels=mc.res_channels,
            num_res_blocks=mc.num_res_blocks)
  enc = Encoder(**kw).apply({'params': params['encoder']},
                            jnp.asarray(np.moveaxis(x_nchw, 1, -1), jnp.float32))
  dec = Decoder(**kw).apply({'params': params['decoder']},
                            jnp.asarray(np.moveaxis(z_nchw, 1, -1), jnp.float32))
  return np.moveaxis(np.asarray(enc), -1, 1), np.moveaxis(np.asarray(dec), -1, 1)


def test_vqvae_encoder_decoder_match_the_release_inplace_relu_skip():
  mc, e, g, _, params, _ = _vqvae_setup()
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (2, 3, 16, 16))
  z = rng.standard_normal((2, mc.channels, 4, 4))
  enc, dec = _our_encoder_decoder(mc, params, x, z)
  n = mc.num_res_blocks
  np.testing.assert_allclose(enc, np_reference_encoder(f64(e), x, n, True), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dec, np_reference_decoder(f64(g), z, n, True), atol=1e-4, rtol=1e-4)


def test_vqvae_codebooks_and_ema_buffers_are_imported():
  mc, _, _, c, _, vq = _vqvae_setup()
  q = vq['quantizer']
  for k in range(mc.num_codebooks):
    np.testing.assert_array_equal(q['codebook'][k], c[f've.{k}.embedding.weight'])
    np.testing.assert_array_equal(q['ema_count'][k], c[f've.{k}.running_size'])
    np.testing.assert_array_equal(q['ema_sum'][k], c[f've.{k}.running_sum'])


def test_vqvae_without_ema_buffers_derives_consistent_statistics():
  mc = bair.get_config('tiny').vqvae.model
  e, g, c = random_vqvae_state(mc)
  c = {k: v for k, v in c.items() if '.running_' not in k}
  _, vq = rm.vqvae_from_reference(e, g, c, mc, samples_per_update=4096)
  q = vq['quantizer']
  np.testing.assert_allclose(q['ema_count'].sum(-1), 4096, rtol=1e-6)
  size = rm.smoothed_sizes(q['ema_count'], mc.ema_eps)
  np.testing.assert_allclose(q['ema_sum'] / size[..., None], q['codebook'], rtol=1e-5, atol=1e-7)
  # ... so one EMA update with no assignments leaves the codebook (nearly) unchanged.
  from lvt_jax.models.lvt.quantizer import DecomposedQuantizer
  quant = DecomposedQuantizer(mc.num_codebooks, mc.codebook_size,
                              mc.channels // mc.num_codebooks)
  z = jnp.asarray(q['codebook'][:, :1].reshape(1, -1))  # exactly code 0 of each book
  _, new = quant.apply({'vq': vq['quantizer']}, z, update=True, mutable=['vq'])
  moved = np.abs(np.asarray(new['vq']['codebook']) - q['codebook'])[:, 1:]
  assert moved.max() < 0.02 * np.abs(q['codebook']).max()


# ---------------------------------------------------------------------------
# Transformer numerics
# ---------------------------------------------------------------------------


def test_one_hot_context_conv_equals_embedding_lookup():
  from lvt_jax.models.lvt.context import ContextConv
  for variant in ('dsfvt_tiny', 'dstsvt_tiny'):
    c = tiny_transformer_config(variant)
    sd = reference_transformer_state(c, seed=3)
    params = rm.transformer_from_reference(sd, c)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, c.vocab_size, (2, *c.clip_shape, c.num_codebooks))
    conv = ContextConv(c.emb_dim, c.vocab_size, c.num_codebooks, tuple(c.stride),
                       tuple(c.context_kernel))
    video = np.moveaxis(codes, -1, 1)
    apply = jax.jit(conv.apply)
    for s in range(subscale.num_slices(c.stride)):
      got = apply({'params': params['encoder']['context_conv']}, jnp.asarray(codes),
                  jnp.full((2,), s, jnp.int32))
      ctx = np_context(video, s, c.stride, c.context_kernel)
      want = np_conv3d(np_one_hot_padded(ctx, c.vocab_size),
                       sd['encoder.conv.weight'].astype(np.float64), sd['encoder.conv.bias'],
                       stride=c.stride)
      np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, atol=1e-5,
                                 rtol=1e-5, err_msg=f'{variant} slice {s}')


@pytest.mark.parametrize('masked', [False, True])
def test_per_head_qkv_attention_layer_matches_numpy(masked):
  block = (1, 2, 2)  # several blocks per volume
  c = tiny_transformer_config('dsfvt_tiny', block_shape=block, scan_layers=False)
  sd = reference_transformer_state(c, seed=5)
  params = rm.transformer_from_reference(sd, c)
  part = 'decoder' if masked else 'encoder'
  rng = np.random.default_rng(6)
  x = rng.standard_normal((2, c.d_model, 2, 4, 4))
  layer = attn_lib.BlockLocalAttentionLayer(c.num_heads, c.head_dim, block, masked=masked)
  got = layer.apply({'params': params[part]['attention']['layer_1']},
                    jnp.asarray(np.moveaxis(x, 1, -1), jnp.float32))
  want = np_block_local_attention(f64(sd), f'{part}.block_local_attention.1.', x, block, masked)
  np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('variant,overrides', [
    ('dsfvt_tiny', dict(block_shape=(1, 2, 2), scan_layers=True)),
    ('dstsvt_tiny', dict(scan_layers=False)),
])
def test_whole_transformer_reproduces_numpy_reference_logits(variant, overrides):
  c = tiny_transformer_config(variant, **overrides)
  sd = reference_transformer_state(c, seed=7)
  params = rm.transformer_from_reference(sd, c)
  model = build_model(c)
  rng = np.random.default_rng(8)
  codes = rng.integers(0, c.vocab_size, (2, *c.clip_shape, c.num_codebooks)).astype(np.int32)
  n = subscale.num_slices(c.stride)
  idx = np.array([n - 1, n // 2], np.int32)  # late slices: full context and attention
  got = np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(codes),
                                        jnp.asarray(idx)))
  for b in range(2):
    want = np_reference_transformer(f64(sd), c, codes[b:b + 1], int(idx[b]))[0]
    np.testing.assert_allclose(got[b], want, atol=2e-3, rtol=2e-3, err_msg=f'clip {b}')


def test_class_conditional_transformer_reproduces_numpy_reference_logits():
  """CLASS_NUM > 0: class table and the 2*de-wide projector map onto ours exactly."""
  c = tiny_transformer_config('dsfvt_tiny', num_classes=5, block_shape=(1, 2, 2))
  sd = reference_transformer_state(c, seed=9)
  params = rm.transformer_from_reference(sd, c)
  assert params['encoder']['class_embedding'].shape == (5, c.emb_dim)
  assert params['encoder']['proj'].shape == (2 * c.emb_dim, c.d_model)
  model = build_model(c)
  rng = np.random.default_rng(10)
  codes = rng.integers(0, c.vocab_size, (2, *c.clip_shape, c.num_codebooks)).astype(np.int32)
  idx = np.array([3, 2], np.int32)
  labels = np.array([4, 1], np.int32)
  got = np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(codes),
                                        jnp.asarray(idx), jnp.asarray(labels)))
  for b in range(2):
    want = np_reference_transformer(f64(sd), c, codes[b:b + 1], int(idx[b]),
                                    class_idx=int(labels[b]))[0]
    np.testing.assert_allclose(got[b], want, atol=2e-3, rtol=2e-3, err_msg=f'clip {b}')


def test_masked_conv_layout_and_masked_taps():
  """[d, de, 3, 3, 3] -> [27, de, d] in raster tap order; taps the reference zeroes are zero."""
  from lvt_jax.models.lvt.masked_conv import tap_mask
  c = tiny_transformer_config()
  sd = reference_transformer_state(c)
  w = np.random.default_rng(0).standard_normal(sd['decoder.conv.conv.weight'].shape)
  sd['decoder.conv.conv.weight'] = w.astype(np.float32)  # as if saved before any forward
  kernel = rm.transformer_from_reference(sd, c)['decoder']['masked_conv']['kernel']
  used = tap_mask((3, 3, 3)).reshape(-1)
  for tap in range(27):
    i, j, k = np.unravel_index(tap, (3, 3, 3))
    want = w[:, :, i, j, k].T if used[tap] else 0.0
    np.testing.assert_allclose(kernel[tap], want, rtol=1e-6, err_msg=str(tap))


def test_shared_output_layer_is_copied_per_codebook():
  c = tiny_transformer_config()
  sd = reference_transformer_state(c)
  for k in range(c.num_codebooks):
    del sd[f'ch_predictor.P.{k}.weight'], sd[f'ch_predictor.P.{k}.bias']
  sd['ch_predictor.P.weight'] = np.ones((c.vocab_size, c.d_model), np.float32)
  sd['ch_predictor.P.bias'] = np.arange(c.vocab_size, dtype=np.float32)
  params = rm.transformer_from_reference(sd, c)
  for k in range(c.num_codebooks):
    head = params['channel_predictor'][f'codebook_{k}']
    np.testing.assert_array_equal(head['out_kernel'], sd['ch_predictor.P.weight'].T)
    np.testing.assert_array_equal(head['out_bias'], sd['ch_predictor.P.bias'])


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


def test_transformer_refuses_missing_unexpected_misshaped_and_wrong_buffers():
  c = tiny_transformer_config()
  sd = reference_transformer_state(c)
  del sd['decoder.block_local_attention.1.mha.w_k']
  del sd['ch_predictor.U.2.bias']
  sd['encoder.class_embedding.weight'] = np.zeros((3, c.emb_dim), np.float32)
  sd['encoder.conv.weight'] = np.zeros((c.emb_dim, 7, 7, 1, 1), np.float32)
  sd['decoder.block_local_attention.0.dh'] = sd['decoder.block_local_attention.0.dh'][::-1]
  with pytest.raises(ReferenceImportError) as err:
    rm.transformer_from_reference(sd, c)
  msg = str(err.value)
  assert 'decoder.block_local_attention.1.mha.w_k' in msg
  assert 'ch_predictor.U.2.bias' in msg
  assert 'encoder.class_embedding.weight' in msg and 'class-conditional' in msg
  assert f'encoder.conv.weight: expected ({c.emb_dim}, 64, 7, 1, 1), got ({c.emb_dim}, 7, 7, 1, 1)' \
      in msg
  assert 'decoder.block_local_attention.0.dh:' in msg
  e = err.value
  assert [n for n, _ in e.missing] == ['decoder.block_local_attention.1.mha.w_k',
                                       'ch_predictor.U.2.bias']
  assert [n for n, _ in e.unexpected] == ['encoder.class_embedding.weight']
  assert len(e.mismatched) == 1 and len(e.invalid) == 1


def test_transformer_buffers_required_unless_allowed():
  c = tiny_transformer_config(scan_layers=False)
  sd = reference_transformer_state(c)
  sd = {k: v for k, v in sd.items() if not k.endswith(('.dt', '.dh', '.dw', '.mask',
                                                       'inv_timescales'))}
  with pytest.raises(ReferenceImportError, match=r'encoder\.block_local_attention\.0\.dt'):
    rm.transformer_from_reference(sd, c)
  params = rm.transformer_from_reference(sd, c, allow_missing_buffers=True)
  assert 'layer_1' in params['decoder']['attention']


def test_transformer_of_another_config_is_refused_with_shapes():
  sd = reference_transformer_state(tiny_transformer_config('dstsvt_tiny'))
  with pytest.raises(ReferenceImportError) as err:
    rm.transformer_from_reference(sd, tiny_transformer_config('dsfvt_tiny'))
  assert 'encoder.block_local_attention.0.dt_bank: expected (2, 1), got (2, 3)' in str(err.value)
  # the notes say which structure the checkpoint was built with
  assert ('built with context kernel (5, 3, 3) and attention blocks (2, 2, 2); this config '
          'has (7, 1, 1) and (1, 4, 4)') in str(err.value)


@pytest.mark.parametrize('checkpoint,config,hint', [
    ('dstsvt', '', 'configs/bair.py:dstsvt'), ('dsfvt', 'dstsvt', 'configs/bair.py (the default)')])
def test_paper_size_checkpoint_of_the_other_structure_names_its_config(checkpoint, config, hint):
  """A released DSTSVT checkpoint imported with the default (DSFVT) config, and back."""
  spec = rm.reference_transformer_spec(default_transformer_config(checkpoint))
  # shapes only: read-only zero views cost no memory
  sd = {k: (e.value if e.value is not None else np.broadcast_to(np.float32(0), e.shape))
        for k, e in spec.items()}
  with pytest.raises(ReferenceImportError) as err:
    rm.transformer_from_reference(sd, bair.get_config(config).transformer.model)
  assert f"the shapes fit the release's {checkpoint.upper()}" in str(err.value)
  assert f'import it with --config={hint}' in str(err.value)


def test_vqvae_refuses_missing_unexpected_misshaped_across_parts():
  mc = bair.get_config('tiny').vqvae.model
  e, g, c = random_vqvae_state(mc)
  del e['layers.4.bias']
  g['layers.9.weight'] = np.zeros((3,), np.float32)
  c['ve.1.embedding.weight'] = np.zeros((7, 8), np.float32)
  del c['ve.2.running_sum']
  with pytest.raises(ReferenceImportError) as err:
    rm.vqvae_from_reference(e, g, c, mc)
  msg = str(err.value)
  assert 'netE: layers.4.bias  expected shape (32,)' in msg
  assert 'netG: layers.9.weight  shape (3,)' in msg
  assert 'netC: ve.1.embedding.weight: expected (32, 8), got (7, 8)' in msg
  assert 'netC: ve.2.running_sum' in msg


def test_vqvae_refuses_normalisation_layers():
  mc = bair.get_config('tiny').vqvae.model
  e, g, c = random_vqvae_state(mc)
  e['layers.0.1.weight'] = np.ones((mc.hidden,), np.float32)  # Sequential(conv, BatchNorm)
  with pytest.raises(ReferenceImportError, match='normalisation layers'):
    rm.vqvae_from_reference(e, g, c, mc)


# ---------------------------------------------------------------------------
# CLI and checkpoint round trip
# ---------------------------------------------------------------------------


def _write_npz(path, sd, iteration=None):
  extra = {} if iteration is None else {'iteration': np.asarray(iteration)}
  np.savez(path, **sd, **extra)
  return str(path)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'lvt_jax.tools.import_reference', *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _restore_vqvae(cfg, workdir):
  from lvt_jax import trainer
  from lvt_jax.stages.vqvae import VQVAEStage
  from tests.helpers import mesh_of
  return trainer.restore_state(VQVAEStage(cfg), mesh_of(8), str(workdir))


def test_cli_writes_a_vqvae_checkpoint_the_trainer_restores(tmp_path):
  cfg = bair.get_config('tiny')
  mc = cfg.vqvae.model
  e, g, c = random_vqvae_state(mc)
  files = ','.join(_write_npz(tmp_path / f'{n}.npz', sd, 49_999)
                   for n, sd in (('netE', e), ('netG', g), ('netC', c)))
  workdir = tmp_path / 'work'
  args = ['--config=configs/bair.py:tiny', f'--workdir={workdir}', f'--vqvae={files}']
  out = _cli(*args)
  assert out.returncode == 0, out.stderr
  assert (workdir / 'vqvae' / 'checkpoints' / '50000').is_dir()

  state, step = _restore_vqvae(cfg, workdir)
  params, vq = rm.vqvae_from_reference(e, g, c, mc)
  assert step == 50_000 and int(state.step) == 50_000
  for got, want in ((state.params, params), (state.extra['vq'], vq)):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, want)
  assert int(state.opt_state[0].count) == 0
  # The data item is an iterator state the trainer's resume accepts.
  import orbax.checkpoint as ocp
  from lvt_jax.checkpoint import Checkpointer
  ckpt = Checkpointer(str(workdir / 'vqvae' / 'checkpoints'), keep=3, async_save=False)
  data = ckpt.manager.restore(50_000, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
  ckpt.close()
  assert dict(data['data']) == {'step': 50_000}
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state[0].mu))

  # An existing checkpoint is never replaced silently (same code path as the CLI) ...
  with pytest.raises(tool.ImportToolError, match='--overwrite'):
    tool.import_checkpoints(cfg, str(workdir), vqvae=files)
  # ... but is with --overwrite (here with an explicit step).
  tool.import_checkpoints(cfg, str(workdir), vqvae=files, overwrite=True, vqvae_step=7)
  assert sorted(os.listdir(workdir / 'vqvae' / 'checkpoints')) == ['7']


def test_cli_reports_refused_tensors(tmp_path):
  mc = bair.get_config('tiny').vqvae.model
  e, g, c = random_vqvae_state(mc)
  del g['layers.0.bias']
  combined = {f'netE.{k}': v for k, v in e.items()}
  combined.update({f'netG.{k}': v for k, v in g.items()})
  combined.update({f'netC.{k}': v for k, v in c.items()})
  f = _write_npz(tmp_path / 'vqvae.npz', combined)
  out = _cli('--config=configs/bair.py:tiny', f'--workdir={tmp_path / "w"}', f'--vqvae={f}')
  assert out.returncode == 2
  assert 'netG: layers.0.bias' in out.stderr and 'missing tensors (1)' in out.stderr
  assert not (tmp_path / 'w' / 'vqvae' / 'checkpoints').exists()


def test_reference_output_dir_layout_in_process(tmp_path):
  """OUTPUT_DIR/netE|netG|netC with fvcore's last_checkpoint marker; no iteration -> step 0."""
  cfg = bair.get_config('tiny')
  e, g, c = random_vqvae_state(cfg.vqvae.model, seed=9)
  for name, sd in (('netE', e), ('netG', g), ('netC', c)):
    os.makedirs(tmp_path / 'run' / name)
    _write_npz(tmp_path / 'run' / name / 'model_0000009.npz', sd)
    _write_npz(tmp_path / 'run' / name / 'model_0000004.npz', {})
    (tmp_path / 'run' / name / 'last_checkpoint').write_text('model_0000009.npz')
  written = tool.import_checkpoints(cfg, str(tmp_path / 'w'), vqvae=str(tmp_path / 'run'))
  assert written['vqvae'].endswith(os.path.join('vqvae', 'checkpoints', '0'))
  state, step = _restore_vqvae(cfg, tmp_path / 'w')
  np.testing.assert_array_equal(np.asarray(state.params['encoder']['conv1']['kernel']),
                                e['layers.0.weight'].transpose(2, 3, 1, 0))


def test_torch_checkpoint_files(tmp_path):
  """fvcore-style .pth files ({'model': state_dict, 'iteration': i}) read with torch."""
  torch = pytest.importorskip('torch')
  cfg = bair.get_config('tiny')
  mc = cfg.vqvae.model
  # The reference modules' own state dicts: nn.Sequential indices give the names.
  nf, res, n = mc.channels, mc.res_channels, mc.num_res_blocks

  class ResBlock(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.block = torch.nn.Sequential(torch.nn.ReLU(True), torch.nn.Conv2d(nf, res, 3, 1, 1),
                                       torch.nn.ReLU(True), torch.nn.Conv2d(res, nf, 1))

    def forward(self, x):
      return x + self.block(x)

  class Net(torch.nn.Module):
    def __init__(self, layers):
      super().__init__()
      self.layers = torch.nn.Sequential(*layers)

    def forward(self, x):
      return self.layers(x)

  relu_ = lambda: torch.nn.ReLU(True)  # noqa: E731
  enc = Net([torch.nn.Conv2d(3, nf // 2, 4, 2, 1), relu_(), torch.nn.Conv2d(nf // 2, nf, 4, 2, 1),
             relu_(), torch.nn.Conv2d(nf, nf, 3, 1, 1)] + [ResBlock() for _ in range(n)])
  dec = Net([torch.nn.Conv2d(nf, nf, 3, 1, 1)] + [ResBlock() for _ in range(n)] +
            [relu_(), torch.nn.ConvTranspose2d(nf, nf // 2, 4, 2, 1), relu_(),
             torch.nn.ConvTranspose2d(nf // 2, 3, 4, 2, 1), torch.nn.Tanh()])
  _, _, c = random_vqvae_state(mc)
  netc = {k: torch.from_numpy(v) for k, v in c.items()}
  for name, sd in (('netE', enc.state_dict()), ('netG', dec.state_dict()), ('netC', netc)):
    torch.save({'model': sd, 'iteration': 99}, tmp_path / f'{name}.pth')
  written = tool.import_checkpoints(
      cfg, str(tmp_path / 'w'),
      vqvae=','.join(str(tmp_path / f'{n}.pth') for n in ('netE', 'netG', 'netC')))
  assert written['vqvae'].endswith('100')
  state, _ = _restore_vqvae(cfg, tmp_path / 'w')
  # The numpy reference used above agrees with torch itself (in-place ReLU skip included).
  x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    want = enc(torch.from_numpy(x)).numpy()
  e = {k: v.numpy().astype(np.float64) for k, v in enc.state_dict().items()}
  np.testing.assert_allclose(np_reference_encoder(e, x, n, inplace_skip=True), want, atol=1e-5)
  assert np.asarray(state.params['decoder']['deconv2']['kernel']).shape == (4, 4, 3, nf // 2)


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  (tmp_path / 'x.pth').write_bytes(b'')
  with pytest.raises(tool.ImportToolError, match='pip install torch'):
    tool.read_state_dict(str(tmp_path / 'x.pth'))


def test_transformer_checkpoint_round_trip(tmp_path):
  pytest.importorskip('lvt_jax.stages.transformer')
  cfg = bair.get_config('tiny')
  if 'transformer' not in cfg:
    pytest.skip('the config has no transformer section yet')
  cfg.transformer.model = tiny_transformer_config()
  sd = reference_transformer_state(cfg.transformer.model)
  f = _write_npz(tmp_path / 'vt.npz', sd, 599_999)
  tool.import_checkpoints(cfg, str(tmp_path / 'w'), transformer=f)
  from lvt_jax import trainer
  from lvt_jax.stages.transformer import TransformerStage
  from tests.helpers import mesh_of
  state, step = trainer.restore_state(TransformerStage(cfg), mesh_of(8), str(tmp_path / 'w'))
  assert step == 600_000
  want = rm.transformer_from_reference(sd, cfg.transformer.model)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params, want)
