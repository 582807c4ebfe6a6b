"""Pixel conversion between the stored uint8 frames and the models' [-1, 1] floats (torch)."""

from __future__ import annotations

import numpy as np
import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1] (done on the training device: 4x fewer bytes to move)."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Floats in [-1, 1] (clamped) -> rounded uint8 pixels as a numpy array."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
