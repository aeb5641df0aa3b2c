"""Mode dispatch: each mode is a function of (config, workdir)."""
from __future__ import annotations

import logging
from typing import Any, Callable

from lvt_jax import sharding as shd

log = logging.getLogger(__name__)


def _need_workdir(workdir: str | None, mode: str) -> str:
    if not workdir:
        raise ValueError(f"--mode={mode} writes checkpoints and results: pass --workdir=DIR.")
    return workdir


def train_vqvae(config: Any, workdir: str | None) -> dict:
    from lvt_jax import init_from, trainer, validate
    from lvt_jax.stages.vqvae import VQVAEStage
    workdir = _need_workdir(workdir, "train_vqvae")
    mesh = shd.make_mesh(config.mesh)
    validate.vqvae(config, mesh)
    stage = VQVAEStage(config)
    _, results = trainer.train(stage, workdir, mesh, init=init_from.initializer(stage, workdir))
    log.info("vqvae eval: %s", {k: v for k, v in results.items() if k != "codebook_perplexity"})
    return results


def encode(config: Any, workdir: str | None) -> dict:
    """Stage-1 codes of every video (WORKDIR/codes/{train,test}); resumes if interrupted."""
    from lvt_jax import encode as encode_lib
    from lvt_jax import validate
    workdir = _need_workdir(workdir, "encode")
    validate.encode(config)
    return encode_lib.run(config, workdir)


def train_transformer(config: Any, workdir: str | None) -> dict:
    from lvt_jax import init_from, trainer, validate
    from lvt_jax.stages.transformer import TransformerStage
    from lvt_jax.stages.vqvae import VQVAEStage
    workdir = _need_workdir(workdir, "train_transformer")
    mesh = shd.make_mesh(config.mesh)
    validate.transformer(config, mesh)
    stage = TransformerStage(config, workdir)
    init_from.stage1_note(config, workdir, VQVAEStage(config), stage)
    _, results = trainer.train(stage, workdir, mesh, periodic=_lvt_fvd_hook(config, workdir, mesh),
                               init=init_from.initializer(stage, workdir))
    log.info("transformer eval: %s", results)
    return results


def _lvt_fvd_hook(config: Any, workdir: str, mesh):
    """The in-loop FVD of stage 2 (eval.fvd_every > 0), or None.

    Off for class-conditional models: use --mode=evaluate, which passes the class ids."""
    ev = config.get("eval")
    if ev is None or int(ev.fvd_every) <= 0:
        return None
    if int(config.transformer.model.get("num_classes", 0) or 0) > 0:
        return None
    from lvt_jax import trainer
    from lvt_jax.eval import inloop
    from lvt_jax.generate import Generator
    from lvt_jax.stages.vqvae import VQVAEStage

    def make_generator(params):
        vq, _ = trainer.restore_state(VQVAEStage(config), mesh, workdir)
        return Generator(config, {"params": vq.params, **vq.extra}, params, mesh)

    return inloop.FVDHook(config, workdir, mesh, make_generator)


def evaluate(config: Any, workdir: str | None) -> dict:
    """The published protocol (FVD, FVD*, PSNR/SSIM, bits per code) -> WORKDIR/eval/."""
    from lvt_jax import evaluate as evaluate_lib
    workdir = _need_workdir(workdir, "evaluate")
    return evaluate_lib.run(config, workdir)


def sample(config: Any, workdir: str | None) -> dict:
    """Continues test videos (or config.sample.prime) -> WORKDIR/samples/ (mp4, gif, png)."""
    from lvt_jax import sample_mode, validate
    workdir = _need_workdir(workdir, "sample")
    validate.sample(config, shd.make_mesh(config.mesh))
    return sample_mode.run(config, workdir)


def summary(config: Any, workdir: str | None) -> dict:
    from lvt_jax import summary as summary_lib
    return summary_lib.run(config)


# Stages built so far, in the order --mode=all runs them.
PIPELINE: tuple[str, ...] = ("train_vqvae", "encode", "train_transformer", "sample", "evaluate")

MODES: dict[str, Callable[[Any, str | None], Any]] = {
    "train_vqvae": train_vqvae,
    "encode": encode,
    "train_transformer": train_transformer,
    "sample": sample,
    "evaluate": evaluate,
    "summary": summary,
}


def run(config: Any, workdir: str | None, mode: str) -> None:
    if mode == "all":
        from lvt_jax import validate
        validate.pipeline(config, shd.make_mesh(config.mesh))  # all stages, before stage 1
        for m in PIPELINE:
            if m == "evaluate" and not config.eval.in_pipeline:
                log.warning("--mode=all: evaluation skipped (eval.in_pipeline=False); run "
                            "--mode=evaluate on a model with 16-frame clips.")
                continue
            MODES[m](config, workdir)
        return
    if mode not in MODES:
        raise ValueError(f"unknown --mode={mode}; choose one of {sorted(MODES) + ['all']}.")
    MODES[mode](config, workdir)
