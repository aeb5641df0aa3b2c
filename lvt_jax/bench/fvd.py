"""FVD benchmark: end-to-end I3D feature throughput (uint8 64x64 clips in, logits out).

Each batch size is timed through `FeatureExtractor` exactly as evaluation uses it: host
arrays sharded onto the mesh, resize + I3D in one program, features fetched back. Also
times the float64 Frechet distance of two 256-clip sets (the per-trial host cost).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import jax
import numpy as np

from lvt_jax import sharding as shd
from lvt_jax.bench import common
from lvt_jax.bench.registry import register
from lvt_jax.fvd import FeatureExtractor, fvd


@register("fvd", "I3D feature extraction (FVD): clips per second at several batch sizes")
def fvd_benchmark(config: Any, opts: Any) -> dict:
    cpu = jax.devices()[0].platform == "cpu"
    batches = [int(b) for b in opts.fvd_batches or (
        ["1", "2", "4"] if cpu else ["8", "16", "32", "64", "128"])]
    steps = opts.steps if opts["steps"].present or not cpu else 3
    return fvd_features(config, batches, steps, opts.warmup)


def fvd_features(config: Any, batches: Sequence[int], steps: int, warmup: int,
                 num_frames: int = 16) -> dict:
    mesh = shd.make_mesh(config.mesh)
    rules = shd.rules_from_config(config)
    size = int(config.data.image_size)
    rng = np.random.default_rng(0)
    precision = str(config.eval.i3d_precision)
    per_batch, flops_per_clip, best = {}, 0.0, None
    for b in batches:
        ex = FeatureExtractor(mesh, b, rules, precision=precision)
        b = ex.batch_size
        clips = rng.integers(0, 256, (b * steps, num_frames, size, size, 3), dtype=np.uint8)
        if not flops_per_clip:
            spec = jax.ShapeDtypeStruct((b, num_frames, size, size, 3), np.uint8,
                                        sharding=ex._in_sharding)
            with jax.default_matmul_precision(precision):
                flops_per_clip = common.compiled_flops(
                    ex._fn.lower(ex._variables, spec).compile()) / b
        for _ in range(max(warmup, 1)):  # the first call compiles
            ex(clips[:b])
        times = []
        for _ in range(2):  # best of two end-to-end passes over `steps` batches
            t = time.perf_counter()
            ex(clips)
            times.append(time.perf_counter() - t)
        per_batch[b] = b * steps / min(times)
        if best is None or per_batch[b] > per_batch[best]:
            best = b
        print(f"  batch {b:>4}: {per_batch[b]:.2f} clips/s", flush=True)
    feats = np.random.default_rng(1).normal(size=(2, 256, 400)).astype(np.float32)
    fvd(feats[0], feats[1])
    frechet_s = statistics.median(
        [_timed(lambda: fvd(feats[0], feats[1])) for _ in range(3)])
    return {
        "clips_per_s": per_batch[best], "best_batch": best,
        "clips_per_s_by_batch": {str(k): v for k, v in per_batch.items()},
        "flops_per_clip": flops_per_clip, "flops_per_step": flops_per_clip * best,
        "step_s": best / per_batch[best], "num_frames": num_frames, "image_size": size,
        "precision": precision, "frechet_256x400_s": frechet_s,
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
