"""The paper's reported numbers (arXiv 2411.14762; ../shared/paper.md), one copy for the
evaluation table, the dashboard and the sweep plots.

Reconstruction: UCF-101, 128 frames at 128x128. Generation: unconditional UCF-101, 128 frames.
"""

from __future__ import annotations

RECONSTRUCTION: list[dict] = [
    {"method": "OmniTok-CV", "tokens": 8192, "train_frames": 17, "psnr": 28.3, "lpips": 0.081, "rfvd": 49.5},
    {"method": "CosmosTokenizer", "tokens": 8192, "train_frames": 17, "psnr": 28.5, "lpips": 0.119, "rfvd": 87.8},
    {"method": "PVDM-AE", "tokens": 6144, "train_frames": 16, "psnr": 26.5, "lpips": 0.120, "rfvd": 66.5},
    {"method": "OmniTok-CV", "tokens": 1024, "train_frames": 17, "psnr": 23.2, "lpips": 0.175, "rfvd": 396.7},
    {"method": "PVDM-AE", "tokens": 1152, "train_frames": 16, "psnr": 19.1, "lpips": 0.333, "rfvd": 1270.1},
    {"method": "CoordTok", "tokens": 1280, "train_frames": 128, "psnr": 28.6, "lpips": 0.066, "rfvd": 102.9},
]

# seconds per video; memory in GB (reported for CoordTok-SiT-L/2 only).
GENERATION: list[dict] = [
    {"method": "CoordTok-SiT-L/2", "fvd": 369.3, "seconds_per_video": 9.8, "memory_gb": 4.5},
    {"method": "PVDM-L", "fvd": 505.0, "seconds_per_video": 116.9, "memory_gb": None},
    {"method": "HVDM", "fvd": 549.7, "seconds_per_video": 52.1, "memory_gb": None},
    {"method": "Latte-L/2", "fvd": 1901.8, "seconds_per_video": 21.4, "memory_gb": None},
]
