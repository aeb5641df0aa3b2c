"""Gaussian posteriors of HDR's latents, their KL terms, and the pooling of the
time-independent latents over a clip's frames.

Time-independent (static) latents are inferred per frame and pooled over the first L
frames of the clip (training draws L uniformly from 1..T per clip): the same latent then
serves every frame by construction, and pooling over any prefix must work, so the static
latents of a video can be inferred from its priming frames alone at sampling time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def split_gaussian(raw: jax.Array, lo: float, hi: float) -> tuple[jax.Array, jax.Array]:
    """[..., 2D] head output -> (mean [..., D], log-variance [..., D] clipped to [lo, hi])."""
    mu, logvar = jnp.split(raw, 2, axis=-1)
    return mu, jnp.clip(logvar, lo, hi)


def kl_std_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) in nats."""
    return 0.5 * (jnp.exp(logvar) + mu * mu - 1.0 - logvar)


def kl_normal(mu: jax.Array, logvar: jax.Array, mu_p: jax.Array, logvar_p: jax.Array
              ) -> jax.Array:
    """Elementwise KL(N(mu, exp(logvar)) || N(mu_p, exp(logvar_p))) in nats."""
    return 0.5 * (logvar_p - logvar + (jnp.exp(logvar) + (mu - mu_p) ** 2)
                  / jnp.exp(logvar_p) - 1.0)


def reparameterize(rng: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)


def prefix_weights(length: jax.Array, num_frames: int) -> jax.Array:
    """float32 [B, T]: 1 for the frames t < length[b] that a static latent pools over."""
    return (jnp.arange(num_frames)[None, :] < length[:, None]).astype(jnp.float32)


def pool_frames(x: jax.Array, frame_w: jax.Array, w: jax.Array | None = None,
                eps: float = 1e-6) -> jax.Array:
    """Weighted mean over axis 1 (frames) of x [B, T, ...]: weights frame_w [B, T] times,
    optionally, per-element weights w [B, T, ...] broadcastable to x (the background's
    visibility: a pixel occluded in a frame does not count there)."""
    fw = frame_w.reshape(frame_w.shape + (1,) * (x.ndim - 2))
    ww = fw if w is None else fw * w
    return jnp.sum(ww * x, axis=1) / (jnp.sum(ww, axis=1) + eps)
