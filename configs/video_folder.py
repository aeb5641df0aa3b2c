"""Your own videos: the whole pipeline on any folder of video files.

    python -m lvt_jax.main --config=configs/video_folder.py --workdir=workdir/mine \\
        --config.data.video_folder.source_dir=DIR

Variants (comma-separated, combinable, e.g. `configs/video_folder.py:paper,dstsvt`):
  (none)   the demo's model sizes (stage 1 at a quarter of the paper's widths, stage 2 at
           width 128 with 4 + 4 layers): trains on a CPU in about half an hour, a start
           for a GPU run with more steps (--config.vqvae.train.num_steps=...);
  paper    the paper's BAIR-size models and training settings (500k + 600k steps);
  dstsvt   stage 2 with DSTSVT subscaling instead of DSFVT;
  tiny     seconds (tests): tiny models, 4-frame clips.
The data are Kinetics-like (real videos of varying length): clips of 16 frames from videos
of at least 16, stage 1 on every frame, evaluated on the first 16 frames of each test
video; samples continue 5 priming frames (the paper's Kinetics setting). Class-conditional
stage 2: --config.data.video_folder.labels=True --config.transformer.model.num_classes=K
(K: the number of class folders; checked before anything trains). See README.md.
"""

from lvt_jax.config_base import base_config, sibling_config

VARIANTS = ("paper", "dstsvt", "tiny")
MIN_FRAMES = 16  # = the clip length: a video must hold one clip
SAMPLE_N_PRIME = 5  # real videos: 5 priming frames, as the paper's Kinetics setting


def get_config(arg: str | None = None):
    bair = sibling_config(__file__, "bair")
    variants = bair.parse_variants(arg, VARIANTS, "configs/video_folder.py")
    c = base_config()
    c.data.name = "video_folder"
    c.data.video_folder.min_frames = MIN_FRAMES
    c.data.frames_per_video = MIN_FRAMES  # the shortest video kept
    c.data.clip_length = MIN_FRAMES
    structure = "dstsvt" if "dstsvt" in variants else "dsfvt"
    if "paper" in variants:
        bair.select_transformer(c, structure)  # base_config's models are the paper's
    else:
        demo = sibling_config(__file__, "demo")
        demo_size = demo.get_config()
        c.vqvae.model = demo_size.vqvae.model
        c.vqvae.train = demo_size.vqvae.train
        demo.demo_transformer(c, structure)  # also the demo's encode / eval / sample sizes
    # Every frame of every video for stage 1 (long videos are stored in pieces of at most
    # max_frames, so no read loads a whole long video); its evaluation: the first 16 frames.
    c.vqvae.train.update(frames_per_video_sample=0, eval_frames_per_video=MIN_FRAMES)
    c.sample.n_prime = SAMPLE_N_PRIME

    if "tiny" in variants:
        bair.shrink_vqvae(c)
        bair.shrink_transformer(c)  # 4-frame clips; evaluation off (I3D needs >= 9 frames)
        c.data.video_folder.update(min_frames=4, max_frames=16, num_workers=1,
                                   clips_per_shard=4)
        c.data.frames_per_video = 4
        c.vqvae.train.eval_frames_per_video = 4
        c.sample.n_prime = 2
    # Stage 2 predicts stage 1's codes: its vocabulary is stage 1's codebook size.
    c.transformer.model.vocab_size = c.vqvae.model.codebook_size
    return c
