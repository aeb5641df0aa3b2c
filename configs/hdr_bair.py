"""HDR on BAIR robot pushing, at this project's paper-scale settings.

HDR's paper gives no architecture or sizes (only its abstract is public); these are this
project's design, sized for real data: 6 object slots (the arm and the clutter), wider
layers, 8-frame clips. The LVT sections of configs/bair.py stay in the config (same data,
same evaluation protocol), so `python -m lvt_jax.bench memory` compiles both systems'
steps from it. Variants: `tiny` (tests).
"""
from lvt_jax.config_base import add_hdr, sibling_config


def get_config(arg: str | None = None):
    bair = sibling_config(__file__, "bair")
    variants = bair.parse_variants(arg, ("tiny",), "configs/hdr_bair.py")
    c = add_hdr(bair.get_config("tiny" if "tiny" in variants else None))
    paper_scale_hdr(c)
    if "tiny" in variants:
        sibling_config(__file__, "hdr_demo").shrink_hdr(c)
    return c


def paper_scale_hdr(c) -> None:
    """HDR at the size of real robot-pushing data (the demo's model is 1/4 of this)."""
    c.hdr.model.update(num_objects=6, slot_dim=128, mlp_dim=256, enc_channels=(64, 64, 128),
                       static_dim=32, dynamic_dim=16, bg_channels=16, dec_channels=64,
                       remat_decoder=True)
    c.hdr.autoencoder.train.update(batch_size=16, clip_length=8, num_steps=200_000,
                                   learning_rate=2e-4, warmup_steps=2_500,
                                   final_lr_fraction=0.0, log_every=100, eval_every=10_000,
                                   eval_batches=8, eval_batch_size=16,
                                   checkpoint_every=5_000, keep=3)
    c.hdr.encode.update(batch_size=32, window=8, videos_per_shard=1024)
