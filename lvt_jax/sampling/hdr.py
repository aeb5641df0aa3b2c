"""Sampling HDR's time-varying latents: the predictor rolled forward from priming frames.

Both samplers are traceable (jit them, or use :func:`compiled_sampler`) and loop with
``lax`` only, so one compiled program serves a (model config, batch, n_prime,
num_frames) and the roll-out has no Python loop over frames at run time:

* ``cached``: the priming frames but the last run through the transformer at once and
  fill a per-layer key/value cache; then a ``lax.scan`` over the remaining frames feeds
  one frame per step (attending over the cache) and draws the next frame;
* ``naive``: the reference, a ``lax.fori_loop`` that re-runs the whole causal
  transformer over the clip buffer for every new frame (frames after t are not written
  yet, and causality makes h_t ignore them), kept to check the cached sampler (they give
  the same frames for the same keys) and as the baseline.

Randomness: frame t of video b uses the noise ``normal(fold_in(keys[b], t), [z_dim])``
and nothing else, so a video's sample depends on its key only: not on the batch it was
drawn in, the number of devices or the sampler.

Controls (:class:`lvt_jax.sampling.controls.Controls`, traced: changing them does not
recompile): ``temperature`` scales the prior's standard deviation (0 = its mean). top-k
and top-p select among discrete codes and have no meaning for continuous latents: they
are ignored here.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lvt_jax.models.hdr.predictor import KVCache, LatentPredictor
from lvt_jax.models.layers import constrain_batch
from lvt_jax.sampling.controls import Controls

SAMPLERS = ("cached", "naive")


def frame_noise(keys: jax.Array, t: jax.Array, z_dim: int) -> jax.Array:
    """[B, z_dim] standard normal noise of frame t of every video."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), (z_dim,)))(keys)


def _next_frame(model: LatentPredictor, params: Any, h_t: jax.Array, x_t: jax.Array,
                keys: jax.Array, t_next: jax.Array, ctl: Controls) -> jax.Array:
    """Frame t+1 [B, S, Dd] from h_t [B, d] and frame t, z from the tempered prior."""
    apply = lambda *a, method: model.apply({"params": params}, *a, method=method)
    mu, logvar = apply(h_t, method="prior")
    eps = frame_noise(keys, t_next, mu.shape[-1])
    z = mu + ctl.temperature * jnp.exp(0.5 * logvar) * eps
    return constrain_batch(apply(x_t, h_t, z, method="predict"))


def check_request(model: LatentPredictor, dyn_prime: jax.Array, cond: jax.Array,
                  keys: jax.Array, num_frames: int, sampler: str) -> None:
    """Clear errors for a bad request, raised while tracing (before any compile)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}.")
    model.check_inputs(dyn_prime, cond)
    B, n_prime = dyn_prime.shape[:2]
    if not 1 <= n_prime <= num_frames:
        raise ValueError(f"{n_prime} priming frames for num_frames={num_frames}: need "
                         "1 <= n_prime <= num_frames.")
    if num_frames > int(model.config.max_frames):
        raise ValueError(f"num_frames={num_frames} exceeds hdr.predictor.model.max_frames="
                         f"{model.config.max_frames}: sample fewer frames or train a predictor "
                         "with a longer position embedding.")
    if keys.shape != (B,) or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys {keys.dtype}{list(keys.shape)}: expected {B} typed PRNG keys "
                         "(jax.random.key based), one per video.")


def _cached(model: LatentPredictor, params: Any, dyn_prime: jax.Array, cond: jax.Array,
            keys: jax.Array, num_frames: int, ctl: Controls) -> jax.Array:
    B, n_prime = dyn_prime.shape[:2]
    apply = lambda *a, method: model.apply({"params": params}, *a, method=method)
    c = model.config
    nh = int(c.num_heads)
    shape = (B, num_frames, nh, int(c.d_model) // nh)
    if n_prime > 1:  # fill the cache with every priming frame but the last, at once
        _, pre = apply(dyn_prime[:, :n_prime - 1], cond, method="hidden")
        pad = lambda a: jnp.pad(a, ((0, 0), (0, num_frames - a.shape[1]), (0, 0), (0, 0)))
        cache = KVCache(*(tuple(pad(a) for a in kv) for kv in pre))
    else:
        zeros = tuple(jnp.zeros(shape, jnp.float32) for _ in range(int(c.num_layers)))
        cache = KVCache(zeros, zeros)

    def body(carry, t):
        cache, x_t = carry
        h_t, cache = apply(x_t, cond, t, cache, method="step")
        x_next = _next_frame(model, params, h_t, x_t, keys, t + 1, ctl)
        return (cache, x_next), x_next

    ts = jnp.arange(n_prime - 1, num_frames - 1)
    _, new = jax.lax.scan(body, (cache, dyn_prime[:, -1]), ts)
    return jnp.concatenate([dyn_prime, jnp.moveaxis(new, 0, 1)], 1)


def _naive(model: LatentPredictor, params: Any, dyn_prime: jax.Array, cond: jax.Array,
           keys: jax.Array, num_frames: int, ctl: Controls) -> jax.Array:
    B, n_prime = dyn_prime.shape[:2]
    buf = jnp.zeros((B, num_frames) + dyn_prime.shape[2:], dyn_prime.dtype)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, dyn_prime, 0, axis=1)

    def body(t, buf):
        h, _ = model.apply({"params": params}, buf, cond, method="hidden")
        take = lambda a: jax.lax.dynamic_index_in_dim(a, t, 1, keepdims=False)
        x_next = _next_frame(model, params, take(h), take(buf), keys, t + 1, ctl)
        return jax.lax.dynamic_update_index_in_dim(buf, x_next, t + 1, axis=1)

    return jax.lax.fori_loop(n_prime - 1, num_frames - 1, body, buf)


def sample_dynamic(model: LatentPredictor, params: Any, dyn_prime: jax.Array,
                   cond: jax.Array, keys: jax.Array, num_frames: int, controls: Controls,
                   *, sampler: str = "cached") -> jax.Array:
    """Rolls the predictor forward from priming latents (traceable; jit it).

    ``dyn_prime`` [B, n_prime, S, Dd], ``cond`` [B, C], ``keys`` typed PRNG keys [B] (one
    per video, e.g. ``lvt_jax.sampling.lvt.sampler.keys_for_videos``). Returns
    ``dyn [B, num_frames, S, Dd]`` whose first n_prime frames are ``dyn_prime``.
    Batch-sharded inputs stay batch-sharded (call inside ``trainer.mesh_context``).
    """
    check_request(model, dyn_prime, cond, keys, num_frames, sampler)
    dyn_prime = constrain_batch(jnp.asarray(dyn_prime, jnp.float32))
    cond = constrain_batch(jnp.asarray(cond, jnp.float32))
    fn = _cached if sampler == "cached" else _naive
    return constrain_batch(fn(model, params, dyn_prime, cond, keys, int(num_frames), controls))


def compiled_sampler(model: LatentPredictor, num_frames: int, sampler: str = "cached"
                     ) -> Callable[[Any, jax.Array, jax.Array, jax.Array, Controls], jax.Array]:
    """``jit`` of :func:`sample_dynamic` for one (model, num_frames, sampler):
    ``fn(params, dyn_prime, cond, keys, controls) -> dyn``. It compiles once per batch
    size and n_prime; the controls are traced."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}.")
    return jax.jit(lambda params, dyn_prime, cond, keys, controls: sample_dynamic(
        model, params, dyn_prime, cond, keys, num_frames, controls, sampler=sampler))
