"""Renderers of HDR's layers and their compositing.

Each slot is rendered to RGB plus an alpha logit at full resolution; the alphas are
normalised over the slots (a softmax per pixel), so they sum to 1 at every pixel, and the
frame is the alpha-weighted sum of the layers.

Object slots use a spatial-broadcast decoder whose coordinate grid is taken *relative to
the slot's reference frame* (position and scale, the first four numbers of its
time-varying latent, from the centre and spread of its attention): a slot's appearance is
rendered in its own frame of reference, and moving it is a change of two numbers. This is what lets the
time-independent latent carry appearance and the small time-varying one carry motion.
The background is rendered from its static spatial map (a textured table does not fit in
a vector) plus its time-varying latent broadcast over the map.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lvt_jax.models.hdr.nets import dense, grid_coords
from lvt_jax.models.layers import Conv, ConvTranspose, constrain_batch


def _upsample_to_rgba(x: jax.Array, channels: int) -> jax.Array:
    """[N, h, w, C] -> [N, 4h, 4w, 4] (RGB + alpha logit) with two 2x transposed convs."""
    x = nn.relu(ConvTranspose(channels, 4, 2, 1, name="up1")(x))
    x = constrain_batch(x)
    return ConvTranspose(4, 4, 2, 1, name="up2")(x)


class ObjectDecoder(nn.Module):
    """(latent [N, Dz], position [N, 2], log-scale [N, 2]) -> (rgb [N, H, W, 3], alpha
    logit [N, H, W])."""
    channels: int = 32
    grid: int = 16            # broadcast resolution (the output is 4x larger)
    envelope: bool = True     # alpha logit += log of a Gaussian around the reference frame

    @nn.compact
    def __call__(self, z: jax.Array, pos: jax.Array, log_scale: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank([z, pos, log_scale], 2)
        g = self.grid
        scale = jnp.exp(jnp.clip(log_scale, -4.0, 1.0))[:, None, None, :]
        rel = (grid_coords(g, g)[None] - pos[:, None, None, :]) / scale   # [N, g, g, 2]
        h = dense(self.channels, "latent", axes=("latent", "embed"))(z)[:, None, None, :]
        h = h + dense(self.channels, "pos", axes=("pos", "embed"))(rel)
        h = nn.relu(h)
        h = nn.relu(Conv(self.channels, 3, padding=1, name="conv")(h))
        out = _upsample_to_rgba(h, self.channels)
        alpha = out[..., 3]
        if self.envelope:
            # A Gaussian envelope around the reference frame: a slot's layer is visible near
            # where it is, from the first step on; the network learns the exact shape.
            full = (grid_coords(4 * g, 4 * g)[None] - pos[:, None, None, :]) / scale
            alpha = alpha - 0.5 * jnp.sum(full * full, -1)
        return out[..., :3], alpha


class BackgroundDecoder(nn.Module):
    """(static map [N, h, w, Cb], time-varying latent [N, Dd]) -> (rgb, alpha logit).

    kind 'smooth' (default): per-cell 1x1 layers, then bilinear upsampling to full size: a
    low-pass layer that renders a table texture well (the demo's tables: 36 dB from a
    4x-downsampled copy) but renders objects only as blurs, so sharp things are cheaper
    to explain with object slots; its alpha logit is 0 everywhere (the layer behind the
    objects). kind 'conv': 3x3 convolutions and transposed convolutions, and a predicted
    alpha (more capacity; it tends to absorb the objects).
    """
    channels: int = 32
    kind: str = "smooth"
    out_size: int = 64

    @nn.compact
    def __call__(self, bg_map: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank([bg_map, z], [4, 2])
        zz = dense(bg_map.shape[-1], "latent", axes=("latent", "embed"))(z)
        h = jnp.concatenate([bg_map, jnp.broadcast_to(zz[:, None, None, :], bg_map.shape)], -1)
        if self.kind == "smooth":
            h = nn.relu(dense(self.channels, "fc1", axes=("latent", "embed"))(h))
            rgb = dense(3, "fc2", axes=("embed", "latent"))(h)
            rgb = jax.image.resize(rgb, (rgb.shape[0], self.out_size, self.out_size, 3),
                                   "bilinear")
            return rgb, jnp.zeros(rgb.shape[:-1], rgb.dtype)
        h = nn.relu(Conv(self.channels, 3, padding=1, name="conv1")(h))
        h = nn.relu(Conv(self.channels, 3, padding=1, name="conv2")(h))
        out = _upsample_to_rgba(h, self.channels)
        return out[..., :3], out[..., 3]


def composite(rgb: jax.Array, alpha_logits: jax.Array, slot_axis: int = 1
              ) -> tuple[jax.Array, jax.Array]:
    """Layers rgb [..., S, H, W, 3] and alpha logits [..., S, H, W] (S at `slot_axis`)
    -> (frame [..., H, W, 3], alphas [..., S, H, W] summing to 1 over the slots)."""
    alphas = jax.nn.softmax(alpha_logits, axis=slot_axis)
    frame = jnp.sum(alphas[..., None] * rgb, axis=slot_axis)
    return frame, alphas
