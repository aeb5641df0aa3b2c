"""Features of the real clips, computed once per workdir and reused.

The real side of FVD is the same in every trial, every evaluation and every in-loop
check, so its features are stored in WORKDIR/eval/cache/. The key is everything that
determines them: a digest of the clips' bytes (so dataset, split, selection, frame count
and image size are all covered, whatever produced them), their shape, and the feature
function's signature (network, resize, precision). A changed dataset or feature setting
therefore misses the cache instead of silently reusing stale features.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable

import jax
import numpy as np

from lvt_jax import fileio

log = logging.getLogger(__name__)


def cache_dir(workdir: str) -> str:
    return fileio.join(workdir, "eval", "cache")


def clip_digest(clips: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((clips.shape, str(clips.dtype))).encode())
    h.update(np.ascontiguousarray(clips).data)
    return h.hexdigest()


def cached_features(extract: Callable[[np.ndarray], np.ndarray], clips: np.ndarray,
                    directory: str, signature: str, tag: str = "real") -> np.ndarray:
    """extract(clips), read from `directory` if an identical request was computed before.

    Every process computes (the extractor may run collectives); process 0 writes, atomically
    (a temporary file renamed into place), so a reader never sees a partial file.
    """
    key = {"tag": tag, "shape": list(clips.shape), "digest": clip_digest(clips),
           "signature": signature}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    n, t = clips.shape[:2]
    path = fileio.join(directory, f"{tag}_{n}x{t}_{key_hash}.npz")
    if fileio.exists(path):
        with fileio.open(path) as raw, np.load(raw) as f:
            if json.loads(str(f["key"])) == key:
                log.info("FVD %s features: cached %s", tag, path)
                return np.asarray(f["features"])
        log.warning("FVD cache %s holds another key; recomputing", path)
    feats = np.asarray(extract(clips), np.float32)
    if jax.process_index() == 0:
        fileio.makedirs(directory)
        with fileio.staged_write(path, keep_ext=True) as tmp:
            np.savez(tmp, features=feats, key=json.dumps(key, sort_keys=True))
        log.info("FVD %s features of %d clips written to %s", tag, n, path)
    return feats
