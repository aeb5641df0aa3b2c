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
    c.system = "lvt"   # 'lvt' | 'hdr': which system --mode=all/sample/evaluate runs
    c.seed = 0
    # Mesh over all devices; -1 takes the rest. Logical axes map onto these names.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.name = "bair"   # 'bair' | 'synthetic_pushing' | 'kinetics600' | 'video_folder'
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
    # Your own videos (lvt_jax.data.video_folder): any folder, same preparation as Kinetics.
    c.data.video_folder = ml_collections.ConfigDict(dict(
        source_dir=config_dict.placeholder(str),  # DIR, or DIR/{train,test}/ to pick splits
        test_fraction=0.1,         # without train/ and test/: this share of the videos is test
        labels=False,              # True: class = first folder level (class-conditional)
        fps=config_dict.placeholder(float),       # None: every frame, native rate
        min_frames=16,             # shorter videos are skipped (and listed)
        max_frames=256,            # longer videos are stored in pieces (0: never cut)
        num_workers=0,             # decoding processes while preparing (0: all cores)
        clips_per_shard=64))       # unit of restart of the preparation
    c.data.image_size = 64
    c.data.frames_per_video = 30              # frames of the shortest video
    c.data.clip_length = 16
    c.data.worker_count = 0
    c.data.prefetch = 2

    # Stage 1: frame VQ-VAE ("PR-DVQVAE2"): the specification's exact architecture.
    c.vqvae = ml_collections.ConfigDict()
    # Fine-tuning: start from these weights (a workdir, one of its checkpoints, or the
    # reference release's VQ-VAE) at step 0 with a fresh optimiser; see lvt_jax.init_from.
    c.vqvae.init_from = config_dict.placeholder(str)
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
    c.transformer.init_from = config_dict.placeholder(str)  # fine-tuning, as vqvae.init_from
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


def add_hdr(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switches a config to HDR and adds its sections (demo-size defaults).

    The LVT sections stay: HDR reuses data, mesh, sample and eval, and the memory
    benchmark compiles both systems' steps from one config. Sizes are this project's
    design (the paper's are not public); see lvt_jax/models/hdr/.
    """
    c.system = "hdr"
    c.hdr = ml_collections.ConfigDict()
    c.hdr.model = ml_collections.ConfigDict(dict(
        num_objects=4,             # K object slots (+ 1 background slot)
        slot_dim=64, mlp_dim=128,
        enc_channels=(32, 32, 64),  # two stride-2 convs and one stride-1: H/4 x W/4 inputs
        iters_first=3, iters=1,    # slot-attention iterations on frame 0 / later frames
        assignment="kmeans",       # slot attention's logits: 'kmeans' (distance to centres) | 'dot'
        stop_gradient_assignment=False,  # True: the segmentation is not trained by reconstruction
        static_dim=16,             # time-independent latent of an object slot
        dynamic_dim=8,             # time-varying latent per slot per frame (first 4: position, scale)
        bg_channels=8,             # background's static map: bg_channels x H/4/bg_pool x W/4/bg_pool
        bg_pool=2,                 # the map's cells: bg_pool x bg_pool encoder inputs (8 pixels)
        dec_channels=32,
        bg_decoder="smooth",       # 'smooth' (low-pass, behind the objects) | 'conv'
        alpha_envelope=True,       # object alphas: a Gaussian around the slot's frame, refined
        logvar_min=-10.0, logvar_max=4.0,
        # Render the frames one at a time in a rematerialised scan: the backward pass keeps
        # one frame's renderer activations instead of all (most of stage 1's memory), at
        # the price of running the renderers twice. On in the paper-size configs.
        remat_decoder=False))
    c.hdr.model.image_size = c.data.get_ref("image_size")
    c.hdr.autoencoder = ml_collections.ConfigDict()
    c.hdr.autoencoder.num_mask_ids = 5    # instance ids in the masks: table, gripper, 3 objects
    # Fine-tuning: start from another run's weights (a workdir or one of its checkpoints).
    c.hdr.autoencoder.init_from = config_dict.placeholder(str)
    c.hdr.autoencoder.train = ml_collections.ConfigDict(dict(
        batch_size=8, clip_length=6,   # clips of 6 frames (SAVi trains on 6)
        eval_clip_length=0,            # 0: data.clip_length (what stage 2 and sampling use)
        # 800 steps: about 15 minutes on 2 CPU cores. The segmentation (FG-ARI) is best
        # early (0.3 near step 200 on the demo) and settles near 0.2 as colours sharpen.
        num_steps=800, learning_rate=4e-4, warmup_steps=100, final_lr_fraction=0.05,
        grad_clip=1.0,
        # KL weights per pixel value of the clip (see stages/hdr_autoencoder.py)
        kl_static=0.01, kl_dynamic=0.01,
        kl_warmup_steps=200,           # KL weights ramp up linearly from 0 over these steps
        mask_weight=1.0,               # alphas taught to follow slot attention (see the stage)
        mask_metrics="auto",           # FG-ARI and the swap test: auto (where masks exist) | on | off
        log_every=50, eval_every=400, eval_batches=4, eval_batch_size=8,
        checkpoint_every=400, keep=2, progress=True))
    # Between the stages: every video's latents (WORKDIR/hdr_latents/), window by window.
    c.hdr.encode = ml_collections.ConfigDict(dict(batch_size=16, window=8,
                                                  videos_per_shard=250))
    # Stage 2: the latent predictor on windows of data.clip_length frames of latents.
    from lvt_jax.models.hdr.predictor import default_predictor_config
    c.hdr.predictor = ml_collections.ConfigDict()
    c.hdr.predictor.model = default_predictor_config()
    c.hdr.predictor.init_from = config_dict.placeholder(str)
    c.hdr.predictor.train = ml_collections.ConfigDict(dict(
        batch_size=32, num_steps=2000, learning_rate=3e-4, warmup_steps=100,
        final_lr_fraction=0.05, grad_clip=1.0,
        kl_weight=1.0,             # beta on KL(q || p) (1: the ELBO)
        n_prime=1,                 # conditioning frames; later frames are predicted
        log_every=50, eval_every=0, eval_batches=config_dict.placeholder(int),
        eval_batch_size=32, checkpoint_every=500, keep=2, progress=True))
    return c


def sibling_config(config_file: str, name: str):
    """The config module `name`.py next to `config_file` (configs reuse each other's
    helpers; they are loaded from paths, not as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"lvt_configs_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
