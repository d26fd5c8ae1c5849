"""The Frechet distance between two Gaussians, and streaming float64 feature statistics.

FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).
The cross term needs no matrix square root of the non-symmetric product S1 S2: its eigenvalues are those of
the symmetric PSD matrix R S1 R with R = S2^(1/2) (from an eigendecomposition, negative round-off eigenvalues
clipped to zero), so Tr((S1 S2)^(1/2)) is the sum of the square roots of eigvalsh(R S1 R): one d x d
eigendecomposition and one eigenvalue problem (scipy.linalg.sqrtm needs an eps on the diagonal of a
rank-deficient covariance and returns complex round-off). When S1 = F^T F is known by a factor F of r < d rows
(fewer samples than dimensions: the rehearsal's and the tests' few images), the same eigenvalues come from the
r x r matrix F S2 F^T and no d x d eigenproblem is solved at all.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    sigma = (sigma + sigma.T) / 2  # remove asymmetric round-off
    eigvals, eigvecs = np.linalg.eigh(sigma)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def _sqrt_eigvals_sum(m: np.ndarray) -> float:
    """Sum of the square roots of the eigenvalues of a symmetric PSD matrix (round-off negatives clipped)."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, factor1=None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64. Never negative.
    `factor1`: optionally an (r, d) matrix F with sigma1 = F^T F (FeatureStats.factor()), for r < d."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be {d}x{d}, got shapes {sigma1.shape} and {sigma2.shape}")
    if factor1 is not None:
        factor1 = np.atleast_2d(np.asarray(factor1, np.float64))
        if factor1.ndim != 2 or factor1.shape[1] != d:
            raise ValueError(f"factor1 must be (r, {d}), got shape {factor1.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2), ("factor1", factor1)):
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    if factor1 is not None and factor1.shape[0] < d:
        cross = _sqrt_eigvals_sum(factor1 @ sigma2 @ factor1.T)
    else:
        root2 = _psd_sqrt(sigma2)
        cross = _sqrt_eigvals_sum(root2 @ sigma1 @ root2)
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross
    return float(max(fid, 0.0))  # only round-off can make it negative


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log y with 0 log y = 0, as scipy.special.xlogy (importing scipy.special costs every evaluation job ~0.45 s)."""
    zero = x == 0
    with np.errstate(divide="ignore"):  # x > 0, y = 0 gives -inf, silently as xlogy
        return np.where(zero, 0.0, x * np.log(np.where(zero, 1.0, y)))


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, K), as mean and std over `splits` equal
    consecutive splits (Salimans et al. 2016; the convention of the StyleGAN/EDM metric code)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits or not np.isfinite(p).all():
        raise ValueError(f"probabilities must be a finite (N >= {splits}, K) array, got shape {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = _xlogy(part, part) - _xlogy(part, marginal)  # p log(p / marginal), with 0 log 0 = 0
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class FeatureStats:
    """Mean and unbiased (N-1) covariance of feature batches, merged in float64 (Chan et al.'s update),
    so 50k x 2048 features never need to sit in memory at once. While there are no more rows than
    dimensions it also keeps them (at most the scatter's size), for the factor of a rank-deficient covariance."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)  # sum of outer products of centred features
        self._rows: list[np.ndarray] | None = []  # None once count > dim

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
        if self._rows is not None and total <= self.dim:
            self._rows.append(x.copy())  # a copy: the caller may reuse its buffer
        else:
            self._rows = None

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        return self.mean.copy(), self.scatter / (self.count - 1)

    def factor(self) -> np.ndarray | None:
        """F (count, dim) with F^T F = the covariance of mu_sigma(): the centred rows / sqrt(count - 1), while
        count <= dim; None after (the covariance may then have full rank)."""
        if self._rows is None or self.count < 2:
            return None
        rows = np.concatenate(self._rows)
        return (rows - rows.mean(0)) / np.sqrt(self.count - 1)

    def distance_to(self, mu, sigma) -> float:
        """frechet_distance of these statistics to N(mu, sigma), through the factor when there is one."""
        return frechet_distance(*self.mu_sigma(), mu, sigma, factor1=self.factor())
