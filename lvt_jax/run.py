"""Mode dispatch: each mode is a function of (config, workdir)."""
from __future__ import annotations

import logging
from typing import Any, Callable

from lvt_jax import sharding as shd

log = logging.getLogger(__name__)


def _system(config: Any) -> str:
    system = str(config.get("system", "lvt"))
    if system not in PIPELINES:
        raise ValueError(f"system={system!r}: choose one of {sorted(PIPELINES)} (configs/"
                         "hdr_*.py select 'hdr', the others 'lvt').")
    return system


def _require_system(config: Any, system: str, mode: str) -> None:
    if _system(config) != system:
        raise ValueError(f"--mode={mode} trains a stage of {system.upper()}, but the config "
                         f"selects system={_system(config)!r}; use a configs/"
                         f"{'hdr_*' if system == 'hdr' else 'bair|demo|kinetics600'}.py config "
                         f"(modes of this system: {', '.join(PIPELINES[_system(config)])}).")


def _need_workdir(workdir: str | None, mode: str) -> str:
    if not workdir:
        raise ValueError(f"--mode={mode} writes checkpoints and results: pass --workdir=DIR.")
    return workdir


def train_vqvae(config: Any, workdir: str | None) -> dict:
    from lvt_jax import init_from, trainer, validate
    from lvt_jax.stages.vqvae import VQVAEStage
    workdir = _need_workdir(workdir, "train_vqvae")
    _require_system(config, "lvt", "train_vqvae")
    mesh = shd.make_mesh(config.mesh)
    validate.vqvae(config, mesh)
    stage = VQVAEStage(config)
    _, results = trainer.train(stage, workdir, mesh, init=init_from.initializer(stage, workdir))
    log.info("vqvae eval: %s", {k: v for k, v in results.items() if k != "codebook_perplexity"})
    return results


def encode(config: Any, workdir: str | None) -> dict:
    """Stage-1 outputs of every video, for stage 2 (LVT: WORKDIR/codes/, HDR:
    WORKDIR/hdr_latents/, {train,test}); resumes if interrupted."""
    workdir = _need_workdir(workdir, "encode")
    if _system(config) == "hdr":
        from lvt_jax import hdr_latents, validate_hdr
        validate_hdr.autoencoder(config, shd.make_mesh(config.mesh))
        return hdr_latents.run(config, workdir)
    from lvt_jax import encode as encode_lib
    from lvt_jax import validate
    validate.encode(config)
    return encode_lib.run(config, workdir)


def train_hdr_autoencoder(config: Any, workdir: str | None) -> dict:
    """HDR stage 1: the hierarchical disentangled autoencoder -> WORKDIR/hdr_autoencoder/."""
    from lvt_jax import init_from, trainer, validate_hdr
    from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
    workdir = _need_workdir(workdir, "train_hdr_autoencoder")
    _require_system(config, "hdr", "train_hdr_autoencoder")
    mesh = shd.make_mesh(config.mesh)
    validate_hdr.autoencoder(config, mesh)
    stage = HDRAutoencoderStage(config)
    _, results = trainer.train(stage, workdir, mesh, init=init_from.initializer(stage, workdir))
    log.info("hdr_autoencoder eval: %s", results)
    return results


def train_transformer(config: Any, workdir: str | None) -> dict:
    from lvt_jax import init_from, trainer, validate
    from lvt_jax.stages.transformer import TransformerStage
    from lvt_jax.stages.vqvae import VQVAEStage
    workdir = _need_workdir(workdir, "train_transformer")
    _require_system(config, "lvt", "train_transformer")
    mesh = shd.make_mesh(config.mesh)
    validate.transformer(config, mesh)
    stage = TransformerStage(config, workdir)
    init_from.stage1_note(config, workdir, VQVAEStage(config), stage)
    _, results = trainer.train(stage, workdir, mesh, periodic=_lvt_fvd_hook(config, workdir, mesh),
                               init=init_from.initializer(stage, workdir))
    log.info("transformer eval: %s", results)
    return results


def train_hdr_predictor(config: Any, workdir: str | None) -> dict:
    """HDR stage 2: the latent predictor on WORKDIR/hdr_latents/ -> WORKDIR/hdr_predictor/."""
    from lvt_jax import init_from, trainer, validate_hdr
    from lvt_jax.stages.hdr_predictor import HDRPredictorStage
    workdir = _need_workdir(workdir, "train_hdr_predictor")
    _require_system(config, "hdr", "train_hdr_predictor")
    mesh = shd.make_mesh(config.mesh)
    validate_hdr.predictor(config, mesh)
    stage = HDRPredictorStage(config, workdir)
    _, results = trainer.train(stage, workdir, mesh, init=init_from.initializer(stage, workdir),
                               periodic=_hdr_fvd_hook(config, workdir, mesh))
    log.info("hdr_predictor eval: %s", results)
    return results


def _hdr_fvd_hook(config: Any, workdir: str, mesh):
    """The in-loop FVD of HDR stage 2 (eval.fvd_every > 0), or None."""
    if int(config.eval.fvd_every) <= 0:
        return None
    from lvt_jax import trainer
    from lvt_jax.eval import inloop
    from lvt_jax.generate.hdr import HDRGenerator
    from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage

    def make_generator(params):
        ae, _ = trainer.restore_state(HDRAutoencoderStage(config), mesh, workdir)
        return HDRGenerator(config, ae.params, params, mesh)

    return inloop.FVDHook(config, workdir, mesh, make_generator)


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
    from lvt_jax import sample_mode
    workdir = _need_workdir(workdir, "sample")
    mesh = shd.make_mesh(config.mesh)
    if _system(config) == "hdr":
        from lvt_jax import validate_hdr
        validate_hdr.sample(config, mesh)
    else:
        from lvt_jax import validate
        validate.sample(config, mesh)
    return sample_mode.run(config, workdir)


def summary(config: Any, workdir: str | None) -> dict:
    from lvt_jax import summary as summary_lib
    return summary_lib.run(config)


# Each system's stages, in the order --mode=all runs them.
PIPELINES: dict[str, tuple[str, ...]] = {
    "lvt": ("train_vqvae", "encode", "train_transformer", "sample", "evaluate"),
    "hdr": ("train_hdr_autoencoder", "encode", "train_hdr_predictor", "sample", "evaluate"),
}

MODES: dict[str, Callable[[Any, str | None], Any]] = {
    "train_vqvae": train_vqvae,
    "encode": encode,
    "train_transformer": train_transformer,
    "train_hdr_autoencoder": train_hdr_autoencoder,
    "train_hdr_predictor": train_hdr_predictor,
    "sample": sample,
    "evaluate": evaluate,
    "summary": summary,
}


def run(config: Any, workdir: str | None, mode: str) -> None:
    from lvt_jax import path_checks
    path_checks.check(config, workdir)  # buckets reachable, workdir shared by all hosts
    if mode == "all":
        system = _system(config)
        if system == "hdr":
            from lvt_jax import validate_hdr
            validate_hdr.pipeline(config, shd.make_mesh(config.mesh))
        else:
            from lvt_jax import validate
            validate.pipeline(config, shd.make_mesh(config.mesh))  # all stages, before stage 1
        for m in PIPELINES[system]:
            if m == "evaluate" and not config.eval.in_pipeline:
                log.warning("--mode=all: evaluation skipped (eval.in_pipeline=False); run "
                            "--mode=evaluate on a model with 16-frame clips.")
                continue
            MODES[m](config, workdir)
        return
    if mode not in MODES:
        raise ValueError(f"unknown --mode={mode}; choose one of {sorted(MODES) + ['all']}.")
    MODES[mode](config, workdir)
