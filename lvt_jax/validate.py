"""Checks that fail fast, before any compile, with the problem and the fix in the message."""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from lvt_jax import sharding as shd


def batch_divides(name: str, batch: int, mesh: Mesh, rules) -> None:
    spec = shd.batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    ways = 1
    for a in axes:
        ways *= mesh.shape[a]
    if batch % ways:
        raise ValueError(f"{name}={batch} is not divisible by the {ways} data-parallel devices "
                         f"(mesh {dict(mesh.shape)}); choose a multiple of {ways}.")
    if batch % jax.process_count():
        raise ValueError(f"{name}={batch} is not divisible by the {jax.process_count()} "
                         "processes; choose a multiple.")


def vqvae(config: Any, mesh: Mesh) -> None:
    rules = shd.rules_from_config(config)
    t, m, d = config.vqvae.train, config.vqvae.model, config.data
    batch_divides("vqvae.train.batch_size", int(t.batch_size), mesh, rules)
    batch_divides("vqvae.train.eval_batch_size", int(t.get("eval_batch_size", t.batch_size)),
                  mesh, rules)
    if d.image_size % 4:
        raise ValueError(f"data.image_size={d.image_size}: the VQ-VAE downsamples by 4; "
                         "use a multiple of 4.")
    if m.channels % m.num_codebooks:
        raise ValueError(f"vqvae.model.channels={m.channels} must be divisible by "
                         f"num_codebooks={m.num_codebooks}.")
    for k in ("num_steps", "log_every", "checkpoint_every", "keep"):
        if int(t[k]) <= 0:
            raise ValueError(f"vqvae.train.{k}={t[k]} must be positive.")
    if d.name not in ("bair", "synthetic_pushing"):
        raise ValueError(f"data.name={d.name!r}: known datasets are 'bair' and "
                         "'synthetic_pushing'.")
