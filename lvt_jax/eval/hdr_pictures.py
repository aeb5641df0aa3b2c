"""HDR's own pictures of a sample: its layers, and a video with one object frozen.

* `layers_grid`: for one sampled video, the composite frames, then per slot its layer
  (its RGB over white, weighted by its alpha): what each slot predicts, frame by frame.
* `frozen_videos`: the same samples re-rendered with the time-varying latents of one
  object slot (the one that moves most after the priming frames) held at their last
  priming value: that object stops while everything else moves as sampled. It shows
  that motion lives in the time-varying latents, slot by slot.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lvt_jax import metrics


def layers_grid(frames: np.ndarray, rgb: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """One video: frames uint8 [T, H, W, 3], layers rgb [T, S, H, W, 3] in [-1, 1],
    alphas [T, S, H, W] -> a uint8 grid (composite row, then one row per slot)."""
    rows = [np.asarray(frames)]
    unit = np.clip((np.asarray(rgb) + 1.0) / 2.0, 0.0, 1.0)
    a = np.asarray(alphas)[..., None]
    for s in range(unit.shape[1]):
        layer = a[:, s] * unit[:, s] + (1.0 - a[:, s])
        rows.append(np.round(layer * 255).astype(np.uint8))
    return metrics.image_grid(rows)


def frozen_videos(generator, extras: dict, n_prime: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-renders sampled latents with the most-moving object slot frozen after the
    priming frames: (uint8 videos [B, T, H, W, 3], frozen slot [B])."""
    from lvt_jax.generate.hdr import freeze_moving_slot
    dyn, slot = freeze_moving_slot(jnp.asarray(extras["dynamic"]), n_prime)
    frames, _, _ = generator.render(extras["static"], extras["background"], np.asarray(dyn))
    return frames, np.asarray(slot)
