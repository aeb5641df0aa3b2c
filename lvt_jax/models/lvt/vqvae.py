"""Stage 1: the frame VQ-VAE of LVT (configs "PR-DVQVAE2" for BAIR, "K-DVQVAE" for Kinetics).

Encoder and decoder follow the reference release layer by layer (stride-4, no norm layers);
the 256-channel encoder output is split into 4 chunks of 64, each quantised with its own
512-entry codebook updated by exponential moving averages (see quantizer.py).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lvt_jax.models.layers import Conv, ConvTranspose, constrain_batch
from lvt_jax.models.lvt.quantizer import DecomposedQuantizer


class ResBlock(nn.Module):
    """relu(x) + conv1x1(ReLU(conv3x3(relu(x)))), as the reference release computes it.

    The release writes `x + block(x)` with `block` starting in `nn.ReLU(inplace=True)`,
    which rectifies x itself before the sum, so its skip adds relu(x). The release
    produced the published numbers (and imported weights must reconstruct identically),
    so we keep its behaviour rather than the textbook pre-activation skip.
    """

    channels: int
    res_channels: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = nn.relu(x)
        h = Conv(self.res_channels, 3, padding=1, dtype=self.dtype, name="conv1")(x)
        h = Conv(self.channels, 1, dtype=self.dtype, name="conv2")(nn.relu(h))
        return x + h


class Encoder(nn.Module):
    hidden: int = 128
    channels: int = 256
    res_channels: int = 128
    num_res_blocks: int = 2
    dtype: Any = None  # compute dtype of the convs (parameters stay float32)

    @nn.compact
    def __call__(self, x):
        dt = self.dtype
        x = nn.relu(Conv(self.hidden, 4, stride=2, padding=1, dtype=dt, name="conv1")(x))
        x = constrain_batch(x)
        x = nn.relu(Conv(self.channels, 4, stride=2, padding=1, dtype=dt, name="conv2")(x))
        x = Conv(self.channels, 3, padding=1, dtype=dt, name="conv3")(x)
        for i in range(self.num_res_blocks):
            x = ResBlock(self.channels, self.res_channels, dtype=dt, name=f"res{i}")(x)
        return constrain_batch(x)


class Decoder(nn.Module):
    hidden: int = 128
    channels: int = 256
    res_channels: int = 128
    num_res_blocks: int = 2
    out_channels: int = 3
    dtype: Any = None  # compute dtype of the convs (parameters stay float32)

    @nn.compact
    def __call__(self, z):
        dt = self.dtype
        x = Conv(self.channels, 3, padding=1, dtype=dt, name="conv1")(z)
        for i in range(self.num_res_blocks):
            x = ResBlock(self.channels, self.res_channels, dtype=dt, name=f"res{i}")(x)
        x = nn.relu(x)
        x = nn.relu(ConvTranspose(self.hidden, 4, 2, 1, dtype=dt, name="deconv1")(x))
        x = constrain_batch(x)
        x = ConvTranspose(self.out_channels, 4, 2, 1, dtype=dt, name="deconv2")(x)
        return jnp.tanh(x)


class VQVAE(nn.Module):
    """Frames in [-1, 1] (B, H, W, 3) -> codes (B, H/4, W/4, num_codebooks) -> frames.

    Mixed precision (`config.dtype = 'bfloat16'`): the encoder and decoder compute in
    that dtype with float32 parameters; the quantiser (distances, codes, EMA codebook
    updates, commitment) and the returned reconstruction are float32.
    """

    config: Any  # ConfigDict: hidden, channels, res_channels, num_res_blocks, num_codebooks,
    #              codebook_size, ema_decay, ema_eps, dtype (optional, default float32)

    def setup(self):
        c = self.config
        kw = dict(hidden=c.hidden, channels=c.channels, res_channels=c.res_channels,
                  num_res_blocks=c.num_res_blocks, dtype=jnp.dtype(c.get("dtype", "float32")))
        self.encoder = Encoder(**kw)
        self.decoder = Decoder(**kw)
        if c.channels % c.num_codebooks:
            raise ValueError(f"vqvae.channels={c.channels} must be divisible by "
                             f"vqvae.num_codebooks={c.num_codebooks}.")
        self.quantizer = DecomposedQuantizer(
            num_codebooks=c.num_codebooks, codebook_size=c.codebook_size,
            code_dim=c.channels // c.num_codebooks, decay=c.ema_decay, eps=c.ema_eps)

    def __call__(self, x: jax.Array, *, train: bool = False):
        """Returns (reconstruction, aux) where aux has codes, z_e and the commitment loss."""
        chex.assert_rank(x, 4)
        z = self.encoder(x)
        q, codes, commit = self.quantizer(z, update=train)
        x_hat = self.decoder(q).astype(jnp.float32)
        chex.assert_equal_shape([x, x_hat])
        return x_hat, {"codes": codes, "commitment": commit}

    def encode(self, x: jax.Array) -> jax.Array:
        """Frames -> integer codes (B, h, w, num_codebooks)."""
        return self.quantizer(self.encoder(x), update=False)[1]

    def decode(self, codes: jax.Array) -> jax.Array:
        """Integer codes (B, h, w, num_codebooks) -> frames in [-1, 1] (float32)."""
        return self.decoder(self.quantizer.lookup(codes)).astype(jnp.float32)
