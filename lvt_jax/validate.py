"""Checks that fail fast, before any compile, with the problem and the fix in the message."""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from lvt_jax import sharding as shd


batch_divides = shd.check_batch_divides  # the mesh check lives with the mesh code

# Datasets prepared from local video files -> their config section (data.<section>).
LOCAL_VIDEOS = {"kinetics600": "kinetics", "video_folder": "video_folder"}


def shortest_video(config: Any) -> tuple[int, str]:
    """(frames of the shortest video, the config field that sets it): local-video datasets
    keep videos of at least data.<section>.min_frames, the others are data.frames_per_video."""
    d = config.data
    section = LOCAL_VIDEOS.get(d.name)
    if section is not None:
        return int(d[section].min_frames), f"data.{section}.min_frames"
    return int(d.frames_per_video), "data.frames_per_video"


def labelled(config: Any) -> bool:
    """Whether the dataset carries class labels (Kinetics; a video folder with labels on)."""
    d = config.data
    return d.name == "kinetics600" or (d.name == "video_folder" and bool(d.video_folder.labels))


def vqvae(config: Any, mesh: Mesh) -> None:
    rules = shd.rules_from_config(config)
    t, m, d = config.vqvae.train, config.vqvae.model, config.data
    batch_divides("vqvae.train.batch_size", int(t.batch_size), mesh, rules)
    batch_divides("vqvae.train.eval_batch_size", int(t.get("eval_batch_size", t.batch_size)),
                  mesh, rules)
    if d.image_size % 4:
        raise ValueError(f"data.image_size={d.image_size}: the VQ-VAE downsamples by 4; "
                         "use a multiple of 4.")
    if m.channels % m.num_codebooks:
        raise ValueError(f"vqvae.model.channels={m.channels} must be divisible by "
                         f"num_codebooks={m.num_codebooks}.")
    _steps("vqvae", config)
    _positive("vqvae.train", t, ("log_every", "checkpoint_every", "keep"))
    from lvt_jax.data.pipeline import DATASETS
    if d.name not in DATASETS:
        raise ValueError(f"data.name={d.name!r}: known datasets are "
                         f"{', '.join(repr(n) for n in DATASETS)}.")
    for k in ("frames_per_video_sample", "eval_frames_per_video"):
        if int(t.get(k, 0)) < 0:
            raise ValueError(f"vqvae.train.{k}={t[k]} must be >= 0 (0: every frame).")
    shortest, field = shortest_video(config)
    if int(t.get("eval_frames_per_video", 0)) > shortest:
        raise ValueError(f"vqvae.train.eval_frames_per_video={t.eval_frames_per_video} is "
                         f"longer than the videos ({field}={shortest}).")


def _positive(section: str, cfg: Any, keys: tuple[str, ...]) -> None:
    for k in keys:
        if int(cfg[k]) <= 0:
            raise ValueError(f"{section}.{k}={cfg[k]} must be positive.")


def _steps(section: str, config: Any) -> None:
    """num_steps > 0; 0 only when fine-tuning (the source's weights taken as they are)."""
    from lvt_jax import init_from
    n = int(config[section].train.num_steps)
    source = init_from.check_config(config, section)  # fails fast on a missing path
    if n < 0 or (n == 0 and source is None):
        raise ValueError(f"{section}.train.num_steps={n} must be positive (0 only with "
                         f"{section}.init_from: the source's weights kept as they are).")


def encode(config: Any) -> None:
    e = config.encode
    _positive("encode", e, ("batch_size", "videos_per_shard"))
    if int(config.vqvae.model.codebook_size) > 32767:
        raise ValueError(f"vqvae.model.codebook_size={config.vqvae.model.codebook_size}: "
                         "codes are stored as int16; use at most 32767 codes per codebook.")


def transformer(config: Any, mesh: Mesh) -> None:
    """Stage-2 settings against the mesh, stage 1 and the data, before anything compiles."""
    from lvt_jax.models.lvt import subscale
    rules = shd.rules_from_config(config)
    t, m, v, d = config.transformer.train, config.transformer.model, config.vqvae.model, config.data
    batch_divides("transformer.train.batch_size", int(t.batch_size), mesh, rules)
    batch_divides("transformer.train.eval_batch_size",
                  int(t.get("eval_batch_size", t.batch_size)), mesh, rules)
    _steps("transformer", config)
    _positive("transformer.train", t, ("log_every", "checkpoint_every", "keep"))
    clip = tuple(int(n) for n in m.clip_shape)
    grid = d.image_size // 4
    if clip[1:] != (grid, grid):
        raise ValueError(f"transformer.model.clip_shape={clip}: stage 1 turns "
                         f"{d.image_size}x{d.image_size} frames into {grid}x{grid} codes; set "
                         f"clip_shape=({clip[0]}, {grid}, {grid}).")
    if clip[0] != int(d.clip_length):
        raise ValueError(f"transformer.model.clip_shape[0]={clip[0]} differs from "
                         f"data.clip_length={d.clip_length}; set them equal.")
    shortest, field = shortest_video(config)
    if int(d.clip_length) > shortest:
        fix = ("raise it (a new preparation) or lower clip_length" if d.name in LOCAL_VIDEOS
               else "lower clip_length")
        raise ValueError(f"data.clip_length={d.clip_length} is longer than the shortest "
                         f"video kept ({field}={shortest}); {fix}.")
    try:
        subscale.check_stride(clip, tuple(m.stride))
    except ValueError as e:
        raise ValueError(f"transformer.model.stride={tuple(m.stride)} must divide the clip "
                         f"{clip} along every axis ({e}).") from None
    sl = subscale.slice_shape(clip, tuple(m.stride))
    if any(n % b for n, b in zip(sl, m.block_shape)):
        raise ValueError(f"transformer.model.block_shape={tuple(m.block_shape)} must divide "
                         f"the slice shape {sl} (clip {clip} / stride {tuple(m.stride)}).")
    if any(k % 2 != 1 for k in tuple(m.context_kernel) + tuple(m.decoder_kernel)):
        raise ValueError(f"transformer.model.context_kernel={tuple(m.context_kernel)} and "
                         f"decoder_kernel={tuple(m.decoder_kernel)} must have odd sizes.")
    if int(m.vocab_size) != int(v.codebook_size):
        raise ValueError(f"transformer.model.vocab_size={m.vocab_size} must equal stage 1's "
                         f"vqvae.model.codebook_size={v.codebook_size} (it predicts those "
                         f"codes); set --config.transformer.model.vocab_size={v.codebook_size}.")
    if int(m.num_codebooks) != int(v.num_codebooks):
        raise ValueError(f"transformer.model.num_codebooks={m.num_codebooks} must equal "
                         f"vqvae.model.num_codebooks={v.num_codebooks}.")
    if not 0 <= int(t.n_prime) < clip[0]:
        raise ValueError(f"transformer.train.n_prime={t.n_prime} must lie in [0, "
                         f"{clip[0]}) (priming frames of a {clip[0]}-frame clip).")
    classes = int(m.get("num_classes", 0))
    if classes < 0:
        raise ValueError(f"transformer.model.num_classes={classes} must be >= 0 (0: off).")
    if classes > 0 and not labelled(config):
        fix = ("set --config.data.video_folder.labels=True (class = first folder level) or "
               if d.name == "video_folder" else "")
        raise ValueError(f"transformer.model.num_classes={classes}: class conditioning needs "
                         f"a labelled dataset (kinetics600, or video_folder with labels), but "
                         f"data.name={d.name!r} has no labels; {fix}set "
                         "--config.transformer.model.num_classes=0.")
    if classes > 0:
        dataset(config)  # the classes the data have (a video folder's class folders)
    if int(m.d_model) < 6:
        raise ValueError(f"transformer.model.d_model={m.d_model}: the 3-D position encoding "
                         "needs d_model >= 6.")


def pipeline(config: Any, mesh: Mesh) -> None:
    """Every stage of --mode=all, so a bad stage-2 setting fails before stage 1 trains."""
    vqvae(config, mesh)
    encode(config)
    transformer(config, mesh)
    sample(config, mesh)
    if config.eval.in_pipeline:
        from lvt_jax import evaluate
        evaluate.check_config(config)
    dataset(config, evaluation=bool(config.eval.in_pipeline))


def dataset(config: Any, evaluation: bool = False) -> None:
    """The data against the settings, in seconds (a listing, no decoding): a video folder
    that cannot make a dataset, its classes against a class-conditional stage 2, and (with
    `evaluation`) its test split against the evaluation's videos per trial."""
    d = config.data
    if d.name != "video_folder":
        return
    from lvt_jax.data import pipeline as data_pipeline
    from lvt_jax.data import video_folder
    builder = data_pipeline._make_builder(d)
    if builder.is_prepared():  # what training will read
        sizes = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
        classes = list(builder.info.features["label"].names)
        where = f"the prepared copy {builder.data_dir}"
    else:
        vf = d.video_folder
        listing = video_folder.locate_folder(vf.source_dir, vf.test_fraction, vf.labels)
        sizes = {s: sum(c.skip is None for c in cs) for s, cs in listing.clips.items()}
        classes = listing.class_names
        where = f"{listing.root} (video files listed; unreadable ones will be skipped)"
    num_classes = int(config.transformer.model.get("num_classes", 0) or 0)
    if num_classes > 0 and num_classes != len(classes):
        raise ValueError(f"transformer.model.num_classes={num_classes} but {where} has "
                         f"{len(classes)} classes ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}); set "
                         f"--config.transformer.model.num_classes={len(classes)}.")
    per_trial, test = int(config.eval.videos_per_trial), sizes.get("test", 0)
    if evaluation and test < per_trial:
        fewer = (f"--config.eval.videos_per_trial={test} (an FVD from so few videos is only "
                 "a rough guide), or " if test >= 2 else "")
        raise ValueError(
            f"the test split of {where} has {test} videos, fewer than the evaluation's "
            f"eval.videos_per_trial={per_trial}: add test videos (raise "
            f"data.video_folder.test_fraction, or fill test/), or set {fewer}"
            "--config.eval.in_pipeline=False to stop --mode=all after sampling.")


def sample(config: Any, mesh: Mesh) -> None:
    """--mode=sample settings: sampler, controls, priming frames, batch vs devices."""
    from lvt_jax import fileio
    from lvt_jax.sampling import make_controls
    from lvt_jax.sampling.lvt.sampler import SAMPLERS, first_slice
    s = config.sample
    if s.sampler not in SAMPLERS:
        raise ValueError(f"sample.sampler={s.sampler!r}: choose one of {SAMPLERS} "
                         "(--sampler=naive for the reference's method).")
    make_controls(s.temperature, s.top_k, s.top_p)
    m = config.transformer.model
    first_slice(tuple(m.clip_shape), tuple(m.stride), int(s.n_prime))
    if s.batch_size < 1:
        raise ValueError(f"sample.batch_size={s.batch_size}: must be at least 1.")
    batch_divides("sample.batch_size", int(s.batch_size), mesh, shd.rules_from_config(config))
    if s.num_videos < 1:
        raise ValueError(f"sample.num_videos={s.num_videos}: must be at least 1.")
    if s.prime and not fileio.exists(s.prime):
        raise FileNotFoundError(f"sample.prime={s.prime!r} does not exist; pass a video file, "
                                "an image or a folder of images (or unset it to use test videos).")
    if s.fps <= 0:
        raise ValueError(f"sample.fps={s.fps}: must be positive.")
