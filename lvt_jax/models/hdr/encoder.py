"""Per-frame CNN encoder: 64x64 frames -> a 16x16 grid of slot-attention inputs.

Two stride-2 convolutions and one stride-1 convolution (PyTorch padding and init, like
the LVT layers), then a position embedding, LayerNorm and an MLP (as in SAVi). The 4x
downsampling keeps the 256 inputs per frame cheap for slot attention on a CPU; the
receptive field (about 14 pixels) covers a whole object of the demo data.
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax

from lvt_jax.models.hdr.nets import MLP, PositionEmbedding, layer_norm
from lvt_jax.models.layers import Conv, constrain_batch


class FrameEncoder(nn.Module):
    channels: Sequence[int] = (32, 32, 64)
    out_dim: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Frames [N, H, W, 3] in [-1, 1] -> features [N, H/4, W/4, out_dim]."""
        chex.assert_rank(x, 4)
        c1, c2, c3 = self.channels
        x = nn.relu(Conv(c1, 4, stride=2, padding=1, name="conv1")(x))
        x = constrain_batch(x)
        x = nn.relu(Conv(c2, 4, stride=2, padding=1, name="conv2")(x))
        x = nn.relu(Conv(c3, 3, padding=1, name="conv3")(x))
        x = PositionEmbedding(name="pos")(x)
        x = layer_norm("norm")(x)
        return constrain_batch(MLP(self.out_dim, self.out_dim, name="mlp")(x))
