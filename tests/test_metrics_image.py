import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from components.metrics.image import psnr, ssim


def _pair(seed=0, shape=(2, 3, 24, 20, 3)):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    return a, b


def test_psnr_matches_skimage_and_closed_form():
    a, b = _pair()
    ours = psnr(torch.from_numpy(b), torch.from_numpy(a)).numpy()
    ref = [peak_signal_noise_ratio(a[i], b[i], data_range=1.0) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    # Constant error 0.1 everywhere: MSE 0.01 -> 20 dB exactly.
    x = torch.full((1, 2, 4, 4, 3), 0.5)
    assert psnr(x + 0.1, x).item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_skimage():
    a, b = _pair(1)
    ours = ssim(torch.from_numpy(b), torch.from_numpy(a)).numpy()
    for i in range(len(a)):
        per_frame = [structural_similarity(a[i, t], b[i, t], data_range=1.0, channel_axis=-1,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                     for t in range(a.shape[1])]
        assert ours[i] == pytest.approx(np.mean(per_frame), abs=1e-5)
    same = torch.from_numpy(a)
    np.testing.assert_allclose(ssim(same, same).numpy(), 1.0, atol=1e-6)


def test_ssim_rejects_tiny_frames():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8, 3), torch.zeros(1, 1, 8, 8, 3))
