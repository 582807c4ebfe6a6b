"""Tests for components.data.synthetic (deterministic synthetic video clips)."""

import ast
import pathlib

import numpy as np
import pytest

from components.data import synthetic
from components.data.synthetic import MOTION_FAMILIES, render_clip

H, W, T = 48, 64, 24  # small clips keep the whole file fast
SEEDS = range(6)


def _mad(clip: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames."""
    return float(np.abs(np.diff(clip.astype(np.int16), axis=0)).mean())


def _mean_mad(family: str) -> float:
    return float(np.mean([_mad(render_clip(family, s, T, H, W)) for s in SEEDS]))


def test_families_constant():
    assert MOTION_FAMILIES == ("StaticScene", "SlowPan", "FastTranslation", "RotateZoom",
                               "ColorFlicker", "Occlusion")


@pytest.mark.parametrize("family", MOTION_FAMILIES)
@pytest.mark.parametrize("hw", [(H, W), (16, 16), (37, 53), (64, 40)])
def test_shape_and_dtype(family, hw):
    clip = render_clip(family, 3, 5, *hw)
    assert clip.shape == (5, *hw, 3)
    assert clip.dtype == np.uint8
    assert clip.flags.c_contiguous


def test_default_size_is_ucf_shaped():
    clip = render_clip("SlowPan", 0, 2)
    assert clip.shape == (2, 240, 320, 3) and clip.dtype == np.uint8


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_single_frame(family):
    assert render_clip(family, 1, 1, H, W).shape == (1, H, W, 3)


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_deterministic(family):
    a = render_clip(family, 7, T, H, W)
    b = render_clip(family, 7, T, H, W)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, render_clip(family, 8, T, H, W))


def test_sequence_seeds():
    a = render_clip("FastTranslation", (1, 2), 6, H, W)
    assert np.array_equal(a, render_clip("FastTranslation", [1, 2], 6, H, W))
    assert not np.array_equal(a, render_clip("FastTranslation", (2, 1), 6, H, W))


def test_global_rng_untouched():
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    render_clip("RotateZoom", 0, 3, H, W)
    assert np.random.random() == expected


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_shorter_clip_is_prefix(family):
    long = render_clip(family, 4, 20, H, W)
    assert np.array_equal(render_clip(family, 4, 9, H, W), long[:9])


@pytest.mark.parametrize("seed", SEEDS)
def test_static_scene_frames_identical(seed):
    clip = render_clip("StaticScene", seed, T, H, W)
    assert (clip == clip[:1]).all()


@pytest.mark.parametrize("family", [f for f in MOTION_FAMILIES if f != "StaticScene"])
def test_non_static_families_move(family):
    for seed in SEEDS:
        clip = render_clip(family, seed, T, H, W)
        assert not (clip == clip[:1]).all(), (family, seed)


def test_dynamics_ordering():
    mad = {f: _mean_mad(f) for f in MOTION_FAMILIES}
    assert mad["StaticScene"] == 0.0
    assert 0.0 < mad["SlowPan"] < mad["FastTranslation"], mad
    # "clearly above": well separated, not just barely larger
    assert mad["FastTranslation"] > 1.5 * mad["SlowPan"], mad
    assert mad["ColorFlicker"] > 1.5 * mad["SlowPan"], mad
    for f in ("RotateZoom", "Occlusion"):
        assert mad[f] > 0.0, mad


def test_flicker_is_global_translation_is_local():
    # ColorFlicker changes (almost) every pixel; FastTranslation leaves most background alone.
    def changed_fraction(clip):
        return float((clip[1:] != clip[:-1]).any(-1).mean())
    flicker = np.mean([changed_fraction(render_clip("ColorFlicker", s, T, H, W)) for s in SEEDS])
    moving = np.mean([changed_fraction(render_clip("FastTranslation", s, T, H, W)) for s in SEEDS])
    assert flicker > 0.8 and moving < 0.6, (flicker, moving)


@pytest.mark.parametrize("seed", SEEDS)
def test_occluder_is_static_band(seed):
    # The occluding bar spans the frame and never changes, while something else moves.
    clip = render_clip("Occlusion", seed, T, H, W)
    static = (clip == clip[:1]).all(axis=(0, 3))  # (H, W) pixels that never change
    full_cols, full_rows = static.all(0), static.all(1)
    assert full_cols.sum() >= 3 or full_rows.sum() >= 3
    assert not static.all()


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_frames_are_textured(family):
    for seed in SEEDS:
        clip = render_clip(family, seed, 8, H, W).astype(np.float32)
        assert clip.reshape(len(clip), -1).std(axis=1).min() > 10.0, (family, seed)
        # edges/texture, not just a smooth gradient
        assert np.abs(np.diff(clip, axis=2)).mean() > 2.0, (family, seed)


def test_texture_at_full_size():
    frame = render_clip("StaticScene", 0, 1)[0].astype(np.float32)
    assert frame.std() > 15.0
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 1000  # not a few flat colours


@pytest.mark.parametrize("kwargs, match", [
    (dict(family="Nope", seed=0, n_frames=4), "family"),
    (dict(family="SlowPan", seed=0, n_frames=0), "n_frames"),
    (dict(family="SlowPan", seed=0, n_frames=-3), "n_frames"),
    (dict(family="SlowPan", seed=0, n_frames=4, height=15), "height"),
    (dict(family="SlowPan", seed=0, n_frames=4, width=8), "width"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_clip(**kwargs)


def test_module_is_pure_numpy():
    tree = ast.parse(pathlib.Path(synthetic.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "numpy"}, imported
