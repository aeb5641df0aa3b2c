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


def train_transformer(config: Any, batch_size: int, steps: int, warmup: int) -> dict:
    """Stage-2 step on random code clips; throughput in loss positions per second.

    A loss position is a (clip, position) of the drawn slice counted in the loss, so
    positions_per_s = batch * counted positions per slice / step time (DSFVT: 256 per
    clip), the same unit as the PyTorch reference's figure.
    """
    from lvt_jax.stages.transformer import TransformerStage
    config.transformer.train.batch_size = batch_size
    m = config.transformer.model
    rng = np.random.default_rng(0)
    codes = rng.integers(0, m.vocab_size, (batch_size, *m.clip_shape, m.num_codebooks))
    stage = TransformerStage(config)
    batch = {"codes": codes.astype(np.int16)}
    if int(m.get("num_classes", 0)) > 0:  # class-conditional: one class id per clip
        batch["label"] = rng.integers(0, m.num_classes, (batch_size,)).astype(np.int32)
    r = time_train_step(stage, batch, steps, warmup)
    r["flops_per_step"] = unrolled_step_flops(config, batch)
    r["flops_source"] = "XLA cost analysis of the step with unrolled layers"
    r["positions_per_step"] = batch_size * stage.counted_positions_per_clip()
    r["positions_per_s"] = r["positions_per_step"] / r["step_s"]
    r["batch"] = batch_size
    r["variant"] = str(m.get("variant", ""))
    return r


def unrolled_step_flops(config: Any, batch: dict) -> float:
    """FLOPs of one stage-2 step, counted on the step lowered with unrolled layers.

    XLA's cost analysis counts a scanned (while-loop) body once, so the compiled step of
    the scanned model under-reports its FLOPs by about the layer count. Lowering only
    (no compile) takes seconds.
    """
    import copy

    import flax.linen as nn
    from lvt_jax.stages.transformer import TransformerStage
    cfg = copy.deepcopy(config)
    cfg.transformer.model.scan_layers = False
    stage = TransformerStage(cfg)
    state = jax.eval_shape(lambda r: nn.unbox(stage.init(r)),
                           jax.random.key_data(jax.random.key(0)))
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    cost = jax.jit(stage.train_step).lower(state, spec).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0
