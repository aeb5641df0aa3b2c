"""BAIR robot pushing at the paper's settings (LVT, Rakhimov et al. 2020).

Variants (comma-separated, combinable, e.g. `configs/bair.py:dstsvt,tiny`):
  (none)   the paper: stage-2 DSFVT (stride (16, 1, 1)), the release's default;
  dstsvt   stage 2 with Video-Transformer-style subscaling (stride (4, 2, 2));
  tiny     seconds on a laptop (tests): tiny stage 1 and stage 2, same structure;
  bf16     mixed precision: bfloat16 compute, float32 parameters, optimiser state, losses,
           softmax and VQ codebooks; bfloat16 key/value cache when sampling.
Point --config.data.bair_source_dir at the original archive or softmotion30_44k/.
"""
from lvt_jax.config_base import base_config
from lvt_jax.models.lvt.transformer import default_transformer_config

VARIANTS = ("dstsvt", "tiny", "bf16")


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "bair"
    variants = parse_variants(arg, VARIANTS, "configs/bair.py")
    if "dstsvt" in variants:
        select_transformer(c, "dstsvt")
    if "tiny" in variants:
        shrink_vqvae(c)
        shrink_transformer(c)
    if "bf16" in variants:
        use_bfloat16(c)
    return c


def use_bfloat16(c) -> None:
    """Mixed precision for both stages and the sampler (float32 stays the default)."""
    c.vqvae.model.dtype = "bfloat16"
    c.transformer.model.dtype = "bfloat16"


def parse_variants(arg: str | None, known: tuple[str, ...], where: str) -> set[str]:
    """'a,b' -> {'a', 'b'}; unknown names fail with the list of known ones."""
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown variant(s) {sorted(unknown)}; known: "
                         f"{', '.join(known)} (combine with commas, e.g. dstsvt,bf16,tiny)")
    return variants


def select_transformer(c, variant: str) -> None:
    """Switches stage 2 to a released structure ('dsfvt' | 'dstsvt') at the paper's sizes."""
    c.transformer.model = default_transformer_config(variant)


def shrink_vqvae(c) -> None:
    """A few-second stage 1 for tests and smoke runs."""
    c.vqvae.model.update(hidden=16, channels=32, res_channels=16, num_res_blocks=1,
                         codebook_size=32)
    c.vqvae.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=0,
                         checkpoint_every=2, eval_batch_size=8, eval_batches=2, progress=False)
    c.encode.update(batch_size=64, videos_per_shard=4)


def shrink_transformer(c) -> None:
    """A few-second stage 2 for tests: 4-frame clips, width 32, 2 + 2 layers.

    Keeps the selected structure (DSFVT: one slice per frame; DSTSVT: 2x2x2 subscaling)
    and takes the vocabulary from stage 1's codebook size.
    """
    m = c.transformer.model
    dstsvt = m.variant.startswith("dstsvt")
    c.data.clip_length = 4
    m.update(variant=("dstsvt" if dstsvt else "dsfvt") + "_tiny",
             vocab_size=c.vqvae.model.codebook_size, d_model=32, head_dim=8, emb_dim=16,
             num_heads=2, enc_layers=2, dec_layers=2, clip_shape=(4, 16, 16),
             stride=(2, 2, 2) if dstsvt else (4, 1, 1),
             context_kernel=(5, 3, 3) if dstsvt else (7, 1, 1),
             block_shape=(2, 4, 4) if dstsvt else (1, 8, 8))
    c.transformer.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=0,
                               checkpoint_every=2, eval_batch_size=8, eval_batches=1,
                               progress=False)
    # I3D (FVD) needs clips of >= 9 frames, tiny clips have 4: --mode=all stops after
    # sampling, and the in-loop FVD is off.
    c.eval.update(in_pipeline=False, fvd_every=0)
    c.sample.update(num_videos=4, batch_size=8)
