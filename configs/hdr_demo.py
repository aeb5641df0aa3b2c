"""HDR on the built-in demo data (synthetic robot pushing); trains on a 2-core CPU.

HDR's architecture is this project's design (the paper's is not public): see
lvt_jax/models/hdr/. Variants (comma-separated): `tiny` (tests: tiny models, a dozen
videos, seconds).
"""
from lvt_jax.config_base import add_hdr, sibling_config


def get_config(arg: str | None = None):
    demo = sibling_config(__file__, "demo")
    bair = sibling_config(__file__, "bair")
    variants = bair.parse_variants(arg, ("tiny",), "configs/hdr_demo.py")
    c = add_hdr(demo.get_config("tiny" if "tiny" in variants else None))
    if "tiny" in variants:
        shrink_hdr(c)
    return c


def shrink_hdr(c) -> None:
    """Seconds per stage: 2 object slots, narrow layers, 3-frame clips, 4 steps."""
    c.hdr.model.update(num_objects=2, slot_dim=16, mlp_dim=32, enc_channels=(8, 8, 16),
                       iters_first=2, iters=1, static_dim=4, dynamic_dim=6, bg_channels=2,
                       dec_channels=8)
    c.hdr.autoencoder.train.update(batch_size=8, clip_length=3, eval_clip_length=4,
                                   num_steps=4, warmup_steps=2, log_every=2, eval_every=0,
                                   checkpoint_every=2, eval_batch_size=8, eval_batches=1,
                                   progress=False)
    from lvt_jax.models.hdr.predictor import default_predictor_config
    c.hdr.predictor.model = default_predictor_config("tiny")
    c.hdr.predictor.train.update(batch_size=8, num_steps=4, warmup_steps=2, log_every=2,
                                 checkpoint_every=2, eval_batch_size=8, eval_batches=1,
                                 progress=False)
    c.hdr.encode.update(batch_size=8, window=4, videos_per_shard=4)
