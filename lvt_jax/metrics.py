"""Image quality metrics (per image, data range 1) and image grids."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_model_input(images: jax.Array) -> jax.Array:
    """uint8 pixels -> [-1, 1] (x / 127.5 - 1), as the LVT reference release feeds its
    models; both systems' models take frames in this range."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_unit(x: jax.Array) -> jax.Array:
    """[-1, 1] floats -> [0, 1], clipped as a saved image would be."""
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """PSNR in dB per image of images in [0, 1]; reduces every axis but the first."""
    mse = jnp.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def _blur(x: jax.Array, w: jax.Array) -> jax.Array:
    """Separable 'valid' Gaussian filter over H and W of (N, H, W, C)."""
    n, h, wd, c = x.shape
    y = x.transpose(0, 3, 1, 2).reshape(n * c, 1, h, wd)
    k = w.shape[0]
    y = jax.lax.conv_general_dilated(y, w.reshape(1, 1, k, 1), (1, 1), "VALID",
                                     precision=jax.lax.Precision.HIGHEST)
    y = jax.lax.conv_general_dilated(y, w.reshape(1, 1, 1, k), (1, 1), "VALID",
                                     precision=jax.lax.Precision.HIGHEST)
    return y.reshape(n, c, h - k + 1, wd - k + 1).transpose(0, 2, 3, 1)


def ssim(a: jax.Array, b: jax.Array, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """SSIM per image (Wang et al. 2004; Gaussian 11x11, sigma 1.5, K = 0.01, 0.03, range 1).

    Same definition as tf.image.ssim: valid filtering, mean over pixels and channels.
    Inputs (N, H, W, C) in [0, 1].
    """
    w = jnp.asarray(_gaussian_window(window, sigma))
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = _blur(a, w), _blur(b, w)
    var_a = _blur(a * a, w) - mu_a ** 2
    var_b = _blur(b * b, w) - mu_b ** 2
    cov = _blur(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of (N, H, W, 3) uint8 images -> one (H', W', 3) uint8 grid with white padding."""
    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    return grid


def to_uint8(x) -> np.ndarray:
    """[-1, 1] floats -> uint8 images."""
    return np.asarray(np.round(np.clip((np.asarray(x) + 1.0) * 127.5, 0, 255)), np.uint8)
