"""A cheap FVD during stage-2 training: a few samples every `eval.fvd_every` steps.

Independent of --mode=evaluate (same features, same distance, far fewer clips): the
hook (`FVDHook`, handed to the trainer by the mode that trains stage 2) prepares the
reference once with `reference()` (real features cached in the workdir) and calls
`cheap_fvd()` with the live parameters. With few clips the value is biased upwards; it
tracks progress, it is not the published number.
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
    videos = np.asarray(generator.sample(prime_frames, key, stage2_params=transformer_params))
    return fvd(real_features, extractor(videos))


class FVDHook:
    """The trainer's periodic hook: `eval/fvd_cheap` every `eval.fvd_every` steps.

    `make_generator(stage2_params)` builds the system's generator around the live stage-2
    parameters (stage 1 restored from the workdir); it is called once, on first use."""

    def __init__(self, config: Any, workdir: str, mesh, make_generator):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.every = int(config.eval.fvd_every)
        self._make_generator = make_generator
        self._ready = None

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        if self._ready is None:
            gen = self._make_generator(state.params)
            extractor = make_extractor(self.config, self.mesh)
            feats, prime = reference(self.config, self.workdir, gen.num_frames, gen.n_prime,
                                     extractor)
            self._ready = (gen, extractor, feats, prime)
        gen, extractor, feats, prime = self._ready
        key = jax.random.fold_in(jax.random.key(int(self.config.eval.seed)), step)
        return {"fvd_cheap": cheap_fvd(gen, feats, prime, key, state.params, extractor)}
