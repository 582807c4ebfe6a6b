"""LPIPS (Zhang et al. 2018) built on the `lpips` package, with every weight file supplied by components.weights.

The package would fetch the backbone through torchvision's downloader (silently, and without checking files
already cached). Instead we build `lpips.LPIPS(pretrained=False, pnet_rand=True)` (random trunk, no linear
layers loaded: nothing touches the network) and load into it the backbone and linear-layer state dicts the
resolver found and verified. Backbones: 'vgg' (the fine-tuning loss, as in the paper) and 'alex' (reporting).

The module is frozen (requires_grad False, eval mode; gradients still flow to the inputs, which the fine-tuning
loss needs). It always computes in float32: under an outer bf16 autocast the deep VGG/Alex activations and the
unit-normalisation of features lose enough precision to shift LPIPS in the second decimal, so autocast is
disabled inside and inputs are cast to float32.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

import torch
from torch import nn

from components import weights as W
from components.io import atomic_open
from components.weights import Resolved, resolve

BACKBONES = {"alex": ("alexnet", "lpips_alex"), "vgg": ("vgg16", "lpips_vgg"), "squeeze": ("squeezenet1_1", "lpips_squeeze")}
_LIN_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512],
                 "squeeze": [64, 128, 256, 384, 384, 512, 512]}


def _standin_backbone(arch: str):
    def write(path) -> None:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        # Only the convolutional trunk (`features.*`): it is all LPIPS uses, and it keeps stand-ins small
        # (the classifier would add 220-500 MB of random numbers).
        state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    return write


def _standin_lin(net: str):
    def write(path) -> None:
        # Same keys/shapes as lpips' own files; non-negative like the real calibrated weights.
        state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.2 for i, c in enumerate(_LIN_CHANNELS[net])}
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    return write


for _net, (_backbone, _lin) in BACKBONES.items():
    W.register(_backbone, standin=_standin_backbone(_backbone))  # asset names are torchvision's model names
    W.register(_lin, standin=_standin_lin(_net))


def _quiet_lpips(net: str) -> nn.Module:
    import warnings

    import lpips

    # lpips passes the deprecated `pretrained=` to torchvision (two warnings per construction); harmless here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)


def load_lpips_weights(model: nn.Module, backbone_path: str | os.PathLike, lin_path: str | os.PathLike) -> None:
    """Load a torchvision backbone state dict (`features.*`) and LPIPS linear layers into an lpips.LPIPS."""
    backbone = torch.load(backbone_path, map_location="cpu", weights_only=True)
    # lpips' slices keep torchvision's `features` indices as module names: sliceK.<i>.<p> <- features.<i>.<p>.
    mapped = {}
    for key in model.net.state_dict():
        source = "features." + key.split(".", 1)[1]
        if source not in backbone:
            raise ValueError(f"{backbone_path} lacks {source}; it is not the expected torchvision backbone")
        mapped[key] = backbone[source]
    model.net.load_state_dict(mapped, strict=True)
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    lin_keys = [k for k in model.state_dict() if re.match(r"lin\d+\.", k)]  # `lins.*` aliases the same modules
    if sorted(lin) != sorted(lin_keys):
        raise ValueError(f"{lin_path} does not hold the LPIPS linear layers {lin_keys}")
    model.load_state_dict(lin, strict=False)


class LPIPS(nn.Module):
    """Frozen LPIPS: forward(x, y) with [N, 3, H, W] in [-1, 1] -> [N] distances (float32)."""

    def __init__(self, net: str = "vgg", weights_dir=None, allow_download: bool = True, chunk: int | None = None):
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {sorted(BACKBONES)}")
        backbone_name, lin_name = BACKBONES[net]
        self.resolved: tuple[Resolved, Resolved] = (resolve(backbone_name, weights_dir, allow_download),
                                                    resolve(lin_name, weights_dir, allow_download))
        self.standin = any(r.standin for r in self.resolved)
        self.net_name, self.chunk = net, chunk
        self.model = _quiet_lpips(net)
        load_lpips_weights(self.model, self.resolved[0].path, self.resolved[1].path)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        # Stays in eval mode whatever a parent module asks (dropout in the linear layers must stay off).
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two [N, 3, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        chunk = chunk or self.chunk or x.shape[0]
        out = []
        with torch.autocast(device_type=x.device.type, enabled=False):
            for s in range(0, x.shape[0], chunk):
                d = self.model(x[s:s + chunk].float(), y[s:s + chunk].float(), normalize=False)
                out.append(d.reshape(-1))
        return torch.cat(out)
