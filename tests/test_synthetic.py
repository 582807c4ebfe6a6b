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


def _geometric_motion(clip: np.ndarray) -> float:
    """RMS change between the first and each later frame that no global colour map explains.

    Each later frame is fitted by an affine colour transform of the first (least squares, 3x4);
    flicker or fades leave ~0 residual, anything that moves leaves a large one.
    """
    first = np.concatenate([clip[0].reshape(-1, 3).astype(np.float64), np.ones((clip[0].size // 3, 1))], 1)
    worst = 0.0
    for frame in clip[1:]:
        target = frame.reshape(-1, 3).astype(np.float64)
        coef, *_ = np.linalg.lstsq(first, target, rcond=None)
        worst = max(worst, float(np.sqrt(np.mean((first @ coef - target) ** 2))))
    return worst


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_every_family_moves(family):
    # Motion, not only change: something moves in every family, ColorFlicker and StaticScene
    # included (fixed camera, moving actor). Codec-free residuals of a still scene are exactly 0.
    for seed in SEEDS:
        clip = render_clip(family, seed, T, H, W)
        assert _geometric_motion(clip) > 4.0, (family, seed)


def test_geometric_motion_ignores_pure_colour_change():
    # The motion measure itself: a colour map of a still frame is not motion.
    frame = render_clip("SlowPan", 0, 1, H, W)[0].astype(np.float64)
    clip = np.stack([frame, frame * 0.8 + 10, frame[..., ::-1]]).round().astype(np.uint8)
    assert _geometric_motion(clip) < 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_static_scene_has_fixed_camera(seed):
    # Only the actor moves: most of the frame never changes.
    clip = render_clip("StaticScene", seed, T, H, W)
    still = (clip == clip[:1]).all(axis=(0, 3)).mean()
    assert 0.4 < still < 1.0, still


def _jump(clip: np.ndarray, threshold: int = 8) -> float:
    """Mean size of the frame-to-frame changes above `threshold` (how far things jump)."""
    d = np.abs(np.diff(clip.astype(np.int16), axis=0)).max(-1)
    return float(d[d > threshold].mean())


def test_dynamics_ordering():
    mad = {f: _mean_mad(f) for f in MOTION_FAMILIES}
    # The still scene with one actor changes least; the others clearly more.
    assert 0.0 < mad["StaticScene"] == min(mad.values()), mad
    for f in ("SlowPan", "FastTranslation", "RotateZoom", "ColorFlicker", "Occlusion"):
        assert mad[f] > 2 * mad["StaticScene"], mad
    # A sub-pixel pan changes every pixel a little; fast actors change few pixels a lot.
    jump = {f: np.mean([_jump(render_clip(f, s, T, H, W)) for s in SEEDS]) for f in ("SlowPan", "FastTranslation")}
    assert jump["FastTranslation"] > 2 * jump["SlowPan"], jump


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


def _amplitude_slope(img: np.ndarray) -> float:
    """Slope of log radially averaged amplitude spectrum vs log frequency (grey, Hann-windowed),
    fitted between 2 cycles per image and 0.45 cycles per pixel."""
    g = img.astype(np.float64).mean(-1)
    g -= g.mean()
    h, w = g.shape
    amp = np.abs(np.fft.fft2(g * np.hanning(h)[:, None] * np.hanning(w)[None]))
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None])
    bins = np.geomspace(2.0 / min(h, w), 0.45, 12)
    which = np.digitize(f, bins)
    fm = [f[which == k].mean() for k in range(1, len(bins))]
    am = [amp[which == k].mean() for k in range(1, len(bins))]
    return float(np.polyfit(np.log(fm), np.log(am), 1)[0])


@pytest.mark.parametrize("exponent", [0.0, 1.0, 1.5])
def test_slope_measure_on_known_spectra(exponent):
    # The measure itself, on random-phase images with an exact 1/f^exponent amplitude spectrum.
    rng = np.random.default_rng(0)
    f = np.hypot(np.fft.fftfreq(96)[:, None], np.fft.fftfreq(128)[None])
    f[0, 0] = 1.0
    img = np.fft.ifft2(np.exp(2j * np.pi * rng.random(f.shape)) / f ** exponent).real
    assert abs(_amplitude_slope(img[..., None]) + exponent) < 0.15


@pytest.mark.parametrize("family", MOTION_FAMILIES)
@pytest.mark.parametrize("hw, shrink", [((240, 320), 4), ((64, 64), 1)])
def test_natural_image_spectrum(family, hw, shrink):
    # Natural images have amplitude spectra ~ 1/f^a with a near 1 (about 0.8-1.5); so must the
    # frames as stored (here 64 px: a 240x320 frame area-averaged 4x, and a 64-px render).
    for seed in range(3):
        frame = render_clip(family, seed, 1, *hw)[0].astype(np.float64)
        h, w = hw[0] // shrink, hw[1] // shrink
        small = frame.reshape(h, shrink, w, shrink, 3).mean((1, 3))
        assert -1.7 < _amplitude_slope(small) < -0.7, (family, seed, hw)


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
