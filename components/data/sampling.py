"""Clip windows and coordinate sampling of video patches (CoordTok's training samples).

Conventions: a patch is pt x p x p pixels; its index is (t, x, y) with x the column (width) axis
and y the row (height) axis; the normalised coordinate of index i along an axis with n patches is
i / (n - 1) (0 when n == 1), so the first and last patches sit exactly on 0 and 1.
"""

from __future__ import annotations

import numpy as np

from components.data.store import FrameFile


def read_clip(video: FrameFile, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random window of `num_frames` frames, zero-padded at the end when the video is shorter.

    Returns (clip [num_frames, H, W, C] uint8, number of real frames).
    """
    n = video.n_frames
    if n >= num_frames:
        start = int(rng.integers(0, n - num_frames + 1))
        return video.read(start, num_frames), num_frames
    frames = video.read(0, n)
    clip = np.zeros((num_frames, *frames.shape[1:]), np.uint8)
    clip[:n] = frames
    return clip, n


def grid_shape(clip_shape: tuple[int, ...], patch_t: int, patch_xy: int) -> tuple[int, int, int]:
    """(Nt, Ny, Nx) patches of a [T, H, W, C] clip."""
    t, h, w = clip_shape[:3]
    if t % patch_t or h % patch_xy or w % patch_xy:
        raise ValueError(f"clip {clip_shape[:3]} is not divisible into {patch_t}x{patch_xy}x{patch_xy} patches")
    return t // patch_t, h // patch_xy, w // patch_xy


def normalise_indices(idx: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Integer (t, x, y) patch indices -> float32 coordinates in [0, 1]."""
    nt, ny, nx = grid
    denom = np.array([max(nt - 1, 1), max(nx - 1, 1), max(ny - 1, 1)], np.float32)
    return idx.astype(np.float32) / denom


def denormalise_coords(coords: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `normalise_indices` (rounded to the nearest integer index)."""
    nt, ny, nx = grid
    scale = np.array([max(nt - 1, 1), max(nx - 1, 1), max(ny - 1, 1)], np.float64)
    return np.rint(coords.astype(np.float64) * scale).astype(np.int64)


def gather_patches(clip: np.ndarray, idx: np.ndarray, patch_t: int, patch_xy: int) -> np.ndarray:
    """Patches at integer (t, x, y) indices: one vectorised gather -> [N, pt, p, p, C]."""
    nt, ny, nx = grid_shape(clip.shape, patch_t, patch_xy)
    c = clip.shape[3]
    blocks = clip.reshape(nt, patch_t, ny, patch_xy, nx, patch_xy, c)
    # Advanced indices separated by slices move to the front: result [N, pt, p, p, C].
    return blocks[idx[:, 0], :, idx[:, 2], :, idx[:, 1], :, :]


def sample_patches(clip: np.ndarray, n: int, rng: np.random.Generator, patch_t: int = 1, patch_xy: int = 8,
                   valid_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw `n` distinct patches uniformly from the valid part of `clip` (never from padding).

    Returns (patches [n, pt, p, p, C] uint8, coords [n, 3] float32 (t, x, y) in [0, 1],
    indices [n, 3] int64 (t, x, y)).
    """
    grid = grid_shape(clip.shape, patch_t, patch_xy)
    nt, ny, nx = grid
    valid_t = nt if valid_frames is None else valid_frames // patch_t
    total = valid_t * ny * nx
    if n > total:
        raise ValueError(f"cannot draw {n} distinct patches from {total} valid ones")
    flat = rng.choice(total, size=n, replace=False)
    t, rem = np.divmod(flat, ny * nx)
    y, x = np.divmod(rem, nx)
    idx = np.stack([t, x, y], axis=1).astype(np.int64)
    return gather_patches(clip, idx, patch_t, patch_xy), normalise_indices(idx, grid), idx
