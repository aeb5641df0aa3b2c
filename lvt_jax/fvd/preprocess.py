"""FVD's input transform: uint8 clips -> 224x224 bilinear, scaled to [-1, 1].

The reference FVD code (google-research/frechet_video_distance) resizes with TF1's
`tf.image.resize_bilinear` at its defaults (align_corners=False, half_pixel_centers=False):
output pixel o samples input coordinate o * in / out, not the half-pixel-centred
(o + 0.5) * in / out - 0.5 of `jax.image.resize`. Upsampling 64 -> 224 the two differ by
about a third of an input pixel, so we build TF1's interpolation explicitly. The resize is
separable and linear, so it is two small matrix products: exact, and fast on accelerators.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

TARGET_SIZE = 224


@functools.lru_cache(maxsize=16)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out, in]: rows of TF1 legacy bilinear weights (each row sums to 1)."""
    src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    m.flags.writeable = False
    return m.astype(np.float32)


def preprocess(clips: jax.Array, size: int = TARGET_SIZE) -> jax.Array:
    """uint8 (or float 0..255) [B, T, H, W, 3] -> float32 [B, T, size, size, 3] in [-1, 1]."""
    chex.assert_rank(clips, 5)
    chex.assert_axis_dimension(clips, 4, 3)
    _, _, h, w, _ = clips.shape
    x = clips.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST  # the resize is cheap; keep it exact on TPU/GPU too
    x = jnp.einsum("oh,bthwc->btowc", jnp.asarray(resize_matrix(h, size)), x, precision=hi)
    x = jnp.einsum("pw,btowc->btopc", jnp.asarray(resize_matrix(w, size)), x, precision=hi)
    return 2.0 * x / 255.0 - 1.0
