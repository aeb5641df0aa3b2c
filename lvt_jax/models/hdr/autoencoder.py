"""HDR stage 1: the hierarchical disentangled autoencoder (this project's design; the
paper's architecture is not public).

Per frame a CNN encodes the image; slot attention splits it among one background slot
(index 0) and K object slots. The slots of frame t start from those of frame t-1 (passed
through a predictor), so slot k follows the same object through the clip. Every slot
then carries two latents:

* a time-independent (static) one, inferred per frame and pooled over the clip's first L
  frames (one per slot per clip): a vector of `static_dim` numbers for an object, a
  spatial map of `bg_channels` x (H/4) x (W/4) for the background (pooled per pixel over
  the frames where the background slot sees it);
* a time-varying (dynamic) one per frame, `dynamic_dim` numbers, whose first four are
  the slot's reference frame: its position (y, x) and log-scale (the centre and spread
  of its attention), which the object renderer works relative to.

Both are Gaussian posteriors (KL terms against N(0, 1) in stage 1). The decoder renders
each slot to RGB + alpha and composites them with alphas normalised over the slots.

Shapes: video [B, T, H, W, 3] in [-1, 1]; S = K + 1 slots; h, w = H/4, W/4.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.hdr import latents as L
from lvt_jax.models.hdr.decoder import BackgroundDecoder, ObjectDecoder, composite
from lvt_jax.models.hdr.encoder import FrameEncoder
from lvt_jax.models.hdr.nets import MLP, dense, grid_coords
from lvt_jax.models.hdr.slot_attention import SlotAttention, SlotPredictor

POSITION_DIMS = 2  # the first dynamic numbers of every slot: (y, x) in [-1, 1] ...
FRAME_DIMS = 4     # ... then its log-scale (y, x): the slot's reference frame
INIT_LOG_SCALE = float(np.log(0.4))  # object slots start broad, spread over the frame


def initial_positions(num_objects: int) -> np.ndarray:
    """float32 [K, 2]: the object slots' starting positions, a grid over the frame."""
    n = int(np.ceil(np.sqrt(num_objects)))
    ticks = (np.arange(n) + 0.5) / n * 2 - 1
    grid = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    return grid[:num_objects].astype(np.float32)


class HDRAutoencoder(nn.Module):
    config: Any  # hdr.model: num_objects, slot_dim, mlp_dim, enc_channels, iters_first,
    #              iters, static_dim, dynamic_dim, bg_channels, dec_channels,
    #              logvar_min, logvar_max

    def setup(self):
        c = self.config
        self.num_slots = int(c.num_objects) + 1
        self.encoder = FrameEncoder(tuple(c.enc_channels), int(c.slot_dim),
                                    position_embedding=str(c.get("assignment", "kmeans")) == "dot")
        self.slot_attention = SlotAttention(
            int(c.slot_dim), int(c.mlp_dim), str(c.get("assignment", "kmeans")),
            bool(c.get("stop_gradient_assignment", True)),
            float(c.get("seed_sharpness", 0.0)))
        self.slot_predictor = SlotPredictor(int(c.slot_dim), int(c.mlp_dim))
        self.init_slots = self.param(
            "init_slots", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                       ("slot", "embed")),
            (self.num_slots, int(c.slot_dim)))
        self.dynamic_head = MLP(int(c.mlp_dim), 2 * int(c.dynamic_dim))
        self.static_head = MLP(int(c.mlp_dim), 2 * int(c.static_dim))
        self.bg_head = dense(2 * int(c.bg_channels), axes=("embed", "latent"))
        self.object_decoder = ObjectDecoder(int(c.dec_channels),
                                            envelope=bool(c.get("alpha_envelope", True)))
        self.background_decoder = BackgroundDecoder(int(c.dec_channels),
                                                    str(c.get("bg_decoder", "smooth")),
                                                    int(c.image_size))

    # --- inference -------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict:
        """The learned initial slots, object slots spread over the frame (broad scale)."""
        K = self.num_slots - 1
        pos = np.concatenate([np.zeros((1, 2), np.float32), initial_positions(K)])
        return dict(slots=jnp.broadcast_to(self.init_slots, (batch,) + self.init_slots.shape),
                    pos=jnp.broadcast_to(pos, (batch, self.num_slots, 2)),
                    log_scale=jnp.full((batch, self.num_slots, 2), INIT_LOG_SCALE))

    def encode(self, video: jax.Array, init_state: dict | None = None,
               continued: bool = False) -> dict:
        """Per-frame posterior statistics of a clip (nothing pooled yet).

        Returns slots [B,T,S,D], attn [B,T,S,N], dyn_mu / dyn_logvar [B,T,S,Dd],
        obj_mu / obj_logvar [B,T,K,Ds] (per-frame static estimates), bg_mu / bg_logvar
        [B,T,h,w,Cb], bg_weight [B,T,h,w,1] (how much the background slot sees there) and
        `state`, the last frame's {slots, pos, log_scale}. `init_state` (same keys, [B, S,
        ...]) replaces `initial_state` (tests, analysis); with `continued` it is the state
        after the previous frames (a long video encoded window by window), and the clip's
        first frame is treated as a later frame.
        """
        c = self.config
        chex.assert_rank(video, 5)
        B, T, H, W, _ = video.shape
        feats = self.encoder(video.reshape(B * T, H, W, 3))
        h, w, D = feats.shape[1:]
        feats = feats.reshape(B, T, h * w, D)
        coords = grid_coords(h, w).reshape(h * w, 2)
        local = np.asarray([0.0] + [1.0] * (self.num_slots - 1), np.float32)
        state = dict(self.initial_state(B) if init_state is None else init_state)
        chex.assert_shape(state["slots"], (B, self.num_slots, int(c.slot_dim)))
        all_slots, all_attn, all_pos, all_scale = [], [], [], []
        for t in range(T):  # the recurrence: frame t starts from frame t-1's slots
            first = t == 0 and not continued
            if not first:
                state["slots"] = self.slot_predictor(state["slots"])
            state, attn = self.slot_attention(
                state, feats[:, t], int(c.iters_first if first else c.iters), coords, local,
                first)
            all_slots.append(state["slots"])
            all_attn.append(attn)
            all_pos.append(state["pos"])
            all_scale.append(state["log_scale"])
        slots, attn = jnp.stack(all_slots, 1), jnp.stack(all_attn, 1)
        lo, hi = float(c.logvar_min), float(c.logvar_max)
        dyn_mu, dyn_logvar = L.split_gaussian(self.dynamic_head(slots), lo, hi)
        # The reference frame: the centre and spread of the slot's attention.
        ref = jnp.concatenate([jnp.stack(all_pos, 1), jnp.stack(all_scale, 1)], -1)
        dyn_mu = jnp.concatenate([ref, dyn_mu[..., FRAME_DIMS:]], -1)
        obj_mu, obj_logvar = L.split_gaussian(self.static_head(slots[:, :, 1:]), lo, hi)
        # The background's static map is coarser than the inputs (bg_pool x bg_pool cells
        # each): fine enough for a table's texture, too coarse to hold a 10-pixel object,
        # so the objects (even those that never move) are worth an object slot.
        f = int(c.get("bg_pool", 1))
        pool = lambda x: x.reshape(B, T, h // f, f, w // f, f, x.shape[-1]).mean((3, 5))
        bg_mu, bg_logvar = L.split_gaussian(
            pool(self.bg_head(feats.reshape(B, T, h, w, D))), lo, hi)
        bg_weight = pool(attn[:, :, 0].reshape(B, T, h, w, 1))
        return dict(slots=slots, attn=attn, dyn_mu=dyn_mu, dyn_logvar=dyn_logvar,
                    obj_mu=obj_mu, obj_logvar=obj_logvar, bg_mu=bg_mu, bg_logvar=bg_logvar,
                    bg_weight=bg_weight,
                    state=state)

    def static_posterior(self, enc: dict, length: jax.Array) -> dict:
        """Pools the per-frame static estimates over each clip's first `length` frames:
        obj_mu / obj_logvar [B, K, Ds], bg_mu / bg_logvar [B, h, w, Cb]."""
        T = enc["obj_mu"].shape[1]
        fw = L.prefix_weights(length, T)
        bw = enc["bg_weight"]
        return dict(obj_mu=L.pool_frames(enc["obj_mu"], fw),
                    obj_logvar=L.pool_frames(enc["obj_logvar"], fw),
                    bg_mu=L.pool_frames(enc["bg_mu"], fw, bw),
                    bg_logvar=L.pool_frames(enc["bg_logvar"], fw, bw))

    # --- rendering -------------------------------------------------------------------
    def decode(self, obj_static: jax.Array, bg_static: jax.Array, dynamic: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Static latents obj [B, K, Ds], bg [B, h, w, Cb] and dynamic ones [B, T, S, Dd]
        -> (frames [B, T, H, W, 3], layers rgb [B, T, S, H, W, 3], alphas [B, T, S, H, W])."""
        B, T, S, Dd = dynamic.shape
        K = S - 1
        chex.assert_shape(obj_static, (B, K, None))
        obj_z = jnp.concatenate([jnp.broadcast_to(obj_static[:, None], (B, T, K, obj_static.shape[-1])),
                                 dynamic[:, :, 1:]], -1)
        ref = dynamic[:, :, 1:, :FRAME_DIMS]
        obj_rgb, obj_alpha = self._render_objects(obj_z, ref[..., :POSITION_DIMS],
                                                  ref[..., POSITION_DIMS:])
        bg_map = jnp.broadcast_to(bg_static[:, None], (B, T) + bg_static.shape[1:])
        bg_rgb, bg_alpha = self.background_decoder(
            bg_map.reshape((B * T,) + bg_static.shape[1:]), dynamic[:, :, 0].reshape(B * T, Dd))
        H, W = bg_rgb.shape[1:3]
        rgb = jnp.concatenate([bg_rgb.reshape(B, T, 1, H, W, 3),
                               obj_rgb.reshape(B, T, K, H, W, 3)], 2)
        logits = jnp.concatenate([bg_alpha.reshape(B, T, 1, H, W),
                                  obj_alpha.reshape(B, T, K, H, W)], 2)
        frames, alphas = composite(rgb, logits, slot_axis=2)
        return frames, rgb, alphas

    def _render_objects(self, z: jax.Array, pos: jax.Array, log_scale: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
        """[B, T, K, ...] latents and reference frames -> object layers, rgb [B*T*K, H, W,
        3] and alpha logits [B*T*K, H, W], in (b, t, k) order.

        With `remat_decoder` the frames are rendered one after another in a scan whose
        step is rematerialised: the backward pass recomputes one frame's renderings at a
        time instead of keeping every frame's (the renderers' full-resolution activations
        are most of the autoencoder's training memory: at paper size, 4 clips of 16
        frames, about 2/3 of it). The outputs are the same; the renderers run twice.
        """
        B, T, K = z.shape[:3]
        flat = lambda a: a.reshape(B * T * K, *a.shape[3:])
        if not bool(self.config.get("remat_decoder", False)):
            return self.object_decoder(flat(z), flat(pos), flat(log_scale))

        def step(mdl, carry, x):   # one frame of every clip: [B*K, ...]
            return carry, mdl.object_decoder(*x)

        scan = nn.scan(nn.remat(step), variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=0, out_axes=0, length=T)
        by_frame = lambda a: jnp.swapaxes(a, 0, 1).reshape(T, B * K, *a.shape[3:])
        _, (rgb, alpha) = scan(self, None, (by_frame(z), by_frame(pos), by_frame(log_scale)))
        back = lambda a: jnp.swapaxes(a.reshape(T, B, K, *a.shape[2:]), 0, 1).reshape(
            B * T * K, *a.shape[2:])
        return back(rgb), back(alpha)

    # --- the whole autoencoder ---------------------------------------------------------
    def __call__(self, video: jax.Array, *, rng: jax.Array | None = None,
                 length: jax.Array | None = None, init_state: dict | None = None
                 ) -> tuple[jax.Array, dict]:
        """Reconstructs a clip. With `rng` the latents are sampled from their posteriors
        (training), else their means are used. `length` [B]: frames the static latents
        pool over (default: all)."""
        B, T = video.shape[:2]
        enc = self.encode(video, init_state)
        length = jnp.full((B,), T, jnp.int32) if length is None else length
        post = self.static_posterior(enc, length)
        if rng is None:
            obj, bg, dyn = post["obj_mu"], post["bg_mu"], enc["dyn_mu"]
        else:
            r1, r2, r3 = jax.random.split(rng, 3)
            obj = L.reparameterize(r1, post["obj_mu"], post["obj_logvar"])
            bg = L.reparameterize(r2, post["bg_mu"], post["bg_logvar"])
            dyn = L.reparameterize(r3, enc["dyn_mu"], enc["dyn_logvar"])
        frames, rgb, alphas = self.decode(obj, bg, dyn)
        kl_obj = jnp.sum(L.kl_std_normal(post["obj_mu"], post["obj_logvar"]), (1, 2))
        kl_bg = jnp.sum(L.kl_std_normal(post["bg_mu"], post["bg_logvar"]), (1, 2, 3))
        kl_dyn = jnp.sum(L.kl_std_normal(enc["dyn_mu"], enc["dyn_logvar"]), (1, 2, 3))
        aux = dict(enc=enc, post=post, rgb=rgb, alphas=alphas,
                   kl_static=kl_obj + kl_bg, kl_static_objects=kl_obj,
                   kl_static_background=kl_bg, kl_dynamic=kl_dyn)
        return frames, aux
