"""Metrics: PSNR and SSIM now; LPIPS, Fréchet distance and video detectors join with their issues."""
