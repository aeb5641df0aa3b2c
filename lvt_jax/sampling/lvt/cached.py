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
            ln_attn=p["ln_attn"], ln_mlp=p["ln_mlp"], qkv=qkv,
            out=cast(p["out"]).reshape(nh * da, d),  # one 2-D product (an einsum over
            # (head, k) ran at ~1/6 of the matmul rate on XLA:CPU)
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


# The cache is cut along the positions into chunks of this many positions (or P/8 if
# larger), each chunk an array of its own, and the positions of chunk c are generated by a
# loop of their own that reads chunks 0..c only. XLA:CPU streams several small arrays
# faster than one large one (2.2x for the 8 chunks of a 256-position slice at batch 64),
# and a position reads on average 56% of the cache (the causal prefix) instead of all of
# it; reading the cache is most of a decoder step's memory traffic.
_CHUNK_MIN, _CHUNKS = 32, 8


def cache_chunks(P: int, num_positions: int | None = None) -> list[tuple[int, int]]:
    """``[(start, stop)]`` position ranges of the cache chunks, cut at ``num_positions``."""
    n = P if num_positions is None else min(int(num_positions), P)
    size = max(_CHUNK_MIN, -(-P // _CHUNKS))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


class Cache(NamedTuple):
    """Per decoding slice: embeddings of the codes so far, each layer's keys and values.

    Indexed by raster position, not by block, in chunks of positions (:func:`cache_chunks`):
    ``keys[l][c][:, :, i]`` is the key of position ``start_c + i``. (A leading block axis
    made XLA:CPU copy every cache on every step; this layout is updated in place. So is
    ``[B, nh, n_c, da]`` for the keys, where the transposed ``[B, nh, da, n_c]`` had its
    chunk copied on every update: 1.4x slower steps.)
    """
    emb: jax.Array            # [B, P + 1, de]; row P stays zero (the conv's padding)
    keys: tuple               # per layer, per chunk [B, nh, n_c, da]
    values: tuple             # per layer, per chunk [B, nh, n_c, da]


def empty_cache(model_cfg: Any, lay: Layout, batch: int) -> Cache:
    dtype = jnp.dtype(model_cfg.dtype)
    P = int(np.prod(lay.slice_shape))
    emb = jnp.zeros((batch, P + 1, model_cfg.emb_dim), dtype)
    nh, da = int(model_cfg.num_heads), int(model_cfg.head_dim)
    sizes = [b - a for a, b in cache_chunks(P)]
    n = int(model_cfg.dec_layers)
    return Cache(emb, tuple(tuple(jnp.zeros((batch, nh, m, da), dtype) for m in sizes)
                            for _ in range(n)),
                 tuple(tuple(jnp.zeros((batch, nh, m, da), dtype) for m in sizes)
                       for _ in range(n)))


def slice_base(model_cfg: Any, prep: Prepared, enc_out: jax.Array) -> jax.Array:
    """``[B, P, d]``: every term of the decoder input that does not depend on the codes."""
    B = enc_out.shape[0]
    enc = jnp.einsum("bthwd,de->bthwe", enc_out.astype(prep.enc_proj.dtype), prep.enc_proj)
    return enc.reshape(B, -1, enc.shape[-1]) + prep.pos_enc[None] + prep.conv_bias


def _layer_step(model_cfg: Any, layer: dict, x: jax.Array, keys: tuple, values: tuple,
                p: jax.Array, allowed: jax.Array, chunk: int, start: int):
    """One decoder layer at position p (in cache chunk ``chunk``, which starts at ``start``):
    ``x [B, d]`` -> ``[B, d]``, updated k/v cache chunks.

    Attention reads chunks ``0 .. chunk`` only: later keys are masked anyway.
    """
    nh, da = int(model_cfg.num_heads), int(model_cfg.head_dim)
    B = x.shape[0]
    y = _LN.apply({"params": layer["ln_attn"]}, x).astype(x.dtype)
    qkv = (y @ layer["qkv"]).reshape(B, 3, nh, da)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    keys, values = list(keys), list(values)
    keys[chunk] = jax.lax.dynamic_update_slice(keys[chunk], k[:, :, None, :], (0, 0, p - start, 0))
    values[chunk] = jax.lax.dynamic_update_slice(values[chunk], v[:, :, None, :],
                                                 (0, 0, p - start, 0))
    seen_k, seen_v = keys[:chunk + 1], values[:chunk + 1]
    kv_len = sum(c.shape[2] for c in seen_k)
    # Both attention products accumulate in float32 (a bfloat16 cache is read as is).
    f32 = jnp.float32
    if B >= _REDUCE_MIN_BATCH:  # [B, nh, n_c] per chunk
        logits = [(q[:, :, None, :] * kc).astype(f32).sum(3) for kc in seen_k]
    else:
        logits = [jnp.einsum("bhk,bhlk->bhl", q, kc, preferred_element_type=f32)
                  for kc in seen_k]
    logits = jnp.concatenate(logits, axis=-1) / np.sqrt(da)
    bias = jax.lax.dynamic_index_in_dim(layer["bias"], p, axis=0, keepdims=False)
    logits = logits + bias[:, :kv_len]
    logits = jnp.where(allowed[:kv_len], logits, jnp.float32(MASK_VALUE))
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    o, at = 0.0, 0
    for vc in seen_v:
        pc, at = probs[:, :, at:at + vc.shape[2]], at + vc.shape[2]
        if B >= _REDUCE_MIN_BATCH:  # [B, nh, da]
            o = o + (pc[..., None] * vc).astype(f32).sum(2)
        else:
            o = o + jnp.einsum("bhl,bhlk->bhk", pc, vc, preferred_element_type=f32)
    x = x + o.reshape(B, nh * da).astype(x.dtype) @ layer["out"]
    y = _LN.apply({"params": layer["ln_mlp"]}, x).astype(x.dtype)
    (w1, b1), (w2, b2) = layer["mlp_in"], layer["mlp_out"]
    x = x + add_bias(jax.nn.relu(add_bias(y @ w1, b1)) @ w2, b2)
    return x, tuple(keys), tuple(values)


def decoder_step(model_cfg: Any, prep: Prepared, lay: Layout, base: jax.Array, cache: Cache,
                 p: jax.Array, chunk: int):
    """Decoder hidden ``[B, d]`` of raster position ``p`` (traced) and the updated cache.

    ``chunk`` (static): the cache chunk holding ``p`` (see :func:`position_loop`)."""
    start = cache_chunks(slice_positions(lay))[chunk][0]
    x = jax.lax.dynamic_index_in_dim(base, p, axis=1, keepdims=False)
    if lay.used_taps.size:
        src = jax.lax.dynamic_index_in_dim(prep.conv_src, p, axis=0, keepdims=False)
        window = jnp.take(cache.emb, src, axis=1)  # [B, n_used, de]
        x = x + jnp.einsum("bkc,kcd->bd", window, prep.conv_kernel)
    allowed = jax.lax.dynamic_index_in_dim(prep.allowed, p, axis=0, keepdims=False)
    keys, values = list(cache.keys), list(cache.values)
    for i, layer in enumerate(prep.layers):
        x, keys[i], values[i] = _layer_step(model_cfg, layer, x, keys[i], values[i], p, allowed,
                                            chunk, start)
    return x, cache._replace(keys=tuple(keys), values=tuple(values))


def position_loop(lay: Layout, step, carry, num_positions: int | None = None):
    """``carry = step(p, chunk, carry)`` for the positions ``p = 0 .. num_positions - 1`` in
    order: one ``fori_loop`` per cache chunk, ``chunk`` static inside it."""
    for c, (start, stop) in enumerate(cache_chunks(slice_positions(lay), num_positions)):
        carry = jax.lax.fori_loop(start, stop, lambda p, cr, c=c: step(p, c, cr), carry)
    return carry


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

    def body(p, chunk, carry):
        cache, out = carry
        hidden, cache = decoder_step(cfg, prep, lay, base, cache, p, chunk)
        cp = position_fn(p, hidden, jax.lax.dynamic_index_in_dim(out, p, 1, keepdims=False))
        cache = write_codes(cfg, prep, lay, cache, p, cp)
        out = jax.lax.dynamic_update_index_in_dim(out, cp, p, axis=1)
        return cache, out

    return position_loop(lay, body, (empty_cache(cfg, lay, B), codes), num_positions)[1]


__all__: Sequence[str] = ("Layout", "layout", "prepare", "sample_slice", "decoder_step",
                          "empty_cache", "slice_base", "write_codes", "position_loop",
                          "cache_chunks")
