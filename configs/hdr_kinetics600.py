"""HDR on Kinetics-600 (64x64, native frame rate), this project's paper-scale settings.

As configs/hdr_bair.py (HDR's sizes are this project's design; the paper's are not
public), with configs/kinetics600.py's data and protocol (5 priming + 11 generated
frames). Kinetics has no instance masks: FG-ARI and the swap test are off ('auto').
Variants: `tiny` (tests).
"""
from lvt_jax.config_base import add_hdr, sibling_config


def get_config(arg: str | None = None):
    kinetics = sibling_config(__file__, "kinetics600")
    bair = sibling_config(__file__, "bair")
    variants = bair.parse_variants(arg, ("tiny",), "configs/hdr_kinetics600.py")
    c = add_hdr(kinetics.get_config("tiny" if "tiny" in variants else None))
    sibling_config(__file__, "hdr_bair").paper_scale_hdr(c)
    if "tiny" in variants:
        sibling_config(__file__, "hdr_demo").shrink_hdr(c)
    return c
