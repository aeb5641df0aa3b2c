"""Sampling controls: temperature, top-k and top-p (nucleus), and the draw itself.

The controls are traced scalars, not static arguments, so changing them never recompiles
the sampler. Both samplers (cached and naive) draw every code through :func:`draw` with a
key derived only from (video key, slice, position, codebook), which is what makes them
produce identical codes for the same keys.

A draw is ``argmax(filtered_logits + temperature * gumbel)``: the Gumbel-max form of
sampling from ``softmax(logits / temperature)``, written so that temperature 0 is exactly
the greedy decode and small temperatures approach it continuously.
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class Controls(NamedTuple):
    """Traced sampling controls (build with :func:`make_controls`)."""
    temperature: jax.Array  # float32 scalar, >= 0; 0 = greedy
    top_k: jax.Array        # int32 scalar; 0 = off
    top_p: jax.Array        # float32 scalar in (0, 1]; 1 = off


def make_controls(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Controls:
    """Checks the values (clear errors before any compile) and packs them as arrays."""
    temperature, top_k, top_p = float(temperature), int(top_k), float(top_p)
    if not temperature >= 0.0:
        raise ValueError(f"sample.temperature={temperature}: must be >= 0 (0 = greedy).")
    if top_k < 0:
        raise ValueError(f"sample.top_k={top_k}: must be >= 0 (0 = off).")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample.top_p={top_p}: must be in (0, 1] (1 = off).")
    return Controls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))


def filter_logits(logits: jax.Array, ctl: Controls) -> jax.Array:
    """Sets to -inf every logit outside the top-k and outside the top-p nucleus.

    ``logits``: float32 ``[nv]`` of one draw. The nucleus is the smallest set of the most
    likely codes whose probability at this temperature reaches ``top_p`` (always at least
    the most likely code); ties with the threshold are kept.
    """
    chex.assert_rank(logits, 1)
    nv = logits.shape[0]
    neg = jnp.float32(-jnp.inf)
    s = jnp.sort(logits)[::-1]  # descending
    kth = jnp.where(ctl.top_k > 0, s[jnp.clip(ctl.top_k - 1, 0, nv - 1)], neg)
    s = jnp.where(s >= kth, s, neg)
    scaled = s / jnp.maximum(ctl.temperature, jnp.float32(1e-30))
    p = jax.nn.softmax(scaled)
    keep = (jnp.cumsum(p) - p) < ctl.top_p  # mass strictly before entry i is below top_p
    keep = keep.at[0].set(True)
    threshold = jnp.min(jnp.where(keep, s, jnp.inf))
    return jnp.where(logits >= jnp.maximum(threshold, kth), logits, neg)


def draw(key: jax.Array, logits: jax.Array, ctl: Controls) -> jax.Array:
    """One code (int32 scalar) from float32 ``logits [nv]`` under the controls."""
    chex.assert_rank(logits, 1)
    logits = logits.astype(jnp.float32)
    active = (ctl.top_k > 0) | (ctl.top_p < 1.0)
    logits = jax.lax.cond(active, lambda l: filter_logits(l, ctl), lambda l: l, logits)
    g = jax.random.gumbel(key, logits.shape, jnp.float32)
    return jnp.argmax(logits + ctl.temperature * g).astype(jnp.int32)


def draw_batch(keys: jax.Array, logits: jax.Array, ctl: Controls) -> jax.Array:
    """Per-video keys ``[B]`` and logits ``[B, nv]`` -> codes int32 ``[B]``."""
    return jax.vmap(draw, in_axes=(0, 0, None))(keys, logits, ctl)


def code_keys(video_keys: jax.Array, slice_idx: jax.Array, position: jax.Array,
              codebook: int) -> jax.Array:
    """The key of one code of every video: a function of (video key, slice, position, k)."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    return fold(fold(fold(video_keys, slice_idx), position), codebook)
