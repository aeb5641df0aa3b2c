"""The built-in demo: synthetic robot pushing, trains on a 2-core CPU in minutes.

Same architecture family as the paper with narrower layers; `configs/demo.py:tiny` is the
test-suite variant (tiny models, a dozen videos); `:dstsvt` selects DSTSVT for stage 2;
`:bf16` switches on mixed precision (see configs/bair.py). Variants combine: `:bf16,tiny`.
"""

from lvt_jax.config_base import base_config, sibling_config


def _bair_module():
    return sibling_config(__file__, "bair")


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "synthetic_pushing"
    c.data.synthetic.update(num_train=2000, num_test=256, seed=0)
    # Stage 1 at a quarter of the paper's widths (1/16 of its FLOPs), same structure and
    # optimiser: test PSNR ~29.5 dB after 1,200 steps of 16 frames (30.5 after 1,500).
    c.vqvae.model.update(hidden=32, channels=64, res_channels=32, num_res_blocks=2,
                         codebook_size=512)
    c.vqvae.train.update(batch_size=16, num_steps=1200, log_every=50, eval_every=400,
                         eval_batches=4, eval_batch_size=64, checkpoint_every=500, keep=2)
    bair = _bair_module()
    variants = bair.parse_variants(arg, ("dstsvt", "tiny", "bf16"), "configs/demo.py")
    demo_transformer(c, "dstsvt" if "dstsvt" in variants else "dsfvt")
    if "tiny" in variants:
        c.data.synthetic.update(num_train=12, num_test=4, seed=0)
        bair.shrink_vqvae(c)
        bair.shrink_transformer(c)
    if "bf16" in variants:
        bair.use_bfloat16(c)
    # Stage 2 predicts stage 1's codes: its vocabulary is stage 1's codebook size.
    c.transformer.model.vocab_size = c.vqvae.model.codebook_size
    return c


def demo_transformer(c, variant: str) -> None:
    """Stage 2 at demo size: width 128, 4 + 4 layers, the released structure otherwise.

    Sized so that the whole demo finishes on a 2-core CPU in about 20 minutes: 320 steps
    reach 0.47 bits per code (160: 0.74; 960: 0.36, without a better FVD: docs/demo.md)
    in about 4 minutes on a shared machine. The learning rate is above the paper's 2e-5:
    a few hundred steps instead of 600k. Sampling at temperature 0.7 (the paper's
    configs keep 1.0): the short-trained model's tails are noise that a scene does not
    survive; FVD 1140 -> 990 and best-of-2 PSNR 21.2 -> 21.7 dB on the demo protocol.
    """
    _bair_module().select_transformer(c, variant)
    c.transformer.model.update(d_model=128, head_dim=32, num_heads=4, emb_dim=64,
                               enc_layers=4, dec_layers=4)
    c.transformer.train.update(batch_size=16, num_steps=320, learning_rate=5e-4,
                               log_every=20, eval_every=0, eval_batch_size=32,
                               checkpoint_every=160, keep=2)
    c.encode.update(batch_size=256, videos_per_shard=250)
    # FVD on a CPU costs ~1.4 s of I3D per clip: a small protocol (2 trials of 16 videos,
    # PSNR/SSIM best of 2) that still separates a trained model from noise; no in-loop FVD.
    c.eval.update(num_trials=2, videos_per_trial=16, quality_videos=16, num_samples=2,
                  num_examples=4, i3d_batch_size=8, fvd_every=0)
    c.sample.update(num_videos=8, batch_size=8, temperature=0.7)
