"""A cheap FVD during stage-2 training: a few samples every `eval.fvd_every` steps.

Independent of --mode=evaluate (same features, same distance, far fewer clips): the
trainer prepares the reference once with `reference()` (real features cached in the
workdir) and calls `cheap_fvd()` with its live parameters. With few clips the value is
biased upwards; it tracks progress, it is not the published number.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from lvt_jax import sharding as shd
from lvt_jax.fvd import FeatureExtractor, cached_features, fvd
from lvt_jax.fvd.cache import cache_dir


def make_extractor(config: Any, mesh) -> FeatureExtractor:
    ev = config.eval
    return FeatureExtractor(mesh, int(ev.i3d_batch_size), shd.rules_from_config(config),
                            precision=ev.i3d_precision)


@functools.lru_cache(maxsize=2)
def _default_extractor(device_ids: tuple[int, ...]) -> FeatureExtractor:
    mesh = shd.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    return FeatureExtractor(mesh)


def reference(config: Any, workdir: str, num_frames: int, n_prime: int,
              extractor: FeatureExtractor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(real features [V, D], priming frames uint8 [V, n_prime, H, W, 3]) of the first
    `eval.fvd_videos` clips of the evaluation split; the features are cached in the workdir."""
    from lvt_jax.evaluate import load_clips
    extractor = extractor or _default_extractor(tuple(d.id for d in jax.devices()))
    extractor.check(np.zeros((1, num_frames, 1, 1, 3), np.uint8))  # too short: fail now
    clips = load_clips(config, str(config.eval.get("split", "test")),
                       int(config.eval.fvd_videos), num_frames)
    feats = cached_features(extractor, clips, cache_dir(workdir), extractor.signature)
    return feats, clips[:, :n_prime].copy()


def cheap_fvd(generator: Any, real_features: np.ndarray, prime_frames: np.ndarray,
              key: jax.Array, transformer_params: Any,
              extractor: FeatureExtractor | None = None) -> float:
    """FVD of one sample per priming clip (with `transformer_params`) against `real_features`."""
    extractor = extractor or _default_extractor(tuple(d.id for d in jax.devices()))
    videos = np.asarray(generator.sample(prime_frames, key, transformer_params=transformer_params))
    return fvd(real_features, extractor(videos))
