"""A small fixed random video network: features for clips too short for the I3D.

The I3D needs clips of >= 9 frames; the `tiny` configs make 4-frame clips. Smoke runs of
the evaluation (the notebooks' CI mode) and tests use this network instead, so that the
whole protocol (sampling, features, Frechet distances, eval.json, report) still runs. Its
numbers are not FVDs: the evaluation marks them `protocol: non-standard` and names the
features in eval.json and the report.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

SIGNATURE = "stand-in: fixed random 3-D conv, 16 features (smoke runs only; not FVD)"


class StandIn(nn.Module):
    """One strided 3-D convolution and a linear map of its spatio-temporal mean."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3, 3), strides=(1, 2, 2))(x))
        return nn.Dense(16)(x.mean(axis=(1, 2, 3)))


def stand_in(size: int = 16) -> tuple[nn.Module, dict]:
    """(module, variables); weights drawn with numpy from seed 0 (no init program to
    compile), scaled by 1/sqrt(fan_in)."""
    module = StandIn()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4, size, size, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32),
        shapes)
    return module, variables


def stand_in_extractor(mesh: Mesh, batch_size: int = 8, rules=None):
    """A FeatureExtractor on the stand-in network (16x16 inputs, any clip length)."""
    from lvt_jax.fvd.features import FeatureExtractor
    return FeatureExtractor(mesh, batch_size, rules, model=stand_in(), image_size=16,
                            signature=SIGNATURE)
