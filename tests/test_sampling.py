import numpy as np
import pytest

from components.data.sampling import (
    denormalise_coords, gather_patches, grid_shape, normalise_indices, read_clip, sample_patches,
)
from components.data.store import FrameFile, write_frames


def _clip(t=8, h=32, w=48):
    return np.random.default_rng(1).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_gather_matches_direct_slicing():
    clip = _clip()
    patches, coords, idx = sample_patches(clip, 50, np.random.default_rng(0), patch_t=2, patch_xy=8)
    assert patches.shape == (50, 2, 8, 8, 3) and coords.shape == (50, 3) and coords.dtype == np.float32
    for p, (t, x, y) in zip(patches, idx):
        np.testing.assert_array_equal(p, clip[t * 2:t * 2 + 2, y * 8:y * 8 + 8, x * 8:x * 8 + 8])


def test_coordinates_span_zero_to_one_and_round_trip():
    grid = grid_shape((8, 32, 48), 1, 8)
    assert grid == (8, 4, 6)
    all_idx = np.array([(t, x, y) for t in range(8) for x in range(6) for y in range(4)])
    coords = normalise_indices(all_idx, grid)
    assert coords.min() == 0.0 and coords.max() == 1.0
    np.testing.assert_allclose(coords[all_idx[:, 1] == 5][:, 1], 1.0)  # last column -> x = 1
    np.testing.assert_array_equal(denormalise_coords(coords, grid), all_idx)


def test_sampling_is_distinct_and_never_touches_padding():
    clip = _clip()
    _, _, idx = sample_patches(clip, 5 * 4 * 6, np.random.default_rng(0), valid_frames=5)
    assert idx[:, 0].max() == 4
    assert len({tuple(i) for i in idx}) == len(idx)
    with pytest.raises(ValueError, match="cannot draw"):
        sample_patches(clip, 5 * 4 * 6 + 1, np.random.default_rng(0), valid_frames=5)


def test_indivisible_clip_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        gather_patches(_clip(h=30), np.zeros((1, 3), np.int64), 1, 8)


def test_read_clip_windows_and_padding(tmp_path):
    frames = _clip(t=20)
    write_frames(tmp_path / "v.frames", frames, 25.0, chunk_frames=6)
    f = FrameFile(tmp_path / "v.frames")
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(30):
        clip, valid = read_clip(f, 8, rng)
        assert valid == 8
        start = next(s for s in range(13) if np.array_equal(frames[s:s + 8], clip))
        starts.add(start)
    assert len(starts) > 5
    clip, valid = read_clip(f, 32, rng)
    assert valid == 20 and clip.shape[0] == 32
    np.testing.assert_array_equal(clip[:20], frames)
    assert not clip[20:].any()
