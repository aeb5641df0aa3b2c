"""Autoregressive sampling of code clips: the loop over slices, positions and codebooks.

Everything runs inside ``lax`` loops of one jitted function, compiled once per (model
config, batch, number of priming frames, sampler); temperature, top-k and top-p are traced
(:mod:`lvt_jax.sampling.controls`), so changing them does not recompile.

Generation order (specification, "Subscale slicing"): slices in raster order of their
offsets, positions in raster order inside a slice, the codebooks of a position in turn.
Slices made only of priming frames are skipped; positions of priming frames inside a
generated slice (DSTSVT) keep their given codes but still pass through the decoder, whose
later positions attend to them.

Two samplers share this loop and the code-drawing function, and differ only in how they
get the decoder's hidden state of a position:

* ``cached`` (:mod:`lvt_jax.sampling.lvt.cached`): one incremental decoder step;
* ``naive``: the reference release's method, the whole teacher-forced decoder over the
  whole slice for every position (kept for correctness checks and as the baseline).

Randomness: the key of code (slice s, position p, codebook k) of video b is
``fold_in(fold_in(fold_in(video_keys[b], s), p), k)``, so a video's sample depends on its
own key only: not on the batch it was drawn in, nor on the sampler.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp

from lvt_jax.models.lvt import subscale
from lvt_jax.sampling.lvt import cached as cached_lib
from lvt_jax.sampling.controls import Controls, code_keys, draw_batch

SAMPLERS = ("cached", "naive")


def first_slice(clip_shape: tuple, stride: tuple, n_prime: int) -> int:
    """The first slice holding a frame >= n_prime; slices are generated from it to the end.

    Slices are ordered by their time offset first, so those with a non-priming frame are
    a suffix of the generation order.
    """
    from lvt_jax.stages.transformer import trainable_slices
    if not 0 <= n_prime < clip_shape[0]:
        raise ValueError(f"n_prime={n_prime}: need 0 <= n_prime < {clip_shape[0]} (the clip's "
                         "frames).")
    return int(trainable_slices(tuple(clip_shape), tuple(stride), n_prime)[0])


def _position_fn(model: Any, params: Any, video_keys: jax.Array, slice_idx: jax.Array,
                 ctl: Controls, prime_frame: jax.Array, positions_per_frame: int):
    """Draws the nc codes of one position in turn (each conditioned on the ones before)."""
    nc = int(model.config.num_codebooks)

    def fn(p, hidden, given):
        def draw_all(_):
            c = given
            for k in range(nc):
                logits = model.apply({"params": params}, hidden, c, k, method="predict_codebook")
                c = c.at[:, k].set(draw_batch(code_keys(video_keys, slice_idx, p, k), logits, ctl))
            return c
        is_prime = prime_frame[p // positions_per_frame]
        return jax.lax.cond(is_prime, lambda _: given, draw_all, None)
    return fn


def _naive_slice(model: Any, params: Any, codes: jax.Array, slice_idx: jax.Array,
                 enc_out: jax.Array, position_fn: Callable,
                 num_positions: Optional[int] = None) -> jax.Array:
    """The reference's sampler: re-run the decoder over the whole slice for each position."""
    B, P, nc = codes.shape
    shape = enc_out.shape[1:4]

    def body(p, out):
        hidden = model.apply({"params": params}, out.reshape(B, *shape, nc), enc_out,
                             method="decode").reshape(B, P, -1)
        h = jax.lax.dynamic_index_in_dim(hidden, p, axis=1, keepdims=False)
        cp = position_fn(p, h, jax.lax.dynamic_index_in_dim(out, p, 1, keepdims=False))
        return jax.lax.dynamic_update_index_in_dim(out, cp, p, axis=1)

    return jax.lax.fori_loop(0, num_positions or P, body, codes)


def sample_codes(model: Any, params: Any, codes: jax.Array, video_keys: jax.Array,
                 ctl: Controls, *, n_prime: int, sampler: str = "cached",
                 labels: Optional[jax.Array] = None,
                 progress: Optional[Callable[[Any], None]] = None,
                 limit: Optional[tuple[int, int]] = None) -> jax.Array:
    """Completes code clips given their first ``n_prime`` frames (traceable; jit it).

    ``codes``: int32 ``[B, T, H, W, nc]``; frames ``< n_prime`` are the priming codes, the
    rest is ignored. ``video_keys``: typed PRNG keys ``[B]``. Returns the completed clips.
    ``progress(slice_idx)`` is called from the device after each generated slice.
    ``limit=(slices, positions)`` (benchmarks only) stops after that many slices and
    positions per slice, leaving the rest of the clip as given.
    """
    cfg = model.config
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}.")
    chex.assert_shape(codes, (None, *cfg.clip_shape, cfg.num_codebooks))
    chex.assert_shape(video_keys, (codes.shape[0],))
    B = codes.shape[0]
    stride = tuple(cfg.stride)
    lay = cached_lib.layout(cfg)
    t, h, w = lay.slice_shape
    nc = int(cfg.num_codebooks)
    codes = codes.astype(jnp.int32)
    prep = cached_lib.prepare(cfg, params, lay) if sampler == "cached" else None
    extra = {} if labels is None else {"labels": labels}

    def slice_body(s, codes):
        s_vec = jnp.full((B,), s, jnp.int32)
        enc = model.apply({"params": params}, codes, s_vec, method="encode_context", **extra)
        given = subscale.get_slice(codes, stride, s_vec).reshape(B, t * h * w, nc)
        a, _, _ = subscale.slice_offsets(s, stride)
        prime_frame = (a + stride[0] * jnp.arange(t)) < n_prime  # [t]
        pos_fn = _position_fn(model, params, video_keys, s, ctl, prime_frame, h * w)
        if sampler == "cached":
            out = cached_lib.sample_slice(model, params, prep, lay, given, s, enc, pos_fn,
                                          num_positions)
        else:
            out = _naive_slice(model, params, given, s, enc, pos_fn, num_positions)
        codes = subscale.put_slice(codes, stride, s_vec, out.reshape(B, t, h, w, nc))
        if progress is not None:
            jax.debug.callback(progress, s)
        return codes

    first = first_slice(tuple(cfg.clip_shape), stride, n_prime)
    stop = subscale.num_slices(stride)
    num_positions = None
    if limit is not None:
        stop, num_positions = min(stop, first + int(limit[0])), int(limit[1])
    return jax.lax.fori_loop(first, stop, slice_body, codes)


def keys_for_videos(key: jax.Array, indices: Any) -> jax.Array:
    """Typed keys ``[B]`` of the videos numbered ``indices`` (stable across batchings)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key) if key.shape else jax.random.key(key)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))
