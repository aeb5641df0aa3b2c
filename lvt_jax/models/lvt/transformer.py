"""Stage 2 of LVT: the latent Video Transformer (encoder, decoder, channel predictor).

Follows ``docs/lvt-architecture.md`` ("Stage 2") and the reference release
``rakhimovv/lvt`` (``vidgen.modeling.autoregressive.videotransformer``).

Data layout: a clip of codes is int32 ``[B, T, H, W, nc]``; a slice (see
:mod:`lvt_jax.models.lvt.subscale`) is ``[B, t, h, w, nc]``; hidden states are
``[B, t, h, w, d]``; logits are ``[B, t, h, w, nc, nv]``.

Parameter tree (``params`` collection), top level::

  encoder/            context_conv/{kernel [kt*kh*kw, nc*nv, de], bias [de]},
                      slice_embedding [S, de], proj [de, d], attention/...
  decoder/            code_embedding [nc, nv, de],
                      masked_conv/{kernel [27, de, d], bias [d]},
                      enc_proj [d, d], attention/...
  channel_predictor/  ln/{scale, bias}, codebook_k/{hidden_kernel [d, d],
                      code_kernel [k, nv, d] (k > 0), bias [d],
                      out_kernel [d, nv], out_bias [nv]}   for k = 0 .. nc-1

Every parameter is created through ``nn.with_logical_partitioning`` with the
project's logical axis names; ``nn.meta.unbox`` gives plain arrays.

Entry points (``model.apply(variables, ..., method=...)``):

* ``__call__(codes, slice_idx)`` -- teacher-forced logits of one slice per clip;
* ``encode_context(codes, slice_idx, labels=None)`` -> encoder output ``[B, t, h, w, d]``
  (``labels`` int32 ``[B]``: class ids, only for a class-conditional model,
  ``config.num_classes > 0``; ``__call__`` and ``clip_logits`` take them too);
* ``decode(slice_codes, enc_out)`` -> decoder hidden ``[B, t, h, w, d]``;
* ``predict_channels(hidden, codes)`` -> logits ``[..., nc, nv]`` (teacher-forced);
* ``predict_codebook(hidden, codes, k)`` -> logits ``[..., nv]`` of codebook k
  (reads ``codes[..., :k]`` only);
* ``clip_logits(codes)`` -> ``[B, T, H, W, nc, nv]``, every slice teacher-forced.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.attention import LN_EPS, AttentionStack, remat_kind
from lvt_jax.models.lvt.context import ContextConv
from lvt_jax.models.linear import dense_nd
from lvt_jax.models.precision import add_bias, take_rows
from lvt_jax.models.lvt.masked_conv import MaskedConv3D
from lvt_jax.models.lvt.position import sinusoidal_3d

# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------

_VARIANTS = {
    # name: (stride, context_kernel, block_shape)
    'dsfvt': ((16, 1, 1), (7, 1, 1), (1, 16, 16)),
    'dstsvt': ((4, 2, 2), (5, 3, 3), (4, 8, 8)),
}
_TINY = {
    'dsfvt': ((4, 1, 1), (7, 1, 1), (1, 4, 4)),
    'dstsvt': ((2, 2, 2), (5, 3, 3), (2, 2, 2)),
}


def default_transformer_config(variant: str = 'dsfvt') -> ml_collections.ConfigDict:
  """Hyper-parameters of the stage-2 transformer.

  ``variant``: ``'dsfvt'`` or ``'dstsvt'`` (paper size, the released configs),
  ``'dsfvt_tiny'`` / ``'dstsvt_tiny'`` (same structure, tiny sizes for tests,
  clip (4, 4, 4)); ``'tiny'`` is ``'dsfvt_tiny'``.
  """
  name = variant.lower().replace('-', '_').replace(':', '_')
  if name == 'tiny':
    name = 'dsfvt_tiny'
  tiny = name.endswith('_tiny')
  base = name[:-len('_tiny')] if tiny else name
  if base not in _VARIANTS:
    raise ValueError(f'unknown transformer variant {variant!r}; '
                     "use 'dsfvt', 'dstsvt', 'dsfvt_tiny', 'dstsvt_tiny' or 'tiny'")
  stride, kernel, block = (_TINY if tiny else _VARIANTS)[base]
  c = ml_collections.ConfigDict()
  c.variant = name
  c.num_codebooks = 4  # nc
  c.vocab_size = 16 if tiny else 512  # nv
  c.d_model = 32 if tiny else 512  # d
  c.head_dim = 8 if tiny else 128  # da
  c.emb_dim = 16 if tiny else 128  # de
  c.num_heads = 2 if tiny else 8
  c.enc_layers = 2 if tiny else 8
  c.dec_layers = 2 if tiny else 8
  c.stride = stride  # (st, sh, sw)
  c.context_kernel = kernel  # encoder context conv kernel (kt, kh, kw)
  c.decoder_kernel = (3, 3, 3)  # masked conv of the decoder
  c.block_shape = block  # block-local attention blocks (encoder and decoder)
  c.clip_shape = (4, 4, 4) if tiny else (16, 16, 16)  # (T, H, W) of the code clip
  c.pe_min_timescale = 1.0
  c.pe_max_timescale = 1.0e4
  c.dtype = 'float32'  # activations
  c.param_dtype = 'float32'
  c.num_classes = 0  # > 0: class-conditional encoder (Kinetics classes), see Encoder
  # nn.scan over identical layers (params stacked under layers/layer) compiles faster;
  # unrolled (layer_0 .. layer_{n-1}) trains 5-10% faster on XLA:CPU at the paper's
  # sizes (docs/benchmarks.md), so it is the default.
  c.scan_layers = False
  # Rematerialisation of each attention layer: 'none' | 'full' | 'dots' (attention.remat_kind;
  # memory per policy: python -m lvt_jax.bench remat).
  c.remat = 'none'
  return c


def validate_config(c) -> None:
  subscale.check_stride(c.clip_shape, c.stride)
  sl = subscale.slice_shape(c.clip_shape, c.stride)
  for n, b in zip(sl, c.block_shape):
    if n % b:
      raise ValueError(f'block_shape {tuple(c.block_shape)} does not divide slice {sl}')
  for k in tuple(c.context_kernel) + tuple(c.decoder_kernel):
    if k % 2 != 1:
      raise ValueError('kernel sizes must be odd')
  remat_kind(c.get('remat', 'none'))
  jnp.dtype(c.get('dtype', 'float32'))  # an unknown dtype name fails here, before compiling


# ----------------------------------------------------------------------------
# Encoder / decoder / channel predictor
# ----------------------------------------------------------------------------


class Encoder(nn.Module):
  """Context (earlier slices) -> ``[B, t, h, w, d]``.

  ``num_classes > 0`` makes it class-conditional as the reference's
  ``VTEncoder(class_num=...)`` (``vidgen/modeling/autoregressive/videotransformer.py``):
  a learned ``class_embedding`` table ``[num_classes, de]`` (``nn.Embedding(class_num,
  de)``) is concatenated with the slice features ``[..., de]`` before the 1x1 projection,
  which then reads ``2 * de`` channels (``nn.Conv3d(2 * de, d, 1, bias=False)``; ours:
  ``proj [2 * de, d]``, rows ``de..2de-1`` for the class). The class part is the same for
  every position of a clip, so it is projected once per clip and added (same result as
  projecting the concatenation). ``num_classes = 0`` (default): no class parameters,
  ``proj [de, d]``, and ``labels`` is ignored.
  """
  num_codebooks: int
  vocab_size: int
  d_model: int
  emb_dim: int
  head_dim: int
  num_heads: int
  num_layers: int
  stride: Tuple[int, int, int]
  context_kernel: Tuple[int, int, int]
  block_shape: Tuple[int, int, int]
  scan_layers: bool = True
  remat: Any = 'none'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  num_classes: int = 0

  @nn.compact
  def __call__(self, codes: jax.Array, slice_idx: jax.Array,
               labels: jax.Array | None = None) -> jax.Array:
    x = ContextConv(self.emb_dim, self.vocab_size, self.num_codebooks, tuple(self.stride),
                    tuple(self.context_kernel), dtype=self.dtype,
                    param_dtype=self.param_dtype, name='context_conv')(codes, slice_idx)
    table = self.param(
        'slice_embedding',
        nn.with_logical_partitioning(nn.initializers.normal(1.0), ('slices', 'emb')),
        (subscale.num_slices(self.stride), self.emb_dim), self.param_dtype)
    x = x + take_rows(table, slice_idx, self.dtype)[:, None, None, None, :]
    conditional = self.num_classes > 0
    if conditional and labels is None:
      raise ValueError(
          f'the model is class-conditional (transformer.model.num_classes='
          f'{self.num_classes}): pass labels=int32 [B] (each clip\'s class id).')
    in_width = 2 * self.emb_dim if conditional else self.emb_dim
    proj = self.param(
        'proj', nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ('emb', 'embed')),
        (in_width, self.d_model), self.param_dtype)
    proj = jnp.asarray(proj, self.dtype)
    x = jnp.einsum('bthwe,ed->bthwd', x, proj[:self.emb_dim])
    if conditional:
      chex.assert_shape(labels, (codes.shape[0],))
      classes = self.param(
          'class_embedding',
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ('classes', 'emb')),
          (self.num_classes, self.emb_dim), self.param_dtype)
      cls = take_rows(classes, jnp.asarray(labels, jnp.int32), self.dtype)  # [B, de]
      x = x + (cls @ proj[self.emb_dim:])[:, None, None, None, :]
    x = nn.with_logical_constraint(x, ('batch', None, None, None, None))
    return AttentionStack(self.num_layers, self.num_heads, self.head_dim,
                          tuple(self.block_shape), masked=False, scan=self.scan_layers,
                          remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='attention')(x)


class Decoder(nn.Module):
  """Current slice (causally) + encoder output -> hidden ``[B, t, h, w, d]``."""
  num_codebooks: int
  vocab_size: int
  d_model: int
  emb_dim: int
  head_dim: int
  num_heads: int
  num_layers: int
  block_shape: Tuple[int, int, int]
  decoder_kernel: Tuple[int, int, int] = (3, 3, 3)
  pe_min_timescale: float = 1.0
  pe_max_timescale: float = 1.0e4
  scan_layers: bool = True
  remat: Any = 'none'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.code_embedding = self.param(
        'code_embedding',
        nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, 'vocab', 'emb')),
        (self.num_codebooks, self.vocab_size, self.emb_dim), self.param_dtype)
    self.masked_conv = MaskedConv3D(self.d_model, tuple(self.decoder_kernel), dtype=self.dtype,
                                    param_dtype=self.param_dtype)
    self.enc_proj = self.param(
        'enc_proj',
        nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ('embed', 'mlp')),
        (self.d_model, self.d_model), self.param_dtype)
    self.attention = AttentionStack(self.num_layers, self.num_heads, self.head_dim,
                                    tuple(self.block_shape), masked=True,
                                    scan=self.scan_layers, remat=self.remat, dtype=self.dtype,
                                    param_dtype=self.param_dtype)

  def embed(self, slice_codes: jax.Array) -> jax.Array:
    """Sum of per-codebook embeddings: ``[B, t, h, w, nc] -> [B, t, h, w, de]`` (summed in
    float32, then cast to the compute dtype)."""
    table = self.code_embedding
    return sum(take_rows(table[k], slice_codes[..., k], jnp.float32)
               for k in range(self.num_codebooks)).astype(self.dtype)

  def position_encoding(self, shape) -> np.ndarray:
    return sinusoidal_3d(shape, self.d_model, self.pe_min_timescale, self.pe_max_timescale)

  def project_encoder(self, enc_out: jax.Array) -> jax.Array:
    return dense_nd(jnp.asarray(enc_out, self.dtype), jnp.asarray(self.enc_proj, self.dtype))

  def __call__(self, slice_codes: jax.Array, enc_out: jax.Array) -> jax.Array:
    x = self.masked_conv(self.embed(slice_codes))
    x = x + jnp.asarray(self.position_encoding(slice_codes.shape[1:4]), self.dtype)
    x = x + self.project_encoder(enc_out)
    x = nn.with_logical_constraint(x, ('batch', None, None, None, None))
    return self.attention(x)


def _uniform(limit: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


class CodebookHead(nn.Module):
  """``logits_k = W_out relu(U_k [y, onehot(c_0..c_{k-1})] + b) + b_out``.

  ``U_k`` (a ``(d + k*nv) x d`` Linear in the reference) is stored split:
  ``hidden_kernel [d, d]`` for ``y`` and ``code_kernel [k, nv, d]`` for the
  one-hot codes, which are applied as row lookups.
  """
  k: int
  d_model: int
  vocab_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array, prev_codes: jax.Array) -> jax.Array:
    d, nv, k = self.d_model, self.vocab_size, self.k
    limit = math.sqrt(6.0 / (d + k * nv + d))  # xavier-uniform of the whole U_k
    cast = lambda p: jnp.asarray(p, self.dtype)
    wh = self.param('hidden_kernel', nn.with_logical_partitioning(_uniform(limit), ('embed', 'mlp')),
                    (d, d), self.param_dtype)
    u = dense_nd(y, cast(wh))
    if k > 0:
      chex.assert_axis_dimension(prev_codes, -1, k)
      wc = self.param('code_kernel',
                      nn.with_logical_partitioning(_uniform(limit), (None, 'vocab', 'mlp')),
                      (k, nv, d), self.param_dtype)
      u = u + sum(take_rows(wc[j], prev_codes[..., j], jnp.float32)
                  for j in range(k)).astype(self.dtype)
    b = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)), (d,),
                   self.param_dtype)
    u = nn.relu(add_bias(u, b))
    wo = self.param('out_kernel',
                    nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 ('mlp', 'vocab')), (d, nv), self.param_dtype)
    bo = self.param('out_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                    (nv,), self.param_dtype)
    # logits in float32 (softmax and loss in float32 under mixed precision)
    return dense_nd(u, cast(wo)).astype(jnp.float32) + jnp.asarray(bo, jnp.float32)


class ChannelPredictor(nn.Module):
  """LayerNorm then one head per codebook, teacher-forced with the true codes."""
  num_codebooks: int
  vocab_size: int
  d_model: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.ln = nn.LayerNorm(
        epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)))
    self.heads = [
        CodebookHead(k, self.d_model, self.vocab_size, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=f'codebook_{k}')
        for k in range(self.num_codebooks)
    ]

  def codebook(self, hidden: jax.Array, codes: jax.Array, k: int) -> jax.Array:
    """Logits ``[..., nv]`` (float32) of codebook ``k``; reads ``codes[..., :k]`` only."""
    return self.heads[k](self.ln(hidden), codes[..., :k]).astype(jnp.float32)

  def __call__(self, hidden: jax.Array, codes: jax.Array) -> jax.Array:
    """Teacher-forced logits ``[..., nc, nv]`` (float32)."""
    y = self.ln(hidden)
    return jnp.stack([self.heads[k](y, codes[..., :k]) for k in range(self.num_codebooks)],
                     axis=-2).astype(jnp.float32)


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


class LatentVideoTransformer(nn.Module):
  """LVT stage 2. ``config``: see :func:`default_transformer_config`."""
  config: Any

  def setup(self):
    c = self.config
    validate_config(c)
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    common = dict(num_codebooks=c.num_codebooks, vocab_size=c.vocab_size, d_model=c.d_model,
                  emb_dim=c.emb_dim, head_dim=c.head_dim, num_heads=c.num_heads,
                  block_shape=tuple(c.block_shape), scan_layers=c.scan_layers,
                  remat=c.remat, dtype=dtype, param_dtype=pdtype)
    self.encoder = Encoder(num_layers=c.enc_layers, stride=tuple(c.stride),
                           context_kernel=tuple(c.context_kernel),
                           num_classes=int(c.get('num_classes', 0)), **common)
    self.decoder = Decoder(num_layers=c.dec_layers, decoder_kernel=tuple(c.decoder_kernel),
                           pe_min_timescale=c.pe_min_timescale,
                           pe_max_timescale=c.pe_max_timescale, **common)
    self.channel_predictor = ChannelPredictor(c.num_codebooks, c.vocab_size, c.d_model,
                                              dtype=dtype, param_dtype=pdtype)

  # --- shapes ---------------------------------------------------------------
  @property
  def slice_shape(self) -> Tuple[int, int, int]:
    return subscale.slice_shape(self.config.clip_shape, self.config.stride)

  def _check_clip(self, codes, slice_idx=None):
    c = self.config
    chex.assert_shape(codes, (None, *c.clip_shape, c.num_codebooks))
    chex.assert_type(codes, int)
    if slice_idx is not None:
      chex.assert_shape(slice_idx, (codes.shape[0],))
      chex.assert_type(slice_idx, int)

  # --- pieces ---------------------------------------------------------------
  def encode_context(self, codes: jax.Array, slice_idx: jax.Array,
                     labels: jax.Array | None = None) -> jax.Array:
    """Encoder output ``[B, t, h, w, d]`` for slice ``slice_idx[b]`` of each clip.

    Only positions of slices numbered below ``slice_idx[b]`` are read (and
    negative codes count as pad), so the caller may leave anything in the
    current and later slices. ``labels`` int32 ``[B]``: class ids, required when
    ``config.num_classes > 0``, ignored otherwise.
    """
    self._check_clip(codes, slice_idx)
    out = self.encoder(codes, slice_idx, labels)
    chex.assert_shape(out, (codes.shape[0], *self.slice_shape, self.config.d_model))
    return out

  def decode(self, slice_codes: jax.Array, enc_out: jax.Array) -> jax.Array:
    """Decoder hidden ``[B, t, h, w, d]``; position p depends on codes before p only."""
    c = self.config
    chex.assert_rank(slice_codes, 5)
    chex.assert_axis_dimension(slice_codes, -1, c.num_codebooks)
    chex.assert_shape(enc_out, (*slice_codes.shape[:4], c.d_model))
    out = self.decoder(slice_codes, enc_out)
    chex.assert_shape(out, (*slice_codes.shape[:4], c.d_model))
    return out

  def predict_channels(self, hidden: jax.Array, codes: jax.Array) -> jax.Array:
    """Teacher-forced logits ``[..., nc, nv]``; codebook k reads ``codes[..., :k]``."""
    c = self.config
    chex.assert_axis_dimension(hidden, -1, c.d_model)
    chex.assert_shape(codes, (*hidden.shape[:-1], c.num_codebooks))
    out = self.channel_predictor(hidden, codes)
    chex.assert_shape(out, (*hidden.shape[:-1], c.num_codebooks, c.vocab_size))
    return out

  def predict_codebook(self, hidden: jax.Array, codes: jax.Array, k: int) -> jax.Array:
    """Logits ``[..., nv]`` of codebook ``k`` (static int) from ``codes[..., :k]``."""
    chex.assert_axis_dimension(hidden, -1, self.config.d_model)
    return self.channel_predictor.codebook(hidden, codes, k)

  # --- training entry point -------------------------------------------------
  def __call__(self, codes: jax.Array, slice_idx: jax.Array,
               labels: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits ``[B, t, h, w, nc, nv]`` of slice ``slice_idx[b]``
    (``labels``: see :meth:`encode_context`)."""
    c = self.config
    self._check_clip(codes, slice_idx)
    slice_idx = jnp.asarray(slice_idx, jnp.int32)
    enc = self.encode_context(codes, slice_idx, labels)
    slice_codes = subscale.get_slice(codes, c.stride, slice_idx)
    hidden = self.decode(slice_codes, enc)
    logits = self.predict_channels(hidden, slice_codes)
    chex.assert_shape(logits, (codes.shape[0], *self.slice_shape, c.num_codebooks,
                               c.vocab_size))
    return logits

  def clip_logits(self, codes: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits of the whole clip ``[B, T, H, W, nc, nv]`` (all slices at once)."""
    c = self.config
    self._check_clip(codes)
    B = codes.shape[0]
    S = subscale.num_slices(c.stride)
    rep = jnp.broadcast_to(codes[None], (S,) + codes.shape).reshape((S * B,) + codes.shape[1:])
    idx = jnp.repeat(jnp.arange(S, dtype=jnp.int32), B)
    rep_labels = None if labels is None else jnp.tile(jnp.asarray(labels, jnp.int32), S)
    logits = self(rep, idx, rep_labels)  # [S*B, t, h, w, nc, nv]
    logits = logits.reshape((S, B) + logits.shape[1:]).swapaxes(0, 1)
    return subscale.merge_slices(logits, c.stride, axis=1)


def build_model(config) -> LatentVideoTransformer:
  """The model, with the config frozen (hashable)."""
  validate_config(config)
  if not isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.FrozenConfigDict(config)
  return LatentVideoTransformer(config)


# ----------------------------------------------------------------------------
# Utilities
# ----------------------------------------------------------------------------

PARTS = ('encoder', 'decoder', 'channel_predictor')


def _size(x) -> int:
  return int(np.prod(x.shape)) if hasattr(x, 'shape') else int(np.size(x))


def count_params(params) -> Dict[str, int]:
  """``{'encoder', 'decoder', 'channel_predictor', 'total'}`` parameter counts.

  Accepts the variables dict (``{'params': ...}``) or the params tree, boxed
  or unboxed, arrays or ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``).
  """
  params = nn.meta.unbox(params)
  if 'params' in params:
    params = params['params']
  out = {p: sum(_size(x) for x in jax.tree_util.tree_leaves(params.get(p, {}))) for p in PARTS}
  out['total'] = sum(_size(x) for x in jax.tree_util.tree_leaves(params))
  return out


def init_variables(model: LatentVideoTransformer, rng: jax.Array, batch_size: int = 1):
  """``model.init`` (jitted) on dummy inputs of the config's clip shape.

  Under ``jax.eval_shape`` this only traces (no parameters are materialised).
  """
  c = model.config
  codes = jnp.zeros((batch_size, *c.clip_shape, c.num_codebooks), jnp.int32)
  slice_idx = jnp.zeros((batch_size,), jnp.int32)
  labels = jnp.zeros((batch_size,), jnp.int32) if c.get('num_classes', 0) else None
  return jax.jit(model.init)(rng, codes, slice_idx, labels)
