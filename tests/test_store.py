import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from components.data.store import FrameFile, StoreError, encode_frames, write_frames


def _frames(n=37, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    drift = rng.integers(0, 4, (n, h, w, 3), dtype=np.uint8)
    return (base + np.cumsum(drift, axis=0, dtype=np.uint8)).astype(np.uint8)


@pytest.mark.parametrize("codec,delta,chunk", [("zstd", True, 8), ("zstd", False, 5), ("none", True, 16),
                                               ("none", False, 1), ("zstd", True, 64)])
def test_every_window_reads_back_exactly(tmp_path: Path, codec, delta, chunk):
    frames = _frames()
    path = tmp_path / "v.frames"
    write_frames(path, frames, 25.0, chunk_frames=chunk, codec=codec, temporal_delta=delta)
    f = FrameFile(path)
    assert f.n_frames == len(frames) and f.header.fps == 25.0
    np.testing.assert_array_equal(f.read(), frames)
    for start in range(0, len(frames)):
        for length in (1, 7, 16):
            if start + length <= len(frames):
                np.testing.assert_array_equal(f.read(start, length), frames[start:start + length])


def test_same_frames_same_bytes_and_compression_helps():
    frames = np.repeat(_frames(n=1), 40, axis=0)  # static video
    a = encode_frames(frames, 25.0)
    assert a == encode_frames(frames, 25.0)
    assert len(a) < frames.nbytes / 10


def test_out_of_range_and_damage_are_detected(tmp_path: Path):
    frames = _frames()
    path = tmp_path / "v.frames"
    write_frames(path, frames, 25.0)
    f = FrameFile(path)
    with pytest.raises(StoreError, match="outside"):
        f.read(30, 10)
    with pytest.raises(StoreError, match="outside"):
        f.read(-1, 2)
    data = path.read_bytes()
    (tmp_path / "cut.frames").write_bytes(data[:-10])
    with pytest.raises(StoreError, match="truncated"):
        FrameFile(tmp_path / "cut.frames")
    (tmp_path / "magic.frames").write_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(StoreError, match="bad magic"):
        FrameFile(tmp_path / "magic.frames")
    with pytest.raises(StoreError, match="no such"):
        FrameFile(tmp_path / "absent.frames")


def test_reader_pickles_for_worker_processes(tmp_path: Path):
    frames = _frames()
    write_frames(tmp_path / "v.frames", frames, 25.0)
    f = pickle.loads(pickle.dumps(FrameFile(tmp_path / "v.frames")))
    np.testing.assert_array_equal(f.read(3, 9), frames[3:12])


def test_write_is_atomic_no_temp_left(tmp_path: Path):
    write_frames(tmp_path / "v.frames", _frames(), 25.0)
    assert os.listdir(tmp_path) == ["v.frames"]
    with pytest.raises(ValueError):
        write_frames(tmp_path / "w.frames", np.zeros((0, 4, 4, 3), np.uint8), 25.0)
    assert os.listdir(tmp_path) == ["v.frames"]
