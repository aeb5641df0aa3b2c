"""Per-frame CNN encoder: 64x64 frames -> a 16x16 grid of slot-attention inputs.

Two stride-2 convolutions and one stride-1 convolution (PyTorch init, like the LVT
layers, but edge padding: zero padding makes the border pixels' features unlike any
other, and slots seeded at distinctive features would start there), then an optional
position embedding (SAVi's; off with k-means slot assignment, whose spatial term already
knows where an input is and whose seeds must look at content only), LayerNorm and an MLP.
The 4x downsampling keeps the 256 inputs per frame cheap for slot attention on a CPU; the
receptive field (about 14 pixels) covers a whole object of the demo data.
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lvt_jax.models.hdr.nets import MLP, PositionEmbedding, layer_norm
from lvt_jax.models.layers import Conv, constrain_batch


def _edge(x: jax.Array, p: int = 1) -> jax.Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")


class FrameEncoder(nn.Module):
    channels: Sequence[int] = (32, 32, 64)
    out_dim: int = 64
    position_embedding: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Frames [N, H, W, 3] in [-1, 1] -> features [N, H/4, W/4, out_dim]."""
        chex.assert_rank(x, 4)
        c1, c2, c3 = self.channels
        x = nn.relu(Conv(c1, 4, stride=2, name="conv1")(_edge(x)))
        x = constrain_batch(x)
        x = nn.relu(Conv(c2, 4, stride=2, name="conv2")(_edge(x)))
        x = nn.relu(Conv(c3, 3, name="conv3")(_edge(x)))
        if self.position_embedding:
            x = PositionEmbedding(name="pos")(x)
        x = layer_norm("norm")(x)
        return constrain_batch(MLP(self.out_dim, self.out_dim, name="mlp")(x))
