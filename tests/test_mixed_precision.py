"""Mixed precision (the configs' `bf16` variant): bfloat16 compute, float32 state.

A bfloat16 training step of each stage gives the float32 step's loss within LOSS_RTOL on
the same batch and parameters, and gradients within GRAD_RTOL (relative, global norm),
with every parameter, optimiser and VQ-codebook leaf still float32 afterwards; bias and
embedding gradients (sums over every position) stay accurate because they accumulate in
float32. bfloat16 sampling runs, with a bfloat16 key/value cache, and gives valid codes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bair, demo, kinetics600
from lvt_jax.models.lvt.transformer import build_model, init_variables
from lvt_jax.sampling import controls
from lvt_jax.sampling.lvt import cached as cached_lib
from lvt_jax.sampling.lvt import sampler as sampler_lib
from lvt_jax.stages.transformer import TransformerStage
from lvt_jax.stages.vqvae import VQVAEStage

LOSS_RTOL = 1e-2   # bf16 vs f32 loss of one step on the same batch (measured: ~1e-4)
GRAD_RTOL = 5e-2   # ||g_bf16 - g_f32|| / ||g_f32|| over all parameters (measured: ~1e-2)
BIAS_RTOL = 0.15   # per bias / embedding (measured <= 0.08; 0.5-1.2 when summed in bf16)


@pytest.mark.parametrize("path,arg", [
    ("bair", "bf16"), ("bair", "dstsvt,bf16"), ("demo", "bf16,tiny"),
    ("kinetics600", "classes,bf16")])
def test_bf16_variant_combines_with_the_others(path, arg):
    mod = {"bair": bair, "demo": demo, "kinetics600": kinetics600}[path]
    mixed = mod.get_config(arg)
    plain = mod.get_config(",".join(v for v in arg.split(",") if v != "bf16"))
    assert mixed.vqvae.model.dtype == mixed.transformer.model.dtype == "bfloat16"
    assert plain.vqvae.model.dtype == plain.transformer.model.dtype == "float32"
    mixed.vqvae.model.dtype = mixed.transformer.model.dtype = "float32"
    assert mixed.to_dict() == plain.to_dict()  # nothing else changes


def _dtypes(tree) -> set:
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(tree)}


def _rel(a, b) -> float:
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                             jax.tree_util.tree_leaves(b)))
    den = sum(float(jnp.sum(y ** 2)) for y in jax.tree_util.tree_leaves(b))
    return (num / den) ** 0.5


def _bias_like(path) -> bool:
    name = jax.tree_util.keystr(path)
    return "bias" in name or "embedding" in name or "code_kernel" in name


def _compare(stage_cls, arg: str, batch: dict, loss_fn):
    """Loss and gradients of the f32 and bf16 stages on the same batch and parameters,
    and the state after one bf16 training step."""
    out = []
    for dtype_arg in (arg, arg + ",bf16"):
        stage = stage_cls(demo.get_config(dtype_arg))
        state = nn.unbox(stage.init(jax.random.key_data(jax.random.key(0))))
        out.append((state, *jax.jit(jax.value_and_grad(lambda p: loss_fn(stage, state, p)))(
            state.params)))
    (s32, l32, g32), (s16, l16, g16) = out
    for a, b in zip(jax.tree_util.tree_leaves(s32.params), jax.tree_util.tree_leaves(s16.params)):
        np.testing.assert_array_equal(a, b)  # same starting point
    assert np.isfinite(float(l16))
    assert abs(float(l16) - float(l32)) <= LOSS_RTOL * abs(float(l32))
    assert _rel(g16, g32) < GRAD_RTOL
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(g16)[0],
                                 jax.tree_util.tree_flatten_with_path(g32)[0]):
        if _bias_like(path) and float(jnp.linalg.norm(b)) > 1e-6:
            assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < BIAS_RTOL, path
    # one bf16 training step: parameters, optimiser state and VQ codebooks stay float32
    new, metrics = jax.jit(stage.train_step)(s16, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert _dtypes(new.params) == _dtypes(new.opt_state) - {"int32"} == {"float32"}
    assert _dtypes(new.extra) <= {"float32"}
    return new


def test_bf16_vqvae_step_is_close_to_float32():
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    new = _compare(VQVAEStage, "tiny", {"image": images},
                   lambda st, s, p: st.loss(p, s.extra, images)[0])
    # the codebook EMA update itself runs in float32 on float32 statistics
    assert _dtypes(new.extra["vq"]) == {"float32"}


def test_bf16_transformer_step_is_close_to_float32():
    codes = np.random.default_rng(0).integers(0, 32, (8, 4, 16, 16, 4)).astype(np.int16)
    slices = jnp.full((8,), 2, jnp.int32)
    _compare(TransformerStage, "tiny", {"codes": codes},
             lambda st, s, p: st.slice_loss(p, jnp.asarray(codes, jnp.int32), slices)[0])


@pytest.mark.parametrize("variant", ["tiny", "dstsvt,tiny"])
def test_bf16_sampling_gives_valid_codes_with_a_bf16_cache(variant):
    cfg = bair.get_config(variant + ",bf16").transformer.model
    cfg.update(clip_shape=(4, 8, 8), block_shape=(1, 4, 4) if variant == "tiny" else (2, 2, 2))
    model = build_model(cfg)
    params = nn.meta.unbox(init_variables(model, jax.random.key(0)))["params"]
    lay = cached_lib.layout(model.config)
    cache = cached_lib.empty_cache(model.config, lay, 2)
    assert _dtypes((cache.keys, cache.values, cache.emb)) == {"bfloat16"}
    P = cached_lib.slice_positions(lay)  # DSFVT 1x8x8: 2 chunks of 32; DSTSVT 2x4x4: 1
    assert len(cache.keys[0]) == len(cached_lib.cache_chunks(P)) == (2 if P == 64 else 1)
    B = 3
    given = jax.random.randint(jax.random.key(1), (B, *cfg.clip_shape, cfg.num_codebooks), 0,
                               cfg.vocab_size)
    keys = sampler_lib.keys_for_videos(jax.random.key(2), np.arange(B))
    out = np.asarray(jax.jit(lambda p, c, k: sampler_lib.sample_codes(
        model, p, c, k, controls.make_controls(), n_prime=1))(params, given, keys))
    assert out.shape == given.shape and out.dtype == np.int32
    assert out.min() >= 0 and out.max() < cfg.vocab_size
    np.testing.assert_array_equal(out[:, 0], np.asarray(given)[:, 0])  # priming frame kept
    assert len(np.unique(out[:, 1:])) > cfg.vocab_size // 2  # drawn, not constant

    # The bf16 cached decoder step is the bf16 teacher-forced decoder, to bf16 rounding.
    from lvt_jax.models.lvt import subscale

    @jax.jit
    def both(params, clip):
        s = jnp.full((B,), 1, jnp.int32)
        enc = model.apply({"params": params}, clip, s, method="encode_context")
        slice_codes = subscale.get_slice(clip, cfg.stride, s)
        want = model.apply({"params": params}, slice_codes, enc, method="decode")
        prep = cached_lib.prepare(model.config, params, lay)
        base = cached_lib.slice_base(model.config, prep, enc)
        flat = slice_codes.reshape(B, -1, cfg.num_codebooks)

        def body(p, chunk, carry):
            cache, hs = carry
            h, cache = cached_lib.decoder_step(model.config, prep, lay, base, cache, p, chunk)
            cache = cached_lib.write_codes(model.config, prep, lay, cache, p, flat[:, p])
            return cache, hs.at[:, p].set(h.astype(jnp.float32))
        want = want.reshape(B, flat.shape[1], -1).astype(jnp.float32)
        got = cached_lib.position_loop(
            lay, body, (cached_lib.empty_cache(model.config, lay, B), jnp.zeros_like(want)))[1]
        return got, want

    got, want = both(params, jnp.asarray(out))
    want = want.astype(jnp.float32)
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 2e-2
