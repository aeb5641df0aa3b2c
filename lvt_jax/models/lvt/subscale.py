"""Subscale slicing of a clip of latent codes (LVT stage 2).

A stride ``(st, sh, sw)`` splits a ``(T, H, W)`` volume into ``st * sh * sw``
interleaved slices. Slice ``(a, b, c)`` holds the positions
``(a + i * st, b + j * sh, c + k * sw)`` and has shape ``(T/st, H/sh, W/sw)``.
Slices are numbered (and generated) in raster order of ``(a, b, c)``:
``slice_idx = (a * sh + b) * sw + c``. Inside a slice positions are generated
in raster order of ``(t, h, w)`` and the codebooks of one position one after
another.

All functions take the volume axes as three consecutive axes starting at
``axis`` (default 1, i.e. ``[B, T, H, W, ...]``); any leading and trailing
axes are carried along untouched.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax.numpy as jnp
import numpy as np

Shape3 = Tuple[int, int, int]


def num_slices(stride: Sequence[int]) -> int:
  """Number of subscale slices ``st * sh * sw``."""
  st, sh, sw = stride
  return int(st * sh * sw)


def slice_shape(clip_shape: Sequence[int], stride: Sequence[int]) -> Shape3:
  """Shape ``(T/st, H/sh, W/sw)`` of one slice; checks that the stride divides."""
  check_stride(clip_shape, stride)
  return tuple(int(n // s) for n, s in zip(clip_shape, stride))  # type: ignore


def check_stride(clip_shape: Sequence[int], stride: Sequence[int]) -> None:
  if len(clip_shape) != 3 or len(stride) != 3:
    raise ValueError(f'need 3-d clip shape and stride, got {clip_shape}, {stride}')
  for n, s in zip(clip_shape, stride):
    if s < 1 or n % s:
      raise ValueError(f'stride {tuple(stride)} does not divide clip {tuple(clip_shape)}')


def slice_order(stride: Sequence[int]) -> list[Shape3]:
  """``idx -> (a, b, c)`` in generation (raster) order."""
  st, sh, sw = stride
  return [(a, b, c) for a in range(st) for b in range(sh) for c in range(sw)]


def slice_offsets(slice_idx, stride: Sequence[int]):
  """Offsets ``(a, b, c)`` of slice number ``slice_idx`` (int or int array)."""
  _, sh, sw = stride
  a = slice_idx // (sh * sw)
  b = (slice_idx // sw) % sh
  c = slice_idx % sw
  return a, b, c


def slice_index(a, b, c, stride: Sequence[int]):
  """Inverse of :func:`slice_offsets`."""
  _, sh, sw = stride
  return (a * sh + b) * sw + c


def slice_id_map(clip_shape: Sequence[int], stride: Sequence[int]) -> np.ndarray:
  """int32 ``[T, H, W]``: the slice number each position belongs to."""
  check_stride(clip_shape, stride)
  t, h, w = np.meshgrid(*[np.arange(n) for n in clip_shape], indexing='ij')
  st, sh, sw = stride
  return slice_index(t % st, h % sh, w % sw, stride).astype(np.int32)


def generation_rank(clip_shape: Sequence[int], stride: Sequence[int]) -> np.ndarray:
  """int32 ``[T, H, W]``: the rank of each position in generation order.

  Order: slice number, then raster order of ``(t, h, w)`` inside the slice.
  (Codebooks of a position follow each other: code ``(p, k)`` has rank
  ``rank[p] * nc + k``.)
  """
  sid = slice_id_map(clip_shape, stride)
  t, h, w = np.meshgrid(*[np.arange(n) for n in clip_shape], indexing='ij')
  st, sh, sw = stride
  _, hs, ws = slice_shape(clip_shape, stride)
  within = ((t // st) * hs + (h // sh)) * ws + (w // sw)
  per_slice = int(np.prod(slice_shape(clip_shape, stride)))
  return (sid * per_slice + within).astype(np.int32)


def split_slices(x, stride: Sequence[int], axis: int = 1):
  """``[..., T, H, W, ...] -> [..., S, T/st, H/sh, W/sw, ...]`` (S = st*sh*sw).

  The new slice axis sits at ``axis`` and is in generation order.
  """
  x = jnp.asarray(x)
  axis = axis % x.ndim
  lead, (T, H, W), trail = x.shape[:axis], x.shape[axis:axis + 3], x.shape[axis + 3:]
  st, sh, sw = stride
  t, h, w = slice_shape((T, H, W), stride)
  n_lead = len(lead)
  # position T index = i * st + a  ->  (i, a)
  y = x.reshape(lead + (t, st, h, sh, w, sw) + trail)
  l = list(range(n_lead))
  r = list(range(n_lead + 6, y.ndim))
  p = n_lead
  # -> (a, b, c, i, j, k)
  y = y.transpose(l + [p + 1, p + 3, p + 5, p, p + 2, p + 4] + r)
  return y.reshape(lead + (st * sh * sw, t, h, w) + trail)


def merge_slices(slices, stride: Sequence[int], axis: int = 1):
  """Inverse of :func:`split_slices`: ``[..., S, t, h, w, ...] -> [..., T, H, W, ...]``."""
  slices = jnp.asarray(slices)
  axis = axis % slices.ndim
  lead = slices.shape[:axis]
  S, t, h, w = slices.shape[axis:axis + 4]
  trail = slices.shape[axis + 4:]
  st, sh, sw = stride
  if S != st * sh * sw:
    raise ValueError(f'{S} slices but stride {tuple(stride)} has {st * sh * sw}')
  n_lead = len(lead)
  y = slices.reshape(lead + (st, sh, sw, t, h, w) + trail)
  l = list(range(n_lead))
  r = list(range(n_lead + 6, y.ndim))
  p = n_lead
  # (a, b, c, i, j, k) -> (i, a, j, b, k, c)
  y = y.transpose(l + [p + 3, p, p + 4, p + 1, p + 5, p + 2] + r)
  return y.reshape(lead + (t * st, h * sh, w * sw) + trail)


def get_slice(x, stride: Sequence[int], slice_idx):
  """Slice ``slice_idx[b]`` of every clip: ``[B, T, H, W, ...] -> [B, t, h, w, ...]``.

  ``slice_idx`` is an int array of shape ``[B]`` (may be traced).
  """
  x = jnp.asarray(x)
  return x[_slice_gather_indices(x.shape, stride, slice_idx)]


def put_slice(x, stride: Sequence[int], slice_idx, values):
  """Write ``values [B, t, h, w, ...]`` into slice ``slice_idx[b]`` of ``x [B, T, H, W, ...]``."""
  x = jnp.asarray(x)
  return x.at[_slice_gather_indices(x.shape, stride, slice_idx)].set(values)


def _slice_gather_indices(shape, stride: Sequence[int], slice_idx):
  """Broadcast (batch, t, h, w) index arrays selecting slice ``slice_idx[b]`` of each clip."""
  slice_idx = jnp.asarray(slice_idx, jnp.int32)
  a, b, c = slice_offsets(slice_idx, stride)
  st, sh, sw = stride
  t, h, w = slice_shape(shape[1:4], stride)
  bidx = jnp.arange(shape[0])[:, None, None, None]
  ti = a[:, None, None, None] + st * jnp.arange(t)[None, :, None, None]
  hi = b[:, None, None, None] + sh * jnp.arange(h)[None, None, :, None]
  wi = c[:, None, None, None] + sw * jnp.arange(w)[None, None, None, :]
  return bidx, ti, hi, wi
