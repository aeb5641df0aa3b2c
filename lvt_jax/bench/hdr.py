"""HDR's training benchmarks and the memory comparison of both systems (the paper's claim).

`train_hdr_autoencoder` / `train_hdr_predictor`: a stage's training step, timed like
LVT's (lvt_jax/bench/train.py) and with XLA's memory analysis (`step_memory_bytes`).

`memory`: the training step of every stage of both systems compiled (not run) for the
same clips: B clips of T = `data.clip_length` frames at `data.image_size`. LVT's VQ-VAE
sees their B*T frames, its transformer their codes; HDR's autoencoder sees the clips, its
predictor their latents. Without --batch every stage keeps its config's own batch (the
papers' settings). With --memory_rss each stage's step also runs once in a process of its
own for its peak RSS (`peak_rss_gib`; slow at the papers' batches on a CPU). The result carries `stage1_ratio`, `stage2_ratio` (HDR / LVT) and
`total_ratio` (HDR's larger stage / LVT's larger stage). Needs a config with both systems'
sections: configs/hdr_bair.py, hdr_kinetics600.py or hdr_demo.py.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import jax
import numpy as np
from ml_collections import config_flags

from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.bench import common
from lvt_jax.bench.registry import register
from lvt_jax.bench.train import _code_batch, time_train_step

STAGES = ("vqvae", "transformer", "hdr_autoencoder", "hdr_predictor")


def _require_hdr(config: Any) -> None:
    if "hdr" not in config:
        raise ValueError("this benchmark needs an HDR config (with both systems' sections): "
                         "pass --config=configs/hdr_bair.py (or hdr_kinetics600.py, "
                         "hdr_demo.py)")


def _clips(config: Any, batch: int, frames: int) -> np.ndarray:
    s = int(config.data.image_size)
    return np.random.default_rng(0).integers(0, 256, (batch, frames, s, s, 3), dtype=np.uint8)


def _latents(config: Any, batch: int, frames: int) -> np.ndarray:
    from lvt_jax.models.hdr.latents import layout, num_features
    f = num_features(layout(config.hdr.model))
    return np.random.default_rng(0).normal(size=(batch, frames, 1, 1, f)).astype(np.float32)


def stage_and_batch(name: str, config: Any, clips: int | None) -> tuple[Any, dict, dict]:
    """(stage, one batch, what the batch holds) of stage `name` of either system.
    `clips` None: the stage's own batch size (and, for HDR's autoencoder, clip length)."""
    T = int(config.data.clip_length)
    if name == "vqvae":
        from lvt_jax.stages.vqvae import VQVAEStage
        frames = int(config.vqvae.train.batch_size) if clips is None else clips * T
        config.vqvae.train.batch_size = frames
        return (VQVAEStage(config), {"image": _clips(config, 1, frames)[0]},
                {"frames": frames})
    if name == "transformer":
        from lvt_jax.stages.transformer import TransformerStage
        b = int(config.transformer.train.batch_size) if clips is None else clips
        config.transformer.train.batch_size = b
        return TransformerStage(config), _code_batch(config, b), {"clips": b, "frames": b * T}
    if name == "hdr_autoencoder":
        from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
        t = config.hdr.autoencoder.train
        if clips is not None:
            t.batch_size, t.clip_length = clips, T
        b, length = int(t.batch_size), int(t.clip_length)
        return (HDRAutoencoderStage(config), {"video": _clips(config, b, length)},
                {"clips": b, "frames": b * length})
    if name == "hdr_predictor":
        from lvt_jax.stages.hdr_predictor import HDRPredictorStage
        t = config.hdr.predictor.train
        if clips is not None:
            t.batch_size = clips
        b = int(t.batch_size)
        return (HDRPredictorStage(config), {"latents": _latents(config, b, T)},
                {"clips": b, "frames": b * T})
    raise ValueError(f"unknown stage {name!r}; one of {STAGES}")


def compiled_memory(name: str, config: Any, clips: int | None) -> dict:
    """XLA's memory analysis of stage `name`'s compiled training step (nothing runs, so
    paper-size steps are measured on any machine)."""
    stage, batch, what = stage_and_batch(name, config, clips)
    mesh = shd.make_mesh(config.mesh)
    rules = shd.rules_from_config(config)
    for v in batch.values():
        shd.check_batch_divides(f"{name}'s batch (--batch)", v.shape[0], mesh, rules)
    bound = trainer.ShardedStage(stage, mesh, rules)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=shd.batch_sharding(mesh, v.ndim, rules))
             for k, v in batch.items()}
    with bound.context():
        compiled = bound._train_step.lower(bound.abstract, batch).compile()
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(bound.abstract.params))
    return {**what, "params": params, **common.step_memory(compiled)}


def memory_table(config: Any, clips: int | None) -> dict:
    """The memory analysis of every stage of both systems, and the HDR / LVT ratios."""
    _require_hdr(config)
    out = {name: compiled_memory(name, copy.deepcopy(config), clips) for name in STAGES}
    mem = {k: v["step_memory_bytes"] for k, v in out.items()}
    return {"stages": out,
            "stage1_ratio": mem["hdr_autoencoder"] / mem["vqvae"],
            "stage2_ratio": mem["hdr_predictor"] / mem["transformer"],
            "total_ratio": (max(mem["hdr_autoencoder"], mem["hdr_predictor"])
                            / max(mem["vqvae"], mem["transformer"]))}


def _rss_of_one_step(name: str, config_arg: str, clips: int | None) -> float | None:
    """Peak RSS (GiB) of a fresh process that compiles and runs stage `name`'s step once."""
    code = ("import json, sys; from lvt_jax.bench import hdr; "
            f"print(json.dumps(hdr.run_one({name!r}, {config_arg!r}, {clips!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        print(f"  {name}: peak RSS not measured ({out.stderr.strip().splitlines()[-1:]})")
        return None
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_gib"])


def run_one(name: str, config_arg: str, clips: int | None) -> dict:
    from lvt_jax.bench.suite import load_config
    stage, batch, _ = stage_and_batch(name, load_config(config_arg), clips)
    time_train_step(stage, batch, steps=1, warmup=0)
    return {"peak_rss_gib": common.peak_rss_gib()}


@register("memory", "training-step memory (XLA's analysis) of every stage of LVT and HDR "
          "for the same clips; stage2_ratio, total_ratio (needs configs/hdr_*.py)", suite=())
def memory(config: Any, opts: Any) -> dict:
    clips = int(opts.batch) if opts.batch else None
    r = memory_table(config, clips)
    for name, row in r["stages"].items():
        print(f"  {name:>16}: {row['step_memory_bytes'] / 2**20:9.1f} MiB "
              f"({', '.join(f'{k} {row[k]}' for k in ('clips', 'frames') if k in row)})",
              flush=True)
    if opts.memory_rss:  # each stage's step run once in a process of its own
        config_arg = config_flags.get_config_filename(opts["config"])
        for name, row in r["stages"].items():
            row["peak_rss_gib"] = _rss_of_one_step(name, config_arg, clips)
    r.update(batch=clips if clips else "each stage's own",
             clip_length=int(config.data.clip_length), image_size=int(config.data.image_size))
    return r


def _train(name: str, config: Any, opts: Any) -> dict:
    _require_hdr(config)
    stage, batch, what = stage_and_batch(name, config, int(opts.batch) if opts.batch else None)
    r = time_train_step(stage, batch, opts.steps, opts.warmup)
    r.update(what, batch=what["clips"], frames_per_s=what["frames"] / r["step_s"],
             dtype="float32")
    return r


@register("train_hdr_autoencoder", "HDR stage-1 training step; frames per second "
          "(needs configs/hdr_*.py)", suite=())
def train_hdr_autoencoder(config: Any, opts: Any) -> dict:
    """--batch: clips of `data.clip_length` frames (default: the stage's batch and clip)."""
    return _train("hdr_autoencoder", config, opts)


@register("train_hdr_predictor", "HDR stage-2 training step; frames per second "
          "(needs configs/hdr_*.py)", suite=())
def train_hdr_predictor(config: Any, opts: Any) -> dict:
    return _train("hdr_predictor", config, opts)
