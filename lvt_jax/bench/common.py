"""Measurements every benchmark reports beside its own figures."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device for mfu on accelerators (float32 work runs as TF32 on GPUs
# at default precision, so the TF32 dense peak is the honest ceiling there).
ACCELERATOR_PEAKS = {
    "H100": 494e12, "H200": 494e12, "A100": 156e12, "L4": 60e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def time_fn(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Throughput of a jitted n x n float32 matmul on the default device (median)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    return 2 * n ** 3 / statistics.median(time_fn(lambda: f(a, b), repeats)) / 1e9


def bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Streaming read bandwidth: a jitted sum over a large float32 array."""
    x = jnp.ones((mib * 2 ** 20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    return x.nbytes / statistics.median(time_fn(lambda: f(x), repeats)) / 1e9


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def peak_flops(matmul: float) -> tuple[float, str]:
    """Per-process peak: accelerator table, or the measured matmul rate on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        for name, peak in ACCELERATOR_PEAKS.items():
            if name.lower() in dev.device_kind.lower():
                return peak * jax.local_device_count(), f"{dev.device_kind} dense peak"
    return matmul * 1e9, "measured 2048^2 float32 matmul (CPU)"


def compiled_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def device_description() -> str:
    dev = jax.devices()[0]
    return f"{jax.device_count()} x {dev.device_kind} ({dev.platform})"
