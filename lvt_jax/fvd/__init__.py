"""Frechet Video Distance, offline: Kinetics-400 I3D logits of 16-frame clips at 224x224.

- `features.FeatureExtractor`: jitted, batch-sharded I3D features of uint8 clips;
- `frechet.fvd`: the Frechet distance of two feature sets (float64, host);
- `cache.cached_features`: real-set features computed once per workdir.
"""
from lvt_jax.fvd.cache import cached_features
from lvt_jax.fvd.features import FeatureExtractor
from lvt_jax.fvd.frechet import fit, frechet_distance, fvd

__all__ = ["FeatureExtractor", "cached_features", "fit", "frechet_distance", "fvd"]
