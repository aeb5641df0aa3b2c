"""Slot attention (Locatello et al. 2020) and the slot predictor between frames (SAVi).

Slots compete for the inputs (softmax over slots), then each slot takes the weighted mean
of the inputs it won (weights renormalised over inputs) and updates through a GRU and a
residual MLP. Nothing depends on a slot's index, so permuting the slots' initial states
permutes every output (tested): which object a slot holds is decided by its state alone.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lvt_jax.models.hdr.nets import MLP, dense, layer_norm


class GRU(nn.Module):
    """A GRU cell (PyTorch's gate layout) built from logically-named dense layers."""
    features: int

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        gx = dense(3 * self.features, "input")(x)
        gh = dense(3 * self.features, "hidden")(h)
        rx, zx, nx = jnp.split(gx, 3, -1)
        rh, zh, nh = jnp.split(gh, 3, -1)
        r = nn.sigmoid(rx + rh)
        z = nn.sigmoid(zx + zh)
        n = jnp.tanh(nx + r * nh)
        return (1.0 - z) * n + z * h


class SlotAttention(nn.Module):
    slot_dim: int
    mlp_dim: int
    eps: float = 1e-8

    def setup(self):
        self.norm_inputs = layer_norm()
        self.norm_slots = layer_norm()
        self.norm_mlp = layer_norm()
        self.to_q = dense(self.slot_dim, use_bias=False)
        self.to_k = dense(self.slot_dim, use_bias=False)
        self.to_v = dense(self.slot_dim, use_bias=False)
        self.gru = GRU(self.slot_dim)
        self.mlp = MLP(self.mlp_dim, self.slot_dim)

    def __call__(self, slots: jax.Array, inputs: jax.Array, iters: int
                 ) -> tuple[jax.Array, jax.Array]:
        """slots [B, S, D], inputs [B, N, Din] -> (slots [B, S, D], attention [B, S, N]).

        The attention returned is the last iteration's softmax over slots (each input's
        split among the slots): the slots' soft segmentation of the frame.
        """
        chex.assert_rank([slots, inputs], 3)
        x = self.norm_inputs(inputs)
        k, v = self.to_k(x), self.to_v(x)
        scale = self.slot_dim ** -0.5
        attn = None
        for _ in range(iters):
            q = self.to_q(self.norm_slots(slots))
            logits = jnp.einsum("bsd,bnd->bsn", q, k) * scale
            attn = jax.nn.softmax(logits, axis=1)
            w = attn / (jnp.sum(attn, axis=-1, keepdims=True) + self.eps)
            updates = jnp.einsum("bsn,bnd->bsd", w, v)
            slots = self.gru(updates, slots)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn


class SlotPredictor(nn.Module):
    """Frame t-1's slots -> frame t's initial slots: self-attention among the slots (a
    gripper's slot informs the slots of what it pushes) and a residual MLP; one head,
    no positions, so it is permutation-equivariant."""
    slot_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, slots: jax.Array) -> jax.Array:
        y = layer_norm("norm1")(slots)
        q = dense(self.slot_dim, "q", use_bias=False)(y)
        k = dense(self.slot_dim, "k", use_bias=False)(y)
        v = dense(self.slot_dim, "v", use_bias=False)(y)
        a = jax.nn.softmax(jnp.einsum("bsd,btd->bst", q, k) * self.slot_dim ** -0.5, -1)
        slots = slots + dense(self.slot_dim, "o", axes=("mlp", "embed"))(
            jnp.einsum("bst,btd->bsd", a, v))
        return slots + MLP(self.mlp_dim, self.slot_dim, name="mlp")(layer_norm("norm2")(slots))
