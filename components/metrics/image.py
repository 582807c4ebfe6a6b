"""PSNR and SSIM on videos in [0, 1], batched on any device.

PSNR of a video: 10 log10(1 / MSE) with the MSE over all its pixels (frames, rows, columns,
channels). SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range
1, population covariances, computed per frame and channel on the valid region, averaged per video.
Both match scikit-image (`peak_signal_noise_ratio`, `structural_similarity` with
`gaussian_weights=True, use_sample_covariance=False`), which the tests use as the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-video PSNR in dB of [B, ...] tensors in [0, 1] -> [B]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(eps))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-video SSIM of [B, T, H, W, C] tensors in [0, 1] -> [B] (mean over frames, channels, positions)."""
    b, t, h, w, c = pred.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window}, got {h}x{w}")
    x = pred.double().permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    y = target.double().permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    gx, gy = g.view(1, 1, 1, window), g.view(1, 1, window, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(z, gx), gy)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.reshape(b, -1).mean(1).float()
