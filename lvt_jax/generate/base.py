"""What both systems' generators share: fixed-size, batch-sharded calls from host arrays.

Every call runs at one fixed global batch (`config.sample.batch_size`, the last chunk
padded by repeating its last row), with the batch split over the mesh's data axis, so each
jitted function compiles once. Inputs are host arrays that every process holds in full
(they are cut into the process's shards with `jax.make_array_from_callback`), outputs are
host arrays on every process: the same code runs on one CPU, one GPU or a multi-host slice.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lvt_jax import sharding as shd
from lvt_jax.sampling import controls as ctl_lib


def to_uint8(x: jax.Array) -> jax.Array:
    """Decoder output in [-1, 1] -> uint8 pixels (inverse of `metrics.to_model_input`)."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def keys_for_videos(key: jax.Array, indices: Any) -> jax.Array:
    """Typed keys [B] of the videos numbered `indices`: a video's randomness depends only
    on (seed, its index), not on the batch it is sampled in or the number of devices."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key) if key.shape else jax.random.key(key)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


class BatchedGenerator:
    """Holds the mesh, the batch size and the sampling controls; cuts host arrays into
    padded, batch-sharded chunks."""

    def __init__(self, config: Any, mesh: Mesh):
        self.config, self.mesh = config, mesh
        s = config.sample
        self.rules = shd.rules_from_config(config)
        self.n_prime = int(s.n_prime)
        self.controls = ctl_lib.make_controls(s.temperature, s.top_k, s.top_p)
        self.batch_size = int(s.batch_size)
        shd.check_batch_divides("sample.batch_size", self.batch_size, mesh, self.rules)
        self.image_shape = (int(config.data.image_size), int(config.data.image_size), 3)
        self.progress: Optional[Callable[[int], None]] = None
        self.steps: dict = {}

    def _global(self, host: np.ndarray) -> jax.Array:
        """A host array every process holds in full -> batch-sharded global array."""
        sharding = shd.batch_sharding(self.mesh, host.ndim, self.rules)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def _chunks(self, n: int):
        for start in range(0, n, self.batch_size):
            yield start, min(n, start + self.batch_size)

    def _padded(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        part = x[start:stop]
        if len(part) < self.batch_size:
            pad = np.repeat(part[-1:], self.batch_size - len(part), axis=0)
            part = np.concatenate([part, pad])
        return part

    def _global_keys(self, key: jax.Array, idx: np.ndarray) -> jax.Array:
        host = np.asarray(jax.random.key_data(keys_for_videos(key, idx)))
        return jax.random.wrap_key_data(self._global(host))

    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[2:] != self.image_shape:
            raise ValueError(f"expected uint8 frames [B, T, {self.image_shape}], got "
                             f"{frames.dtype} {frames.shape}")
        if len(frames) == 0:
            raise ValueError("no videos given")
        return frames

    def num_batches(self, n: int) -> int:
        return math.ceil(n / self.batch_size)
