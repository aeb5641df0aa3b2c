"""Defaults shared by every config file in configs/ (the paper's BAIR settings).

Config files start from `base_config()` and override what differs; every field can be
overridden on the command line as --config.a.b=value.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from lvt_jax.models.lvt.transformer import default_transformer_config
from lvt_jax.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Mesh over all devices; -1 takes the rest. Logical axes map onto these names.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.name = "bair"                      # 'bair' | 'synthetic_pushing' | 'kinetics600'
    c.data.data_dir = config_dict.placeholder(str)   # tfds data dir (None: tfds default)
    c.data.bair_source_dir = config_dict.placeholder(str)  # local BAIR tar or softmotion30_44k
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=2000, num_test=256, seed=0))
    # Kinetics-600 from local clips (lvt_jax.data.kinetics): prepared once, in parallel.
    c.data.kinetics = ml_collections.ConfigDict(dict(
        source_dir=config_dict.placeholder(str),  # {train,validate,test}/<class>/*.mp4
        fps=config_dict.placeholder(float),       # None: every frame, native rate (paper)
        min_frames=16,             # shorter clips are skipped (and listed)
        test_split="test",         # the split evaluated as 'test' ('test' | 'validation')
        num_workers=0,             # decoding processes while preparing (0: all cores)
        clips_per_shard=256))      # unit of restart of the preparation
    c.data.image_size = 64
    c.data.frames_per_video = 30              # frames of the shortest video
    c.data.clip_length = 16
    c.data.worker_count = 0
    c.data.prefetch = 2

    # Stage 1: frame VQ-VAE ("PR-DVQVAE2"): the specification's exact architecture.
    c.vqvae = ml_collections.ConfigDict()
    c.vqvae.model = ml_collections.ConfigDict(dict(
        hidden=128, channels=256, res_channels=128, num_res_blocks=2,
        num_codebooks=4, codebook_size=512, ema_decay=0.99, ema_eps=1e-5, beta=1.0,
        dtype="float32"))  # compute dtype; 'bfloat16' = mixed precision (configs' :bf16)
    c.vqvae.train = ml_collections.ConfigDict(dict(
        batch_size=32, num_steps=500_000, learning_rate=3e-4, b1=0.9, b2=0.9, eps=1e-8,
        log_every=100, eval_every=10_000, eval_batches=config_dict.placeholder(int),
        eval_batch_size=64, checkpoint_every=5_000, keep=3, progress=True,
        # Which frames: 0 = every frame of every video (BAIR); k > 0 = k random frames
        # per video per epoch (Kinetics: 1, "one random frame per video per sample").
        frames_per_video_sample=0,
        eval_frames_per_video=0))  # eval: 0 = every frame; K = the first K of each video

    # Between the stages: every video of both splits as int16 codes (WORKDIR/codes/).
    c.encode = ml_collections.ConfigDict(dict(
        batch_size=512,            # frames per encoder call (per process)
        videos_per_shard=1024))    # a shard is the unit of restart and of work sharing

    # Stage 2: the latent Video Transformer, DSFVT ("default" in the release).
    c.transformer = ml_collections.ConfigDict()
    c.transformer.model = default_transformer_config("dsfvt")
    c.transformer.codes_dir = config_dict.placeholder(str)  # None: WORKDIR/codes
    c.transformer.train = ml_collections.ConfigDict(dict(
        batch_size=64, num_steps=600_000,
        # RMSProp as in PyTorch: eps outside the square root, momentum 0.9, constant rate.
        learning_rate=2e-5, decay=0.95, eps=1e-8, momentum=0.9,
        n_prime=1,                 # priming frames: never targets, excluded from the loss
        log_every=100, eval_every=20_000, eval_batches=config_dict.placeholder(int),
        eval_batch_size=16, checkpoint_every=5_000, keep=3, progress=True))

    # --mode=evaluate: the published protocol (priming frames: config.sample.n_prime).
    c.eval = ml_collections.ConfigDict(dict(
        split="test",
        num_trials=10,             # FVD is reported as mean +- std over trials
        videos_per_trial=256,      # videos per FVD trial (the field's 256)
        num_samples=4,             # samples per video for PSNR/SSIM, mean and best-of-N
        quality_videos=256,        # videos scored by PSNR/SSIM
        i3d_batch_size=32,         # clips per I3D call (rounded up to the data shards)
        i3d_precision="highest",   # float32 convolutions, as the published FVDs
        num_examples=4,            # videos shown in the report's grids
        seed=0,
        # In-loop: a cheap FVD of `fvd_videos` samples every `fvd_every` stage-2 steps
        # (0: off), logged to TensorBoard as eval/fvd.
        fvd_every=20_000, fvd_videos=64,
        in_pipeline=True))         # --mode=all ends with this evaluation

    # --mode=sample (and the generator that evaluation uses): continue test videos, or a
    # user's own video / folder of frames (`prime`), from their first n_prime frames.
    c.sample = ml_collections.ConfigDict(dict(
        n_prime=1,                 # priming frames (BAIR 1; Kinetics 5)
        num_videos=8,              # videos to continue (test split, from index `first_video`)
        first_video=0,
        batch_size=8,              # videos per sampler call (a multiple of the data shards)
        sampler="cached",          # 'cached' | 'naive' (the reference's method; slow)
        temperature=1.0,           # 0 = greedy
        top_k=0,                   # 0 = off
        top_p=1.0,                 # 1 = off (nucleus sampling)
        seed=0,
        prime=config_dict.placeholder(str),  # video file, image or folder of frames
        label=-1,                  # its class id, for a class-conditional stage 2
        fps=4))                    # of the written mp4/gif
    return c


def sibling_config(config_file: str, name: str):
    """The config module `name`.py next to `config_file` (configs reuse each other's
    helpers; they are loaded from paths, not as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"lvt_configs_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
