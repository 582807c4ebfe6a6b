"""SiT checkpoint files (models/sit/sit.pt): one schema for trained and imported generators.

Schema (torch.save of a plain dict, read back with weights_only=True):
    {"config": SiT.config, "model": raw state dict, "ema": EMA state dict,
     "latent_stats": LatentStats.to_dict() (optional), "step": int, ...extra keys}
The released-checkpoint importer (components/checkpoint_import.import_sit) writes the same schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.errors import UserError
from components.generator.latent_stats import LatentStats
from components.generator.sit import SiT
from components.io import atomic_open, read_checkpoint

__all__ = ["load_sit", "payload_from_states", "read_sit_payload", "save_sit_payload", "sit_payload"]


def payload_from_states(config: dict[str, Any], model_state: dict[str, Any], ema_state: dict[str, Any] | None,
                        stats: LatentStats | dict | None, step: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict from state dicts (e.g. a training run's final state); EMA = raw if None."""
    raw = {k: v.detach().cpu() for k, v in model_state.items()}
    ema = raw if ema_state is None else {k: v.detach().cpu() for k, v in ema_state.items()}
    payload: dict[str, Any] = {"config": dict(config), "model": raw, "ema": ema, "step": int(step)}
    if stats is not None:
        payload["latent_stats"] = stats.to_dict() if isinstance(stats, LatentStats) else dict(stats)
    payload.update(extra)
    return payload


def sit_payload(model: SiT, ema: nn.Module | None, stats: LatentStats | None, step: int,
                **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of `model` (raw weights), `ema` (its EMA copy; the model itself if None)."""
    return payload_from_states(model.config, model.state_dict(), None if ema is None else ema.state_dict(),
                               stats, step, **extra)


def save_sit_payload(path: str | os.PathLike, model: SiT, ema: nn.Module | None, stats: LatentStats | None,
                     step: int, **extra: Any) -> dict[str, Any]:
    """Write `sit_payload(...)` to `path` atomically and return it."""
    payload = sit_payload(model, ema, stats, step, **extra)
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return payload


def read_sit_payload(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict at `path` (weights_only load); UserError if missing or not a SiT file."""
    path = Path(path)
    ckpt = read_checkpoint(path, "SiT checkpoint", "train one (dvc repro train_sit) or import the released one "
                           "(python -m pipelines.import_checkpoint sit ...)", "re-create it with train_sit", map_location)
    if not isinstance(ckpt, dict) or "config" not in ckpt or not ("model" in ckpt or "ema" in ckpt):
        raise UserError(f"{path} is not a project SiT checkpoint (needs 'config' and 'model'/'ema'); "
                        "convert released checkpoints with python -m pipelines.import_checkpoint first")
    return ckpt


def load_sit(path: str | os.PathLike, use_ema: bool = True, map_location: str | torch.device = "cpu",
             ) -> tuple[SiT, LatentStats | None]:
    """(SiT with the EMA weights, or the raw ones if use_ema=False, in eval mode; its latent stats or None)."""
    ckpt = read_sit_payload(path, map_location)
    key = "ema" if use_ema and "ema" in ckpt else "model"
    if key not in ckpt:
        raise UserError(f"{path} holds no {'ema' if use_ema else 'raw'} weights; load it with use_ema={not use_ema}")
    model = SiT.from_config(ckpt["config"])
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as e:
        raise UserError(f"the weights in {path} do not fit its config ({str(e).splitlines()[0]}); "
                        "re-create the checkpoint") from None
    model.to(map_location).eval()
    stats = LatentStats.from_dict(ckpt["latent_stats"]) if ckpt.get("latent_stats") is not None else None
    return model, stats


class ServedSiT(SiT):
    """The SiT with a flat signature for serving (MLflow model registry): forward(xy, yt, xt, t)
    -> the velocity of the three planes, flattened and concatenated per sample."""

    def forward(self, xy: torch.Tensor, yt: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = super().forward((xy, yt, xt), t.reshape(-1).float())
        return torch.cat([p.flatten(1) for p in out], dim=1)


def served_sit_from_config(config: dict) -> ServedSiT:
    """Builder of the registered `coordtok-sit` model (see pipelines.common.tracking.register_model)."""
    return ServedSiT.from_config(config)
