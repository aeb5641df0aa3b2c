"""Gaussian posteriors of HDR's latents, their KL terms, the pooling of the
time-independent latents over a clip's frames, and the per-frame layout of the latents
stage 2 sees (written by --mode=encode, lvt_jax/hdr_latents.py).

Time-independent (static) latents are inferred per frame and pooled over the first L
frames of the clip (training draws L uniformly from 1..T per clip): the same latent then
serves every frame by construction, and pooling over any prefix must work, so the static
latents of a video can be inferred from its priming frames alone at sampling time.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


# --- what stage 2 sees per frame ---------------------------------------------------
def layout(model_cfg: Any) -> dict[str, list[int]]:
    """The shapes of the parts of a frame's F numbers, in storage order."""
    S, K = int(model_cfg.num_objects) + 1, int(model_cfg.num_objects)
    return {"dynamic": [S, int(model_cfg.dynamic_dim)],
            "static": [K, int(model_cfg.static_dim)],
            "background": [int(model_cfg.bg_channels)]}


def num_features(lay: dict) -> int:
    return int(sum(np.prod(v) for v in lay.values()))


def split_features(x: jax.Array, lay: dict) -> dict[str, jax.Array]:
    """[..., F] -> {'dynamic': [..., S, Dd], 'static': [..., K, Ds], 'background': [..., Cb]}."""
    out, start = {}, 0
    for name, shape in lay.items():
        n = int(np.prod(shape))
        out[name] = x[..., start:start + n].reshape(x.shape[:-1] + tuple(shape))
        start += n
    return out


def background_summary(enc: dict) -> jax.Array:
    """[B, T, Cb]: the background's static map averaged over the pixels it sees."""
    w = enc["bg_weight"]
    return jnp.sum(w * enc["bg_mu"], (2, 3)) / (jnp.sum(w, (2, 3)) + 1e-6)


def frame_features(enc: dict) -> jax.Array:
    """The stage-1 encoder's per-frame outputs -> float32 [B, T, F] (storage layout)."""
    B, T = enc["dyn_mu"].shape[:2]
    return jnp.concatenate([enc["dyn_mu"].reshape(B, T, -1), enc["obj_mu"].reshape(B, T, -1),
                            background_summary(enc)], -1)


def conditioning(static: jax.Array, background: jax.Array) -> jax.Array:
    """Stage 2's conditioning vector [B, K*Ds + Cb] from the priming frames' per-frame
    static estimates [B, n, K, Ds] and background summaries [B, n, Cb] (their means)."""
    B = static.shape[0]
    return jnp.concatenate([static.mean(1).reshape(B, -1), background.mean(1)], -1)
