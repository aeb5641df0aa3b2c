"""BAIR robot pushing at the paper's settings (LVT, Rakhimov et al. 2020).

Variants: `configs/bair.py` (paper), `configs/bair.py:tiny` (seconds on a laptop; tests).
Point --config.data.bair_source_dir at the original archive or softmotion30_44k/.
"""
from lvt_jax.config_base import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "bair"
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"tiny"}
    if unknown:
        raise ValueError(f"configs/bair.py: unknown variant(s) {sorted(unknown)}; known: tiny")
    if "tiny" in variants:
        shrink_vqvae(c)
    return c


def shrink_vqvae(c) -> None:
    """A few-second stage 1 for tests and smoke runs."""
    c.vqvae.model.update(hidden=16, channels=32, res_channels=16, num_res_blocks=1,
                         codebook_size=32)
    c.vqvae.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=0,
                         checkpoint_every=2, eval_batch_size=8, eval_batches=2, progress=False)
