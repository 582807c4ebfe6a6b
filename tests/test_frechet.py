"""Fréchet distance and the streaming Gaussian statistics, against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from components.metrics.frechet import (
    GaussianStats,
    frechet_distance,
    frechet_distance_stats,
)


def _scipy_fd(mu1, s1, mu2, s2):
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)))


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def test_streaming_stats_match_numpy_and_merge():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((257, 12)) * 3 + 5
    stats = GaussianStats(12)
    for lo, hi in [(0, 1), (1, 50), (50, 50), (50, 200), (200, 257)]:
        stats.update(x[lo:hi])
    assert stats.n == 257
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)
    shard_a, shard_b = GaussianStats(12).update(torch.from_numpy(x[:100])), GaussianStats(12).update(x[100:])
    merged = GaussianStats.from_dict(shard_a.to_dict()).merge(shard_b)
    np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        GaussianStats(12).update(x[:, :3])


def test_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(2)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.0, 3, d), rng.uniform(0.0, 3, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("rank", [None, 5])
def test_matches_scipy_sqrtm_on_random_and_near_singular(rank):
    rng = np.random.default_rng(3)
    d = 32
    s1, s2 = _random_cov(rng, d, rank), _random_cov(rng, d, rank)
    if rank is not None:  # near-singular, not exactly: tiny ridge
        s1 += 1e-9 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_fewer_samples_than_dimensions_stays_finite_and_symmetric():
    rng = np.random.default_rng(4)
    a, b = GaussianStats(64).update(rng.standard_normal((20, 64))), GaussianStats(64).update(rng.standard_normal((20, 64)) + 0.3)
    fd_ab, fd_ba = frechet_distance_stats(a, b), frechet_distance_stats(b, a)
    assert np.isfinite(fd_ab) and fd_ab > 0 and fd_ab == pytest.approx(fd_ba, rel=1e-8)
    assert fd_ab == pytest.approx(_scipy_fd(a.mean, a.cov, b.mean, b.cov), rel=1e-4)


def test_self_is_zero_and_shift_adds_its_squared_norm():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24))
    s = GaussianStats(24).update(x)
    assert frechet_distance_stats(s, s) == pytest.approx(0.0, abs=1e-8)
    previous = 0.0
    for c in (0.5, 1.0, 2.0):
        shifted = GaussianStats(24).update(x + c)
        fd = frechet_distance_stats(s, shifted)
        assert fd == pytest.approx(24 * c * c, rel=1e-8) and fd > previous
        previous = fd
