"""Naive reconstructions a tokenizer has to beat, and their PSNR on the clips the model is scored on.

- mean colour:   every pixel of a video replaced by its mean RGB (3 numbers per video);
- same numbers:  the video box-averaged to a T x H x W x 3 grid that holds no more values than the
                 model's triplane, then trilinearly upsampled back (a codec of the same size);
- temporal mean: every frame replaced by the video's mean frame (H x W x 3 numbers: 8x more than
                 the CoordTok-tiny triplane at 64 px; kept as a reference, not as the bar).

The same-numbers grid keeps the triplane's proportions T' : H' : W': every axis is scaled by one
common factor k = (values / (3 T' H' W'))^(1/3), rounded down, capped at the video's size and
never below 1. CoordTok-tiny (8 channels, 8x8 + 2 x 8x8 latent positions = 1,536 values) gives
exactly 8 x 8 x 8 x 3 = 1,536 on a 32 x 64 x 64 clip.

Every figure is per video over its real (unpadded) frames, as the model's PSNR is, on the [0, 1]
scale (components.metrics.image.psnr); averages are over videos. Pure torch/numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from components.metrics.image import psnr

BASELINES: tuple[str, ...] = ("mean_colour", "same_numbers", "temporal_mean")


def triplane_values(channels: int, latent_xy: int, latent_t: int) -> int:
    """Numbers in a triplane: channels x (H'W' + T'H' + T'W') with H' = W' = latent_xy."""
    return int(channels) * (latent_xy * latent_xy + 2 * latent_xy * latent_t)


def same_numbers_grid(values: int, video_thw: Sequence[int], proportions: Sequence[int]) -> tuple[int, int, int]:
    """(t, h, w) of the RGB grid with the triplane's proportions (T', H', W') holding <= `values` numbers."""
    if values < 3:
        raise ValueError(f"a same-numbers grid needs at least 3 values (one RGB cell), got {values}")
    pt, ph, pw = (int(p) for p in proportions)
    k = (values / (3 * pt * ph * pw)) ** (1 / 3)
    # The tiny epsilon keeps exact cube roots (k = 1.0 computed as 0.99999...) from losing a cell.
    grid = [max(1, min(int(math.floor(k * p + 1e-9)), int(n))) for p, n in zip((pt, ph, pw), video_thw)]
    while 3 * grid[0] * grid[1] * grid[2] > values:  # only when an axis was raised to 1
        grid[int(np.argmax(grid))] -= 1
    return grid[0], grid[1], grid[2]


def mean_colour_video(video: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] in [0, 1] -> its mean colour everywhere."""
    return video.mean(dim=(0, 1, 2), keepdim=True).expand_as(video)


def temporal_mean_video(video: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] in [0, 1] -> its mean frame in every frame."""
    return video.mean(dim=0, keepdim=True).expand_as(video)


def same_numbers_video(video: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """[T, H, W, C] in [0, 1] box-averaged to grid (t, h, w) per channel, then trilinearly upsampled
    (half-pixel centres, i.e. align_corners=False) back to [T, H, W, C]."""
    t, h, w, _ = video.shape
    gt, gh, gw = min(grid[0], t), min(grid[1], h), min(grid[2], w)
    x = video.permute(3, 0, 1, 2)[None].float()
    small = F.adaptive_avg_pool3d(x, (gt, gh, gw))
    up = F.interpolate(small, size=(t, h, w), mode="trilinear", align_corners=False)
    return up[0].permute(1, 2, 3, 0)


def baseline_psnrs(clips: np.ndarray, valid: Sequence[int], grid: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-video PSNR (dB) of every baseline on uint8 clips [B, T, H, W, C] over their first valid[i] frames."""
    out = {name: np.zeros(len(clips)) for name in BASELINES}
    for i, (clip, n) in enumerate(zip(clips, valid)):
        real = torch.from_numpy(np.ascontiguousarray(clip[:int(n)])).float().div(255)
        for name, recon in (("mean_colour", mean_colour_video(real)), ("temporal_mean", temporal_mean_video(real)),
                            ("same_numbers", same_numbers_video(real, grid))):
            out[name][i] = float(psnr(recon[None], real[None]))
    return out


def baseline_summary(per_video: dict[str, np.ndarray], grid: Sequence[int], frame_hw: Sequence[int],
                     channels: int = 3) -> dict[str, float | int | list[int]]:
    """The metrics-file fields: baseline_<name>_psnr (mean over videos) and what each one keeps."""
    summary: dict[str, float | int | list[int]] = {
        f"baseline_{name}_psnr": float(np.mean(per_video[name])) for name in BASELINES}
    summary["baseline_same_numbers_grid"] = [int(g) for g in grid]
    summary["baseline_same_numbers_values"] = int(channels * grid[0] * grid[1] * grid[2])
    summary["baseline_temporal_mean_values"] = int(channels * frame_hw[0] * frame_hw[1])
    return summary
