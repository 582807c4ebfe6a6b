"""components.metrics.baselines against direct numpy computations."""

import numpy as np
import pytest

from components.metrics.baselines import (BASELINES, baseline_psnrs, baseline_summary, same_numbers_grid,
                                          triplane_values)


def _psnr(pred: np.ndarray, real_u8: np.ndarray) -> float:
    real = real_u8.astype(np.float64) / 255
    return float(10 * np.log10(1 / np.mean((pred.astype(np.float64) - real) ** 2)))


def _box_average(x: np.ndarray, grid) -> np.ndarray:
    """[T, H, W, C] -> [t, h, w, C] block means (sizes divisible)."""
    t, h, w, c = x.shape
    gt, gh, gw = grid
    return x.reshape(gt, t // gt, gh, h // gh, gw, w // gw, c).mean(axis=(1, 3, 5))


def _linear_up(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along `axis` with half-pixel centres, edges clamped (textbook form)."""
    n_in = x.shape[axis]
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, i0, axis) * (1 - frac) + np.take(x, i1, axis) * frac


def _same_numbers_numpy(clip_u8: np.ndarray, grid) -> np.ndarray:
    x = _box_average(clip_u8.astype(np.float64) / 255, grid)
    for axis, n in enumerate(clip_u8.shape[:3]):
        x = _linear_up(x, axis, n)
    return x


@pytest.fixture
def clips():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(3, 16, 32, 32, 3)), axis=2)  # some structure, not only noise
    clips = np.clip(128 + 6 * smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    return clips, np.array([16, 8, 12])  # the second and third videos are padded


def test_every_baseline_matches_numpy(clips):
    data, valid = clips
    got = baseline_psnrs(data, valid, (4, 8, 8))
    assert set(got) == set(BASELINES)
    for i, n in enumerate(valid):
        real = data[i, :n]
        unit = real.astype(np.float64) / 255
        assert got["mean_colour"][i] == pytest.approx(_psnr(np.broadcast_to(unit.mean((0, 1, 2)), real.shape), real), abs=1e-4)
        assert got["temporal_mean"][i] == pytest.approx(_psnr(np.broadcast_to(unit.mean(0), real.shape), real), abs=1e-4)
        assert got["same_numbers"][i] == pytest.approx(_psnr(_same_numbers_numpy(real, (4, 8, 8)), real), abs=1e-4)
    # Padding is never scored: zeroing it changes nothing, while scoring it would.
    padded = data.copy()
    padded[1, 8:] = 0
    again = baseline_psnrs(padded, valid, (4, 8, 8))
    for name in BASELINES:
        np.testing.assert_allclose(again[name], got[name])
    assert baseline_psnrs(padded, [16, 16, 16], (4, 8, 8))["mean_colour"][1] != pytest.approx(got["mean_colour"][1])


def test_same_numbers_ranks_between_mean_colour_and_the_clip(clips):
    data, valid = clips
    got = baseline_psnrs(data, valid, (4, 8, 8))
    assert (got["same_numbers"] > got["mean_colour"]).all()
    full = baseline_psnrs(data[:1], [16], (16, 32, 32))["same_numbers"][0]  # grid = the clip: exact
    assert full > 90


@pytest.mark.parametrize("channels, xy, t, video, expected", [
    (8, 8, 8, (32, 64, 64), (8, 8, 8)),          # CoordTok-tiny at 64 px: 1,536 values, exactly
    (8, 4, 4, (32, 64, 64), (5, 5, 5)),          # 384 values: k = 2^(1/3) -> 5x5x5x3 = 375
    (8, 16, 32, (128, 128, 128), (23, 11, 11)),  # paper geometry, T' = 2 H': proportions kept, floored
    (8, 8, 8, (4, 64, 64), (4, 8, 8)),           # short clip: time capped, the other axes do not grow
])
def test_grid_from_triplane_geometry(channels, xy, t, video, expected):
    values = triplane_values(channels, xy, t)
    grid = same_numbers_grid(values, video, (t, xy, xy))
    assert 3 * np.prod(grid) <= values
    assert grid == expected


def test_grid_never_exceeds_the_budget():
    rng = np.random.default_rng(1)
    for _ in range(200):
        values = int(rng.integers(3, 100_000))
        props = rng.integers(1, 64, 3)
        video = rng.integers(1, 256, 3)
        grid = same_numbers_grid(values, video, props)
        assert 3 * np.prod(grid) <= values and min(grid) >= 1 and (np.asarray(grid) <= video).all()


def test_grid_needs_one_cell():
    with pytest.raises(ValueError, match="at least 3 values"):
        same_numbers_grid(2, (8, 8, 8), (1, 1, 1))


def test_summary_fields():
    per_video = {"mean_colour": np.array([10.0, 12.0]), "same_numbers": np.array([20.0, 22.0]),
                 "temporal_mean": np.array([30.0, 34.0])}
    s = baseline_summary(per_video, (8, 8, 8), (64, 64))
    assert s["baseline_mean_colour_psnr"] == 11.0 and s["baseline_same_numbers_psnr"] == 21.0
    assert s["baseline_temporal_mean_psnr"] == 32.0
    assert s["baseline_same_numbers_values"] == 1536 and s["baseline_temporal_mean_values"] == 12288
    assert s["baseline_same_numbers_grid"] == [8, 8, 8]


def test_metrics_and_data_do_not_import_the_tokenizer():
    # Dependencies point down: tokenizer -> metrics -> data, never back up (issue 14, item 8).
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "components"
    for folder in ("metrics", "data"):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not [n for n in names if n.startswith("components.tokenizer")], path
