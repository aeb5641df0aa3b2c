"""The samplers: cached == naive (the reference's method), the controls, keys, sharding."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lvt_jax import sharding as shd
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.transformer import build_model, init_variables
from lvt_jax.sampling.lvt import cached as cached_lib
from lvt_jax.sampling import controls as ctl_lib
from lvt_jax.sampling.lvt import sampler as sampler_lib
from configs import bair
from tests.helpers import CompileCounter

VARIANTS = {"dsfvt": "tiny", "dstsvt": "dstsvt,tiny"}


def _config(variant: str, num_classes: int = 0):
    cfg = bair.get_config(VARIANTS[variant])
    # 8x8 latent frames keep the loops short; blocks smaller than a slice exercise the
    # block-local attention masks of the cache.
    # DSTSVT with scanned (stacked) layer parameters, DSFVT with one entry per layer: the
    # cached sampler reads both layouts.
    cfg.transformer.model.update(clip_shape=(4, 8, 8),
                                 block_shape=(1, 4, 4) if variant == "dsfvt" else (2, 2, 2),
                                 scan_layers=variant == "dstsvt", num_classes=num_classes)
    return cfg


@functools.lru_cache(maxsize=None)
def _model(variant: str, num_classes: int = 0):
    """Tiny model with random weights; relative biases made non-zero so they matter."""
    model = build_model(_config(variant, num_classes).transformer.model)
    params = nn.meta.unbox(init_variables(model, jax.random.key(0)))["params"]
    rng = np.random.default_rng(1)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        return x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype) if "rel_" in name else x
    return model, jax.tree_util.tree_map_with_path(perturb, params)


def _clips(model, batch: int, seed: int = 1) -> jax.Array:
    c = model.config
    return jax.random.randint(jax.random.key(seed), (batch, *c.clip_shape, c.num_codebooks), 0,
                              c.vocab_size)


@functools.lru_cache(maxsize=None)
def _sample_fn(variant: str, sampler: str, n_prime: int = 1, num_classes: int = 0):
    model, _ = _model(variant, num_classes)
    return jax.jit(lambda params, codes, keys, ctl, labels: sampler_lib.sample_codes(
        model, params, codes, keys, ctl, n_prime=n_prime, sampler=sampler, labels=labels))


def _sample(variant, sampler, codes, seed=5, indices=None, n_prime=1, labels=None,
            num_classes=0, **controls):
    _, params = _model(variant, num_classes)
    idx = np.arange(codes.shape[0]) if indices is None else np.asarray(indices)
    keys = sampler_lib.keys_for_videos(jax.random.key(seed), idx)
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    out = _sample_fn(variant, sampler, n_prime, num_classes)(
        params, codes, keys, ctl_lib.make_controls(**controls), labels)
    return np.asarray(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decoder_step_equals_teacher_forced_decoder(variant):
    """Position by position, the incremental decoder reproduces the full decoder's hidden."""
    model, params = _model(variant)
    c = model.config
    B = 2
    codes = _clips(model, B)
    s = jnp.full((B,), subscale.num_slices(c.stride) - 1, jnp.int32)
    lay = cached_lib.layout(c)

    @jax.jit
    def both(params, codes):
        enc = model.apply({"params": params}, codes, s, method="encode_context")
        sl = subscale.get_slice(codes, c.stride, s)
        want = model.apply({"params": params}, sl, enc, method="decode").reshape(B, -1, c.d_model)
        prep = cached_lib.prepare(c, params, lay)
        base = cached_lib.slice_base(c, prep, enc)
        flat = sl.reshape(B, -1, c.num_codebooks)

        def body(p, chunk, carry):
            cache, hs = carry
            h, cache = cached_lib.decoder_step(c, prep, lay, base, cache, p, chunk)
            cache = cached_lib.write_codes(c, prep, lay, cache, p, flat[:, p])
            return cache, hs.at[:, p].set(h)
        got = cached_lib.position_loop(
            lay, body, (cached_lib.empty_cache(c, lay, B), jnp.zeros_like(want)))[1]
        return got, want

    got, want = both(params, codes)
    assert not lay.allowed.all(axis=0)[0]  # tiny configs: several attention blocks per slice
    np.testing.assert_allclose(got, want, atol=2e-5 * float(jnp.abs(want).max()), rtol=0)


# Several priming frames: DSFVT skips the slices of frames 0-1; DSTSVT (time stride 2)
# skips the slices of frames {0, 2} and keeps frame 1 inside the generated slices.
N_PRIME = {"dsfvt": 2, "dstsvt": 3}
CONTROLS = [dict(), dict(temperature=0.7, top_k=5, top_p=0.9), dict(temperature=1.5, top_p=0.6),
            dict(temperature=0.0)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_and_naive_samplers_draw_identical_codes(variant):
    """Under every control setting, with several priming frames; the controls are traced,
    so changing them reuses the one compiled sampler."""
    model, _ = _model(variant)
    c = model.config
    codes = _clips(model, 2)
    n = N_PRIME[variant]
    samples = []
    for i, controls in enumerate(CONTROLS):
        with CompileCounter() as compiled:
            cached = _sample(variant, "cached", codes, n_prime=n, **controls)
            naive = _sample(variant, "naive", codes, n_prime=n, **controls)
        np.testing.assert_array_equal(cached, naive, err_msg=str(controls))
        assert i == 0 or compiled.names == [], (controls, compiled.names)  # no recompile
        samples.append(cached)
    for a, b in zip(samples, samples[1:]):
        assert not np.array_equal(a, b)  # and the controls act
    cached = samples[0]
    # priming frames kept, everything else generated (and valid codes)
    np.testing.assert_array_equal(cached[:, :n], np.asarray(codes)[:, :n])
    assert cached.min() >= 0 and cached.max() < c.vocab_size
    assert (cached[:, n:] != np.asarray(codes)[:, n:]).mean() > 0.5
    assert not np.array_equal(cached[0, n:], cached[1, n:])  # videos differ


def test_class_conditional_samples_follow_each_videos_label():
    model, params = _model("dsfvt", 2)
    codes = _clips(model, 2)
    cached = _sample("dsfvt", "cached", codes, labels=[0, 1], num_classes=2)
    naive = _sample("dsfvt", "naive", codes, labels=[0, 1], num_classes=2)
    np.testing.assert_array_equal(cached, naive)
    # video 0 keeps its label: same sample; video 1's label changes: its sample changes
    other = _sample("dsfvt", "cached", codes, labels=[0, 0], num_classes=2)
    np.testing.assert_array_equal(other[0], cached[0])
    assert (other[1, 1:] != cached[1, 1:]).mean() > 0.1
    keys = sampler_lib.keys_for_videos(jax.random.key(5), np.arange(2))
    with pytest.raises(ValueError, match="class-conditional"):  # while tracing: no compile
        jax.eval_shape(lambda p, x: sampler_lib.sample_codes(
            model, p, x, keys, ctl_lib.make_controls(), n_prime=1), params, codes)


def test_generator_passes_each_videos_label_to_the_sampler():
    """Generator.sample_codes (batch padded to 8, split over 8 devices) with labels draws
    what the sampler draws for each video alone; without labels it says how to give them."""
    from lvt_jax.generate import Generator
    from lvt_jax.stages.vqvae import VQVAEStage
    cfg = _config("dsfvt", 2)
    model, params = _model("dsfvt", 2)
    vq = nn.unbox(jax.eval_shape(VQVAEStage(cfg).init,
                                 jax.random.key_data(jax.random.key(0))))
    zeros = lambda tree: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
    gen = Generator(cfg, {"params": zeros(vq.params), **zeros(vq.extra)}, params,
                    shd.make_mesh(cfg.mesh))
    codes = np.asarray(_clips(model, 3, seed=2))
    labels = np.array([1, 0, 1], np.int32)
    got = gen.sample_codes(codes, jax.random.key(5), first_index=4, labels=labels)
    given = np.zeros_like(codes)
    given[:, :1] = codes[:, :1]
    want = _sample("dsfvt", "cached", jnp.asarray(given), indices=[4, 5, 6], labels=labels,
                   num_classes=2)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="--config.sample.label"):
        gen.sample_codes(codes, jax.random.key(5))


def test_zero_temperature_limit_and_top_k_1_are_the_greedy_decode():
    model, _ = _model("dsfvt")
    codes = _clips(model, 2)
    greedy = _sample("dsfvt", "cached", codes, temperature=0.0)
    np.testing.assert_array_equal(_sample("dsfvt", "cached", codes, temperature=1e-6), greedy)
    np.testing.assert_array_equal(_sample("dsfvt", "cached", codes, top_k=1), greedy)
    np.testing.assert_array_equal(_sample("dsfvt", "cached", codes, top_p=1e-6), greedy)
    # Independent greedy decode of the first positions of slice 1: the teacher-forced
    # model's argmax, one code at a time, each fed back before the next.
    params = _model("dsfvt")[1]
    c = model.config
    forward = jax.jit(lambda codes: model.apply({"params": params}, codes,
                                                jnp.ones((2,), jnp.int32)))
    want = np.asarray(codes).copy()
    n = 24
    for p in range(n):
        h, w = divmod(p, c.clip_shape[2])
        for k in range(c.num_codebooks):
            want[:, 1, h, w, k] = np.asarray(forward(jnp.asarray(want)))[:, 0, h, w, k].argmax(-1)
    np.testing.assert_array_equal(greedy[:, 1].reshape(2, -1, 4)[:, :n],
                                  want[:, 1].reshape(2, -1, 4)[:, :n])
    assert not np.array_equal(greedy, _sample("dsfvt", "cached", codes, temperature=1.0))


def test_a_videos_sample_depends_only_on_its_key():
    model, _ = _model("dsfvt")
    codes = _clips(model, 2)
    both = _sample("dsfvt", "cached", codes, seed=7)
    second_alone = _sample("dsfvt", "cached", codes[1:], seed=7, indices=[1])
    np.testing.assert_array_equal(both[1:], second_alone)
    np.testing.assert_array_equal(both, _sample("dsfvt", "cached", codes, seed=7))
    assert not np.array_equal(both, _sample("dsfvt", "cached", codes, seed=8))


def test_more_priming_frames_are_kept_and_skip_their_slices():
    model, _ = _model("dsfvt")
    codes = np.asarray(_clips(model, 2))
    out = _sample("dsfvt", "cached", jnp.asarray(codes), n_prime=2)
    np.testing.assert_array_equal(out[:, :2], codes[:, :2])
    assert (out[:, 2:] != codes[:, 2:]).mean() > 0.5
    assert sampler_lib.first_slice((16, 16, 16), (16, 1, 1), 5) == 5
    assert sampler_lib.first_slice((16, 16, 16), (4, 2, 2), 1) == 0
    assert sampler_lib.first_slice((16, 16, 16), (4, 2, 2), 13) == 4  # a=1 holds frame 13
    with pytest.raises(ValueError, match="n_prime"):
        sampler_lib.first_slice((16, 16, 16), (16, 1, 1), 16)


def test_sharded_sampling_equals_single_device():
    model, params = _model("dsfvt")
    codes = _clips(model, 8)
    want = _sample("dsfvt", "cached", codes)
    mesh = shd.make_mesh(bair.get_config("tiny").mesh)
    assert mesh.shape["data"] == 8
    data = NamedSharding(mesh, P("data"))
    keys = jax.device_put(sampler_lib.keys_for_videos(jax.random.key(5), np.arange(8)), data)
    got = _sample_fn("dsfvt", "cached")(jax.device_put(params, NamedSharding(mesh, P())),
                                         jax.device_put(codes, data), keys,
                                         ctl_lib.make_controls(), None)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got), want)


def _np_filter(logits, temperature, top_k, top_p):
    """Independent reference: sort, keep top-k, then the smallest prefix reaching top_p."""
    order = np.argsort(-logits, kind="stable")
    keep = np.zeros(logits.shape, bool)
    n = len(logits) if top_k == 0 else top_k
    probs = np.exp((logits - logits.max()) / temperature)
    probs[order[n:]] = 0
    probs /= probs.sum()
    mass = 0.0
    for i in order[:n]:
        keep[i] = True
        mass += probs[i]
        if mass >= top_p:
            break
    return keep


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 0.9, 1.0), (5, 1.0, 1.0),
                                                     (7, 0.5, 0.7), (0, 0.3, 2.0)])
def test_filter_logits_matches_reference(top_k, top_p, temperature):
    rng = np.random.default_rng(top_k + int(10 * top_p))
    for _ in range(5):
        logits = (2 * rng.standard_normal(64)).astype(np.float32)
        got = ctl_lib.filter_logits(jnp.asarray(logits),
                                    ctl_lib.make_controls(temperature, top_k, top_p))
        np.testing.assert_array_equal(np.isfinite(np.asarray(got)),
                                      _np_filter(logits.astype(np.float64), temperature, top_k,
                                                 top_p))


def test_draw_frequencies_follow_the_tempered_filtered_softmax():
    logits = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], jnp.float32)
    n = 40_000
    keys = jax.random.split(jax.random.key(0), n)
    for temperature, top_k in [(1.0, 0), (0.5, 0), (1.0, 3)]:
        ctl = ctl_lib.make_controls(temperature, top_k)
        draws = np.asarray(jax.jit(jax.vmap(ctl_lib.draw, in_axes=(0, None, None)))(
            keys, logits, ctl))
        freq = np.bincount(draws, minlength=6) / n
        z = np.asarray(logits, np.float64) / temperature
        if top_k:
            z[top_k:] = -np.inf
        want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / n))


def test_controls_reject_bad_values():
    for kw, match in [(dict(temperature=-1.0), "temperature"), (dict(top_k=-2), "top_k"),
                      (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=match):
            ctl_lib.make_controls(**kw)
    with pytest.raises(ValueError, match="sampler"):
        model, params = _model("dsfvt")
        sampler_lib.sample_codes(model, params, _clips(model, 1),
                                 sampler_lib.keys_for_videos(jax.random.key(0), [0]),
                                 ctl_lib.make_controls(), n_prime=1, sampler="fast")
