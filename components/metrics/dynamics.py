"""Video dynamics and its correlation with reconstruction quality (paper: Pearson r = 0.617).

Dynamics of a video = mean absolute difference between consecutive frames, over all pixels and channels, in
[0, 1] intensity units (uint8 input is divided by 255): 0 for a still video, 1 for frames flipping between black
and white. A one-frame video has no motion: 0.
"""

from __future__ import annotations

import numpy as np
import torch


def dynamics_score(videos) -> torch.Tensor:
    """[N, T, H, W, C] videos (uint8, or float in [0, 1]) -> [N] float64 dynamics scores."""
    v = videos if isinstance(videos, torch.Tensor) else torch.as_tensor(np.asarray(videos))
    if v.ndim != 5:
        raise ValueError(f"expected videos [N, T, H, W, C], got {tuple(v.shape)}")
    v = v.double() / 255.0 if v.dtype == torch.uint8 else v.double()
    if v.shape[1] < 2:
        return torch.zeros(v.shape[0], dtype=torch.float64)
    return (v[:, 1:] - v[:, :-1]).abs().flatten(1).mean(1)


def pearson_r(x, y) -> float:
    """Pearson correlation of two equal-length 1-D sequences (NaN when either is constant)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size != b.size or a.size < 2:
        raise ValueError(f"need two sequences of equal length >= 2, got {a.size} and {b.size}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")
