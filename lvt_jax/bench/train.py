"""Training-step benchmarks: a stage's jitted step at a given batch, after warm-up.

Every result carries XLA's memory analysis of the compiled step (`step_memory_bytes`:
arguments + temporaries + outputs, see `common.step_memory`) beside the process's peak
RSS, and the compute dtype (`dtype`) that `mfu` is measured against.
"""
from __future__ import annotations

import copy
import statistics
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.bench import common
from lvt_jax.bench.registry import register


def time_train_step(stage, batch: dict, steps: int, warmup: int) -> dict:
    """Median step time, XLA's FLOP count and memory analysis of one step of `stage`."""
    mesh = shd.make_mesh(stage.config.mesh)
    rules = shd.rules_from_config(stage.config)
    bound = trainer.ShardedStage(stage, mesh, rules)
    state = bound.init()
    batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim, rules)) for k, v in batch.items()}
    with bound.context():
        compiled = bound._train_step.lower(state, batch).compile()
    flops = common.compiled_flops(compiled)
    for _ in range(max(warmup, 1)):  # at least one untimed step (allocations, first run)
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(max(steps, 1)):
        def one():
            nonlocal state
            state, metrics = compiled(state, batch)
            return metrics
        times += common.time_fn(one, 1)
    return {"step_s": statistics.median(times), "flops_per_step": flops,
            "loss": float(jax.device_get(m["loss"])), **common.step_memory(compiled)}


def _batch_size(opts: Any, default: int) -> int:
    return int(opts.batch or default)


@register("train_vqvae", "stage-1 (VQ-VAE) training step; frames per second",
          suite=(("train_vqvae", ""), ("train_vqvae_bf16", "bf16")))
def train_vqvae(config: Any, opts: Any) -> dict:
    from lvt_jax.stages.vqvae import VQVAEStage
    batch_size = _batch_size(opts, config.vqvae.train.batch_size)
    config.vqvae.train.batch_size = batch_size
    s = config.data.image_size
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (batch_size, s, s, 3), dtype=np.uint8)}
    r = time_train_step(VQVAEStage(config), batch, opts.steps, opts.warmup)
    r["frames_per_s"] = batch_size / r["step_s"]
    r["batch"] = batch_size
    r["dtype"] = str(config.vqvae.model.get("dtype", "float32"))
    return r


def _code_batch(config: Any, batch_size: int) -> dict:
    m = config.transformer.model
    rng = np.random.default_rng(0)
    codes = rng.integers(0, m.vocab_size, (batch_size, *m.clip_shape, m.num_codebooks))
    batch = {"codes": codes.astype(np.int16)}
    if int(m.get("num_classes", 0)) > 0:  # class-conditional: one class id per clip
        batch["label"] = rng.integers(0, m.num_classes, (batch_size,)).astype(np.int32)
    return batch


@register("train_transformer", "stage-2 (Video Transformer) training step; positions per "
          "second", suite=(("train_transformer_dsfvt", ""),
                           ("train_transformer_dsfvt_bf16", "bf16"),
                           ("train_transformer_dstsvt", "dstsvt"),
                           ("train_transformer_dstsvt_bf16", "dstsvt,bf16")))
def train_transformer(config: Any, opts: Any) -> dict:
    """Stage-2 step on random code clips; throughput in loss positions per second.

    A loss position is a (clip, position) of the drawn slice counted in the loss, so
    positions_per_s = batch * counted positions per slice / step time (DSFVT: 256 per
    clip), the same unit as the PyTorch reference's figure.
    """
    from lvt_jax.stages.transformer import TransformerStage
    batch_size = _batch_size(opts, config.transformer.train.batch_size)
    config.transformer.train.batch_size = batch_size
    m = config.transformer.model
    stage = TransformerStage(config)
    batch = _code_batch(config, batch_size)
    r = time_train_step(stage, batch, opts.steps, opts.warmup)
    r["flops_per_step"] = unrolled_step_flops(config, batch)
    r["flops_source"] = "XLA cost analysis of the step with unrolled layers"
    r["positions_per_step"] = batch_size * stage.counted_positions_per_clip()
    r["positions_per_s"] = r["positions_per_step"] / r["step_s"]
    r.update(batch=batch_size, variant=str(m.get("variant", "")), dtype=str(m.dtype),
             remat=str(m.remat), scan_layers=bool(m.scan_layers))
    return r


@register("remat", "stage-2 step memory (XLA analysis) and time under each "
          "rematerialisation policy, layers scanned and unrolled")
def remat(config: Any, opts: Any) -> dict:
    """`step_memory_bytes` and step time of the stage-2 step per (scan, remat policy).

    Remat saves memory only when XLA cannot schedule the recomputation early: inside the
    scanned layer loop. Unrolled layers are reported too, so the difference is visible.
    """
    from lvt_jax.models.lvt.attention import REMAT_POLICIES
    from lvt_jax.stages.transformer import TransformerStage
    batch_size = _batch_size(opts, config.transformer.train.batch_size)
    rows = {}
    for scan in (True, False):
        for policy in REMAT_POLICIES:
            cfg = copy.deepcopy(config)
            cfg.transformer.train.batch_size = batch_size
            cfg.transformer.model.update(scan_layers=scan, remat=policy)
            r = time_train_step(TransformerStage(cfg), _code_batch(cfg, batch_size),
                                opts.steps, opts.warmup)
            key = f"{'scan' if scan else 'unrolled'}_{policy}"
            rows[key] = {"step_s": r["step_s"], "step_memory_bytes": r.get("step_memory_bytes"),
                         "temp_bytes": r.get("temp_bytes")}
            print(f"  {key}: {r['step_s']:.3f} s/step, step memory "
                  f"{(r.get('step_memory_bytes') or 0) / 2**20:.1f} MiB", flush=True)
    base = rows["scan_none"]["step_memory_bytes"]
    return {"batch": batch_size, "variant": str(config.transformer.model.variant),
            "dtype": str(config.transformer.model.dtype), "by_policy": rows,
            "scan_full_memory_ratio": (rows["scan_full"]["step_memory_bytes"] / base
                                       if base else None)}


def unrolled_step_flops(config: Any, batch: dict) -> float:
    """FLOPs of one stage-2 step, counted on the step lowered with unrolled layers.

    XLA's cost analysis counts a scanned (while-loop) body once, so the compiled step of
    the scanned model under-reports its FLOPs by about the layer count. Lowering only
    (no compile) takes seconds.
    """
    from lvt_jax.stages.transformer import TransformerStage
    cfg = copy.deepcopy(config)
    cfg.transformer.model.update(scan_layers=False, remat="none")
    stage = TransformerStage(cfg)
    state = jax.eval_shape(lambda r: nn.unbox(stage.init(r)),
                           jax.random.key_data(jax.random.key(0)))
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    cost = jax.jit(stage.train_step).lower(state, spec).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0
