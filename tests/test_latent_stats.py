"""Latent statistics: exact against numpy, mergeable in any split, stable for large offsets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.errors import UserError
from components.generator.latent_stats import LatentStats, denormalize, normalize
from components.tokenizer.model import Triplane

torch.set_num_threads(1)
C, S, T = 3, 4, 6


def triplanes(n: int, seed: int = 0, offset: float = 0.0, scale: float = 1.0, dtype=torch.float32) -> Triplane:
    g = torch.Generator().manual_seed(seed)
    ch = torch.arange(C, dtype=torch.float64).view(1, C, 1, 1)  # channels differ in mean and spread

    def plane(rows, cols, shift):
        x = torch.randn(n, C, rows, cols, generator=g, dtype=torch.float64) * scale * (1 + ch) + offset + shift * ch
        return x.to(dtype)

    return Triplane(plane(S, S, 1.0), plane(T, S, -2.0), plane(T, S, 0.5))


def numpy_moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = x.double().numpy().transpose(1, 0, 2, 3).reshape(C, -1)
    return a.mean(1), a.std(1)  # ddof = 0


def test_stats_match_numpy_per_plane_and_channel():
    data = triplanes(10)
    stats = LatentStats(C).update(data)
    for name in ("xy", "yt", "xt"):
        mean, std = numpy_moments(getattr(data, name))
        np.testing.assert_allclose(stats.mean(name), mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.std(name), std, rtol=1e-12)
    assert stats.count == 10 * S * S and stats.planes["yt"].count == 10 * T * S


@pytest.mark.parametrize("splits", [[1] * 10, [3, 7], [9, 1], [2, 0, 5, 3]])
def test_chunked_updates_and_worker_merges_equal_one_pass(splits):
    data = triplanes(10, seed=1)
    whole = LatentStats(C).update(data)
    streamed, workers, start = LatentStats(C), [], 0
    for k in splits:
        chunk = data[start:start + k]
        streamed.update(chunk)
        workers.append(LatentStats(C).update(chunk))
        start += k
    merged = LatentStats(C)
    for w in reversed(workers):  # order does not matter either
        merged.merge(w)
    for s in (streamed, merged):
        for name in ("xy", "yt", "xt"):
            np.testing.assert_allclose(s.mean(name), whole.mean(name), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(s.std(name), whole.std(name), rtol=1e-10)


def test_large_offset_is_stable():
    """mean 1e8, std ~1e-1..: E[x^2] - E[x]^2 in float64 would lose every digit; Chan's merge keeps them."""
    data = triplanes(8, seed=2, offset=1e8, scale=0.1, dtype=torch.float64)
    stats = LatentStats(C)
    for i in range(8):
        stats.update(data[i])
    for name in ("xy", "yt", "xt"):
        x = getattr(data, name).numpy()
        ref_std = (x - 1e8).transpose(1, 0, 2, 3).reshape(C, -1).std(1)  # subtraction is exact here
        np.testing.assert_allclose(stats.std(name), ref_std, rtol=1e-6)
        naive = np.sqrt(np.maximum((x.transpose(1, 0, 2, 3).reshape(C, -1) ** 2).mean(1) - x.mean((0, 2, 3)) ** 2, 0))
        assert np.abs(naive - ref_std).max() > 100 * np.abs(stats.std(name) - ref_std).max()


def test_dict_round_trip_through_json_is_exact():
    stats = LatentStats(C).update(triplanes(5, seed=3))
    back = LatentStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    for name in ("xy", "yt", "xt"):
        a, b = stats.planes[name], back.planes[name]
        assert a.count == b.count and np.array_equal(a.mean, b.mean) and np.array_equal(a.m2, b.m2)
    with pytest.raises(UserError, match="malformed"):
        LatentStats.from_dict({"channels": C, "planes": {"xy": {}}})


def test_normalize_gives_zero_mean_unit_std_and_denormalize_inverts():
    data = triplanes(6, seed=4, offset=5.0, scale=3.0)
    stats = LatentStats(C).update(data)
    z = normalize(data, stats)
    assert isinstance(z, Triplane)
    for name in ("xy", "yt", "xt"):
        mean, std = numpy_moments(getattr(z, name))
        np.testing.assert_allclose(mean, 0, atol=1e-5)
        np.testing.assert_allclose(std, 1, rtol=1e-5)
    back = denormalize(z, stats)
    for name in ("xy", "yt", "xt"):
        torch.testing.assert_close(getattr(back, name), getattr(data, name), rtol=1e-5, atol=1e-5)
    as_tuple = normalize((data.xy, data.yt, data.xt), stats)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], z.xy)


def test_from_mean_std_reproduces_given_moments():
    mean = {"xy": [0.5, -1.0, 2.0], "yt": [0.0, 0.0, 1.0], "xt": [3.0, 2.0, 1.0]}
    std = {"xy": [1.0, 2.0, 0.5], "yt": [1.5, 1.0, 1.0], "xt": [0.1, 0.2, 0.3]}
    stats = LatentStats.from_mean_std(mean, std, count=10)
    for name in ("xy", "yt", "xt"):
        np.testing.assert_allclose(stats.mean(name), mean[name])
        np.testing.assert_allclose(stats.std(name), std[name], rtol=1e-12)
