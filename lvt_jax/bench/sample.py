"""Sampling benchmark: the cached sampler vs the naive (reference) method, random weights.

Paper-size model of the config (DSFVT for configs/bair.py), `sample.n_prime` priming
frames (BAIR: 1 + 15 generated). Both samplers run the same compiled loops; only the way
the decoder state of a position is obtained differs.

* cached: whole clips (or `slices` of them, extrapolated linearly: every slice of a clip
  costs the same) at each batch size; the best per-video time is reported.
* naive: timed over a bounded number of positions of one slice at two counts, k1 < k2;
  the difference gives the cost of a position, the rest the per-slice cost (encoder);
  a video is (generated slices) x (per-slice + positions x per-position).
* bound_s_per_video_b1: the floor at batch 1, where every step reads all the decoder-side
  weights for one video: streaming them (decoder + channel predictor, in the compute
  dtype) once per generated position at the measured memory bandwidth, plus the
  encoder's FLOPs once per generated slice at the same-run matmul rate.
* flop_floor_s_per_video: the FLOPs of one video (encoder once per slice, one decoder
  step and the channel predictor per position; XLA's cost analysis at batch 1) at the
  same-run matmul rate (on accelerators: the dtype's peak): the floor at any batch.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.bench import common
from lvt_jax.bench.registry import register
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.transformer import build_model, count_params, init_variables
from lvt_jax.sampling import controls
from lvt_jax.sampling.lvt import cached as cached_lib
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


# Batch sizes timed when --sample_batches is not given. CPU: batch 256 was the best
# per video on the 2-core machine (docs/benchmarks.md, sampling).
DEFAULT_BATCHES = {"cpu": (1, 64, 256), "accelerator": (1, 64, 256, 1024)}


@register("sample", "sampling (cached vs naive): seconds per video, bounds and floors",
          suite=(("sample", ""), ("sample_bf16", "bf16")))
def sample_benchmark(config: Any, opts: Any) -> dict:
    cpu = jax.devices()[0].platform == "cpu"
    default = DEFAULT_BATCHES["cpu" if cpu else "accelerator"]
    batches = [int(b) for b in opts.sample_batches or default]
    return sample(config, batches, opts.sample_slices, opts.naive_positions)


def _cost_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def flops_per_video(model, params) -> tuple[float, float]:
    """(encoder FLOPs per slice, decoder-step + channel-predictor FLOPs per position) of
    one video, from XLA's cost analysis of each piece at batch 1 (lowered, not run)."""
    c = model.config
    codes = jnp.zeros((1, *c.clip_shape, c.num_codebooks), jnp.int32)
    s = jnp.zeros((1,), jnp.int32)
    labels = {"labels": s} if int(c.get("num_classes", 0)) else {}
    enc = _cost_flops(lambda p, x: model.apply({"params": p}, x, s, method="encode_context",
                                               **labels), params, codes)
    lay = cached_lib.layout(c)
    P = cached_lib.slice_positions(lay)
    prep = cached_lib.prepare(c, params, lay)
    enc_out = jnp.zeros((1, *lay.slice_shape, c.d_model), jnp.dtype(c.dtype))

    def step(prep, base, cache, chunk):
        hidden, cache = cached_lib.decoder_step(c, prep, lay, base, cache, jnp.int32(0), chunk)
        codes = jnp.zeros((1, c.num_codebooks), jnp.int32)
        logits = [model.apply({"params": params}, hidden, codes, k, method="predict_codebook")
                  for k in range(c.num_codebooks)]
        return hidden, cache, logits

    base = cached_lib.slice_base(c, prep, enc_out)
    cache = cached_lib.empty_cache(c, lay, 1)
    # a step reads the cache chunks up to its own: average over the positions
    dec = sum((stop - start) * _cost_flops(lambda *a, i=i: step(*a, i), prep, base, cache)
              for i, (start, stop) in enumerate(cached_lib.cache_chunks(P))) / P
    return enc, dec


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
    itemsize = jnp.dtype(c.dtype).itemsize  # the sampler reads weights in the compute dtype
    dec_bytes = (counts["decoder"] + counts["channel_predictor"]) * itemsize
    bandwidth = common.bandwidth_gbs()
    matmul = common.run_matmul_gflops()
    peak, peak_src = common.peak_flops(matmul if jnp.dtype(c.dtype) == jnp.float32
                                       else common.matmul_gflops(dtype=str(c.dtype)), c.dtype)
    enc_flops, step_flops = flops_per_video(model, params)
    positions = gen_slices * P
    video_flops = gen_slices * enc_flops + positions * step_flops
    b1 = min(batches)
    bound_b1 = dec_bytes * positions / (bandwidth * 1e9) + gen_slices * enc_flops / peak
    best_s = rows[best]["s_per_video"]
    return dict(
        s_per_video_b1=rows[b1]["s_per_video"] if b1 == 1 else None,
        best_batch=best, s_per_video_best=best_s,
        # the goal: <= 930, i.e. 3 s per video at a 310 GFLOP/s matmul
        s_per_video_best_x_matmul_gflops=best_s * matmul,
        naive_s_per_video_b1=naive[b1] if b1 == 1 else None,
        naive_s_per_video_best=naive[best],
        speedup_vs_naive_best=naive[best] / best_s,
        naive_positions_timed=[k1, k2],
        bandwidth_gbs=bandwidth,
        bound_s_per_video_b1=bound_b1,
        b1_over_bound=(rows[b1]["s_per_video"] / bound_b1) if b1 == 1 else None,
        decoder_side_weight_mib=dec_bytes / 2 ** 20,
        encoder_flops_per_slice=enc_flops, step_flops_per_position=step_flops,
        flops_per_video=video_flops, flop_floor_s_per_video=video_flops / peak,
        floor_peak_flops=peak, floor_peak_source=peak_src,
        best_over_flop_floor=best_s / (video_flops / peak),
        generated_positions=positions, slices_timed=slices,
        per_batch={str(b): r for b, r in rows.items()},
        variant=str(c.variant), n_prime=n_prime, dtype=str(c.dtype))
