"""Training-step benchmarks: a stage's jitted step at a given batch, after warm-up."""
from __future__ import annotations

import statistics
from typing import Any

import jax
import numpy as np

from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.bench import common


def time_train_step(stage, batch: dict, steps: int, warmup: int) -> dict:
    """Median step time and XLA's FLOP count for one step of `stage` on `batch`."""
    mesh = shd.make_mesh(stage.config.mesh)
    rules = shd.rules_from_config(stage.config)
    bound = trainer.ShardedStage(stage, mesh, rules)
    state = bound.init()
    batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim, rules)) for k, v in batch.items()}
    with bound.context():
        compiled = bound._train_step.lower(state, batch).compile()
    flops = common.compiled_flops(compiled)
    for _ in range(warmup):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        def one():
            nonlocal state
            state, metrics = compiled(state, batch)
            return metrics
        times += common.time_fn(one, 1)
    return {"step_s": statistics.median(times), "flops_per_step": flops,
            "loss": float(jax.device_get(m["loss"]))}


def train_vqvae(config: Any, batch_size: int, steps: int, warmup: int) -> dict:
    from lvt_jax.stages.vqvae import VQVAEStage
    config.vqvae.train.batch_size = batch_size
    s = config.data.image_size
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (batch_size, s, s, 3), dtype=np.uint8)}
    r = time_train_step(VQVAEStage(config), batch, steps, warmup)
    r["frames_per_s"] = batch_size / r["step_s"]
    r["batch"] = batch_size
    return r
