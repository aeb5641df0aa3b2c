"""Defaults shared by every config file in configs/ (the paper's BAIR settings).

Config files start from `base_config()` and override what differs; every field can be
overridden on the command line as --config.a.b=value.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from lvt_jax.models.transformer import default_transformer_config
from lvt_jax.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Mesh over all devices; -1 takes the rest. Logical axes map onto these names.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.name = "bair"                      # 'bair' | 'synthetic_pushing'
    c.data.data_dir = config_dict.placeholder(str)   # tfds data dir (None: tfds default)
    c.data.bair_source_dir = config_dict.placeholder(str)  # local BAIR tar or softmotion30_44k
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=2000, num_test=256, seed=0))
    c.data.image_size = 64
    c.data.frames_per_video = 30
    c.data.clip_length = 16
    c.data.worker_count = 0
    c.data.prefetch = 2

    # Stage 1: frame VQ-VAE ("PR-DVQVAE2"): the specification's exact architecture.
    c.vqvae = ml_collections.ConfigDict()
    c.vqvae.model = ml_collections.ConfigDict(dict(
        hidden=128, channels=256, res_channels=128, num_res_blocks=2,
        num_codebooks=4, codebook_size=512, ema_decay=0.99, ema_eps=1e-5, beta=1.0))
    c.vqvae.train = ml_collections.ConfigDict(dict(
        batch_size=32, num_steps=500_000, learning_rate=3e-4, b1=0.9, b2=0.9, eps=1e-8,
        log_every=100, eval_every=10_000, eval_batches=config_dict.placeholder(int),
        eval_batch_size=64, checkpoint_every=5_000, keep=3, progress=True))

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
    return c
