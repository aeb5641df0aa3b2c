"""Frechet distance between Gaussians fitted to two feature sets, in float64 on the host.

d^2 = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).

The cross term equals tr((S_a S_b)^1/2) but is computed without a general (complex)
matrix square root, so it stays real and stable when the covariances are singular, as
they are whenever there are fewer clips than feature dimensions (256 clips, 400 logits):

- from covariances: two symmetric eigendecompositions (S_a = V diag(l) V^T, then the PSD
  matrix S_a^1/2 S_b S_a^1/2), tiny negative eigenvalues from rounding clipped to zero;
- from features with few clips (`fvd`, n_a * n_b <= D^2): with centred features C_a, C_b
  and S = C^T C / (n - 1), the nonzero eigenvalues of S_a S_b are the squared singular
  values of C_b C_a^T / sqrt((n_a - 1)(n_b - 1)), so the cross term is that matrix's
  nuclear norm: one small SVD in the clips' space instead of two D x D eigenproblems.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray   # float64 [D]
    cov: np.ndarray    # float64 [D, D], unbiased (divides by n - 1)
    count: int


def _centred(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs features [N >= 2, D], got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf; check the clips fed to the network.")
    mean = x.mean(axis=0)
    return mean, x - mean


def fit(features: np.ndarray) -> Gaussian:
    """Mean and unbiased covariance of float features [N, D] (N >= 2), in float64."""
    mean, centred = _centred(features)
    return Gaussian(mean, centred.T @ centred / (centred.shape[0] - 1), centred.shape[0])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {a.mean.shape} vs {b.mean.shape}.")
    root_a = _psd_sqrt(a.cov)
    inner = root_a @ b.cov @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    cross = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = a.mean - b.mean
    d = float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross)
    return max(d, 0.0)  # rounding can leave -1e-12 for identical sets


def fvd(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    """FVD between two feature sets [N, D] (the field uses N = 256 clips per set)."""
    mu_a, ca = _centred(real_features)
    mu_b, cb = _centred(generated_features)
    if ca.shape[1] != cb.shape[1]:
        raise ValueError(f"feature sizes differ: {ca.shape[1]} vs {cb.shape[1]}.")
    na, nb, d = ca.shape[0], cb.shape[0], ca.shape[1]
    if na * nb > d * d:
        return frechet_distance(fit(real_features), fit(generated_features))
    cross = np.linalg.svd(cb @ ca.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
    diff = mu_a - mu_b
    dist = diff @ diff + np.sum(ca * ca) / (na - 1) + np.sum(cb * cb) / (nb - 1) - 2.0 * cross
    return max(float(dist), 0.0)
