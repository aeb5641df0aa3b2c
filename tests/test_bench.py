"""Benchmark plumbing (no speed assertions): deterministic step memory, the registry, the
dtype peaks, and one `suite` run end to end on the tiny config."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lvt_jax.bench import common, registry, suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_memory_is_xlas_analysis_and_grows_with_the_batch():
    def step(x, w):
        h = jnp.tanh(x @ w)
        return h @ w.T, x * 2.0

    sizes = []
    for batch in (64, 256):
        x, w = jnp.ones((batch, 128)), jnp.ones((128, 256))
        compiled = jax.jit(step, donate_argnums=0).lower(x, w).compile()
        mem = common.step_memory(compiled)
        m = compiled.memory_analysis()
        assert mem["step_memory_bytes"] == (m.argument_size_in_bytes + m.temp_size_in_bytes
                                            + m.output_size_in_bytes - m.alias_size_in_bytes)
        assert mem["argument_bytes"] == x.nbytes + w.nbytes
        assert mem["alias_bytes"] == x.nbytes  # the donated x is reused for x * 2
        assert common.step_memory_bytes(compiled) == mem["step_memory_bytes"]
        sizes.append(mem["step_memory_bytes"])
    assert sizes[1] > sizes[0]


def test_registry_holds_every_benchmark_and_the_suite_entries():
    for module in registry.MODULES:
        __import__(module)
    entries = {e for e, _, _ in registry.suite_entries()}
    assert {"train_vqvae", "train_vqvae_bf16", "train_transformer_dsfvt",
            "train_transformer_dsfvt_bf16", "train_transformer_dstsvt",
            "train_transformer_dstsvt_bf16", "remat", "sample", "sample_bf16",
            "fvd"} <= entries
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("fvd", "again")(lambda c, o: {})
    assert suite.entry_config("configs/bair.py:tiny", "dstsvt,bf16,tiny") == \
        "configs/bair.py:tiny,dstsvt,bf16"
    assert suite.entry_config("configs/bair.py", "") == "configs/bair.py"


def test_peaks_per_dtype():
    for name, peaks in common.ACCELERATOR_PEAKS.items():
        assert peaks["bfloat16"] >= peaks["float32"] > 0, name
    assert common.peak_flops(100.0, "bfloat16") == (100e9, "measured 2048^2 bfloat16 matmul (cpu)")


def test_suite_runs_entries_in_processes_and_skips_unknown_variants():
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")  # one CPU device, as a user runs it
    cmd = [sys.executable, "-m", "lvt_jax.bench", "suite", "--config=configs/kinetics600.py:tiny",
           "--only=train_vqvae_bf16,train_transformer_dstsvt", "--steps=1", "--warmup=0",
           "--config.vqvae.train.batch_size=4", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "suite" and out["failed"] == []
    assert "unknown variant" in out["skipped"]["train_transformer_dstsvt"]  # no DSTSVT there
    r = out["entries"]["train_vqvae_bf16"]
    assert r["config"] == "configs/kinetics600.py:tiny,bf16"
    assert r["dtype"] == "bfloat16" and r["batch"] == 4
    assert r["step_memory_bytes"] > 0 and r["peak_rss_gib"] > 0
    assert r["peak_source"] == "measured 2048^2 bfloat16 matmul (cpu)" and r["mfu"] > 0
    assert out["passed_on"] == ["--config.vqvae.train.batch_size=4", "--steps=1", "--warmup=0"]
