"""Block-local multi-head attention layer of the LVT (encoder and decoder).

The ``(t, h, w)`` volume is cut into non-overlapping blocks of ``block_shape``;
attention runs independently inside each block (positions flattened in raster
order). One layer::

  x = x + Wo . Attn(LN(x))        # per head: softmax(q k^T / sqrt(da) + B) v
  x = x + W2 . relu(W1 . LN(x) + b1) + b2    # hidden width d (not 4d)

``B = B_t[dt] + B_h[dh] + B_w[dw]`` per head, each bank of size
``2 * extent - 1``, zero-initialised (``dt = t_query - t_key``). In a masked
(decoder) layer a position attends to itself and earlier positions of its
block; masked logits are *set* to ``-1e4`` (not ``-inf``). No final LayerNorm.

Speed (XLA:CPU, measured in ``docs/benchmarks.md``): the projections
(:mod:`lvt_jax.models.linear`) and the attention core (:func:`block_attention`)
carry hand-written gradients. They equal autodiff of the plain formula (to float32
rounding, tested) but run in forms XLA:CPU is fast at: plain 2-D products, and the
softmax backward from ``rowsum(dO * O)`` (one pass over ``[.., L, da]`` instead of
two over ``[.., L, L]``, and no separate mask pass).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.linear import Dense, dense, dense_shared

MASK_VALUE = -1e4
LN_EPS = 1e-5  # torch.nn.LayerNorm default


def split_blocks(x: jax.Array, block_shape: Sequence[int]) -> jax.Array:
  """``[B, T, H, W, C] -> [B, nT*nH*nW, bt*bh*bw, C]`` (blocks and positions in raster order)."""
  B, T, H, W, C = x.shape
  bt, bh, bw = block_shape
  if T % bt or H % bh or W % bw:
    raise ValueError(f'block {tuple(block_shape)} does not divide {(T, H, W)}')
  nt, nh, nw = T // bt, H // bh, W // bw
  y = x.reshape(B, nt, bt, nh, bh, nw, bw, C).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return y.reshape(B, nt * nh * nw, bt * bh * bw, C)


def merge_blocks(y: jax.Array, shape: Sequence[int], block_shape: Sequence[int]) -> jax.Array:
  """Inverse of :func:`split_blocks`; ``shape = (T, H, W)``."""
  B, _, _, C = y.shape
  T, H, W = shape
  bt, bh, bw = block_shape
  nt, nh, nw = T // bt, H // bh, W // bw
  y = y.reshape(B, nt, nh, nw, bt, bh, bw, C).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return y.reshape(B, T, H, W, C)


@functools.lru_cache(maxsize=None)
def relative_indices(block_shape: Tuple[int, int, int]) -> Tuple[np.ndarray, ...]:
  """Per axis, int ``[L, L]`` index into that axis' bank: ``d_query - d_key + extent - 1``."""
  bt, bh, bw = block_shape
  grids = np.meshgrid(np.arange(bt), np.arange(bh), np.arange(bw), indexing='ij')
  out = []
  for g, n in zip(grids, block_shape):
    p = g.ravel()
    out.append((p[:, None] - p[None, :] + n - 1).astype(np.int32))
  return tuple(out)


def causal_mask(length: int) -> np.ndarray:
  """bool ``[L, L]``: True where query i may attend key j (j <= i)."""
  return np.tril(np.ones((length, length), dtype=bool))


def relative_bias(banks: Sequence[jax.Array], block_shape: Tuple[int, int, int]) -> jax.Array:
  """``[heads, L, L]`` bias from the three ``[heads, 2*extent-1]`` banks.

  Built per axis as a small ``[heads, n, n]`` table broadcast over the other two axes
  (the values of :func:`relative_indices` gathers, summed t + h + w as before): the
  gather touches ``n*n`` instead of ``L*L`` entries per axis, so its gradient is a
  small scatter after a reduction rather than a scatter of ``L*L`` elements.
  """
  nh = banks[0].shape[0]
  out = None
  for ax, (bank, n) in enumerate(zip(banks, block_shape)):
    pos = np.arange(n)
    table = jnp.take(bank, jnp.asarray(pos[:, None] - pos[None, :] + n - 1), axis=1)
    shape = [nh, 1, 1, 1, 1, 1, 1]  # [heads, query t, h, w, key t, h, w]
    shape[1 + ax] = shape[4 + ax] = n
    term = table.reshape(shape)
    out = term if out is None else out + term
  L = int(np.prod(block_shape))
  return jnp.broadcast_to(out, (nh, *block_shape, *block_shape)).reshape(nh, L, L)


@jax.custom_vjp
def add_shared_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
  """``logits [..., heads, L, L] + bias [heads, L, L]``, broadcast over the leading axes.

  The value is plain ``logits + bias``. The custom gradient sums the cotangent over the
  leading (batch, block) axes as a matrix-vector product: XLA:CPU runs the equivalent
  reduce over a leading axis single-threaded and slowly (~10% of a layer's backward
  pass at the paper's size), the product at memory speed.
  """
  return logits + bias


def _add_shared_bias_fwd(logits, bias):
  return logits + bias, None


def _add_shared_bias_bwd(_, g):
  return g, _sum_leading(g, 3)


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def _sum_leading(g: jax.Array, keep: int) -> jax.Array:
  """Sum of ``g`` over all but its last ``keep`` axes, as a ones-vector product (see
  :func:`add_shared_bias`: a leading-axis reduce is slow on XLA:CPU)."""
  lead = int(np.prod(g.shape[:g.ndim - keep]))
  ones = jnp.ones((lead,), g.dtype)
  out = jnp.dot(ones, g.reshape(lead, -1), precision=jax.lax.Precision.HIGHEST)
  return out.reshape(g.shape[g.ndim - keep:])


def _attention_probs(q, k, bias, masked, mask_value):
  """float32 softmax of ``q k^T + bias`` (masked logits set to ``mask_value``)."""
  logits = jnp.einsum('bhqk,bhsk->bhqs', q, k, preferred_element_type=jnp.float32) + bias
  if masked:
    logits = jnp.where(causal_mask(q.shape[-2]), logits, jnp.float32(mask_value))
  return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                    masked: bool, mask_value: float = MASK_VALUE) -> jax.Array:
  """``softmax(q k^T + bias) v`` per block and head.

  ``q, k, v [G, heads, L, da]`` (``q`` already scaled by ``1/sqrt(da)``), ``bias
  [heads, L, L]`` float32 shared by all ``G`` blocks; masked: key ``j > i`` is *set* to
  ``mask_value``. The backward pass uses ``rowsum(p * dp) = rowsum(dO * O)``.
  """
  probs = _attention_probs(q, k, bias, masked, mask_value).astype(v.dtype)
  return jnp.einsum('bhqs,bhsk->bhqk', probs, v)


def _block_attention_fwd(q, k, v, bias, masked, mask_value):
  probs = _attention_probs(q, k, bias, masked, mask_value).astype(v.dtype)
  out = jnp.einsum('bhqs,bhsk->bhqk', probs, v)
  return out, (q, k, v, probs, out)


def _block_attention_bwd(masked, mask_value, res, dout):
  q, k, v, probs, out = res
  f32 = jnp.float32
  dprobs = jnp.einsum('bhqk,bhsk->bhqs', dout, v, preferred_element_type=f32)
  delta = jnp.sum(dout.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  dlogits = probs.astype(f32) * (dprobs - delta)
  if masked:  # a set (not added) logit has no gradient
    dlogits = jnp.where(causal_mask(q.shape[-2]), dlogits, f32(0))
  dbias = _sum_leading(dlogits, 3)
  dlogits = dlogits.astype(q.dtype)
  dq = jnp.einsum('bhqs,bhsk->bhqk', dlogits, k)
  dk = jnp.einsum('bhqs,bhqk->bhsk', dlogits, q)
  dv = jnp.einsum('bhqs,bhqk->bhsk', probs, dout)
  return dq, dk, dv, dbias


block_attention.defvjp(_block_attention_fwd, _block_attention_bwd)


class BlockLocalAttentionLayer(nn.Module):
  """One attention + feed-forward layer on ``[B, T, H, W, d]``."""
  num_heads: int
  head_dim: int
  block_shape: Tuple[int, int, int]
  masked: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  mask_value: float = MASK_VALUE
  ln_eps: float = LN_EPS

  def _ln(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 5)
    B, T, H, W, d = x.shape
    nh, da = self.num_heads, self.head_dim
    bt, bh, bw = self.block_shape
    L = bt * bh * bw
    x = nn.with_logical_constraint(x, ('batch', None, None, None, None))

    # --- attention -----------------------------------------------------------
    # Reference init: xavier-normal with torch's fans for [na, d, da] (receptive = da).
    qkv_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=0, out_axis=1)
    wq, wk, wv = (
        self.param(n, nn.with_logical_partitioning(qkv_init, ('embed', 'heads', 'kv')),
                   (d, nh, da), self.param_dtype) for n in ('query', 'key', 'value'))
    wo = self.param(
        'out',
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=(0, 1),
                                             out_axis=2), ('heads', 'kv', 'embed')),
        (nh, da, d), self.param_dtype)
    banks = [
        self.param(f'rel_{ax}', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ('heads', 'relpos')),
                   (nh, 2 * n - 1), self.param_dtype)
        for ax, n in zip('thw', self.block_shape)
    ]

    y = self._ln('ln_attn')(x)
    yb = split_blocks(y, self.block_shape)  # [B, nb, L, d]
    nb = yb.shape[1]
    cast = lambda p: jnp.asarray(p, self.dtype)
    # Rows = positions, columns = (head, k): the projections are plain 2-D products.
    q, k, v = dense_shared(yb.reshape(-1, d), tuple(cast(w).reshape(d, nh * da)
                                                    for w in (wq, wk, wv)))
    heads = lambda t: t.reshape(B * nb, L, nh, da).transpose(0, 2, 1, 3)  # [G, nh, L, da]
    q = heads(q) * jnp.asarray(1.0 / np.sqrt(da), self.dtype)
    bias = relative_bias([b.astype(jnp.float32) for b in banks], self.block_shape)
    o = block_attention(q, heads(k), heads(v), bias, self.masked, self.mask_value)
    o = dense(o.transpose(0, 2, 1, 3).reshape(-1, nh * da), cast(wo).reshape(nh * da, d))
    x = x + merge_blocks(o.reshape(B, nb, L, d), (T, H, W), self.block_shape)

    # --- feed-forward (hidden width d) --------------------------------------
    xavier = nn.initializers.xavier_uniform()
    y = self._ln('ln_mlp')(x)
    y = Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name='mlp_in',
              kernel_init=nn.with_logical_partitioning(xavier, ('embed', 'mlp')),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(y)
    y = nn.relu(y)
    y = Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name='mlp_out',
              kernel_init=nn.with_logical_partitioning(xavier, ('mlp', 'embed')),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(y)
    x = x + y
    return nn.with_logical_constraint(x, ('batch', None, None, None, None))


REMAT_POLICIES = ('none', 'full', 'dots')


def remat_kind(remat: Any) -> str:
  """Config value -> one of REMAT_POLICIES (``False``/``True`` mean 'none'/'full')."""
  if remat is None or remat is False:
    return 'none'
  if remat is True:
    return 'full'
  kind = {'false': 'none', 'true': 'full'}.get(str(remat).lower(), str(remat).lower())
  if kind not in REMAT_POLICIES:
    raise ValueError(f'transformer.model.remat={remat!r}: choose one of {REMAT_POLICIES} '
                     "('none': keep every activation; 'full': recompute each layer in the "
                     "backward pass; 'dots': keep the projections' outputs, recompute the rest).")
  return kind


def _layer_class(remat: Any, scanned: bool):
  """The layer class, wrapped in ``nn.remat`` with the chosen policy.

  'full' saves only each layer's input; 'dots' also saves the outputs of products with
  a weight (no batch dimension: the q/k/v, output and feed-forward projections) and
  recomputes the attention core, softmax and LayerNorms.
  """
  kind = remat_kind(remat)
  if kind == 'none':
    return BlockLocalAttentionLayer
  policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if kind == 'dots'
            else None)
  # Inside a scan the loop already keeps XLA from merging the recomputation away.
  return nn.remat(BlockLocalAttentionLayer, policy=policy, prevent_cse=not scanned)


class _ScanBody(nn.Module):
  """Adapter: ``(carry, None) -> (layer(carry), None)`` for ``nn.scan``."""
  layer_kwargs: Any
  remat: Any = 'none'

  @nn.compact
  def __call__(self, x, _):
    cls = _layer_class(self.remat, scanned=True)
    return cls(**dict(self.layer_kwargs), name='layer')(x), None


class AttentionStack(nn.Module):
  """``num_layers`` identical block-local attention layers (optionally scanned/rematted).

  With ``scan=True`` the parameters are stacked along a leading axis of length
  ``num_layers`` (logical name None, i.e. replicated) under ``layers/layer``;
  otherwise they live under ``layer_0 .. layer_{n-1}``. ``remat``: see
  :func:`remat_kind` (same parameters and values under every policy).
  """
  num_layers: int
  num_heads: int
  head_dim: int
  block_shape: Tuple[int, int, int]
  masked: bool
  scan: bool = True
  remat: Any = 'none'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim,
                  block_shape=tuple(self.block_shape), masked=self.masked, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    if self.scan:
      body = nn.scan(_ScanBody, variable_axes={'params': 0}, split_rngs={'params': True},
                     length=self.num_layers, metadata_params={nn.PARTITION_NAME: None})
      x, _ = body(tuple(sorted(kwargs.items())), remat_kind(self.remat), name='layers')(x, None)
      return x
    cls = _layer_class(self.remat, scanned=False)
    for i in range(self.num_layers):
      x = cls(**kwargs, name=f'layer_{i}')(x)
    return x
