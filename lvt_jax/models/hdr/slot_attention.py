"""Slot attention (Locatello et al. 2020) and the slot predictor between frames (SAVi).

Slots compete for the inputs (softmax over slots), then each slot takes the weighted mean
of the inputs it won (weights renormalised over inputs) and updates through a GRU and a
residual MLP. Nothing depends on a slot's index, so permuting the slots' initial states
permutes every output (tested): which object a slot holds is decided by its state alone.

Object slots also carry a reference frame, a position and a scale (as in Invariant Slot
Attention, Biza et al. 2023): an object slot's attention logits get a Gaussian spatial
term around its position, and after every iteration its position and scale become the
mean and spread of the inputs it attends to. Slots start spread over the frame and each
settles on the object nearest it, which is what lets decomposition emerge within a few
hundred steps on the demo data; the background slot has no spatial term.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.hdr.nets import MLP, dense, layer_norm
from lvt_jax.models.layers import constrain_batch


class GRU(nn.Module):
    """A GRU cell (PyTorch's gate layout) built from logically-named dense layers."""
    features: int

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        # The gates' pre-activations are gathered over the tensor axis before the split:
        # XLA's SPMD partitioner (jax 0.10.2, CPU) miscomputes this split-and-combine of
        # a tensor-sharded [.., 3F] on a (data, fsdp, tensor) = (2, 2, 2) mesh (outputs off
        # by O(1); tests/test_hdr_stage.py's sharded test catches it). [B, S, 3F] is tiny.
        gx = constrain_batch(dense(3 * self.features, "input")(x))
        gh = constrain_batch(dense(3 * self.features, "hidden")(h))
        rx, zx, nx = jnp.split(gx, 3, -1)
        rh, zh, nh = jnp.split(gh, 3, -1)
        r = nn.sigmoid(rx + rh)
        z = nn.sigmoid(zx + zh)
        n = jnp.tanh(nx + r * nh)
        return (1.0 - z) * n + z * h


class SlotAttention(nn.Module):
    """One frame's slot attention with reference frames (see the module doc).

    assignment 'kmeans' (default): an input's logit for a slot is minus its squared
    distance, in a learned key space, to the slot's centre (the mean key of what the slot
    attends to, carried from frame to frame), over a learned temperature: soft k-means
    with a spatial term, which splits a frame into coherent regions from the first
    training step (as SLIC superpixels do) instead of waiting for learned queries to
    agree with the keys. 'dot': the original q.k/sqrt(D) logits.
    """
    slot_dim: int
    mlp_dim: int
    assignment: str = "kmeans"
    # Treat the segmentation as perception: no gradient flows into the attention weights
    # (nor the positions and scales derived from them); reconstruction trains the encoder
    # through the values, and the renderer's alphas are taught to follow the attention.
    stop_gradient_assignment: bool = True
    seed_sharpness: float = 0.0    # k-means seeds: how strongly distinctive keys are preferred
    eps: float = 1e-8

    def setup(self):
        self.norm_inputs = layer_norm()
        self.norm_slots = layer_norm()
        self.norm_mlp = layer_norm()
        if self.assignment == "dot":
            self.to_q = dense(self.slot_dim, use_bias=False)
        else:
            # temperature 1: sharp enough that an untrained encoder's keys already split a
            # demo frame into its objects (FG-ARI 0.2-0.4 before training; about 0 with
            # sqrt(slot_dim))
            self.log_temperature = self.param(
                "log_temperature", nn.with_logical_partitioning(
                    nn.initializers.zeros, ()), ())
        self.to_k = dense(self.slot_dim, use_bias=False)
        self.to_v = dense(self.slot_dim, use_bias=False)
        self.gru = GRU(self.slot_dim)
        self.mlp = MLP(self.mlp_dim, self.slot_dim)

    def __call__(self, state: dict, inputs: jax.Array, iters: int, coords: jax.Array,
                 local: jax.Array, first: bool) -> tuple[dict, jax.Array]:
        """state {slots [B, S, D], pos [B, S, 2], log_scale [B, S, 2], centres [B, S, D]},
        inputs [B, N, Din], coords [N, 2] (the inputs' positions), local [S] (1: the
        slot's logits get the spatial term) -> (new state, attention [B, S, N]).

        `first`: the clip's first frame; k-means centres then start as the mean key around
        each slot's position (the whole frame for non-local slots). The attention returned
        is the last iteration's softmax over slots: the slots' soft segmentation.
        """
        slots, pos, log_scale = state["slots"], state["pos"], state["log_scale"]
        chex.assert_rank([slots, inputs], 3)
        x = self.norm_inputs(inputs)
        k, v = self.to_k(x), self.to_v(x)
        centres = state.get("centres")
        if self.assignment != "dot" and (first or centres is None):
            # Seeds (k-means++-like): a local slot starts at the most distinctive keys
            # around its position (far from the frame's mean key: an object rather than
            # the table), a non-local slot at the frame's mean key.
            mean = jnp.mean(k, axis=1, keepdims=True)
            salience = (0.5 * self.seed_sharpness * jnp.sum((k - mean) ** 2, -1)
                        / jnp.exp(2 * self.log_temperature))
            centres = jnp.einsum("bsn,bnd->bsd", _spatial_weights(
                pos, log_scale, coords, local, salience), k)
        attn = None
        for _ in range(iters):
            if self.assignment == "dot":
                q = self.to_q(self.norm_slots(slots))
                logits = jnp.einsum("bsd,bnd->bsn", q, k) * self.slot_dim ** -0.5
            else:
                # The difference, not |k|^2 - 2kc + |c|^2: no cancellation, so the
                # (sharp) assignment is the same whatever the sharding's summation order.
                d2 = jnp.sum((k[:, None] - centres[:, :, None]) ** 2, -1)
                logits = -0.5 * d2 / jnp.exp(2 * self.log_temperature)
            d = (coords[None, None] - pos[:, :, None]) / jnp.exp(log_scale)[:, :, None]
            logits = logits - 0.5 * jnp.sum(d * d, -1) * local[None, :, None]
            attn = jax.nn.softmax(logits, axis=1)
            if self.stop_gradient_assignment:
                attn = jax.lax.stop_gradient(attn)
            w = attn / (jnp.sum(attn, axis=-1, keepdims=True) + self.eps)
            updates = jnp.einsum("bsn,bnd->bsd", w, v)
            pos, log_scale = reference_frames(w, coords)
            if self.assignment != "dot":
                centres = jnp.einsum("bsn,bnd->bsd", w, k)
            slots = self.gru(updates, slots)
            slots = slots + self.mlp(self.norm_mlp(slots))
        new = dict(slots=slots, pos=pos, log_scale=log_scale)
        if self.assignment != "dot":
            new["centres"] = centres
        return new, attn


def _spatial_weights(pos: jax.Array, log_scale: jax.Array, coords: jax.Array,
                     local: jax.Array, salience: jax.Array) -> jax.Array:
    """[B, S, N] weights summing to 1 over N: for a local slot, a Gaussian around its
    position times exp(salience [B, N]); uniform for the others."""
    d = (coords[None, None] - pos[:, :, None]) / jnp.exp(log_scale)[:, :, None]
    logits = (-0.5 * jnp.sum(d * d, -1) + salience[:, None, :]) * local[None, :, None]
    return jax.nn.softmax(logits, axis=-1)


MIN_LOG_SCALE, MAX_LOG_SCALE = float(jnp.log(0.03)), float(jnp.log(1.5))


def reference_frames(weights: jax.Array, coords: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Position (weighted mean) and log-scale (log of the weighted std, per axis, clipped
    to [0.03, 1.5] frame half-widths) of the inputs each slot attends to.
    weights [B, S, N] (summing to 1 over N), coords [N, 2] -> ([B, S, 2], [B, S, 2])."""
    pos = jnp.einsum("bsn,nc->bsc", weights, coords)
    var = jnp.einsum("bsn,bsnc->bsc", weights, (coords[None, None] - pos[:, :, None]) ** 2)
    log_scale = jnp.clip(0.5 * jnp.log(var + 1e-6), MIN_LOG_SCALE, MAX_LOG_SCALE)
    return pos, log_scale


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
