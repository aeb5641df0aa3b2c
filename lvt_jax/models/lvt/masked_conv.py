"""The decoder's causal (masked) 3-D convolution.

Layout of the reference release (kept on purpose): a kernel ``(kt, kh, kw)``
(odd sizes) applied to the input padded by ``front kt-1, top kh-1, left kw//2,
right kw//2`` (nothing at the back or bottom), so output ``(t, h, w)`` reads
input frames ``t-kt+1 .. t``, rows ``h-kh+1 .. h`` and columns
``w-kw//2 .. w+kw//2``. In the current frame and current row, the centre tap
and everything to its right are zero, so an output only sees strictly earlier
positions (raster order). For (3, 3, 3): the previous-frame taps cover rows
``h-2 .. h`` (not ``h-1 .. h+1``) -- a quirk of the release.

The kernel is stored with the spatial taps flattened, ``[kt*kh*kw, in, out]``
(logical axes ``('kernel', 'emb', 'embed')``), all taps including the masked
ones (so the parameter count equals the dense conv's). The forward pass is an
explicit sum over the unmasked taps (im2col + one matmul); the masked taps
never enter the computation. :func:`tap_mask` and :func:`tap_offsets` expose
the layout for incremental (cached) decoding.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.precision import add_bias


def tap_mask(kernel: Sequence[int]) -> np.ndarray:
  """bool ``[kt, kh, kw]``: True where the tap is used."""
  kt, kh, kw = kernel
  for k in kernel:
    if k % 2 != 1:
      raise ValueError(f'kernel sizes must be odd, got {tuple(kernel)}')
  m = np.ones((kt, kh, kw), dtype=bool)
  m[kt - 1, kh - 1, kw // 2:] = False
  return m


def conv_padding(kernel: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
  """``((front, back), (top, bottom), (left, right))`` input padding."""
  kt, kh, kw = kernel
  return ((kt - 1, 0), (kh - 1, 0), (kw // 2, kw // 2))


def tap_offsets(kernel: Sequence[int]) -> np.ndarray:
  """int ``[kt*kh*kw, 3]``: input offset ``(dt, dh, dw)`` read by each flat tap."""
  kt, kh, kw = kernel
  dt, dh, dw = np.meshgrid(np.arange(kt) - (kt - 1), np.arange(kh) - (kh - 1),
                           np.arange(kw) - kw // 2, indexing='ij')
  return np.stack([dt.ravel(), dh.ravel(), dw.ravel()], axis=1)


def used_taps(kernel: Sequence[int], shape: Sequence[int]) -> np.ndarray:
  """Flat indices of the unmasked taps that can read the input of ``shape = (T, H, W)``.

  A tap whose offset lies outside the volume for every output position reads only
  padding (e.g. the previous-frame taps when a DSFVT slice is a single frame), so it is
  left out: the result is the same, without its FLOPs.
  """
  offsets = tap_offsets(kernel)
  inside = np.all(np.abs(offsets) < np.asarray(shape)[None, :], axis=1)
  return np.flatnonzero(tap_mask(kernel).ravel() & inside)


def masked_conv3d(x: jax.Array, kernel_flat: jax.Array, bias: jax.Array | None,
                  kernel_shape: Sequence[int]) -> jax.Array:
  """Masked conv of ``x [B, T, H, W, Cin]`` with ``kernel_flat [K, Cin, Cout]``."""
  kt, kh, kw = kernel_shape
  chex.assert_rank(x, 5)
  chex.assert_shape(kernel_flat, (kt * kh * kw, x.shape[-1], None))
  _, T, H, W, _ = x.shape
  xp = jnp.pad(x, ((0, 0),) + conv_padding(kernel_shape) + ((0, 0),))
  used = used_taps(kernel_shape, (T, H, W))
  if used.size == 0:  # a single position: nothing earlier to see
    y = jnp.zeros(x.shape[:-1] + kernel_flat.shape[-1:], x.dtype)
    return y + bias if bias is not None else y
  cols = []
  for tap in used:
    i, rem = divmod(int(tap), kh * kw)
    j, k = divmod(rem, kw)
    cols.append(xp[:, i:i + T, j:j + H, k:k + W, :])
  cols = jnp.stack(cols, axis=-2)  # [B, T, H, W, n_used, Cin]
  w = jnp.take(kernel_flat, jnp.asarray(used), axis=0)  # [n_used, Cin, Cout]
  y = jnp.einsum('bthwkc,kcd->bthwd', cols, w)
  if bias is not None:
    y = y + bias
  return y


class MaskedConv3D(nn.Module):
  """Causal 3-D conv, ``[B, T, H, W, Cin] -> [B, T, H, W, features]``, with bias."""
  features: int
  kernel_shape: Tuple[int, int, int] = (3, 3, 3)
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_taps = int(np.prod(self.kernel_shape))
    cin = x.shape[-1]
    # Same fans as a dense conv (receptive field n_taps): xavier-uniform.
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                     ('kernel', 'emb', 'embed')),
        (n_taps, cin, self.features), self.param_dtype)
    y = masked_conv3d(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype), None,
                      self.kernel_shape)
    if not self.use_bias:
      return y
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (self.features,), self.param_dtype)
    return add_bias(y, bias)
