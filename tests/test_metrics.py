"""PSNR/SSIM against independent float64 computations."""
import numpy as np
from scipy import ndimage, signal

from lvt_jax import metrics as M


def _ssim_reference(a, b):
    """float64 SSIM with an explicit 2D Gaussian window and scipy convolution ('valid')."""
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(a.shape[-1]):
        f = lambda im: signal.convolve2d(im, win, mode="valid")
        x_, y_ = a[..., ch], b[..., ch]
        mx, my = f(x_), f(y_)
        vx, vy, cxy = f(x_ * x_) - mx ** 2, f(y_ * y_) - my ** 2, f(x_ * y_) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(vals)


def test_ssim_matches_reference_and_identity():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((3, 32, 32, 3)), (0, 2, 2, 0))
    b = np.clip(a + 0.05 * rng.normal(size=a.shape), 0, 1)
    got = np.asarray(M.ssim(a.astype(np.float32), b.astype(np.float32)))
    want = np.array([_ssim_reference(a[i], b[i]) for i in range(3)])
    np.testing.assert_allclose(got, want, atol=2e-4)
    np.testing.assert_allclose(np.asarray(M.ssim(a.astype(np.float32), a.astype(np.float32))), 1.0, atol=1e-5)
    assert np.all(got < 0.99)


def test_psnr_definition():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = a.copy()
    b[0] += 0.1          # mse 0.01 -> 20 dB
    b[1, 0, 0, 0] = 1.0  # mse 1/48
    got = np.asarray(M.psnr(a, b))
    np.testing.assert_allclose(got, [20.0, 10 * np.log10(48.0)], rtol=1e-5)


def test_image_grid_layout():
    rows = [np.full((3, 4, 4, 3), 10, np.uint8), np.full((2, 4, 4, 3), 200, np.uint8)]
    g = M.image_grid(rows, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert g[1, 1, 0] == 10 and g[6, 1, 0] == 200 and g[6, 11, 0] == 255
