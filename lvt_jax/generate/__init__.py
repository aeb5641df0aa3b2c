"""Both systems' trained stages, loaded once, ready to sample and reconstruct videos.

`from_workdir(config, workdir, mesh)` returns the generator of the config's system:
lvt.Generator (VQ-VAE + Video Transformer) or hdr.HDRGenerator (autoencoder + latent
predictor). Sampling (--mode=sample), evaluation (--mode=evaluate) and the in-loop FVD use
only what both provide: n_prime, num_frames, batch_size, reconstruct(frames),
sample(prime_frames, key, ...) and generate(...) (videos plus what samples.npz keeps).
"""
from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from lvt_jax.generate.lvt import Generator

__all__ = ["Generator", "from_workdir"]


def from_workdir(config: Any, workdir: str, mesh: Mesh, **kw) -> Any:
    """The latest checkpoints of both stages of the config's system in `workdir`."""
    if str(config.get("system", "lvt")) == "hdr":
        from lvt_jax.generate.hdr import HDRGenerator
        return HDRGenerator.from_workdir(config, workdir, mesh, **kw)
    return Generator.from_workdir(config, workdir, mesh, **kw)
