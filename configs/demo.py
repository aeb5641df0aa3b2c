"""The built-in demo: synthetic robot pushing, trains on a 2-core CPU in minutes.

Same architecture family as the paper with narrower layers; `configs/demo.py:tiny` is the
test-suite variant (tiny model, a dozen videos).
"""
import importlib.util
import os

from lvt_jax.config_base import base_config


def _bair_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bair.py")
    spec = importlib.util.spec_from_file_location("lvt_configs_bair", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "synthetic_pushing"
    c.data.synthetic.update(num_train=2000, num_test=256, seed=0)
    c.vqvae.model.update(hidden=64, channels=128, res_channels=64, num_res_blocks=2,
                         codebook_size=512)
    c.vqvae.train.update(batch_size=32, num_steps=2000, log_every=50, eval_every=1000,
                         eval_batches=4, checkpoint_every=500, keep=2)
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"tiny"}
    if unknown:
        raise ValueError(f"configs/demo.py: unknown variant(s) {sorted(unknown)}; known: tiny")
    if "tiny" in variants:
        c.data.synthetic.update(num_train=12, num_test=4, seed=0)
        _bair_module().shrink_vqvae(c)
    return c
