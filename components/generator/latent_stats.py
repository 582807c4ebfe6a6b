"""Exact per-plane, per-channel mean and std of a set of triplanes, streamed and mergeable.

Each plane keeps (count, mean, M2) per channel in float64 and merges batches or workers with Chan et
al.'s pairwise update, so the result does not depend on how the set was split and stays accurate
when |mean| >> std. std is the population std (ddof = 0), as in the released CoordTok SiT training.
The SiT trains on normalised latents (x - mean) / std and samples are denormalised before decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from components.errors import UserError
from components.tokenizer.model import Triplane

__all__ = ["PLANES", "ChannelMoments", "LatentStats", "denormalize", "normalize"]

PLANES = ("xy", "yt", "xt")
STD_FLOOR = 1e-6  # a constant channel is divided by this instead of 0


class ChannelMoments:
    """Streaming (count, mean, M2) per channel, float64."""

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def merge_moments(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan's parallel update with another set's moments."""
        if count == 0:
            return
        mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        if mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge moments of {mean.shape[0]} channels into {self.mean.shape[0]}")
        n = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / n)
        self.count = n

    def update(self, x: Tensor) -> None:
        """x [B, C, ...]: every element of channel c is one observation of c."""
        x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        if x.shape[1] == 0:
            return
        mean = x.mean(1)
        m2 = (x - mean[:, None]).pow(2).sum(1)
        self.merge_moments(x.shape[1], mean.cpu().numpy(), m2.cpu().numpy())

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)


class LatentStats:
    """Per-plane ChannelMoments of a triplane set: update with batches, merge across workers."""

    def __init__(self, channels: int):
        self.channels = channels
        self.planes = {name: ChannelMoments(channels) for name in PLANES}

    def update(self, planes: Triplane | Sequence[Tensor]) -> LatentStats:
        for name, x in zip(PLANES, _plane_tuple(planes)):
            self.planes[name].update(x)
        return self

    def merge(self, other: LatentStats) -> LatentStats:
        """Fold `other` into self (in place) and return self."""
        for name in PLANES:
            o = other.planes[name]
            self.planes[name].merge_moments(o.count, o.mean, o.m2)
        return self

    @property
    def count(self) -> int:
        """Observations per channel of the xy plane (the yt/xt counts differ by their sizes)."""
        return self.planes["xy"].count

    def mean(self, plane: str) -> np.ndarray:
        return self.planes[plane].mean

    def std(self, plane: str) -> np.ndarray:
        return self.planes[plane].std

    def tensors(self, plane: str, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """(mean, std) of a plane shaped [1, C, 1, 1] for broadcasting; std floored at STD_FLOOR."""
        m = self.planes[plane]
        mean = torch.as_tensor(m.mean, dtype=dtype, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(np.maximum(m.std, STD_FLOOR), dtype=dtype, device=device).view(1, -1, 1, 1)
        return mean, std

    def to_dict(self) -> dict:
        """Plain JSON-able dict (latents/stats.json); floats round-trip exactly through json."""
        return {"channels": self.channels, "ddof": 0,
                "planes": {n: {"count": int(m.count), "mean": m.mean.tolist(), "std": m.std.tolist(),
                               "m2": m.m2.tolist()} for n, m in self.planes.items()}}

    @classmethod
    def from_mean_std(cls, mean: dict, std: dict, count: int = 1) -> LatentStats:
        """Stats known only as per-plane mean and (population) std, e.g. the released SiT's log.txt.

        `count` weights them if they are later merged with streamed stats.
        """
        first = np.asarray(mean[PLANES[0]], np.float64)
        stats = cls(first.shape[0])
        for n in PLANES:
            m = stats.planes[n]
            m.count = int(count)
            m.mean = np.asarray(mean[n], np.float64).copy()
            m.m2 = np.asarray(std[n], np.float64) ** 2 * count
        return stats

    @classmethod
    def from_dict(cls, d: dict) -> LatentStats:
        try:
            stats = cls(int(d["channels"]))
            for n in PLANES:
                p = d["planes"][n]
                m = stats.planes[n]
                m.count, m.mean, m.m2 = int(p["count"]), np.asarray(p["mean"], np.float64), np.asarray(p["m2"], np.float64)
                if m.mean.shape != (stats.channels,) or m.m2.shape != (stats.channels,):
                    raise ValueError(f"plane {n} has {m.mean.shape} means for {stats.channels} channels")
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"latent stats are malformed ({e}): regenerate them with the extract_latents stage") from None
        return stats


def _plane_tuple(planes: Triplane | Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return (planes.xy, planes.yt, planes.xt) if isinstance(planes, Triplane) else tuple(planes)


def _apply(planes, stats: LatentStats, fn):
    xs = _plane_tuple(planes)
    if xs[0].shape[1] != stats.channels:
        raise ValueError(f"planes have {xs[0].shape[1]} channels but the stats {stats.channels}")
    out = [fn(x, *stats.tensors(name, x.device, x.dtype)) for name, x in zip(PLANES, xs)]
    return Triplane(*out) if isinstance(planes, Triplane) else tuple(out)


def normalize(planes: Triplane | Sequence[Tensor], stats: LatentStats):
    """(x - mean) / std per plane and channel; keeps the input's type."""
    return _apply(planes, stats, lambda x, m, s: (x - m) / s)


def denormalize(planes: Triplane | Sequence[Tensor], stats: LatentStats):
    """Inverse of `normalize`: x * std + mean."""
    return _apply(planes, stats, lambda x, m, s: x * s + m)
