"""Sampling benchmark: the cached sampler vs the naive (reference) method, random weights.

Paper-size model of the config (DSFVT for configs/bair.py), `sample.n_prime` priming
frames (BAIR: 1 + 15 generated). Both samplers run the same compiled loops; only the way
the decoder state of a position is obtained differs.

* cached: whole clips (or `slices` of them, extrapolated linearly: every slice of a clip
  costs the same) at each batch size; the best per-video time is reported.
* naive: timed over a bounded number of positions of one slice at two counts, k1 < k2;
  the difference gives the cost of a position, the rest the per-slice cost (encoder);
  a video is (generated slices) x (per-slice + positions x per-position).
* bound_s_per_video_b1: streaming the decoder-side weights (decoder + channel predictor)
  once per generated position at the measured memory bandwidth: the floor at batch 1,
  where every step reads all of them for one video.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.bench import common
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.transformer import build_model, count_params, init_variables
from lvt_jax.sampling import controls
from lvt_jax.sampling.lvt import sampler


def _setup(config: Any):
    model = build_model(config.transformer.model)
    params = nn.meta.unbox(jax.jit(lambda k: init_variables(model, k))(jax.random.key(0)))
    return model, params["params"]


def _timed(model, params, batch: int, n_prime: int, method: str, limit) -> tuple[float, float]:
    """(compile seconds, run seconds) of one call at `batch` with `limit`."""
    c = model.config
    codes = jnp.zeros((batch, *c.clip_shape, c.num_codebooks), jnp.int32)
    keys = sampler.keys_for_videos(jax.random.key(0), np.arange(batch))
    ctl = controls.make_controls()
    fn = jax.jit(lambda p, x, k, t: sampler.sample_codes(model, p, x, k, t, n_prime=n_prime,
                                                         sampler=method, limit=limit))
    t0 = time.perf_counter()
    compiled = fn.lower(params, codes, keys, ctl).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(params, codes, keys, ctl))
    return t1 - t0, time.perf_counter() - t1


def sample(config: Any, batches: Sequence[int], slices: int, naive_positions: int) -> dict:
    model, params = _setup(config)
    c = model.config
    n_prime = int(config.sample.n_prime)
    first = sampler.first_slice(tuple(c.clip_shape), tuple(c.stride), n_prime)
    gen_slices = subscale.num_slices(c.stride) - first
    P = int(np.prod(subscale.slice_shape(c.clip_shape, c.stride)))
    slices = min(int(slices) or gen_slices, gen_slices)
    rows = {}
    for b in batches:
        compile_s, run_s = _timed(model, params, b, n_prime, "cached", (slices, P))
        rows[b] = dict(compile_s=round(compile_s, 2), run_s=round(run_s, 3),
                       s_per_video=run_s * gen_slices / slices / b)
        print(f"cached batch {b}: {rows[b]['s_per_video']:.3f} s/video "
              f"({slices} of {gen_slices} slices timed, compile {compile_s:.1f}s)", flush=True)
    best = min(rows, key=lambda b: rows[b]["s_per_video"])
    k2 = max(2, int(naive_positions))
    k1 = max(1, k2 // 4)
    naive = {}
    for b in sorted({min(batches), best}):
        t1 = _timed(model, params, b, n_prime, "naive", (1, k1))[1]
        t2 = _timed(model, params, b, n_prime, "naive", (1, k2))[1]
        per_pos = max(t2 - t1, 1e-9) / (k2 - k1)
        per_slice = max(t1 - k1 * per_pos, 0.0)
        naive[b] = gen_slices * (per_slice + P * per_pos) / b
        print(f"naive batch {b}: {naive[b]:.1f} s/video (extrapolated from {k1} and {k2} "
              "positions of one slice)", flush=True)
    counts = count_params({"params": params})
    dec_bytes = (counts["decoder"] + counts["channel_predictor"]) * 4
    bandwidth = common.bandwidth_gbs()
    positions = gen_slices * P
    b1 = min(batches)
    return dict(
        s_per_video_b1=rows[b1]["s_per_video"] if b1 == 1 else None,
        best_batch=best, s_per_video_best=rows[best]["s_per_video"],
        naive_s_per_video_b1=naive[b1] if b1 == 1 else None,
        naive_s_per_video_best=naive[best],
        speedup_vs_naive_best=naive[best] / rows[best]["s_per_video"],
        naive_positions_timed=[k1, k2],
        bandwidth_gbs=bandwidth,
        bound_s_per_video_b1=dec_bytes * positions / (bandwidth * 1e9),
        decoder_side_weight_mib=dec_bytes / 2 ** 20,
        generated_positions=positions, slices_timed=slices,
        per_batch={str(b): r for b, r in rows.items()},
        variant=str(c.variant), n_prime=n_prime)
