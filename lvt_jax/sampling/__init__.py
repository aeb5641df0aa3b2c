"""Autoregressive sampling of stage-2 code clips (cached and naive samplers)."""
from lvt_jax.sampling.controls import Controls, make_controls
from lvt_jax.sampling.sampler import SAMPLERS, first_slice, keys_for_videos, sample_codes

__all__ = ["Controls", "make_controls", "SAMPLERS", "first_slice", "keys_for_videos",
           "sample_codes"]
