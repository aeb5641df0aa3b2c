"""HDR stage 2: the latent predictor (causality, ELBO terms, learning) and its samplers
(cached == naive, per-video determinism across batches and meshes, traced controls)."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.models.hdr.predictor import (LatentPredictor, default_predictor_config,
                                          elbo_terms, init_params)
from lvt_jax.sampling import hdr as hdr_sampling
from lvt_jax.sampling.controls import make_controls
from lvt_jax.sampling.lvt.sampler import keys_for_videos
from tests.helpers import mesh_of

S, DD, C = 3, 4, 6  # slots, dynamic_dim, conditioning length
NUM_FRAMES = 6


def _init(model):
    return nn.unbox(jax.jit(lambda k: init_params(model, k, cond_dim=C))(jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _model():
    """Tiny predictor with random weights; the (zero-initialised) last layer of the
    prediction is made non-zero so that frames move and depend on h and z."""
    model = LatentPredictor(default_predictor_config("tiny"), S, DD)
    params = _init(model)
    out = params["delta_out"]
    out["kernel"] = 0.3 * jax.random.normal(jax.random.key(9), out["kernel"].shape)
    return model, params


def _inputs(batch: int, frames: int = NUM_FRAMES, seed: int = 1):
    dyn = jax.random.normal(jax.random.key(seed), (batch, frames, S, DD))
    cond = jax.random.normal(jax.random.key(seed + 100), (batch, C))
    return dyn, cond


@functools.lru_cache(maxsize=None)
def _sampler(sampler: str, num_frames: int = NUM_FRAMES):
    return hdr_sampling.compiled_sampler(_model()[0], num_frames, sampler)


def _sample(sampler, dyn_prime, cond, indices=None, seed=5, num_frames=NUM_FRAMES,
            temperature=1.0):
    _, params = _model()
    idx = np.arange(dyn_prime.shape[0]) if indices is None else np.asarray(indices)
    keys = keys_for_videos(jax.random.key(seed), idx)
    return np.asarray(_sampler(sampler, num_frames)(params, dyn_prime, cond, keys,
                                                    make_controls(temperature)))


def _frames_differ(a, b):
    """Per frame: does any number differ by more than 1e-5?"""
    d = np.abs(np.asarray(a) - np.asarray(b))
    return d.reshape(d.shape[0], d.shape[1], -1).max(axis=(0, 2)) > 1e-5


def test_predictor_is_causal_over_frames():
    model, params = _model()
    dyn, cond = _inputs(2)
    eps = jax.random.normal(jax.random.key(3), (2, NUM_FRAMES - 1, model.config.z_dim))
    fwd = jax.jit(lambda d, e: model.apply({"params": params}, d, cond, e))
    ref = fwd(dyn, eps)
    t = 2
    got = fwd(dyn.at[:, t].add(0.5), eps)
    # h_s and the prior of step s (which predicts frame s+1) have seen frames <= s only.
    for name in ("h", "prior_mu", "prior_logvar"):
        np.testing.assert_array_equal(_frames_differ(ref[name], got[name]),
                                      np.arange(NUM_FRAMES - 1) >= t, err_msg=name)
    # The posterior of step s sees frame s+1 as well; teacher-forced predictions of
    # frames <= t - 1 do not move.
    assert not _frames_differ(ref["post_mu"], got["post_mu"])[:t - 1].any()
    assert _frames_differ(ref["post_mu"], got["post_mu"])[t - 1:].all()
    assert not _frames_differ(ref["pred"], got["pred"])[:t - 1].any()
    # The noise of step t moves that step's prediction only (teacher forcing).
    got = fwd(dyn, eps.at[:, t].add(1.0))
    np.testing.assert_array_equal(_frames_differ(ref["pred"], got["pred"]),
                                  np.arange(NUM_FRAMES - 1) == t)


@pytest.mark.parametrize("sampler", hdr_sampling.SAMPLERS)
def test_sampled_frames_are_causal(sampler, monkeypatch):
    """In a roll-out, perturbing the noise of frame t changes frames >= t and no other;
    a longer roll-out starts with the shorter one."""
    model, params = _model()
    dyn, cond = _inputs(2)
    base = _sample(sampler, dyn[:, :1], cond)
    longer = _sample(sampler, dyn[:, :1], cond, num_frames=NUM_FRAMES + 2)
    np.testing.assert_allclose(longer[:, :NUM_FRAMES], base, atol=1e-5)
    noise = hdr_sampling.frame_noise
    t = 3
    monkeypatch.setattr(hdr_sampling, "frame_noise",
                        lambda keys, tt, z: noise(keys, tt, z) + jnp.where(tt == t, 1.0, 0.0))
    keys = keys_for_videos(jax.random.key(5), np.arange(2))
    got = jax.jit(lambda *a: hdr_sampling.sample_dynamic(
        model, params, *a, NUM_FRAMES, make_controls(), sampler=sampler))(dyn[:, :1], cond, keys)
    np.testing.assert_array_equal(_frames_differ(base, got), np.arange(NUM_FRAMES) >= t)


@pytest.mark.parametrize("n_prime", [1, 2])
def test_cached_sampler_equals_naive(n_prime):
    dyn, cond = _inputs(2)
    prime = dyn[:, :n_prime]
    out, programs = {}, []
    for temperature in (1.0, 0.0):
        cached = _sample("cached", prime, cond, temperature=temperature)
        programs.append(_sampler("cached")._cache_size())
        naive = _sample("naive", prime, cond, temperature=temperature)
        np.testing.assert_allclose(cached, naive, atol=1e-5)
        np.testing.assert_array_equal(cached[:, :n_prime], prime)
        assert _frames_differ(cached[:, n_prime - 1:-1], cached[:, n_prime:]).all()  # moving
        out[temperature] = cached
    # The temperature matters, and changing it did not recompile.
    assert _frames_differ(out[1.0], out[0.0])[n_prime:].all()
    assert programs[0] == programs[1]


def test_sample_of_a_video_does_not_depend_on_its_batch():
    dyn, cond = _inputs(4)
    four = _sample("cached", dyn[:, :2], cond)
    two = _sample("cached", dyn[2:, :2], cond[2:], indices=[2, 3])
    np.testing.assert_allclose(two, four[2:], atol=1e-5)
    # ... but it does depend on the video's index (its key).
    other = _sample("cached", dyn[2:, :2], cond[2:], indices=[0, 1])
    assert _frames_differ(two, other)[2:].all()


@pytest.mark.parametrize("sampler", hdr_sampling.SAMPLERS)
def test_sharded_sampling_equals_single_device(sampler):
    """8 videos on a (data=4, fsdp=2) mesh of 8 fake devices, parameters sharded by their
    logical axes, vs one device."""
    model, params = _model()
    dyn, cond = _inputs(8)
    keys = keys_for_videos(jax.random.key(5), np.arange(8))
    rules = shd.DEFAULT_RULES
    results = []
    for mesh in (mesh_of(1), mesh_of(8, data=4, fsdp=2)):
        boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0), cond_dim=C))
        p = jax.device_put(params, shd.logical_to_sharding(boxed, mesh, rules))
        batch = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
        with trainer.mesh_context(mesh, rules):
            fn = hdr_sampling.compiled_sampler(model, NUM_FRAMES, sampler)
            out = fn(p, batch(dyn[:, :2]), batch(cond), batch(keys), make_controls())
        assert len(out.sharding.device_set) == mesh.size
        results.append(np.asarray(out))
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)


def test_elbo_terms_match_numpy():
    model, params = _model()
    B, T, n_prime = 2, 5, 2
    dyn, cond = _inputs(B, T)
    rng = jax.random.key(4)
    got = jax.jit(lambda *a: elbo_terms(model, *a, n_prime))(params, dyn, cond, rng)
    eps = jax.random.normal(rng, (B, T - 1, model.config.z_dim))  # documented noise
    o = {k: np.asarray(v, np.float64)
         for k, v in jax.jit(model.apply)({"params": params}, dyn, cond, eps).items()}
    x = np.asarray(dyn, np.float64)[:, 1:]
    sigma = model.config.obs_sigma
    log_density = (-0.5 * np.log(2 * np.pi * sigma ** 2)
                   - (x - o["pred"]) ** 2 / (2 * sigma ** 2))
    nll = -log_density.reshape(B, T - 1, -1).sum(-1)
    vq, vp = np.exp(o["post_logvar"]), np.exp(o["prior_logvar"])
    kl = 0.5 * (np.log(vp / vq) + (vq + (o["post_mu"] - o["prior_mu"]) ** 2) / vp - 1).sum(-1)
    predicted = slice(n_prime - 1, None)  # step s predicts frame s + 1 >= n_prime
    np.testing.assert_allclose(got["nll"], nll[:, predicted].mean(1), rtol=1e-5)
    np.testing.assert_allclose(got["kl"], kl[:, predicted].mean(1), rtol=1e-5)
    assert (kl[:, predicted] > 1e-3).all() and got["nll"].shape == (B,)


def _linear_motion(rng: np.random.Generator, batch: int, frames: int):
    """Positions move at a constant per-video velocity; the other numbers stay put."""
    x = np.repeat(rng.normal(size=(batch, 1, S, DD)), frames, 1)
    p0 = rng.uniform(-0.5, 0.5, (batch, 1, S, 2))
    v = rng.uniform(-0.3, 0.3, (batch, 1, S, 2))
    x[..., :2] = p0 + v * np.arange(frames)[None, :, None, None]
    cond = x[:, 0, :, 2:].reshape(batch, C)  # the numbers that do not move
    return jnp.asarray(x, jnp.float32), jnp.asarray(cond, jnp.float32)


def test_training_learns_linear_motion():
    """80 Adam steps: on held-out clips the loss (nll + kl) closes more than half of the
    gap between "nothing moves" (the untrained model's prediction) and the exact
    prediction (nll = the density's floor, kl = 0)."""
    model, _ = _model()
    params = _init(model)
    rng = np.random.default_rng(0)
    test = _linear_motion(rng, 64, NUM_FRAMES)
    n_prime = 2  # the velocity is observable from frame 1 on
    loss_fn = jax.jit(lambda p, data, key: sum(jnp.mean(v) for v in elbo_terms(
        model, p, *data, key, n_prime).values()))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s, key, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch, key)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    sigma = model.config.obs_sigma
    x = np.asarray(test[0])
    copy_nll = np.mean(np.sum(0.5 * ((x[:, n_prime:] - x[:, n_prime - 1:-1]) / sigma) ** 2
                              + math.log(sigma * math.sqrt(2 * math.pi)), (2, 3)))
    before = float(loss_fn(params, test, jax.random.key(1)))
    s = opt.init(params)
    for i in range(80):  # fresh clips every step: nothing to memorise
        params, s, _ = step(params, s, jax.random.key(100 + i), _linear_motion(rng, 64, NUM_FRAMES))
    after = float(loss_fn(params, test, jax.random.key(1)))
    # Untrained: the prediction is "nothing moves" plus a small KL.
    assert before == pytest.approx(copy_nll, abs=20.0)
    exact_nll = S * DD * math.log(sigma * math.sqrt(2 * math.pi))
    assert after < copy_nll - 0.5 * (copy_nll - exact_nll), (before, after, copy_nll)


def test_bad_requests_fail_clearly():
    model, params = _model()
    dyn, cond = _inputs(2)
    keys = keys_for_videos(jax.random.key(5), np.arange(2))
    ctl = make_controls()
    call = lambda **kw: hdr_sampling.sample_dynamic(
        model, params, kw.get("dyn", dyn[:, :1]), kw.get("cond", cond), kw.get("keys", keys),
        kw.get("num_frames", NUM_FRAMES), ctl, sampler=kw.get("sampler", "cached"))
    with pytest.raises(ValueError, match="max_frames"):
        call(num_frames=model.config.max_frames + 1)
    with pytest.raises(ValueError, match="dynamic_dim"):
        call(dyn=dyn[..., :2])
    with pytest.raises(ValueError, match="typed PRNG keys"):
        call(keys=jax.random.key_data(keys))
    with pytest.raises(ValueError, match="sampler"):
        call(sampler="beam")
    with pytest.raises(ValueError, match="n_prime"):
        elbo_terms(model, params, dyn, cond, jax.random.key(0), NUM_FRAMES)
