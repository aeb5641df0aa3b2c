"""HDR's fail-fast checks: the problem and the fix in the message, before any compile."""
from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from lvt_jax import sharding as shd
from lvt_jax.stages.hdr_autoencoder import mask_metrics

def model(config: Any) -> None:
    m, d = config.hdr.model, config.data
    if int(m.num_objects) < 1:
        raise ValueError(f"hdr.model.num_objects={m.num_objects}: HDR needs at least one "
                         "object slot besides the background; set it to >= 1 (the demo "
                         "uses 4: gripper and up to 3 objects).")
    if int(m.dynamic_dim) < 5:
        raise ValueError(f"hdr.model.dynamic_dim={m.dynamic_dim}: its first four numbers are "
                         "a slot's position and scale; use >= 5.")
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
    pool = int(m.get("bg_pool", 1))
    if pool < 1 or (int(d.image_size) // 4) % pool:
        raise ValueError(f"hdr.model.bg_pool={pool} must be >= 1 and divide the encoder's "
                         f"{int(d.image_size) // 4}x{int(d.image_size) // 4} grid.")
    if str(m.get("bg_decoder", "smooth")) not in ("smooth", "conv"):
        raise ValueError(f"hdr.model.bg_decoder={m.bg_decoder!r}: choose 'smooth' or 'conv'.")
    if str(m.get("bg_decoder", "smooth")) == "conv" and pool != 1:
        raise ValueError("hdr.model.bg_decoder='conv' renders at 4x its map: set "
                         "--config.hdr.model.bg_pool=1 (or use the 'smooth' decoder).")
    if str(m.get("assignment", "kmeans")) not in ("kmeans", "dot"):
        raise ValueError(f"hdr.model.assignment={m.assignment!r}: choose 'kmeans' or 'dot'.")


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


def predictor(config: Any, mesh: Mesh) -> None:
    """HDR stage-2 settings against the mesh, stage 1 and the clips."""
    model(config)
    p, t, d = config.hdr.predictor.model, config.hdr.predictor.train, config.data
    rules = shd.rules_from_config(config)
    shd.check_batch_divides("hdr.predictor.train.batch_size", int(t.batch_size), mesh, rules)
    shd.check_batch_divides("hdr.predictor.train.eval_batch_size",
                            int(t.get("eval_batch_size", t.batch_size)), mesh, rules)
    for k in ("num_steps", "log_every", "checkpoint_every", "keep"):
        if int(t[k]) <= 0:
            raise ValueError(f"hdr.predictor.train.{k}={t[k]} must be positive.")
    T = int(d.clip_length)
    if not 1 <= int(t.n_prime) < T:
        raise ValueError(f"hdr.predictor.train.n_prime={t.n_prime} must lie in [1, {T}) "
                         f"(conditioning frames of a data.clip_length={T}-frame clip).")
    if T > int(p.max_frames):
        raise ValueError(f"data.clip_length={T} exceeds hdr.predictor.model.max_frames="
                         f"{p.max_frames}; raise max_frames to at least {T}.")
    if T > int(d.frames_per_video):
        raise ValueError(f"data.clip_length={T} is longer than the videos "
                         f"(data.frames_per_video={d.frames_per_video}); lower it.")
    if int(p.d_model) % int(p.num_heads):
        raise ValueError(f"hdr.predictor.model.d_model={p.d_model} is not divisible by "
                         f"num_heads={p.num_heads}; choose a multiple.")
    if float(t.kl_weight) < 0:
        raise ValueError(f"hdr.predictor.train.kl_weight={t.kl_weight} must be >= 0.")


def sample(config: Any, mesh: Mesh) -> None:
    """--mode=sample / --mode=evaluate settings of HDR (before anything is loaded)."""
    from lvt_jax.sampling import make_controls
    from lvt_jax.sampling.hdr import SAMPLERS
    s = config.sample
    if s.sampler not in SAMPLERS:
        raise ValueError(f"sample.sampler={s.sampler!r}: choose one of {SAMPLERS}.")
    make_controls(s.temperature, s.top_k, s.top_p)
    T = int(config.data.clip_length)
    if not 1 <= int(s.n_prime) < T:
        raise ValueError(f"sample.n_prime={s.n_prime} must lie in [1, {T}) (priming frames "
                         f"of a data.clip_length={T}-frame clip).")
    if int(s.batch_size) < 1:
        raise ValueError(f"sample.batch_size={s.batch_size}: must be at least 1.")
    shd.check_batch_divides("sample.batch_size", int(s.batch_size), mesh,
                            shd.rules_from_config(config))


def pipeline(config: Any, mesh: Mesh) -> None:
    """Every HDR stage of --mode=all, before stage 1 trains."""
    autoencoder(config, mesh)
    predictor(config, mesh)
    sample(config, mesh)
    if config.eval.in_pipeline:
        from lvt_jax import evaluate
        evaluate.check_config(config)
