"""frechet_distance against independent float64 computations and closed forms; streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from eldistill.metrics import FeatureStats, frechet_distance
from eldistill.metrics.fid import inception_score


def scipy_fid(mu1, s1, mu2, s2):
    """The textbook formula with scipy's matrix square root of the product (float64)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def eig_fid(mu1, s1, mu2, s2, rank=None):
    """Tr((S1 S2)^(1/2)) as the sum of square roots of the (real, non-negative) eigenvalues of S1 S2; with
    `rank`, only the `rank` largest (the others are 0 but computed as round-off, whose square roots add up)."""
    eig = np.sort(np.linalg.eigvals(s1 @ s2).real.clip(0, None))[::-1][:rank]
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())


def gaussian_stats(rng, n, d, shift=0.0):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.5 + shift
    return x.mean(0), np.cov(x, rowvar=False)


def test_matches_scipy_full_rank():
    rng = np.random.default_rng(0)
    mu1, s1 = gaussian_stats(rng, 500, 16)
    mu2, s2 = gaussian_stats(rng, 500, 16, shift=0.3)
    expected = scipy_fid(mu1, s1, mu2, s2)
    assert expected > 1
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_matches_eigen_reference_rank_deficient():
    # 20 samples in 64 dimensions: both covariances have rank 19
    rng = np.random.default_rng(1)
    mu1, s1 = gaussian_stats(rng, 20, 64)
    mu2, s2 = gaussian_stats(rng, 20, 64, shift=0.1)
    assert np.linalg.matrix_rank(s1) == 19
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(eig_fid(mu1, s1, mu2, s2), rel=1e-7)
    assert ours == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-5)


def test_closed_forms():
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, abs=1e-12)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2, one of them singular
    a, b = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 2.0])
    mu = np.zeros(3)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    mu1, s1 = gaussian_stats(rng, 30, 40)  # rank deficient
    mu2, s2 = gaussian_stats(rng, 300, 40)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # 1e-8, not 1e-9: the d x d path takes square roots of the eigenvalues of the rank-deficient product that are
    # 0 up to round-off (sqrt(1e-16) each); FeatureStats passes a factor for such covariances (tested below)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_stats_match_numpy_in_uneven_batches():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1001, 12)).astype(np.float32) * 3 + 100  # large mean: the merge must stay exact
    stats = FeatureStats(12)
    for start, stop in ((0, 1), (1, 400), (400, 401), (401, 1001)):
        stats.update(x[start:stop])
    mu, sigma = stats.mu_sigma()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.count == 1001
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        stats.update(np.zeros((3, 5)))


def test_inception_score_closed_forms():
    # balanced one-hot predictions over K classes in every split: IS = K exactly
    onehot = np.tile(np.eye(4), (10, 1))
    assert inception_score(onehot, splits=10) == pytest.approx((4.0, 0.0), abs=1e-12)
    # identical predictions carry no information: IS = 1
    assert inception_score(np.full((20, 5), 0.2), splits=2)[0] == pytest.approx(1.0, abs=1e-12)
    # by hand: p1 = (1, 0), p2 = (1/2, 1/2), marginal (3/4, 1/4)
    kl1 = np.log(1 / 0.75)
    kl2 = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    assert inception_score([[1.0, 0.0], [0.5, 0.5]], splits=1)[0] == pytest.approx(np.exp((kl1 + kl2) / 2), rel=1e-12)
    with pytest.raises(ValueError, match="probabilities"):
        inception_score(np.full((5, 3), 1 / 3), splits=10)


def test_a_factor_of_fewer_rows_than_dimensions_gives_the_same_distance():
    # 8 images' features in 64 dimensions (the rehearsal's shape, smaller): the r x r path against the
    # eigenvalues of S1 S2 and against the d x d path, with a full-rank and with a rank-deficient reference
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 64)) @ rng.standard_normal((64, 64)) * 0.5
    stats = FeatureStats(64)
    stats.update(x[:3].astype(np.float32))
    stats.update(x[3:].astype(np.float32))
    mu1, s1 = stats.mu_sigma()
    factor = stats.factor()
    assert factor.shape == (8, 64)
    np.testing.assert_allclose(factor.T @ factor, s1, rtol=1e-10, atol=1e-10)
    for mu2, s2 in (gaussian_stats(rng, 500, 64, shift=0.2), gaussian_stats(rng, 30, 64, shift=0.2)):
        expected = eig_fid(mu1, s1, mu2, s2, rank=7)  # 8 centred rows
        assert frechet_distance(mu1, s1, mu2, s2, factor1=factor) == pytest.approx(expected, rel=1e-9)
        assert stats.distance_to(mu2, s2) == pytest.approx(expected, rel=1e-9)
        # the d x d path takes square roots of 57 eigenvalues that are 0 up to round-off: less accurate
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    # diagonal closed form through a factor: F = diag(sqrt(a)) restricted to its rows, sigma1 = diag(a)
    a, b = np.array([1.0, 4.0, 0.0, 0.0]), np.array([9.0, 1.0, 2.0, 0.5])
    f = np.diag(np.sqrt(a))[:2]
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b), factor1=f) == pytest.approx(expected)


def test_feature_stats_keep_a_factor_only_while_rows_are_fewer_than_dimensions():
    rng = np.random.default_rng(5)
    stats = FeatureStats(6)
    stats.update(rng.standard_normal((1, 6)))
    assert stats.factor() is None  # one row: no covariance yet
    stats.update(rng.standard_normal((5, 6)))
    assert stats.factor().shape == (6, 6)
    stats.update(rng.standard_normal((1, 6)))
    assert stats.factor() is None  # 7 rows in 6 dimensions: the covariance may have full rank
    with pytest.raises(ValueError, match="factor1"):
        frechet_distance(np.zeros(6), np.eye(6), np.zeros(6), np.eye(6), factor1=np.zeros((2, 5)))
