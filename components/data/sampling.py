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
    return read_window(video, window_start(video.n_frames, num_frames, rng), num_frames)


def window_start(n_frames: int, num_frames: int, rng: np.random.Generator) -> int:
    """The first frame of a random `num_frames` window of a video of `n_frames` (0 when it is shorter);
    needs only the frame count, so a sample plan can be drawn without decoding."""
    return int(rng.integers(0, n_frames - num_frames + 1)) if n_frames >= num_frames else 0


def read_window(video: FrameFile, start: int, num_frames: int) -> tuple[np.ndarray, int]:
    """`num_frames` frames from `start`, zero-padded at the end; returns (clip, number of real frames)."""
    n = video.n_frames
    if n >= num_frames:
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


# ------------------------------------------------------------------------------ sample plans


def item_seed(seed: int, step: int, item: int, stream: int = 0) -> list[int]:
    """The entropy of one item of a step's global batch: a function of (seed, step, item) only.

    Never of the rank, the world size or the micro-step, so how a global batch is split over
    workers and accumulation steps cannot change what any item is.
    """
    return [seed, step, item, stream]


def item_rng(seed: int, step: int, item: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(item_seed(seed, step, item, stream))


class SamplePlan:
    """How a step's global batch of `global_batch` items is split over `world` ranks x `grad_accum`
    micro-steps: rank r takes the contiguous block r, and cuts it into `grad_accum` micro-batches.

    Every (rank, micro) slice has the same size, the slices are disjoint and together are
    range(global_batch): 2 workers x b/2 train on exactly the items of 1 worker x b.
    """

    def __init__(self, global_batch: int, world: int = 1, grad_accum: int = 1):
        if world < 1 or grad_accum < 1 or global_batch % (world * grad_accum):
            raise ValueError(f"a global batch of {global_batch} does not split into {world} workers x "
                             f"{grad_accum} accumulation steps of equal size")
        self.global_batch, self.world, self.grad_accum = global_batch, world, grad_accum
        self.per_micro = global_batch // (world * grad_accum)

    def items(self, rank: int, micro: int = 0) -> np.ndarray:
        """Global item positions that `rank` trains on in micro-step `micro`."""
        if not (0 <= rank < self.world and 0 <= micro < self.grad_accum):
            raise ValueError(f"rank {rank} / micro-step {micro} outside {self.world} x {self.grad_accum}")
        start = (rank * self.grad_accum + micro) * self.per_micro
        return np.arange(start, start + self.per_micro)

    @property
    def share(self) -> float:
        """The fraction of the global batch in one (rank, micro) slice: a slice's mean loss times
        this is its part of the global mean (summed over micro-steps and ranks)."""
        return self.per_micro / self.global_batch
