"""Dynamics score and Pearson correlation against hand values, numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from components.metrics.dynamics import dynamics_score, pearson_r


def test_static_video_scores_zero_and_flicker_scores_one():
    still = np.full((1, 6, 8, 8, 3), 77, np.uint8)
    flicker = np.zeros((1, 6, 8, 8, 3), np.uint8)
    flicker[:, 1::2] = 255
    scores = dynamics_score(np.concatenate([still, flicker]))
    assert scores.dtype == torch.float64 and scores.tolist() == [0.0, 1.0]
    assert dynamics_score(still[:, :1]).tolist() == [0.0]


def test_matches_numpy_reference_for_uint8_and_float():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (3, 5, 6, 7, 3), dtype=np.uint8)
    ref = np.abs(np.diff(v.astype(np.float64) / 255, axis=1)).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(dynamics_score(v).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(dynamics_score(torch.from_numpy(v.astype(np.float32) / 255)).numpy(), ref, rtol=1e-6)
    # a half-intensity step between two frames of a 2-frame video
    step = np.zeros((1, 2, 4, 4, 3), np.float32)
    step[:, 1] = 0.5
    assert dynamics_score(step).item() == pytest.approx(0.5)


def test_pearson_matches_numpy_and_scipy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(50)
    y = 0.6 * x + rng.standard_normal(50)
    r = pearson_r(x, y)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert r == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert pearson_r(x, 3 * x + 1) == pytest.approx(1.0) and pearson_r(x, -x) == pytest.approx(-1.0)


def test_pearson_edge_cases():
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson_r([1, 2], [1, 2, 3])
