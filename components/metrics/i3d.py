"""Video feature detectors for FVD, one interface: `detector.features(videos_uint8 [N,T,H,W,3]) -> [N', 400]` float64.

(a) `StyleganvI3D`: StyleGAN-V's TorchScript I3D (the tf.hub Kinetics-400 model behind the original FVD).
    StyleGAN-V's protocol (src/metrics/frechet_video_distance.py + metric_utils.py) feeds uint8 videos laid out
    [N, C, T, H, W] and calls `detector(x, rescale=True, resize=True, return_features=True)`: the TorchScript
    module itself maps [0, 255] to [-1, 1] and resizes frames to 224x224; the output is the 400 logits before the
    softmax. That is the default here (`internal_preprocess=True`). With `internal_preprocess=False` we do it
    ourselves (`preprocess_fvd_tf`: bilinear resize of every frame to 224x224, no aspect-ratio crop, like the TF
    reference, values in [-1, 1]) and call with rescale=False, resize=False, as several third-party ports do.
(b) `VideoGPTI3D`: the PyTorch InceptionI3d (Inception-v1 inflated to 3D, 400 classes) loading
    `i3d_pretrained_400.pt` as VideoGPT/TATS/PVDM/CoordTok do. Preprocessing (`preprocess_videogpt`): frames to
    [0, 1], shorter side bilinearly resized to 224 (align_corners=False), centre crop 224x224, values to [-1, 1],
    layout [N, 3, T, H, W]. Features are the 400 logits (before softmax) averaged over time. CoordTok's released
    evaluation cuts each video into consecutive 16-frame windows and treats each window as one sample
    (`clip_len=16`, N' = N * (T // 16)); `clip_len=None` feeds whole videos (N' = N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.weights import Resolved, resolve

FEATURE_DIM = 400
MIN_FRAMES = 9  # shortest clip InceptionI3d accepts


# ---------------------------------------------------------------- preprocessing (one function per protocol)

def _as_uint8_tensor(videos) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(videos)) if not isinstance(videos, torch.Tensor) else videos
    if v.dtype != torch.uint8 or v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {tuple(v.shape)} {v.dtype}")
    return v


def preprocess_styleganv(videos) -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> uint8 [N,3,T,H,W], the input StyleGAN-V gives its detector (it rescales/resizes)."""
    return _as_uint8_tensor(videos).permute(0, 4, 1, 2, 3).contiguous()


def preprocess_fvd_tf(videos, size: int = 224) -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> float32 [N,3,T,size,size] in [-1, 1]: every frame bilinearly resized to size x size."""
    v = _as_uint8_tensor(videos)
    n, t, h, w, _ = v.shape
    frames = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    frames = frames / 127.5 - 1.0
    return frames.reshape(n, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def preprocess_videogpt(videos, size: int = 224) -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> float32 [N,3,T,size,size] in [-1, 1]: shorter side to `size`, centre crop."""
    v = _as_uint8_tensor(videos)
    n, t, h, w, _ = v.shape
    frames = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=False)
    top, left = (frames.shape[2] - size) // 2, (frames.shape[3] - size) // 2
    frames = frames[:, :, top:top + size, left:left + size]
    frames = (frames - 0.5) * 2.0
    return frames.reshape(n, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


# ---------------------------------------------------------------- InceptionI3d (state-dict names of i3d_pretrained_400.pt)

def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow 'SAME' padding, split with the extra pixel at the end.
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads: list[int] = []
    for dim in (4, 3, 2):  # F.pad order: W, H, T
        pads.extend(_same_pad(x.shape[dim], kernel[dim - 2], stride[dim - 2]))
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d with SAME padding, optional BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(c_in, c_out, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=1e-5, momentum=0.001) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated on channels."""

    def __init__(self, c_in: int, widths: Sequence[int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(c_in, w0)
        self.b1a, self.b1b = Unit3D(c_in, w1a), Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, w2a), Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, channels in, branch widths) of Inception-v1's mixed blocks.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) for [N, 3, T, 224, 224] in [-1, 1] -> 400 logits."""

    def __init__(self, num_classes: int = FEATURE_DIM, in_channels: int = 3):
        super().__init__()
        m = lambda name: InceptionBlock(*_MIXED[name])
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = m("Mixed_3b"), m("Mixed_3c")
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b, self.Mixed_4c, self.Mixed_4d = m("Mixed_4b"), m("Mixed_4c"), m("Mixed_4d")
        self.Mixed_4e, self.Mixed_4f = m("Mixed_4e"), m("Mixed_4f")
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = m("Mixed_5b"), m("Mixed_5c")
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.named_children():
            if name in ("avg_pool", "logits"):
                continue
            x = module(x)
        x = self.logits(self.avg_pool(x))  # dropout omitted: identity in eval mode
        return x.mean(dim=(2, 3, 4))  # spatial is 1x1 at 224 input; average over the remaining time steps


# ---------------------------------------------------------------- stand-in TorchScript detector

class TinyTorchscriptI3D(nn.Module):
    """Stand-in with StyleGAN-V's detector call signature and output shape (random values, tests/demos only)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 16, kernel_size=(2, 16, 16), stride=(2, 16, 16))
        self.head = nn.Linear(16, FEATURE_DIM)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = x.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        feats = self.head(F.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        return feats if return_features else torch.softmax(feats, dim=1)


# ---------------------------------------------------------------- detectors

class _Detector:
    name = "detector"

    def __init__(self, resolved: Resolved, device: str | torch.device, batch_size: int):
        self.resolved = resolved
        self.standin = resolved.standin
        self.device = torch.device(device)
        self.batch_size = batch_size

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prepare(self, videos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def features(self, videos) -> torch.Tensor:
        """uint8 [N, T, H, W, 3] -> float64 [N', 400] on the CPU, in batches of `batch_size`."""
        videos = _as_uint8_tensor(videos)
        out = []
        # fp32 always: feature statistics feed a covariance; bf16 would add visible noise to FVD.
        with torch.autocast(device_type=self.device.type, enabled=False):
            for start in range(0, videos.shape[0], self.batch_size):
                x = self._prepare(videos[start:start + self.batch_size]).to(self.device)
                out.append(self._run(x).double().cpu())
        return torch.cat(out) if out else torch.empty(0, FEATURE_DIM, dtype=torch.float64)


class StyleganvI3D(_Detector):
    """StyleGAN-V's TorchScript I3D (asset `i3d_torchscript`)."""

    name = "styleganv_i3d"

    def __init__(self, resolved: Resolved, device="cpu", batch_size: int = 8, internal_preprocess: bool = True):
        super().__init__(resolved, device, batch_size)
        self.internal_preprocess = internal_preprocess
        self.model = torch.jit.load(str(resolved.path), map_location=self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _prepare(self, videos: torch.Tensor) -> torch.Tensor:
        return preprocess_styleganv(videos) if self.internal_preprocess else preprocess_fvd_tf(videos)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        flag = self.internal_preprocess
        return self.model(x, rescale=flag, resize=flag, return_features=True)


class VideoGPTI3D(_Detector):
    """PyTorch InceptionI3d loading `i3d_pretrained_400.pt` (asset `i3d_pretrained_400`)."""

    name = "videogpt_i3d"

    def __init__(self, resolved: Resolved, device="cpu", batch_size: int = 8, clip_len: int | None = None):
        super().__init__(resolved, device, batch_size)
        self.clip_len = clip_len
        self.model = InceptionI3d(FEATURE_DIM)
        state = torch.load(resolved.path, map_location="cpu", weights_only=True)
        load_i3d_state(self.model, state)
        self.model.to(self.device).eval().requires_grad_(False)

    def _prepare(self, videos: torch.Tensor) -> torch.Tensor:
        t_in = videos.shape[1] if self.clip_len is None else self.clip_len
        if t_in < MIN_FRAMES:
            # Three stride-2 stages then a 2-frame average pool: fewer frames leave nothing to pool.
            raise ValueError(f"InceptionI3d needs clips of at least {MIN_FRAMES} frames, got {t_in}")
        x = preprocess_videogpt(videos)
        if self.clip_len is None:
            return x
        n, c, t = x.shape[:3]
        k = t // self.clip_len
        if k == 0:
            raise ValueError(f"videos of {t} frames are shorter than clip_len={self.clip_len}")
        # Consecutive windows become separate samples, video-major (CoordTok's get_logits groups window-major;
        # the order does not change mean/covariance).
        x = x[:, :, :k * self.clip_len].reshape(n, c, k, self.clip_len, *x.shape[3:])
        return x.permute(0, 2, 1, 3, 4, 5).reshape(n * k, c, self.clip_len, *x.shape[4:])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def load_i3d_state(model: InceptionI3d, state: dict) -> None:
    """Strict load, except BatchNorm's `num_batches_tracked` counters that older files lack."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"not an InceptionI3d state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_detector(kind: str = "styleganv", device="cpu", batch_size: int = 8, weights_dir=None,
                  allow_download: bool = True, **kwargs) -> _Detector:
    """'styleganv' (StyleGAN-V TorchScript, the paper's protocol) or 'videogpt' (InceptionI3d state dict)."""
    if kind == "styleganv":
        return StyleganvI3D(resolve("i3d_torchscript", weights_dir, allow_download), device, batch_size, **kwargs)
    if kind == "videogpt":
        return VideoGPTI3D(resolve("i3d_pretrained_400", weights_dir, allow_download), device, batch_size, **kwargs)
    raise ValueError(f"unknown detector kind {kind!r}; choose 'styleganv' or 'videogpt'")
