"""Kinetics-600 at the paper's settings (LVT, Rakhimov et al. 2020; release configs
K-DVQVAE.yaml and KDSFVT.yaml).

Stage 1 ("K-DVQVAE"): the BAIR VQ-VAE with 4 residual blocks per side instead of 2,
trained on one random frame per video per sample for 1M steps (batch 32), evaluated on
the first 16 frames of each test video. Stage 2: DSFVT on 16-frame clips of codes,
trained with 1 priming frame (600k steps, batch 64); sampled and evaluated with 5 priming
frames and 11 generated ones.

Variants (comma-separated, combinable, e.g. `configs/kinetics600.py:classes,tiny`):
  (none)   the paper (unconditional);
  classes  class-conditional stage 2 (the release's CLASS_NUM: a learned class
           embedding concatenated before the encoder's 1x1 projection), 600 classes;
  tiny     seconds on a laptop (tests): tiny stage 1 and stage 2, same structure;
  bf16     mixed precision (see configs/bair.py).
Point --config.data.kinetics.source_dir at the downloaded clips
({train,validate,test}/<class>/<youtube_id>_<start>_<end>.mp4); see README.md.
"""

import ml_collections

from lvt_jax.config_base import base_config, sibling_config

VARIANTS = ("classes", "tiny", "bf16")
NUM_CLASSES = 600
KINETICS_RES_BLOCKS = 4  # K-DVQVAE: N_LAYERS 4 (BAIR's PR-DVQVAE2: 2)
SAMPLE_N_PRIME = 5  # KDSFVT.yaml TEST.VT_SAMPLER.N_PRIME


def _bair_module():
    return sibling_config(__file__, "bair")


def get_config(arg: str | None = None):
    bair = _bair_module()
    variants = bair.parse_variants(arg, VARIANTS, "configs/kinetics600.py")
    c = base_config()
    c.data.name = "kinetics600"
    c.data.kinetics.min_frames = 16  # clips shorter than one 16-frame window are skipped
    c.data.frames_per_video = c.data.kinetics.min_frames  # the shortest video kept
    c.data.clip_length = 16

    c.vqvae.model.num_res_blocks = KINETICS_RES_BLOCKS
    c.vqvae.train.update(num_steps=1_000_000, frames_per_video_sample=1,
                         eval_frames_per_video=16)

    bair.select_transformer(c, "dsfvt")
    c.transformer.train.n_prime = 1  # trained with 1 priming frame (as BAIR) ...
    if "sample" not in c:  # ... sampled and evaluated with 5 (16-frame clips: 5 + 11)
        c.sample = ml_collections.ConfigDict()
    c.sample.n_prime = SAMPLE_N_PRIME
    if "classes" in variants:
        c.transformer.model.num_classes = NUM_CLASSES

    if "tiny" in variants:
        bair.shrink_vqvae(c)  # keeps the structure but 1 residual block: restore Kinetics'
        c.vqvae.model.num_res_blocks = KINETICS_RES_BLOCKS
        c.vqvae.train.eval_frames_per_video = 4
        bair.shrink_transformer(c)  # 4-frame clips
        c.data.kinetics.update(min_frames=4, num_workers=1, clips_per_shard=4)
        c.data.frames_per_video = 4
        c.sample.n_prime = 2
        if "classes" in variants:
            c.transformer.model.num_classes = 2
    if "bf16" in variants:
        bair.use_bfloat16(c)
    # Stage 2 predicts stage 1's codes: its vocabulary is stage 1's codebook size.
    c.transformer.model.vocab_size = c.vqvae.model.codebook_size
    return c
