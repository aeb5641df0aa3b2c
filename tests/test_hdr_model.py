"""HDR stage-1 model: compositing, static latents, slot symmetry, FG-ARI, the swap test."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from configs import hdr_demo
from lvt_jax.eval import ari, swap
from lvt_jax.models.hdr.autoencoder import HDRAutoencoder
from lvt_jax.models.hdr.decoder import composite


@pytest.fixture(scope="module")
def model_and_params():
    c = hdr_demo.get_config("tiny")
    model = HDRAutoencoder(c.hdr.model)
    video = jax.random.uniform(jax.random.key(1), (2, 3, 64, 64, 3), minval=-1, maxval=1)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), video)["params"])
    return model, params, video


def test_compositing_weights_sum_to_one(model_and_params):
    model, params, video = model_and_params
    frames, aux = model.apply({"params": params}, video)
    alphas = np.asarray(aux["alphas"])
    assert alphas.shape == (2, 3, model.config.num_objects + 1, 64, 64)
    np.testing.assert_allclose(alphas.sum(2), 1.0, atol=1e-5)
    assert alphas.min() >= 0
    # The frame is the alpha-weighted sum of the layers.
    np.testing.assert_allclose(frames, (alphas[..., None] * np.asarray(aux["rgb"])).sum(2),
                               atol=1e-5)
    # composite() itself on random logits (a pixel's weights sum to 1 whatever they are).
    rgb = jax.random.normal(jax.random.key(3), (4, 5, 8, 8, 3))
    logits = 10 * jax.random.normal(jax.random.key(4), (4, 5, 8, 8))
    _, a = composite(rgb, logits)
    np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, atol=1e-5)


def test_static_latent_is_shared_by_every_frame(model_and_params):
    model, params, video = model_and_params
    enc = model.apply({"params": params}, video, method="encode")
    post = model.apply({"params": params}, enc, jnp.array([3, 1]), method="static_posterior")
    K = model.config.num_objects
    assert post["obj_mu"].shape == (2, K, model.config.static_dim)   # one per clip: no time axis
    assert post["bg_mu"].shape[:1] == (2,) and post["bg_mu"].ndim == 4
    # Pooling over the first frame only equals that frame's own estimate.
    np.testing.assert_allclose(post["obj_mu"][1], enc["obj_mu"][1, 0], atol=1e-5)
    # With a dynamic latent constant over time every frame decodes identically: nothing
    # but the dynamic latent varies with t.
    dyn = jnp.broadcast_to(enc["dyn_mu"][:, :1], enc["dyn_mu"].shape)
    frames, _, _ = model.apply({"params": params}, post["obj_mu"], post["bg_mu"], dyn,
                               method="decode")
    np.testing.assert_allclose(frames[:, 1:], jnp.broadcast_to(frames[:, :1], frames[:, 1:].shape),
                               atol=1e-6)
    # ... while the real dynamic latents do vary the frames.
    frames2, _, _ = model.apply({"params": params}, post["obj_mu"], post["bg_mu"],
                                enc["dyn_mu"], method="decode")
    assert float(jnp.max(jnp.abs(frames2[:, 1:] - frames2[:, :1]))) > 1e-4


def test_permuting_object_slots_permutes_outputs(model_and_params):
    model, params, video = model_and_params
    init = model.apply({"params": params}, video.shape[0], method="initial_state")
    S = init["slots"].shape[1]
    perm = np.array([0] + list(range(S - 1, 0, -1)))   # background stays, objects reversed
    frames, aux = model.apply({"params": params}, video, init_state=init)
    frames_p, aux_p = model.apply({"params": params}, video,
                                  init_state={k: v[:, perm] for k, v in init.items()})
    np.testing.assert_allclose(frames_p, frames, atol=2e-5)
    np.testing.assert_allclose(aux_p["alphas"], aux["alphas"][:, :, perm], atol=2e-5)
    np.testing.assert_allclose(aux_p["enc"]["dyn_mu"], aux["enc"]["dyn_mu"][:, :, perm],
                               atol=2e-5)
    np.testing.assert_allclose(aux_p["post"]["obj_mu"],
                               aux["post"]["obj_mu"][:, perm[1:] - 1], atol=2e-5)
    # The slots are not interchangeable by accident: their outputs do differ.
    assert float(jnp.max(jnp.abs(aux["alphas"][:, :, 1] - aux["alphas"][:, :, 2]))) > 1e-4


def _ari_by_pairs(true, pred):
    """Independent ARI: counts agreements over every pair of points (Hubert & Arabie)."""
    n = len(true)
    same_t = np.array([true[i] == true[j] for i, j in itertools.combinations(range(n), 2)])
    same_p = np.array([pred[i] == pred[j] for i, j in itertools.combinations(range(n), 2)])
    both = np.sum(same_t & same_p)
    t, p, pairs = same_t.sum(), same_p.sum(), len(same_t)
    expected = t * p / pairs
    return (both - expected) / ((t + p) / 2 - expected)


def test_fg_ari_against_hand_made_masks():
    rng = np.random.default_rng(0)
    gt = np.zeros((1, 2, 8, 8), np.int32)
    gt[:, :, 1:4, 1:4] = 2
    gt[:, :, 5:7, 2:7] = 3
    gt[:, 1, 0, :] = 1                          # an arm along the top in frame 1
    # A perfect segmentation up to renaming (and whatever it does on background pixels).
    pred = np.select([gt == 2, gt == 3, gt == 1], [4, 1, 2], default=rng.integers(0, 5, gt.shape))
    assert float(ari.fg_ari(gt, pred, 5, 5)[0]) == pytest.approx(1.0, abs=1e-6)
    # A random segmentation scores about 0 (mean over many draws).
    rand = [float(ari.fg_ari(gt, rng.integers(0, 5, gt.shape), 5, 5)[0]) for _ in range(50)]
    assert abs(np.mean(rand)) < 0.05
    # A partly wrong one: equal to the pair-counting definition.
    wrong = pred.copy()
    wrong[0, 0, 1:4, 1] = 1
    fg = gt[0].reshape(-1) > 0
    want = _ari_by_pairs(gt[0].reshape(-1)[fg], wrong[0].reshape(-1)[fg])
    assert 0.2 < want < 0.95
    assert float(ari.fg_ari(gt, wrong, 5, 5)[0]) == pytest.approx(want, abs=1e-5)
    # Background pixels never count: changing only them changes nothing.
    moved = np.where(gt == 0, 3, wrong)
    assert float(ari.fg_ari(gt, moved, 5, 5)[0]) == pytest.approx(want, abs=1e-5)


def _scene(colour, x0, bg):
    """A 2-frame clip: table colour `bg`, one square object of `colour` at column x0+t."""
    frames = np.broadcast_to(np.asarray(bg, np.float32), (2, 8, 8, 3)).copy()
    gt = np.zeros((2, 8, 8), np.int32)
    for t in range(2):
        frames[t, 2:5, x0 + t:x0 + t + 3] = colour
        gt[t, 2:5, x0 + t:x0 + t + 3] = 2
    return frames, gt


def test_swap_scores_tell_a_good_swap_from_a_bad_one():
    red, blue = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)
    fa, ga = _scene(red, 0, (0.6, 0.5, 0.3))
    fb, gb = _scene(blue, 4, (0.3, 0.3, 0.3))
    real_a, real_b, gt_a, gt_b = fa[None], fb[None], ga[None], gb[None]
    segs_a = np.where(gt_a == 2, 1, 0)
    slot, gid, iou = swap.match_objects(segs_a, gt_a, 3, 5)
    assert int(slot[0]) == 1 and int(gid[0]) == 2 and float(iou[0]) == pytest.approx(1.0)
    args = dict(real_a=real_a, real_b=real_b, gt_a=gt_a, gt_b=gt_b, slot_a=slot,
                id_a=gid, id_b=gid, valid=np.array([True]))
    good, _ = _scene(blue, 0, (0.6, 0.5, 0.3))    # B's colour on A's path
    bad, _ = _scene(red, 4, (0.6, 0.5, 0.3))      # A's colour on B's path
    s_good = swap.object_swap(good[None], segs_a, **args)
    s_bad = swap.object_swap(bad[None], np.where(gt_b == 2, 1, 0), **args)
    assert float(s_good["score"][0]) == 1.0 and float(s_good["appearance"][0]) == 1.0
    assert float(s_good["motion_iou"][0]) == pytest.approx(1.0)
    assert float(s_bad["score"][0]) == 0.0 and float(s_bad["appearance"][0]) == 0.0
    assert float(s_bad["motion_iou"][0]) < 0.5
    # Same colours: the pair cannot tell appearance apart, so it does not count.
    same = swap.object_swap(good[None], segs_a, **dict(args, real_b=real_a, gt_b=gt_a))
    assert float(same["pairs"][0]) == 0.0
    # Background: A's objects on B's table follows B; on A's table it does not.
    on_b, _ = _scene(red, 0, (0.3, 0.3, 0.3))
    assert float(swap.background_swap(on_b[None], real_a, real_b, gt_a, gt_b)[0]) == 1.0
    assert float(swap.background_swap(real_a, real_a, real_b, gt_a, gt_b)[0]) == 0.0


def test_latent_encoder_windows_equal_one_pass(model_and_params):
    """Videos encoded window by window (slots carried over) equal one pass over the whole
    video, whatever their lengths; records hold the layout's F numbers per frame."""
    from lvt_jax import hdr_latents
    from lvt_jax import metrics as M
    from lvt_jax.models.hdr import latents
    model, params, _ = model_and_params
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (7, 5, 7)]
    enc = hdr_latents.VideoLatentEncoder(model, params, batch_size=2, window=3,
                                         image_shape=(64, 64, 3))
    out = enc.encode_videos(videos)
    lay = latents.layout(model.config)
    for v, got in zip(videos, out):
        assert got.shape == (len(v), 1, 1, latents.num_features(lay))
        full = model.apply({"params": params}, M.to_model_input(v[None]), method="encode")
        want = np.asarray(latents.frame_features(full))[0]
        np.testing.assert_allclose(got[:, 0, 0], want, atol=2e-5)
        parts = latents.split_features(got[:, 0, 0], lay)
        np.testing.assert_allclose(parts["dynamic"], full["dyn_mu"][0], atol=2e-5)


def test_rematerialised_rendering_gives_the_same_frames_and_gradients(model_and_params):
    model, params, video = model_and_params
    config = model.config.copy_and_resolve_references()
    config.remat_decoder = True
    scanned = HDRAutoencoder(config)
    loss = lambda m: (lambda p: jnp.mean((m.apply({"params": p}, video)[0] - video) ** 2))
    np.testing.assert_allclose(jax.jit(loss(scanned))(params), jax.jit(loss(model))(params),
                               rtol=1e-6)
    g_ref, g = jax.jit(jax.grad(loss(model)))(params), jax.jit(jax.grad(loss(scanned)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
