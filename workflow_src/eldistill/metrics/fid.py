"""The Frechet distance between two Gaussians, and streaming float64 feature statistics.

FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).
The cross term is computed without a matrix square root of the non-symmetric product S1 S2:
Tr((S1 S2)^(1/2)) equals the nuclear norm (sum of singular values) of S2^(1/2) S1^(1/2), where the
square roots of the symmetric PSD matrices come from eigendecompositions with negative round-off
eigenvalues clipped to zero. This stays real and accurate for rank-deficient covariances (fewer samples
than feature dimensions), where scipy.linalg.sqrtm needs an eps on the diagonal.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    sigma = (sigma + sigma.T) / 2  # remove asymmetric round-off
    eigvals, eigvecs = np.linalg.eigh(sigma)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64. Never negative."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be {d}x{d}, got shapes {sigma1.shape} and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    cross = np.linalg.svd(_psd_sqrt(sigma2) @ _psd_sqrt(sigma1), compute_uv=False).sum()
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross
    return float(max(fid, 0.0))  # only round-off can make it negative


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, K), as mean and std over `splits` equal
    consecutive splits (Salimans et al. 2016; the convention of the StyleGAN/EDM metric code)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits or not np.isfinite(p).all():
        raise ValueError(f"probabilities must be a finite (N >= {splits}, K) array, got shape {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = xlogy(part, part) - xlogy(part, marginal)  # p log(p / marginal), with 0 log 0 = 0
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class FeatureStats:
    """Mean and unbiased (N-1) covariance of feature batches, merged in float64 (Chan et al.'s update),
    so 50k x 2048 features never need to sit in memory at once."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)  # sum of outer products of centred features

    def update(self, feats) -> None:
        x = np.asarray(feats, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values (is the generator diverged?)")
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        return self.mean.copy(), self.scatter / (self.count - 1)
