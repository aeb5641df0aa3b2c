"""The encoder's context convolution, computed as embedding lookups.

Reference semantics: the clip of codes, with every position of the current and
later slices replaced by a pad value, is one-hot encoded over ``nc * nv``
channels (channel ``k * nv + v`` for code ``v`` of codebook ``k``; pads give an
all-zero vector), shifted/padded so that a conv with kernel ``(kt, kh, kw)``
and stride = the subscale stride lands centred on each position of the current
slice, then convolved (``nc*nv -> de``, with bias).

So output ``(i, j, l)`` of slice ``(a, b, c)`` is::

  bias + sum_{tap (ot, oh, ow)} sum_k W[tap, k * nv + code_k(src)]
  src = (a + i*st + ot - kt//2, b + j*sh + oh - kh//2, c + l*sw + ow - kw//2)

where a source outside the clip, or in a slice numbered >= the current one,
contributes nothing. Because the input is one-hot this is a sum of embedding
lookups, one per (tap, codebook). The weights are stored as the dense conv's,
with the taps flattened: ``kernel [kt*kh*kw, nc*nv, de]`` (logical axes
``('kernel', 'vocab', 'emb')``) and ``bias [de]``.

Which slice a source belongs to depends only on the tap (not on the output
position), so visibility is one boolean per (clip, tap).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.lvt import subscale


def context_conv(codes: jax.Array, slice_idx: jax.Array, kernel_flat: jax.Array,
                 bias: jax.Array | None, *, stride: Sequence[int],
                 kernel_shape: Sequence[int], vocab_size: int) -> jax.Array:
  """``codes [B, T, H, W, nc]`` (negative = pad) -> ``[B, t, h, w, de]``."""
  chex.assert_rank(codes, 5)
  chex.assert_rank(slice_idx, 1)
  B, T, H, W, nc = codes.shape
  kt, kh, kw = kernel_shape
  st, sh, sw = stride
  t, h, w = subscale.slice_shape((T, H, W), stride)
  n_taps = kt * kh * kw
  chex.assert_shape(kernel_flat, (n_taps, nc * vocab_size, None))
  slice_idx = jnp.asarray(slice_idx, jnp.int32)
  a, b, c = subscale.slice_offsets(slice_idx, stride)  # [B] each

  # static per-tap offsets relative to the centre: [K] each
  taps = np.stack(np.meshgrid(np.arange(kt) - kt // 2, np.arange(kh) - kh // 2,
                              np.arange(kw) - kw // 2, indexing='ij'), -1).reshape(-1, 3)
  dt, dh, dw = (jnp.asarray(taps[:, i]) for i in range(3))
  # source coordinate along each axis: [B, K, t], [B, K, h], [B, K, w]
  src_t = a[:, None, None] + dt[None, :, None] + st * jnp.arange(t)[None, None]
  src_h = b[:, None, None] + dh[None, :, None] + sh * jnp.arange(h)[None, None]
  src_w = c[:, None, None] + dw[None, :, None] + sw * jnp.arange(w)[None, None]
  # The slice a source belongs to depends only on the tap: [B, K].
  src_slice = subscale.slice_index((a[:, None] + dt) % st, (b[:, None] + dh) % sh,
                                   (c[:, None] + dw) % sw, stride)
  ok = ((src_slice < slice_idx[:, None])[:, :, None, None, None]
        & ((src_t >= 0) & (src_t < T))[:, :, :, None, None]
        & ((src_h >= 0) & (src_h < H))[:, :, None, :, None]
        & ((src_w >= 0) & (src_w < W))[:, :, None, None, :])  # [B, K, t, h, w]
  bidx = jnp.arange(B)[:, None, None, None, None]
  src = codes[bidx,
              jnp.clip(src_t, 0, T - 1)[:, :, :, None, None],
              jnp.clip(src_h, 0, H - 1)[:, :, None, :, None],
              jnp.clip(src_w, 0, W - 1)[:, :, None, None, :]]  # [B, K, t, h, w, nc]
  valid = ok[..., None] & (src >= 0)
  # Row of tap k's table [nc * nv, de]; invalid -> out of range -> contributes 0.
  n_rows = nc * vocab_size
  row = jnp.where(valid, jnp.arange(nc) * vocab_size + src, n_rows)  # [B, K, t, h, w, nc]
  row = jnp.moveaxis(row, 1, 0)  # [K, B, t, h, w, nc]

  # Accumulate tap by tap (lax.scan): only one tap's lookups [B, t, h, w, nc, de]
  # are alive at a time, and the compiled program does not grow with the kernel.
  def step(acc, xs):
    table, rows = xs
    emb = jnp.take(table, rows, axis=0, mode='fill', fill_value=0)
    return acc + emb.sum(axis=-2), None

  acc = jnp.zeros((B, t, h, w, kernel_flat.shape[-1]), kernel_flat.dtype)
  out, _ = jax.lax.scan(step, acc, (kernel_flat, row))
  if bias is not None:
    out = out + bias
  return out


def one_hot_context(codes: jax.Array, slice_idx: jax.Array, *, stride: Sequence[int],
                    vocab_size: int) -> jax.Array:
  """The reference's (unshifted) one-hot context ``[B, T, H, W, nc*nv]``.

  Positions of the current and later slices (and negative codes) are all-zero.
  Only for tests and conversions; the model never materialises it.
  """
  B, T, H, W, nc = codes.shape
  sid = jnp.asarray(subscale.slice_id_map((T, H, W), stride))
  visible = (sid[None] < jnp.asarray(slice_idx)[:, None, None, None])[..., None] & (codes >= 0)
  oh = jax.nn.one_hot(jnp.where(visible, codes, 0), vocab_size) * visible[..., None]
  return oh.reshape(B, T, H, W, nc * vocab_size)


class ContextConv(nn.Module):
  """Encoder context conv as embedding lookups (same parameters as the dense conv)."""
  emb_dim: int
  vocab_size: int
  num_codebooks: int
  stride: Tuple[int, int, int]
  kernel_shape: Tuple[int, int, int]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes: jax.Array, slice_idx: jax.Array) -> jax.Array:
    n_taps = int(np.prod(self.kernel_shape))
    chex.assert_axis_dimension(codes, -1, self.num_codebooks)
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                     ('kernel', 'vocab', 'emb')),
        (n_taps, self.num_codebooks * self.vocab_size, self.emb_dim), self.param_dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('emb',)),
                      (self.emb_dim,), self.param_dtype)
    # Lookups and their sums from the float32 parameters (the kernel's gradient is a
    # scatter-add: float32 under mixed precision too); the result in the compute dtype.
    out = context_conv(codes, slice_idx, kernel, bias, stride=self.stride,
                       kernel_shape=self.kernel_shape, vocab_size=self.vocab_size)
    return out.astype(self.dtype)
