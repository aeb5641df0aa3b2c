"""Fixed 3-D sinusoidal position encoding of the LVT decoder.

For each of the axes (t, h, w) there are ``n = d // 6`` timescales; the axis
contributes ``[sin(pos * inv), cos(pos * inv)]`` (2n channels) at channel
offset ``axis * 2n``; the remaining ``d - 6n`` channels are zero. The inverse
timescales are ``min_ts * exp(-i * log(max_ts / min_ts) / n)`` for
``i = 0 .. n-1`` (so they run from 1 down to just above 1/max_ts, as in the
reference release, which divides by ``n`` rather than ``n - 1``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def sinusoidal_3d(shape: Sequence[int], d: int, min_timescale: float = 1.0,
                  max_timescale: float = 1.0e4) -> np.ndarray:
  """float32 ``[t, h, w, d]`` position encoding (a constant)."""
  num_dims = 3
  if d < 2 * num_dims:
    raise ValueError(f'd={d} must be >= {2 * num_dims}')
  n = d // (2 * num_dims)
  log_inc = np.log(max_timescale / min_timescale) / n
  inv = min_timescale * np.exp(np.arange(n, dtype=np.float64) * -log_inc)
  out = np.zeros(tuple(shape) + (d,), dtype=np.float64)
  for axis, length in enumerate(shape):
    scaled = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    signal = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)  # [L, 2n]
    bshape = [1, 1, 1, 2 * n]
    bshape[axis] = length
    out[..., axis * 2 * n:(axis + 1) * 2 * n] += signal.reshape(bshape)
  return out.astype(np.float32)
