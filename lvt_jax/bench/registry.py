"""The benchmarks `python -m lvt_jax.bench NAME` runs, by name; `suite` runs them all.

A benchmark module registers its functions here; `lvt_jax.bench.__main__` imports the
modules listed in `MODULES` and finds them. A benchmark is `run(config, opts) -> dict`
(`opts`: the parsed command-line flags of `lvt_jax.bench.__main__`), and names the suite
entries it contributes: each entry is the benchmark run on the suite's config with extra
config variants appended (e.g. `bf16`), so one benchmark can appear several times.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

# Modules that register benchmarks (imported by __main__); add new ones here.
MODULES = ("lvt_jax.bench.train", "lvt_jax.bench.sample", "lvt_jax.bench.fvd",
           "lvt_jax.bench.hdr")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    run: Callable[[Any, Any], dict]
    help: str
    # (suite entry name, config variants to append, e.g. "dstsvt,bf16")
    suite: tuple[tuple[str, str], ...]


BENCHMARKS: dict[str, Benchmark] = {}


def register(name: str, help: str, suite: tuple[tuple[str, str], ...] | None = None):
    """Decorator: registers `run(config, opts) -> dict` as benchmark `name`.

    `suite` defaults to one entry of the same name on the suite's config; pass () to keep
    the benchmark out of the suite.
    """
    def deco(fn):
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = Benchmark(name, fn, help, ((name, ""),) if suite is None else suite)
        return fn
    return deco


def suite_entries() -> list[tuple[str, str, str]]:
    """(entry, benchmark, variants) of every registered benchmark, in registration order."""
    return [(entry, b.name, variants) for b in BENCHMARKS.values() for entry, variants in b.suite]
