"""Measurements every benchmark reports beside its own figures."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

# Dense (no sparsity) peak FLOP/s per device and compute dtype, for mfu on accelerators.
# float32 work runs as TF32 on NVIDIA GPUs and as bfloat16 passes on TPUs at JAX's default
# matmul precision, so those are the honest float32 ceilings. Vendor data sheets (SXM
# parts for H100/H200/A100).
ACCELERATOR_PEAKS = {
    "H100": {"float32": 494e12, "bfloat16": 989e12},
    "H200": {"float32": 494e12, "bfloat16": 989e12},
    "A100": {"float32": 156e12, "bfloat16": 312e12},
    "L4": {"float32": 60e12, "bfloat16": 121e12},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5e": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5p": {"float32": 459e12, "bfloat16": 459e12},
    "TPU v6 lite": {"float32": 918e12, "bfloat16": 918e12},
}


def time_fn(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def matmul_gflops(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """Throughput of a jitted n x n matmul (float32 unless `dtype`) on the default device
    (median)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    return 2 * n ** 3 / statistics.median(time_fn(lambda: f(a, b), repeats)) / 1e9


_RUN: dict[str, float] = {}


def run_matmul_gflops() -> float:
    """The float32 matmul rate of this run: measured once (the bench CLI does it before
    the benchmark), then shared, so every figure of a result is normalised by one number."""
    if "float32" not in _RUN:
        _RUN["float32"] = matmul_gflops()
    return _RUN["float32"]


def bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Streaming read bandwidth: a jitted sum over a large float32 array."""
    x = jnp.ones((mib * 2 ** 20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    return x.nbytes / statistics.median(time_fn(lambda: f(x), repeats)) / 1e9


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def peak_flops(matmul: float, dtype: str = "float32") -> tuple[float, str]:
    """Per-process peak FLOP/s for work in `dtype`: the accelerator table, or on CPU (and
    unknown devices) `matmul`, the measured 2048^2 matmul rate in that dtype (GFLOP/s)."""
    dev = jax.devices()[0]
    dtype = str(jnp.dtype(dtype))
    if dev.platform != "cpu":
        for name, peaks in ACCELERATOR_PEAKS.items():
            if name.lower() in dev.device_kind.lower() and dtype in peaks:
                return (peaks[dtype] * jax.local_device_count(),
                        f"{dev.device_kind} dense {dtype} peak")
    return matmul * 1e9, f"measured 2048^2 {dtype} matmul ({dev.platform})"


def step_memory(compiled) -> dict[str, int]:
    """XLA's memory analysis of a compiled program, in bytes (deterministic, unlike RSS).

    `step_memory_bytes` = arguments + temporaries + outputs, where outputs that reuse a
    donated argument's buffer (`alias_bytes`, e.g. a train state updated in place) are
    counted once. Empty when the backend gives no analysis.
    """
    m = compiled.memory_analysis()
    if m is None:
        return {}
    args, temp = int(m.argument_size_in_bytes), int(m.temp_size_in_bytes)
    out, alias = int(m.output_size_in_bytes), int(m.alias_size_in_bytes)
    return {"step_memory_bytes": args + temp + out - alias, "argument_bytes": args,
            "temp_bytes": temp, "output_bytes": out, "alias_bytes": alias}


def step_memory_bytes(compiled) -> int | None:
    """Memory of one run of a compiled step (see :func:`step_memory`); None if unknown."""
    return step_memory(compiled).get("step_memory_bytes")


def compiled_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def device_description() -> str:
    dev = jax.devices()[0]
    return f"{jax.device_count()} x {dev.device_kind} ({dev.platform})"
