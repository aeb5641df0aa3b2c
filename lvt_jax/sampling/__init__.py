"""Sampling: the controls both systems share (controls.py) and each system's samplers
(lvt/: cached and naive code samplers)."""
from lvt_jax.sampling.controls import Controls, make_controls

__all__ = ["Controls", "make_controls"]
