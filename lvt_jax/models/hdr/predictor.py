"""HDR stage 2: the latent predictor (this project's design; the paper's is not public).

It models the time-varying latents ``dyn [B, T, S, Dd]`` that the frozen stage-1
autoencoder gives per frame (S = K + 1 slots, slot 0 the background, the first 2 numbers
of a slot its position), conditioned on a per-clip vector ``cond [B, C]`` (the
time-independent latents).

**One token per frame.** A frame's S slot latents are concatenated and projected to one
d_model token, and a causal transformer runs over the T frame tokens:

* slots interact (the gripper pushes the objects): inside one token every slot sees every
  other through the first projection, with no attention needed for it;
* the sequence is T tokens instead of T x S, so attention and its cache shrink S-fold
  (the point of HDR is memory);
* nothing is lost by fixing the slots' order: stage 1 tracks slot k to the same object
  through a video (slot attention starts frame t from frame t-1's slots), so position k of
  the concatenation means the same object in every frame of that video.

**Conditioning** is a projection of ``cond`` added to every token (not a prefix token):
every frame, and so every layer's residual stream, sees the static latents directly;
frame t stays at sequence position t (the position embedding and the key/value cache
are indexed by frame with no offset), and the cached sampler needs no separate prefix
step when only one priming frame is given.

**Stochastic part (SVG-LP, Denton and Fergus 2018).** h_t is the transformer's output at
frame t (it has seen frames <= t). A learned prior p(z | h_t) and a posterior
q(z | h_t, x_{t+1}) are diagonal Gaussians of z_dim numbers; the next frame is predicted
as x_{t+1} = x_t + g([h_t, z]) (a residual in latent space: still objects need no
change). g's last layer starts at zero, so an untrained model predicts "nothing moves".
Training draws z from q (reparameterised, teacher forcing); sampling draws z from p with
its standard deviation scaled by a temperature (0 = the prior mean).

:func:`elbo_terms` gives the two terms of the negative ELBO per predicted frame:
the Gaussian NLL of x_{t+1} under N(prediction, obs_sigma^2) summed over its S*Dd numbers
and KL(q || p), in nats. The samplers are in :mod:`lvt_jax.sampling.hdr`.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lvt_jax.models.hdr import latents as L
from lvt_jax.models.hdr.nets import MLP, dense, layer_norm
from lvt_jax.models.layers import constrain_batch

_MASK = -1e30  # masked attention logits: exp() is exactly 0 in float32


def default_predictor_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Demo-size predictor (``arg='tiny'``: the tests' size). Goes at
    ``config.hdr.predictor.model``."""
    c = ml_collections.ConfigDict(dict(
        d_model=128, num_heads=4, num_layers=4, mlp_dim=512,
        z_dim=16,            # stochastic latent per predicted frame
        max_frames=32,       # length of the learned position embedding (>= any clip)
        obs_sigma=0.1,       # std of the Gaussian likelihood of the next frame's latents
        logvar_min=-10.0, logvar_max=4.0))
    if arg == "tiny":
        c.update(d_model=32, num_heads=2, num_layers=2, mlp_dim=64, z_dim=4, max_frames=8)
    elif arg not in (None, ""):
        raise ValueError(f"predictor config variant {arg!r}: choose None or 'tiny'.")
    return c


class KVCache(NamedTuple):
    """Keys and values of every layer, ``[B, frames, heads, head_dim]`` each."""
    keys: tuple
    values: tuple


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention: q [B, Tq, H, dh], k/v [B, Tk, H, dh], mask bool [Tq, Tk]
    (True = may attend) -> [B, Tq, H, dh]. Masked keys get weight exactly 0, so the
    cached sampler's not-yet-written cache rows cannot leak in."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask[None, None], logits, jnp.float32(_MASK))
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


class CausalBlock(nn.Module):
    """Pre-LN transformer layer with two entry points sharing its weights: the whole
    sequence under a causal mask (training, prefill, the naive sampler) and one frame
    against a key/value cache (the cached sampler)."""
    num_heads: int
    mlp_dim: int
    d_model: int

    def setup(self):
        d, nh = self.d_model, self.num_heads
        self.norm_attn = layer_norm()
        self.norm_mlp = layer_norm()
        self.mlp = MLP(self.mlp_dim, d)
        # q, k and v stacked on axis 1 (each initialised as its own [d, H*dh] matrix).
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(2, 3), batch_axis=(1,))
        self.qkv = self.param("qkv", nn.with_logical_partitioning(
            init, ("embed", None, "heads", "kv")), (d, 3, nh, d // nh))
        self.out = self.param("out", nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
            ("heads", "kv", "embed")), (nh, d // nh, d))

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = jnp.einsum("...d,dchk->...chk", self.norm_attn(x), self.qkv)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def _finish(self, x: jax.Array, o: jax.Array) -> jax.Array:
        x = x + jnp.einsum("...hk,hkd->...d", o, self.out)
        return x + self.mlp(self.norm_mlp(x))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, T, d] -> (x [B, T, d], keys, values [B, T, H, dh])."""
        q, k, v = self._qkv(x)
        T = x.shape[1]
        o = attend(q, k, v, jnp.tril(jnp.ones((T, T), bool)))
        return constrain_batch(self._finish(x, o)), k, v

    def step(self, x: jax.Array, keys: jax.Array, values: jax.Array, t: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Frame t only: x [B, d], caches [B, Tc, H, dh] (rows < t filled) -> (x, caches
        with row t written)."""
        q, k, v = self._qkv(x)
        keys = constrain_batch(jax.lax.dynamic_update_index_in_dim(keys, k, t, axis=1))
        values = constrain_batch(jax.lax.dynamic_update_index_in_dim(values, v, t, axis=1))
        mask = (jnp.arange(keys.shape[1]) <= t)[None]
        o = attend(q[:, None], keys, values, mask)[:, 0]
        return constrain_batch(self._finish(x, o)), keys, values


class LatentPredictor(nn.Module):
    """Causal transformer over frames with an SVG-LP learned prior (see the module doc).

    ``num_slots`` (S = K + 1) and ``dynamic_dim`` (Dd) come from stage 1's config
    (``hdr.model.num_objects + 1``, ``hdr.model.dynamic_dim``).
    """
    config: Any  # hdr.predictor.model: see default_predictor_config
    num_slots: int
    dynamic_dim: int

    def setup(self):
        c = self.config
        d = int(c.d_model)
        if d % int(c.num_heads):
            raise ValueError(f"hdr.predictor.model.d_model={d} is not divisible by num_heads="
                             f"{c.num_heads}; choose a multiple.")
        self.frame_in = dense(d, axes=("latent", "embed"))
        self.cond_in = dense(d, axes=("latent", "embed"))
        self.pos_embedding = self.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("frames", "embed")), (int(c.max_frames), d))
        self.blocks = [CausalBlock(int(c.num_heads), int(c.mlp_dim), d_model=d)
                       for _ in range(int(c.num_layers))]
        self.final_norm = layer_norm()
        self.prior_net = MLP(int(c.mlp_dim), 2 * int(c.z_dim))
        self.posterior_net = MLP(int(c.mlp_dim), 2 * int(c.z_dim))
        self.delta_hidden = dense(int(c.mlp_dim), axes=("embed", "mlp"))
        self.delta_out = dense(self.frame_dim, axes=("mlp", "latent"),
                               kernel_init=nn.initializers.zeros)

    @property
    def frame_dim(self) -> int:
        return self.num_slots * self.dynamic_dim

    def check_inputs(self, dyn: jax.Array, cond: jax.Array) -> None:
        """Clear errors for inputs of the wrong shape or length (at trace time)."""
        if dyn.ndim != 4 or dyn.shape[2:] != (self.num_slots, self.dynamic_dim):
            raise ValueError(f"dyn {dyn.shape}: expected [B, T, {self.num_slots}, "
                             f"{self.dynamic_dim}] (batch, frames, slots, hdr.model.dynamic_dim)")
        if cond.ndim != 2 or cond.shape[0] != dyn.shape[0]:
            raise ValueError(f"cond {cond.shape}: expected [{dyn.shape[0]}, C] (one "
                             "conditioning vector per video)")
        if dyn.shape[1] > int(self.config.max_frames):
            raise ValueError(f"{dyn.shape[1]} frames exceed hdr.predictor.model.max_frames="
                             f"{self.config.max_frames}; raise it to at least {dyn.shape[1]}.")

    # --- the transformer -----------------------------------------------------------
    def _token(self, x: jax.Array, cond: jax.Array, pos: jax.Array) -> jax.Array:
        """x [..., S, Dd] -> [..., d]: frame projection + conditioning + position."""
        flat = x.reshape(x.shape[:-2] + (self.frame_dim,))
        c = self.cond_in(cond)
        c = c.reshape(c.shape[:1] + (1,) * (flat.ndim - 2) + c.shape[1:])
        return self.frame_in(flat) + c + pos

    def hidden(self, dyn: jax.Array, cond: jax.Array) -> tuple[jax.Array, KVCache]:
        """h [B, T, d] (h_t has seen frames <= t) and every layer's keys and values."""
        self.check_inputs(dyn, cond)
        x = constrain_batch(self._token(dyn, cond, self.pos_embedding[:dyn.shape[1]]))
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        return self.final_norm(x), KVCache(tuple(keys), tuple(values))

    def step(self, x_t: jax.Array, cond: jax.Array, t: jax.Array, cache: KVCache
             ) -> tuple[jax.Array, KVCache]:
        """h_t [B, d] of frame t (x_t [B, S, Dd]) from the cache of frames < t."""
        pos = jax.lax.dynamic_index_in_dim(self.pos_embedding, t, 0, keepdims=False)
        x = self._token(x_t, cond, pos)
        keys, values = list(cache.keys), list(cache.values)
        for i, block in enumerate(self.blocks):
            x, keys[i], values[i] = block.step(x, keys[i], values[i], t)
        return self.final_norm(x), KVCache(tuple(keys), tuple(values))

    # --- the stochastic heads --------------------------------------------------------
    def _gaussian(self, raw: jax.Array) -> tuple[jax.Array, jax.Array]:
        return L.split_gaussian(raw, float(self.config.logvar_min), float(self.config.logvar_max))

    def prior(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """p(z | h_t): (mean, log-variance) [..., z_dim]."""
        return self._gaussian(self.prior_net(h))

    def posterior(self, h: jax.Array, x_t: jax.Array, x_next: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
        """q(z | h_t, x_{t+1}): sees the change the prediction has to make."""
        change = (x_next - x_t).reshape(x_t.shape[:-2] + (self.frame_dim,))
        return self._gaussian(self.posterior_net(jnp.concatenate([h, change], -1)))

    def predict(self, x_t: jax.Array, h: jax.Array, z: jax.Array) -> jax.Array:
        """x_{t+1} = x_t + g([h_t, z]), shapes [..., S, Dd]."""
        g = self.delta_out(nn.relu(self.delta_hidden(jnp.concatenate([h, z], -1))))
        return x_t + g.reshape(x_t.shape)

    def __call__(self, dyn: jax.Array, cond: jax.Array, eps: jax.Array) -> dict:
        """Teacher-forced pass over a clip: step t (0..T-2) predicts frame t+1 with
        z = mean_q + std_q * eps[:, t]. Returns h [B, T-1, d], prior / posterior means and
        log-variances [B, T-1, z_dim] and pred [B, T-1, S, Dd]."""
        B, T = dyn.shape[:2]
        chex.assert_shape(eps, (B, T - 1, int(self.config.z_dim)))
        h, _ = self.hidden(dyn, cond)
        h = h[:, :-1]
        x_t, x_next = dyn[:, :-1], dyn[:, 1:]
        prior_mu, prior_logvar = self.prior(h)
        post_mu, post_logvar = self.posterior(h, x_t, x_next)
        z = post_mu + jnp.exp(0.5 * post_logvar) * eps
        return dict(h=h, prior_mu=prior_mu, prior_logvar=prior_logvar, post_mu=post_mu,
                    post_logvar=post_logvar, pred=self.predict(x_t, h, z))


def init_params(model: LatentPredictor, rng: jax.Array, num_frames: int = 2,
                cond_dim: int = 1) -> Any:
    """Boxed parameters (logical axis metadata kept) from dummy inputs of the right
    shapes; ``cond_dim`` is C, the conditioning vector's length."""
    dyn = jnp.zeros((1, num_frames, model.num_slots, model.dynamic_dim), jnp.float32)
    eps = jnp.zeros((1, num_frames - 1, int(model.config.z_dim)), jnp.float32)
    return model.init(rng, dyn, jnp.zeros((1, cond_dim), jnp.float32), eps)["params"]


def gaussian_nll(x: jax.Array, mean: jax.Array, sigma: float) -> jax.Array:
    """Elementwise -log N(x; mean, sigma^2) in nats."""
    return 0.5 * ((x - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)


def elbo_terms(model: LatentPredictor, params: Any, dyn: jax.Array, cond: jax.Array,
               rng: jax.Array, n_prime: int) -> dict:
    """The negative ELBO's terms per video, in nats per predicted frame.

    ``nll`` [B]: -log N(x_{t+1}; pred, obs_sigma^2) summed over the S*Dd numbers of a
    frame; ``kl`` [B]: KL(q || p) summed over z_dim; both averaged over the predicted
    frames t+1 >= n_prime (the frames before n_prime are given at sampling time).
    ``eps = jax.random.normal(rng, [B, T-1, z_dim])`` is the reparameterisation noise.
    """
    B, T = dyn.shape[:2]
    if not 1 <= int(n_prime) < T:
        raise ValueError(f"n_prime={n_prime}: need 1 <= n_prime < {T} (the clip's frames).")
    eps = jax.random.normal(rng, (B, T - 1, int(model.config.z_dim)), jnp.float32)
    out = model.apply({"params": params}, dyn, cond, eps)
    nll = jnp.sum(gaussian_nll(dyn[:, 1:], out["pred"], float(model.config.obs_sigma)), (2, 3))
    kl = jnp.sum(L.kl_normal(out["post_mu"], out["post_logvar"], out["prior_mu"],
                             out["prior_logvar"]), -1)
    w = (jnp.arange(1, T) >= n_prime).astype(jnp.float32)  # weight of predicted frame t+1
    mean = lambda x: jnp.sum(x * w, -1) / jnp.sum(w)
    return dict(nll=mean(nll), kl=mean(kl))
