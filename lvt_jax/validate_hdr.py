"""HDR's fail-fast checks: the problem and the fix in the message, before any compile."""
from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from lvt_jax import sharding as shd

MASK_METRICS = ("auto", "on", "off")


def mask_metrics(config: Any) -> bool:
    """Whether HDR stage 1 computes FG-ARI and the swap test (they need instance masks).

    'auto' (default): where the dataset has masks; 'on': required (an error without
    masks); 'off': never."""
    from lvt_jax.data.pipeline import DATASETS_WITH_INSTANCE_MASKS
    t = config.hdr.autoencoder.train
    mode = str(t.get("mask_metrics", "auto")).lower()
    mode = {"true": "on", "false": "off"}.get(mode, mode)
    if mode not in MASK_METRICS:
        raise ValueError(f"hdr.autoencoder.train.mask_metrics={t.mask_metrics!r}: choose one "
                         f"of {MASK_METRICS}.")
    has = config.data.name in DATASETS_WITH_INSTANCE_MASKS
    if mode == "on" and not has:
        raise ValueError(
            f"hdr.autoencoder.train.mask_metrics='on' asks for FG-ARI and the swap test, "
            f"which need ground-truth instance masks, but data.name={config.data.name!r} has "
            f"none (datasets with masks: {', '.join(DATASETS_WITH_INSTANCE_MASKS)}); set "
            "--config.hdr.autoencoder.train.mask_metrics=auto (or off).")
    return has and mode != "off"


def model(config: Any) -> None:
    m, d = config.hdr.model, config.data
    if int(m.num_objects) < 1:
        raise ValueError(f"hdr.model.num_objects={m.num_objects}: HDR needs at least one "
                         "object slot besides the background; set it to >= 1 (the demo "
                         "uses 4: gripper and up to 3 objects).")
    if int(m.dynamic_dim) < 2:
        raise ValueError(f"hdr.model.dynamic_dim={m.dynamic_dim}: its first two numbers are "
                         "a slot's position; use >= 2.")
    for k in ("slot_dim", "mlp_dim", "static_dim", "bg_channels", "dec_channels",
              "iters_first", "iters"):
        if int(m[k]) < 1:
            raise ValueError(f"hdr.model.{k}={m[k]} must be >= 1.")
    if len(tuple(m.enc_channels)) != 3:
        raise ValueError(f"hdr.model.enc_channels={tuple(m.enc_channels)}: give three "
                         "widths (two stride-2 convolutions and one stride-1).")
    if int(d.image_size) % 4:
        raise ValueError(f"data.image_size={d.image_size}: HDR's encoder and renderers work "
                         "at a quarter of the resolution; use a multiple of 4.")


def autoencoder(config: Any, mesh: Mesh) -> None:
    """HDR stage-1 settings against the mesh, the model and the data."""
    model(config)
    t, d = config.hdr.autoencoder.train, config.data
    rules = shd.rules_from_config(config)
    shd.check_batch_divides("hdr.autoencoder.train.batch_size", int(t.batch_size), mesh, rules)
    shd.check_batch_divides("hdr.autoencoder.train.eval_batch_size",
                            int(t.get("eval_batch_size", t.batch_size)), mesh, rules)
    for k in ("num_steps", "log_every", "checkpoint_every", "keep"):
        if int(t[k]) <= 0:
            raise ValueError(f"hdr.autoencoder.train.{k}={t[k]} must be positive.")
    eval_len = int(t.get("eval_clip_length", 0) or d.clip_length)
    for name, n in (("clip_length", int(t.clip_length)), ("eval_clip_length", eval_len)):
        if n < 2:
            raise ValueError(f"hdr.autoencoder.train.{name}={n}: a clip needs at least 2 "
                             "frames (the static latent is what the frames share); use >= 2.")
        if n > int(d.frames_per_video):
            raise ValueError(f"hdr.autoencoder.train.{name}={n} is longer than the videos "
                             f"(data.frames_per_video={d.frames_per_video}); lower it.")
    mask_metrics(config)
    e = config.hdr.encode
    for k in ("batch_size", "window", "videos_per_shard"):
        if int(e[k]) < 1:
            raise ValueError(f"hdr.encode.{k}={e[k]} must be >= 1.")


def pipeline(config: Any, mesh: Mesh) -> None:
    """Every HDR stage of --mode=all, before stage 1 trains."""
    autoencoder(config, mesh)
