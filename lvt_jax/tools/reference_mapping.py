"""Tensor-by-tensor mapping of the reference release's state dicts onto our parameters.

The reference PyTorch release (``rakhimovv/lvt``, package ``vidgen``) saves

* the frame VQ-VAE as three state dicts: ``netE`` (``ResEncoder``), ``netG``
  (``ResDecoder``) and ``netC`` (``DVQEmbedding``);
* the latent Video Transformer as one state dict (``VideoTransformer``, saved
  from ``netG/`` of the transformer run).

Everything here is pure numpy: dicts of arrays in, a parameter tree out. Each
function first builds the *exact* set of tensor names and shapes the release
produces for the given config and validates the input against it: every
missing, unexpected, mis-shaped (or, for constant buffers, mis-valued) tensor
is collected and reported together in one :class:`ReferenceImportError`.

Reference names (``N`` residual blocks; ``L`` attention layers; ``i`` a layer,
``k`` a codebook)::

  netE  layers.0.{weight,bias}            conv 4x4/2, 3 -> hidden     [out, in, kh, kw]
        layers.2.{weight,bias}            conv 4x4/2, hidden -> C
        layers.4.{weight,bias}            conv 3x3, C -> C
        layers.{5+j}.block.{1,3}.{weight,bias}   residual block j: conv3x3 C->R, conv1x1 R->C
  netG  layers.0.{weight,bias}            conv 3x3, C -> C
        layers.{1+j}.block.{1,3}.{weight,bias}
        layers.{N+2}.{weight,bias}        ConvTranspose 4x4/2, C -> hidden   [in, out, kh, kw]
        layers.{N+4}.{weight,bias}        ConvTranspose 4x4/2, hidden -> 3
  netC  ve.{k}.embedding.weight [K, C/nc]; EMA buffers ve.{k}.running_size [K],
        ve.{k}.running_sum [K, C/nc]

  transformer
    encoder.conv.{weight [de, nc*nv, kt, kh, kw], bias [de]}   one-hot context conv
    encoder.slice_embedding.weight [S, de]
    encoder.linear_projector.weight [d, de, 1, 1, 1]   ([d, 2*de, 1, 1, 1] and
    encoder.class_embedding.weight [C, de] when class-conditional, num_classes = C)
    encoder.positional_encoder.inv_timescales [de // 6]        (buffer; unused by the release)
    {encoder,decoder}.block_local_attention.{i}.
        mha.w_{q,k,v} [heads, d, da]; mha.proj.weight [d, heads*da];
        mha.layer_norm.{weight,bias} [d]; ffn.0.{weight,bias} [d] (LayerNorm);
        ffn.{1,3}.weight [d, d], ffn.{1,3}.bias [d];
        {dt,dh,dw}_bank [heads, 2*extent-1];
        buffers {dt,dh,dw} [L*L] (int64 bank indices), decoder only: mask [1, 1, L, L]
    decoder.ch_embedder.{k}.weight [nv, de]
    decoder.conv.conv.{weight [d, de, 3, 3, 3], bias [d]}      masked conv
    decoder.positional_encoder.inv_timescales [d // 6]         (buffer)
    decoder.linear_projector.weight [d, d, 1, 1, 1]
    ch_predictor.layer_norm.{weight,bias} [d]
    ch_predictor.U.{k}.{weight [d, d + k*nv], bias [d]}
    ch_predictor.P.{k}.{weight [nv, d], bias [nv]}   (SHARE_P: False, as in every released
                                                      config; a shared ch_predictor.P is
                                                      also accepted and copied per codebook)

Buffers. The constant buffers (attention bank indices, causal masks, positional
inverse timescales) are not parameters here -- our model recomputes them -- but
they are part of the reference layout, so by default they must be present, have
the right shape *and* equal what our model computes (a different value would
mean the checkpoint encodes a model we do not implement).
``allow_missing_buffers=True`` accepts state dicts saved without them (values
are still checked when present). The VQ-VAE EMA buffers are state, not
constants: they are imported (see :func:`vqvae_from_reference`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

PARAM = 'parameter'
EMA = 'EMA buffer'
CONST = 'constant buffer'

# The reference's EMA constants (vidgen.modeling.vq.vq_embedding.VQEmbedding).
REF_EMA_DECAY = 0.99
REF_EMA_EPS = 1e-5
# Frames x latent positions per EMA update in the reference (batch 32, 16 x 16 grid).
REF_SAMPLES_PER_UPDATE = 32 * 16 * 16


@dataclasses.dataclass(frozen=True)
class Expected:
  """One tensor of the reference layout."""
  shape: Tuple[int, ...]
  kind: str = PARAM
  value: Any = None  # constant buffers: the value our model computes itself


Spec = Dict[str, Expected]


def _fmt(shape) -> str:
  return '(' + ', '.join(str(int(s)) for s in shape) + (',)' if len(shape) == 1 else ')')


class ReferenceImportError(ValueError):
  """The given state dict(s) do not match the reference layout for this config.

  Attributes list every problem: ``missing`` [(name, expected_shape)],
  ``unexpected`` [(name, shape)], ``mismatched`` [(name, expected, got)],
  ``invalid`` [(name, reason)].
  """

  def __init__(self, what: str, *, missing=(), unexpected=(), mismatched=(), invalid=(),
               notes=()):
    self.what = what
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    self.invalid = list(invalid)
    self.notes = list(notes)
    super().__init__(self._message())

  def _message(self) -> str:
    lines = [f'cannot import {self.what}: it does not match the reference release\'s layout '
             f'for this config.']
    if self.missing:
      lines.append(f'  missing tensors ({len(self.missing)}):')
      lines += [f'    {n}  expected shape {_fmt(s)}' for n, s in self.missing]
    if self.unexpected:
      lines.append(f'  unexpected tensors ({len(self.unexpected)}):')
      lines += [f'    {n}  shape {_fmt(s)}' for n, s in self.unexpected]
    if self.mismatched:
      lines.append(f'  tensors with the wrong shape ({len(self.mismatched)}):')
      lines += [f'    {n}: expected {_fmt(e)}, got {_fmt(g)}' for n, e, g in self.mismatched]
    if self.invalid:
      lines.append(f'  tensors with invalid values ({len(self.invalid)}):')
      lines += [f'    {n}: {r}' for n, r in self.invalid]
    if self.notes:
      lines.append('  notes:')
      lines += [f'    {n}' for n in self.notes]
    lines.append('  (check that --config describes the model the checkpoint was trained with)')
    return '\n'.join(lines)


class _Problems:
  """Collects problems over several state dicts, then raises once."""

  def __init__(self, what: str):
    self.what = what
    self.missing: List = []
    self.unexpected: List = []
    self.mismatched: List = []
    self.invalid: List = []
    self.notes: List[str] = []

  def check(self, sd: Mapping[str, np.ndarray], spec: Spec, prefix: str = '', *,
            allow_missing_buffers: bool = False) -> None:
    for name, e in spec.items():
      if name not in sd:
        if not (allow_missing_buffers and e.kind == CONST):
          self.missing.append((prefix + name, e.shape))
        continue
      got = tuple(np.shape(sd[name]))
      if got != tuple(e.shape):
        self.mismatched.append((prefix + name, e.shape, got))
        continue
      x = np.asarray(sd[name])
      if e.kind == CONST and e.value is not None:
        want = np.asarray(e.value)
        ok = (np.array_equal(x, want) if np.issubdtype(want.dtype, np.integer)
              else np.allclose(x.astype(np.float64), want, rtol=1e-5, atol=1e-7))
        if not ok:
          self.invalid.append((prefix + name,
                               'differs from the value this model computes (the checkpoint '
                               'encodes a different attention block / mask / encoding)'))
      elif np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        self.invalid.append((prefix + name, 'contains NaN or Inf'))
    for name in sd:
      if name not in spec:
        self.unexpected.append((prefix + name, tuple(np.shape(sd[name]))))

  def note(self, text: str) -> None:
    if text not in self.notes:
      self.notes.append(text)

  def raise_if_any(self) -> None:
    if self.missing or self.unexpected or self.mismatched or self.invalid:
      raise ReferenceImportError(self.what, missing=self.missing, unexpected=self.unexpected,
                                 mismatched=self.mismatched, invalid=self.invalid,
                                 notes=self.notes)


def as_numpy_dict(sd: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """``{name: array}`` from numpy arrays (or anything ``np.asarray`` takes)."""
  out = {}
  for k, v in sd.items():
    if not isinstance(k, str):
      raise TypeError(f'state dict keys must be strings, got {k!r}')
    out[k] = np.asarray(v)
  return out


def _f32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


# ---------------------------------------------------------------------------
# Layout converters (reference layout -> ours)
# ---------------------------------------------------------------------------


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight ``[out, in, kh, kw]`` -> our ``(kh, kw, in, out)``."""
  return _f32(np.transpose(w, (2, 3, 1, 0)))


def conv_transpose2d_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight ``[in, out, kh, kw]`` -> our ``(kh, kw, out, in)`` (no flip)."""
  return _f32(np.transpose(w, (2, 3, 1, 0)))


def conv3d_taps(w: np.ndarray) -> np.ndarray:
  """torch Conv3d weight ``[out, in, kt, kh, kw]`` -> ``[kt*kh*kw, in, out]`` (raster tap order)."""
  o, i, kt, kh, kw = w.shape
  return _f32(np.transpose(w, (2, 3, 4, 1, 0)).reshape(kt * kh * kw, i, o))


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight ``[out, in]`` -> our ``[in, out]``."""
  return _f32(np.transpose(w))


def pointwise_conv3d_kernel(w: np.ndarray) -> np.ndarray:
  """torch 1x1x1 Conv3d weight ``[out, in, 1, 1, 1]`` -> ``[in, out]``."""
  return _f32(np.transpose(w[:, :, 0, 0, 0]))


# ---------------------------------------------------------------------------
# Stage 1: frame VQ-VAE
# ---------------------------------------------------------------------------


def reference_vqvae_spec(model_cfg, *, ema: bool = True) -> Dict[str, Spec]:
  """``{'netE': spec, 'netG': spec, 'netC': spec}`` of the reference ``ResEncoder`` /
  ``ResDecoder`` / ``DVQEmbedding`` (NORM "", no spectral norm) for our ``vqvae.model``."""
  h, c, r, n = (int(model_cfg.hidden), int(model_cfg.channels), int(model_cfg.res_channels),
                int(model_cfg.num_res_blocks))
  nc, kk = int(model_cfg.num_codebooks), int(model_cfg.codebook_size)
  if c % nc:
    raise ValueError(f'vqvae.channels={c} is not divisible by num_codebooks={nc}')
  dk = c // nc

  def conv(spec, name, o, i, k):
    spec[f'{name}.weight'] = Expected((o, i, k, k))
    spec[f'{name}.bias'] = Expected((o,))

  def res(spec, name):
    conv(spec, f'{name}.block.1', r, c, 3)
    conv(spec, f'{name}.block.3', c, r, 1)

  net_e: Spec = {}
  conv(net_e, 'layers.0', h, 3, 4)
  conv(net_e, 'layers.2', c, h, 4)
  conv(net_e, 'layers.4', c, c, 3)
  for j in range(n):
    res(net_e, f'layers.{5 + j}')

  net_g: Spec = {}
  conv(net_g, 'layers.0', c, c, 3)
  for j in range(n):
    res(net_g, f'layers.{1 + j}')
  net_g[f'layers.{n + 2}.weight'] = Expected((c, h, 4, 4))  # ConvTranspose: [in, out, kh, kw]
  net_g[f'layers.{n + 2}.bias'] = Expected((h,))
  net_g[f'layers.{n + 4}.weight'] = Expected((h, 3, 4, 4))
  net_g[f'layers.{n + 4}.bias'] = Expected((3,))

  net_c: Spec = {}
  for k in range(nc):
    net_c[f've.{k}.embedding.weight'] = Expected((kk, dk))
    if ema:
      net_c[f've.{k}.running_size'] = Expected((kk,), EMA)
      net_c[f've.{k}.running_sum'] = Expected((kk, dk), EMA)
  return {'netE': net_e, 'netG': net_g, 'netC': net_c}


def _vqvae_notes(problems: _Problems, parts: Mapping[str, Mapping[str, Any]]) -> None:
  for part, sd in parts.items():
    for name in sd:
      if part in ('netE', 'netG') and re.match(r'^layers\.\d+\.(\d+\.)+(weight|bias|running_)',
                                               name):
        problems.note(f'{part} has normalisation layers (ENCODER/GENERATOR.NORM != ""): not '
                      'supported; the released PR-DVQVAE2 / K-DVQVAE configs use NORM "".')
      if name.endswith(('weight_orig', 'weight_u', 'weight_v')):
        problems.note(f'{part} uses spectral norm: not supported.')


def vqvae_from_reference(netE: Mapping[str, Any], netG: Mapping[str, Any],
                         netC: Mapping[str, Any], model_cfg, *,
                         samples_per_update: float | None = None):
  """Reference VQ-VAE state dicts -> ``(params, vq_vars)`` for :class:`lvt_jax.models.lvt.vqvae.VQVAE`.

  ``params`` is ``{'encoder': ..., 'decoder': ...}``; ``vq_vars`` is the ``'vq'``
  collection ``{'quantizer': {'codebook', 'ema_count', 'ema_sum'}}``.

  EMA statistics. Our quantiser and the reference's ``VQEmbedding`` run the
  same update (decay 0.99, eps 1e-5, Laplace-smoothed sizes, codebook =
  ema_sum / size), with ``running_size`` <-> ``ema_count`` and
  ``running_sum`` <-> ``ema_sum``. So when ``netC`` holds the EMA buffers
  (``MODEL.CODEBOOK.EMA: True``, as in every released config) they are
  imported unchanged and further training continues exactly where the
  reference stopped. A ``netC`` without any EMA buffer (a gradient-trained
  codebook, ``EMA: False``) is accepted too; the statistics are then derived
  as a steady state with uniform code usage: ``ema_count = N / K`` per code
  (``N = samples_per_update``, default 32 * 16 * 16, the reference's latent
  vectors per update) and ``ema_sum = codebook * size(ema_count)``, so that
  ``ema_sum / size == codebook`` and the first updates move the codebook at
  the normal EMA rate instead of jumping. A netC with only some EMA buffers is
  refused (they are listed as missing).
  """
  parts = {'netE': as_numpy_dict(netE), 'netG': as_numpy_dict(netG),
           'netC': as_numpy_dict(netC)}
  has_ema = any('.running_' in k for k in parts['netC'])
  spec = reference_vqvae_spec(model_cfg, ema=has_ema)
  problems = _Problems('the reference VQ-VAE (netE / netG / netC)')
  for part in ('netE', 'netG', 'netC'):
    problems.check(parts[part], spec[part], prefix=f'{part}: ')
  _vqvae_notes(problems, parts)
  problems.raise_if_any()

  e, g, cb = parts['netE'], parts['netG'], parts['netC']
  n = int(model_cfg.num_res_blocks)

  def conv(sd, name):
    return {'kernel': conv2d_kernel(sd[f'{name}.weight']), 'bias': _f32(sd[f'{name}.bias'])}

  def deconv(sd, name):
    return {'kernel': conv_transpose2d_kernel(sd[f'{name}.weight']),
            'bias': _f32(sd[f'{name}.bias'])}

  def res(sd, name):
    return {'conv1': conv(sd, f'{name}.block.1'), 'conv2': conv(sd, f'{name}.block.3')}

  encoder = {'conv1': conv(e, 'layers.0'), 'conv2': conv(e, 'layers.2'),
             'conv3': conv(e, 'layers.4')}
  for j in range(n):
    encoder[f'res{j}'] = res(e, f'layers.{5 + j}')
  decoder = {'conv1': conv(g, 'layers.0')}
  for j in range(n):
    decoder[f'res{j}'] = res(g, f'layers.{1 + j}')
  decoder['deconv1'] = deconv(g, f'layers.{n + 2}')
  decoder['deconv2'] = deconv(g, f'layers.{n + 4}')
  params = {'encoder': encoder, 'decoder': decoder}

  nc, kk = int(model_cfg.num_codebooks), int(model_cfg.codebook_size)
  eps = float(model_cfg.get('ema_eps', REF_EMA_EPS)) if hasattr(model_cfg, 'get') else REF_EMA_EPS
  decay = float(model_cfg.get('ema_decay', REF_EMA_DECAY)) if hasattr(model_cfg, 'get') \
      else REF_EMA_DECAY
  if decay != REF_EMA_DECAY or eps != REF_EMA_EPS:
    log.warning('vqvae.model uses ema_decay=%g, ema_eps=%g; the reference trained with %g, %g.',
                decay, eps, REF_EMA_DECAY, REF_EMA_EPS)
  codebook = np.stack([_f32(cb[f've.{k}.embedding.weight']) for k in range(nc)])
  if has_ema:
    ema_count = np.stack([_f32(cb[f've.{k}.running_size']) for k in range(nc)])
    ema_sum = np.stack([_f32(cb[f've.{k}.running_sum']) for k in range(nc)])
    _check_ema_consistency(codebook, ema_count, ema_sum, eps)
  else:
    total = float(samples_per_update or REF_SAMPLES_PER_UPDATE)
    log.info('netC has no EMA buffers (a gradient-trained codebook): deriving steady-state EMA '
             'statistics with %g vectors per update spread uniformly over the codes.', total)
    ema_count = np.full((nc, kk), total / kk, np.float64)
    ema_sum = codebook.astype(np.float64) * smoothed_sizes(ema_count, eps)[..., None]
    ema_count, ema_sum = _f32(ema_count), _f32(ema_sum)
  vq_vars = {'quantizer': {'codebook': codebook, 'ema_count': ema_count, 'ema_sum': ema_sum}}
  return params, vq_vars


def smoothed_sizes(ema_count: np.ndarray, eps: float = REF_EMA_EPS) -> np.ndarray:
  """Laplace-smoothed cluster sizes ``(n_k + eps) / (n + K eps) * n`` per codebook."""
  c = np.asarray(ema_count, np.float64)
  total = c.sum(-1, keepdims=True)
  return (c + eps) / (total + c.shape[-1] * eps) * total


def _check_ema_consistency(codebook, ema_count, ema_sum, eps) -> None:
  size = smoothed_sizes(ema_count, eps)
  for k in range(codebook.shape[0]):
    if ema_count[k].sum() <= 0:
      continue  # never updated: the reference starts with running_sum = weight, as we do
    implied = ema_sum[k].astype(np.float64) / np.maximum(size[k], 1e-30)[:, None]
    err = float(np.max(np.abs(implied - codebook[k])))
    scale = float(np.max(np.abs(codebook[k]))) or 1.0
    if err > 1e-3 * scale + 1e-6:
      log.warning('codebook %d differs from running_sum / size by up to %.3g (codebook scale '
                  '%.3g); imported as stored, the next EMA update recomputes it from the '
                  'statistics.', k, err, scale)


# ---------------------------------------------------------------------------
# Stage 2: latent Video Transformer
# ---------------------------------------------------------------------------


def _inv_timescales(d: int, min_ts: float, max_ts: float) -> np.ndarray:
  n = d // 6
  log_inc = np.log(max_ts / min_ts) / n
  return (min_ts * np.exp(np.arange(n, dtype=np.float32) * np.float32(-log_inc))).astype(
      np.float32)


def _relative_index_buffers(block: Sequence[int]) -> Tuple[np.ndarray, ...]:
  """The reference's ``dt``/``dh``/``dw`` buffers: ``[L*L]`` indices ``p_q - p_k + extent - 1``."""
  from lvt_jax.models.lvt.attention import relative_indices
  return tuple(np.asarray(i, np.int64).reshape(-1) for i in relative_indices(tuple(block)))


def _attention_spec(spec: Spec, prefix: str, cfg, masked: bool) -> None:
  d, da, nh = int(cfg.d_model), int(cfg.head_dim), int(cfg.num_heads)
  block = tuple(int(b) for b in cfg.block_shape)
  n_layers = int(cfg.enc_layers if prefix == 'encoder' else cfg.dec_layers)
  length = int(np.prod(block))
  idx = _relative_index_buffers(block)
  for i in range(n_layers):
    p = f'{prefix}.block_local_attention.{i}.'
    for w in ('w_q', 'w_k', 'w_v'):
      spec[p + f'mha.{w}'] = Expected((nh, d, da))
    spec[p + 'mha.layer_norm.weight'] = Expected((d,))
    spec[p + 'mha.layer_norm.bias'] = Expected((d,))
    spec[p + 'mha.proj.weight'] = Expected((d, nh * da))
    spec[p + 'ffn.0.weight'] = Expected((d,))
    spec[p + 'ffn.0.bias'] = Expected((d,))
    spec[p + 'ffn.1.weight'] = Expected((d, d))
    spec[p + 'ffn.1.bias'] = Expected((d,))
    spec[p + 'ffn.3.weight'] = Expected((d, d))
    spec[p + 'ffn.3.bias'] = Expected((d,))
    for ax, n in zip('thw', block):
      spec[p + f'd{ax}_bank'] = Expected((nh, 2 * n - 1))
    for ax, v in zip('thw', idx):
      spec[p + f'd{ax}'] = Expected((length * length,), CONST, v)
    if masked:
      mask = np.triu(np.ones((length, length), np.float32), k=1)[None, None]
      spec[p + 'mask'] = Expected((1, 1, length, length), CONST, mask)


def reference_transformer_spec(model_cfg, *, shared_output: bool = False) -> Spec:
  """Names and shapes of the reference ``VideoTransformer`` state dict for our config.

  ``shared_output``: the reference's ``SHARE_P: True`` layout (one output layer
  ``ch_predictor.P`` for all codebooks) instead of the released per-codebook one.
  """
  c = model_cfg
  nc, nv, d, de = int(c.num_codebooks), int(c.vocab_size), int(c.d_model), int(c.emb_dim)
  kt, kh, kw = (int(k) for k in c.context_kernel)
  st, sh, sw = (int(s) for s in c.stride)
  dk = tuple(int(k) for k in c.decoder_kernel)
  min_ts = float(c.get('pe_min_timescale', 1.0))
  max_ts = float(c.get('pe_max_timescale', 1.0e4))
  spec: Spec = {}
  spec['encoder.conv.weight'] = Expected((de, nc * nv, kt, kh, kw))
  spec['encoder.conv.bias'] = Expected((de,))
  spec['encoder.positional_encoder.inv_timescales'] = Expected(
      (de // 6,), CONST, _inv_timescales(de, min_ts, max_ts))
  _attention_spec(spec, 'encoder', c, masked=False)
  spec['encoder.slice_embedding.weight'] = Expected((st * sh * sw, de))
  classes = int(c.get('num_classes', 0))
  if classes > 0:  # VTEncoder(class_num > 0): class table + projector over 2*de channels
    spec['encoder.class_embedding.weight'] = Expected((classes, de))
  spec['encoder.linear_projector.weight'] = Expected((d, 2 * de if classes > 0 else de, 1, 1, 1))

  for k in range(nc):
    spec[f'decoder.ch_embedder.{k}.weight'] = Expected((nv, de))
  spec['decoder.conv.conv.weight'] = Expected((d, de) + dk)
  spec['decoder.conv.conv.bias'] = Expected((d,))
  spec['decoder.positional_encoder.inv_timescales'] = Expected(
      (d // 6,), CONST, _inv_timescales(d, min_ts, max_ts))
  spec['decoder.linear_projector.weight'] = Expected((d, d, 1, 1, 1))
  _attention_spec(spec, 'decoder', c, masked=True)

  spec['ch_predictor.layer_norm.weight'] = Expected((d,))
  spec['ch_predictor.layer_norm.bias'] = Expected((d,))
  for k in range(nc):
    spec[f'ch_predictor.U.{k}.weight'] = Expected((d, d + k * nv))
    spec[f'ch_predictor.U.{k}.bias'] = Expected((d,))
  if shared_output:
    spec['ch_predictor.P.weight'] = Expected((nv, d))
    spec['ch_predictor.P.bias'] = Expected((nv,))
  else:
    for k in range(nc):
      spec[f'ch_predictor.P.{k}.weight'] = Expected((nv, d))
      spec[f'ch_predictor.P.{k}.bias'] = Expected((nv,))
  return spec


def count_reference_parameters(spec: Spec) -> int:
  """Number of trainable values (buffers excluded) in a reference layout."""
  return int(sum(np.prod(e.shape) for e in spec.values() if e.kind == PARAM))


def _attention_params(sd, prefix: str, cfg) -> Dict[str, Any]:
  d, da, nh = int(cfg.d_model), int(cfg.head_dim), int(cfg.num_heads)
  n_layers = int(cfg.enc_layers if prefix == 'encoder' else cfg.dec_layers)
  layers = []
  for i in range(n_layers):
    p = f'{prefix}.block_local_attention.{i}.'
    layers.append({
        # w_q[h] maps x -> q_h: [heads, d, da] -> our [d, heads, da]
        'query': _f32(np.transpose(sd[p + 'mha.w_q'], (1, 0, 2))),
        'key': _f32(np.transpose(sd[p + 'mha.w_k'], (1, 0, 2))),
        'value': _f32(np.transpose(sd[p + 'mha.w_v'], (1, 0, 2))),
        # proj reads the heads concatenated (column h*da + k): [d, heads*da] -> [heads, da, d]
        'out': _f32(np.transpose(sd[p + 'mha.proj.weight']).reshape(nh, da, d)),
        'rel_t': _f32(sd[p + 'dt_bank']),
        'rel_h': _f32(sd[p + 'dh_bank']),
        'rel_w': _f32(sd[p + 'dw_bank']),
        'ln_attn': {'scale': _f32(sd[p + 'mha.layer_norm.weight']),
                    'bias': _f32(sd[p + 'mha.layer_norm.bias'])},
        'ln_mlp': {'scale': _f32(sd[p + 'ffn.0.weight']), 'bias': _f32(sd[p + 'ffn.0.bias'])},
        'mlp_in': {'kernel': linear_kernel(sd[p + 'ffn.1.weight']),
                   'bias': _f32(sd[p + 'ffn.1.bias'])},
        'mlp_out': {'kernel': linear_kernel(sd[p + 'ffn.3.weight']),
                    'bias': _f32(sd[p + 'ffn.3.bias'])},
    })
  if bool(cfg.get('scan_layers', False)):
    return {'layers': {'layer': _stack_trees(layers)}}
  return {f'layer_{i}': layer for i, layer in enumerate(layers)}


def _stack_trees(trees: List[Dict[str, Any]]) -> Dict[str, Any]:
  first = trees[0]
  return {k: (_stack_trees([t[k] for t in trees]) if isinstance(first[k], dict)
              else np.stack([t[k] for t in trees])) for k in first}


def _transformer_notes(problems: _Problems, sd: Mapping[str, Any], model_cfg) -> None:
  if any(k.startswith('encoder.class_embedding') for k in sd) and not int(
      model_cfg.get('num_classes', 0)):
    n = np.shape(sd['encoder.class_embedding.weight'])[0] if (
        'encoder.class_embedding.weight' in sd) else 'N'
    problems.note('the checkpoint is class-conditional (CLASS_NUM > 0): set '
                  f'--config.transformer.model.num_classes={n} to import it.')
  if 'ch_predictor.P.weight' in sd and any(k.startswith('ch_predictor.P.0') for k in sd):
    problems.note('both a shared ch_predictor.P and per-codebook ch_predictor.P.{k} are present.')
  if problems.missing or problems.mismatched:
    _structure_note(problems, sd, model_cfg)


# Released stage-2 structures and the config that builds each one at the paper's sizes.
_RELEASED = (('dstsvt', '--config=configs/bair.py:dstsvt'),
             ('dsfvt', '--config=configs/bair.py (the default) or configs/kinetics600.py'))
_STRUCTURE = ('stride', 'context_kernel', 'block_shape')


def _fits(sd: Mapping[str, Any], model_cfg) -> bool:
  """Whether every tensor of the state dict has the name and shape ``model_cfg`` expects."""
  shared = 'ch_predictor.P.weight' in sd
  trial = _Problems('')
  trial.check(sd, reference_transformer_spec(model_cfg, shared_output=shared),
              allow_missing_buffers=True)
  return not (trial.missing or trial.mismatched or trial.unexpected)


def _structure_note(problems: _Problems, sd: Mapping[str, Any], model_cfg) -> None:
  """Names the released structure (DSFVT / DSTSVT) whose shapes the checkpoint fits, or the
  context kernel and attention blocks its shapes imply."""
  from lvt_jax.models.lvt.transformer import default_transformer_config
  for variant, how in _RELEASED:
    released = default_transformer_config(variant)
    if all(tuple(model_cfg[k]) == tuple(released[k]) for k in _STRUCTURE):
      continue  # the config already has this structure: the problem is elsewhere
    candidate = model_cfg.copy_and_resolve_references()
    for k in _STRUCTURE:
      candidate[k] = tuple(released[k])
    try:
      fits = _fits(sd, candidate)
    except (ValueError, KeyError):
      fits = False
    if fits:
      problems.note(f'the shapes fit the release\'s {variant.upper()} (stride '
                    f'{tuple(released.stride)}, context kernel {tuple(released.context_kernel)}, '
                    f'attention blocks {tuple(released.block_shape)}): import it with {how}.')
      return
  conv = np.shape(sd.get('encoder.conv.weight', ()))
  banks = [np.shape(sd.get(f'encoder.block_local_attention.0.d{ax}_bank', ())) for ax in 'thw']
  if len(conv) == 5 and all(len(b) == 2 for b in banks):
    kernel, block = tuple(conv[2:]), tuple((b[1] + 1) // 2 for b in banks)
    if (kernel, block) != (tuple(model_cfg.context_kernel), tuple(model_cfg.block_shape)):
      problems.note(f'the checkpoint was built with context kernel {kernel} and attention '
                    f'blocks {block}; this config has {tuple(model_cfg.context_kernel)} and '
                    f'{tuple(model_cfg.block_shape)} (set transformer.model.context_kernel, '
                    'block_shape and the matching stride).')


def transformer_from_reference(state_dict: Mapping[str, Any], model_cfg, *,
                               allow_missing_buffers: bool = False) -> Dict[str, Any]:
  """Reference ``VideoTransformer`` state dict -> our ``params`` tree.

  * per-head ``w_q/w_k/w_v [heads, d, da]`` -> ``query/key/value [d, heads, da]``;
    ``proj [d, heads*da]`` -> ``out [heads, da, d]``;
  * relative-bias banks ``d{t,h,w}_bank`` -> ``rel_{t,h,w}`` unchanged (same
    index convention ``p_query - p_key + extent - 1``, checked via the
    reference's index buffers);
  * the one-hot context conv ``[de, nc*nv, kt, kh, kw]`` -> embedding tables
    ``[kt*kh*kw, nc*nv, de]`` (tap ``(i*kh + j)*kw + l``, row ``k*nv + v``): the
    conv on a one-hot input is the sum over taps of these rows;
  * the masked conv ``[d, de, 3, 3, 3]`` -> ``[27, de, d]``; the taps the
    reference zeroes before every forward are stored as zeros;
  * ``U_k [d, d + k*nv]`` -> ``hidden_kernel [d, d]`` + ``code_kernel [k, nv, d]``;
  * attention layers stacked on a leading axis when ``model_cfg.scan_layers``.
  """
  sd = as_numpy_dict(state_dict)
  shared = ('ch_predictor.P.weight' in sd or 'ch_predictor.P.bias' in sd) and not any(
      k.startswith('ch_predictor.P.0.') for k in sd)
  spec = reference_transformer_spec(model_cfg, shared_output=shared)
  problems = _Problems('the reference Video Transformer state dict')
  problems.check(sd, spec, allow_missing_buffers=allow_missing_buffers)
  _transformer_notes(problems, sd, model_cfg)
  problems.raise_if_any()
  if shared:
    log.info('ch_predictor.P is shared by all codebooks (SHARE_P: True): copied into each '
             'per-codebook output layer (identical outputs; no longer tied if trained on).')

  c = model_cfg
  nc, nv, d = int(c.num_codebooks), int(c.vocab_size), int(c.d_model)
  from lvt_jax.models.lvt.masked_conv import tap_mask

  encoder = {
      'context_conv': {'kernel': conv3d_taps(sd['encoder.conv.weight']),
                       'bias': _f32(sd['encoder.conv.bias'])},
      'slice_embedding': _f32(sd['encoder.slice_embedding.weight']),
      'proj': pointwise_conv3d_kernel(sd['encoder.linear_projector.weight']),
      'attention': _attention_params(sd, 'encoder', c),
  }
  if int(c.get('num_classes', 0)) > 0:  # proj rows [de:] read the class (concat order)
    encoder['class_embedding'] = _f32(sd['encoder.class_embedding.weight'])
  w = np.asarray(sd['decoder.conv.conv.weight'], np.float32)
  w = w * tap_mask(tuple(int(k) for k in c.decoder_kernel))[None, None].astype(np.float32)
  decoder = {
      'code_embedding': np.stack([_f32(sd[f'decoder.ch_embedder.{k}.weight'])
                                  for k in range(nc)]),
      'masked_conv': {'kernel': conv3d_taps(w), 'bias': _f32(sd['decoder.conv.conv.bias'])},
      'enc_proj': pointwise_conv3d_kernel(sd['decoder.linear_projector.weight']),
      'attention': _attention_params(sd, 'decoder', c),
  }
  predictor: Dict[str, Any] = {'ln': {'scale': _f32(sd['ch_predictor.layer_norm.weight']),
                                      'bias': _f32(sd['ch_predictor.layer_norm.bias'])}}
  for k in range(nc):
    u = np.asarray(sd[f'ch_predictor.U.{k}.weight'])
    p = 'ch_predictor.P.' if shared else f'ch_predictor.P.{k}.'
    head = {'hidden_kernel': linear_kernel(u[:, :d]), 'bias': _f32(sd[f'ch_predictor.U.{k}.bias']),
            'out_kernel': linear_kernel(sd[p + 'weight']), 'out_bias': _f32(sd[p + 'bias'])}
    if k > 0:
      head['code_kernel'] = _f32(np.transpose(u[:, d:]).reshape(k, nv, d))
    predictor[f'codebook_{k}'] = head
  return {'encoder': encoder, 'decoder': decoder, 'channel_predictor': predictor}
