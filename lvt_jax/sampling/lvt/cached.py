"""The cached sampler: one decoder step per generated position.

Per slice the encoder runs once over the context. Then, per position in raster order:

* the masked conv is computed for that position only, from a zero-padded buffer of the
  embeddings of the slice's codes generated so far (its unmasked taps read only earlier
  positions, so the buffer's not-yet-written zeros are exactly the conv's padding);
* each decoder layer computes q, k, v of the position only, appends k and v to a
  per-layer cache of the position's attention block and attends over the cache (keys after
  the position are masked with the layer's -1e4, as in training);
* the channel predictor draws the 4 codes in turn.

This is the same function as the teacher-forced decoder (:mod:`lvt_jax.models.lvt.transformer`)
evaluated position by position; ``tests/test_sampling.py`` checks that it draws exactly the
codes of the naive sampler, which re-runs that decoder over the whole slice every time.

The decoder's parameters are read by name from the params tree (``decoder/...``), scanned
(``attention/layers/layer``, stacked) or not (``attention/layer_i``).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvt_jax.models.lvt import masked_conv as mc
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.attention import LN_EPS, MASK_VALUE, relative_bias
from lvt_jax.models.lvt.position import sinusoidal_3d
from lvt_jax.models.precision import add_bias

_LN = nn.LayerNorm(epsilon=LN_EPS)

# Attention products over the cache: as broadcast-multiply + reduce from this batch up
# (XLA:CPU streams those at memory speed: 2.4x faster than batched dots at batch 64), as
# batched dots below it (the reductions' fixed cost dominates there: 1.4x slower at batch 1).
_REDUCE_MIN_BATCH = 8


class Layout(NamedTuple):
    """Static geometry of one slice, by raster position p (all numpy, computed once)."""
    slice_shape: tuple
    block_shape: tuple
    in_block: np.ndarray    # int32 [P]: p's raster index inside its attention block
    allowed: np.ndarray     # bool [P, P]: query p may attend key q (same block, q <= p)
    conv_src: np.ndarray    # int32 [P, n_used]: source position of each used conv tap
                            # (P = outside the slice: reads the buffer's zero row)
    used_taps: np.ndarray   # flat indices of the masked conv taps that can read the slice


def layout(model_cfg: Any) -> Layout:
    shape = tuple(subscale.slice_shape(model_cfg.clip_shape, model_cfg.stride))
    block = tuple(int(b) for b in model_cfg.block_shape)
    kernel = tuple(model_cfg.decoder_kernel)
    t, h, w = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    coords = np.stack([t.ravel(), h.ravel(), w.ravel()], 1)
    P = len(coords)
    nblk = [n // b for n, b in zip(shape, block)]
    bt, bh, bw = (coords // np.asarray(block)).T
    block_id = (bt * nblk[1] + bh) * nblk[2] + bw
    it, ih, iw = (coords % np.asarray(block)).T
    in_block = ((it * block[1] + ih) * block[2] + iw).astype(np.int32)
    same = block_id[:, None] == block_id[None, :]
    allowed = same & (in_block[None, :] <= in_block[:, None])
    used = mc.used_taps(kernel, shape)
    offsets = mc.tap_offsets(kernel)[used]  # [n_used, 3] (dt, dh, dw)
    src = coords[:, None, :] + offsets[None]  # [P, n_used, 3]
    inside = np.all((src >= 0) & (src < np.asarray(shape)), axis=-1)
    flat = (src[..., 0] * shape[1] + src[..., 1]) * shape[2] + src[..., 2]
    conv_src = np.where(inside, flat, P).astype(np.int32)
    assert np.all((conv_src < np.arange(P)[:, None]) | (conv_src == P)), "conv reads ahead"
    return Layout(shape, block, in_block, allowed, conv_src, used)


def decoder_layers(params: Any) -> list[dict]:
    """Per-layer parameter dicts of the decoder's attention stack (scanned or not)."""
    att = params["decoder"]["attention"]
    if "layers" in att:
        stacked = att["layers"]["layer"]
        n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
        return [jax.tree_util.tree_map(lambda x, i=i: x[i], stacked) for i in range(n)]
    return [att[f"layer_{i}"] for i in range(len(att))]


class Prepared(NamedTuple):
    """Loop-invariant arrays, computed once per sampler call outside the loops."""
    layers: list            # per layer: dict of arrays (fused qkv, bias rows...)
    conv_kernel: jax.Array  # [n_used, de, d]
    conv_bias: jax.Array    # [d]
    enc_proj: jax.Array     # [d, d]
    code_table: jax.Array   # [nc, nv, de]
    pos_enc: jax.Array      # [P, d]
    allowed: jax.Array      # bool [P, P]
    conv_src: jax.Array     # int32 [P, n_used]


def _bias_rows(bias: jax.Array, lay: Layout) -> jax.Array:
    """Block bias [nh, L, L] -> per query position p, over every key q: [P, nh, P]."""
    idx = jnp.asarray(lay.in_block)
    rows = bias[:, idx[:, None], idx[None, :]]  # [nh, P, P]
    return jnp.where(jnp.asarray(lay.allowed)[None], rows, 0.0).transpose(1, 0, 2)


def prepare(model_cfg: Any, params: Any, lay: Layout) -> Prepared:
    dtype = jnp.dtype(model_cfg.dtype)
    cast = lambda x: jnp.asarray(x, dtype)
    nh, da = int(model_cfg.num_heads), int(model_cfg.head_dim)
    layers = []
    for p in decoder_layers(params):
        d = p["query"].shape[0]
        qkv = jnp.concatenate([cast(p[n]).reshape(d, nh * da) for n in ("query", "key", "value")],
                              axis=1)
        banks = [jnp.asarray(p[f"rel_{a}"], jnp.float32) for a in "thw"]
        layers.append(dict(
            ln_attn=p["ln_attn"], ln_mlp=p["ln_mlp"], qkv=qkv, out=cast(p["out"]),
            bias=_bias_rows(relative_bias(banks, lay.block_shape), lay),  # [P, nh, P] f32
            mlp_in=(cast(p["mlp_in"]["kernel"]), p["mlp_in"]["bias"]),  # biases float32
            mlp_out=(cast(p["mlp_out"]["kernel"]), p["mlp_out"]["bias"])))
    dec = params["decoder"]
    kernel = cast(dec["masked_conv"]["kernel"])
    pe = sinusoidal_3d(lay.slice_shape, int(model_cfg.d_model), model_cfg.pe_min_timescale,
                       model_cfg.pe_max_timescale)
    return Prepared(layers, kernel[jnp.asarray(lay.used_taps)] if lay.used_taps.size else
                    kernel[:0], cast(dec["masked_conv"]["bias"]), cast(dec["enc_proj"]),
                    cast(dec["code_embedding"]), jnp.asarray(pe.reshape(-1, pe.shape[-1]), dtype),
                    jnp.asarray(lay.allowed), jnp.asarray(lay.conv_src))


class Cache(NamedTuple):
    """Per decoding slice: embeddings of the codes so far, each layer's keys and values.

    Indexed by raster position, not by block: ``keys[l][..., q]`` is position q's key.
    (A leading block axis made XLA:CPU copy every cache on every step; this layout is
    updated in place.) Keys are stored transposed, ``[B, nh, da, P]``, so that both
    attention products can be reductions over a non-minor axis (see _REDUCE_MIN_BATCH).
    """
    emb: jax.Array            # [B, P + 1, de]; row P stays zero (the conv's padding)
    keys: tuple               # per layer [B, nh, da, P]
    values: tuple             # per layer [B, nh, P, da]


def empty_cache(model_cfg: Any, lay: Layout, batch: int) -> Cache:
    dtype = jnp.dtype(model_cfg.dtype)
    P = int(np.prod(lay.slice_shape))
    emb = jnp.zeros((batch, P + 1, model_cfg.emb_dim), dtype)
    nh, da = int(model_cfg.num_heads), int(model_cfg.head_dim)
    n = int(model_cfg.dec_layers)
    return Cache(emb, tuple(jnp.zeros((batch, nh, da, P), dtype) for _ in range(n)),
                 tuple(jnp.zeros((batch, nh, P, da), dtype) for _ in range(n)))


def slice_base(model_cfg: Any, prep: Prepared, enc_out: jax.Array) -> jax.Array:
    """``[B, P, d]``: every term of the decoder input that does not depend on the codes."""
    B = enc_out.shape[0]
    enc = jnp.einsum("bthwd,de->bthwe", enc_out.astype(prep.enc_proj.dtype), prep.enc_proj)
    return enc.reshape(B, -1, enc.shape[-1]) + prep.pos_enc[None] + prep.conv_bias


def _layer_step(model_cfg: Any, layer: dict, x: jax.Array, keys: jax.Array, values: jax.Array,
                p: jax.Array, allowed: jax.Array):
    """One decoder layer at position p: ``x [B, d]`` -> ``[B, d]``, updated k/v caches."""
    nh, da = int(model_cfg.num_heads), int(model_cfg.head_dim)
    B = x.shape[0]
    y = _LN.apply({"params": layer["ln_attn"]}, x).astype(x.dtype)
    qkv = (y @ layer["qkv"]).reshape(B, 3, nh, da)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    keys = jax.lax.dynamic_update_slice(keys, k[:, :, :, None], (0, 0, 0, p))
    values = jax.lax.dynamic_update_slice(values, v[:, :, None, :], (0, 0, p, 0))
    # Both attention products accumulate in float32 (a bfloat16 cache is read as is).
    f32 = jnp.float32
    if B >= _REDUCE_MIN_BATCH:  # [B, nh, P]
        logits = (q[..., None] * keys).astype(f32).sum(2)
    else:
        logits = jnp.einsum("bhk,bhkl->bhl", q, keys, preferred_element_type=f32)
    logits = logits / np.sqrt(da)
    logits = logits + jax.lax.dynamic_index_in_dim(layer["bias"], p, axis=0, keepdims=False)
    logits = jnp.where(allowed, logits, jnp.float32(MASK_VALUE))
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    if B >= _REDUCE_MIN_BATCH:  # [B, nh, da]
        o = (probs[..., None] * values).astype(f32).sum(2)
    else:
        o = jnp.einsum("bhl,bhlk->bhk", probs, values, preferred_element_type=f32)
    x = x + jnp.einsum("bhk,hkd->bd", o.astype(x.dtype), layer["out"])
    y = _LN.apply({"params": layer["ln_mlp"]}, x).astype(x.dtype)
    (w1, b1), (w2, b2) = layer["mlp_in"], layer["mlp_out"]
    x = x + add_bias(jax.nn.relu(add_bias(y @ w1, b1)) @ w2, b2)
    return x, keys, values


def decoder_step(model_cfg: Any, prep: Prepared, lay: Layout, base: jax.Array, cache: Cache,
                 p: jax.Array):
    """Decoder hidden ``[B, d]`` of raster position ``p`` (traced) and the updated cache."""
    x = jax.lax.dynamic_index_in_dim(base, p, axis=1, keepdims=False)
    if lay.used_taps.size:
        src = jax.lax.dynamic_index_in_dim(prep.conv_src, p, axis=0, keepdims=False)
        window = jnp.take(cache.emb, src, axis=1)  # [B, n_used, de]
        x = x + jnp.einsum("bkc,kcd->bd", window, prep.conv_kernel)
    allowed = jax.lax.dynamic_index_in_dim(prep.allowed, p, axis=0, keepdims=False)
    keys, values = list(cache.keys), list(cache.values)
    for i, layer in enumerate(prep.layers):
        x, keys[i], values[i] = _layer_step(model_cfg, layer, x, keys[i], values[i], p, allowed)
    return x, cache._replace(keys=tuple(keys), values=tuple(values))


def write_codes(model_cfg: Any, prep: Prepared, lay: Layout, cache: Cache, p: jax.Array,
                codes: jax.Array) -> Cache:
    """Stores the embedding of position ``p``'s codes ``[B, nc]`` for later conv windows."""
    table = prep.code_table
    e = sum(table[k][codes[:, k]] for k in range(table.shape[0]))  # [B, de]
    emb = jax.lax.dynamic_update_slice(cache.emb, e[:, None, :].astype(cache.emb.dtype),
                                       (0, p, 0))
    return cache._replace(emb=emb)


def slice_positions(lay: Layout) -> int:
    return int(np.prod(lay.slice_shape))


def sample_slice(model: Any, params: Any, prep: Prepared, lay: Layout, codes: jax.Array,
                 slice_idx: jax.Array, enc_out: jax.Array, position_fn,
                 num_positions: int | None = None) -> jax.Array:
    """Codes ``[B, P, nc]`` of slice ``slice_idx``, generated position by position.

    ``position_fn(p, hidden [B, d], codes_p [B, nc]) -> codes_p`` draws (or keeps, for
    priming positions) the codes of position ``p``; ``codes`` holds the slice's given
    codes ``[B, P, nc]`` (priming positions; anything elsewhere).
    """
    cfg = model.config
    B = codes.shape[0]
    base = slice_base(cfg, prep, enc_out)

    def body(p, carry):
        cache, out = carry
        hidden, cache = decoder_step(cfg, prep, lay, base, cache, p)
        cp = position_fn(p, hidden, jax.lax.dynamic_index_in_dim(out, p, 1, keepdims=False))
        cache = write_codes(cfg, prep, lay, cache, p, cp)
        out = jax.lax.dynamic_update_index_in_dim(out, cp, p, axis=1)
        return cache, out

    _, out = jax.lax.fori_loop(0, num_positions or slice_positions(lay), body,
                               (empty_cache(cfg, lay, B), codes))
    return out


__all__: Sequence[str] = ("Layout", "layout", "prepare", "sample_slice", "decoder_step",
                          "empty_cache", "slice_base", "write_codes")
