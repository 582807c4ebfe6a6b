"""Fréchet distance between Gaussians fitted to feature sets (FVD when the features come from I3D).

`GaussianStats` accumulates count, mean and the centred second moment in float64 one batch at a time and merges
with Chan et al.'s parallel update, so 2,048 videos' features never need to sit in memory together and shards
computed by different workers combine exactly. Covariances are unbiased (divide by n - 1), like numpy.cov.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The trace of the square root is computed as
tr((A S2 A)^(1/2)) with A = S1^(1/2): A S2 A is symmetric positive semi-definite and has the eigenvalues of S1 S2,
so two symmetric eigendecompositions (eigh) replace scipy's general sqrtm, with tiny negative eigenvalues from
round-off clipped to zero. This stays real and stable for near-singular covariances (e.g. fewer samples than
feature dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianStats:
    """Streaming mean/covariance of d-dimensional features (float64)."""

    dim: int
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim))

    def update(self, features) -> GaussianStats:
        """Add a batch [B, dim] of features."""
        x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got {x.shape}")
        if x.shape[0] == 0:
            return self
        batch_mean = x.mean(0)
        centred = x - batch_mean
        return self.merge(GaussianStats(self.dim, x.shape[0], batch_mean, centred.T @ centred))

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Combine with another accumulator in place (Chan et al. 1979); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return self.m2 / (self.n - 1)

    def to_dict(self) -> dict:
        return {"dim": self.dim, "n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict) -> GaussianStats:
        return cls(int(d["dim"]), int(d["n"]), np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64))


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix via eigh, negative round-off clipped."""
    sym = (mat + mat.T) / 2
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^(1/2)) for PSD cov1, cov2."""
    s1 = _sqrt_psd(np.asarray(cov1, np.float64))
    inner = s1 @ np.asarray(cov2, np.float64) @ s1
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, cov {cov1.shape}/{cov2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
    return float(max(value, 0.0))  # round-off can give -1e-12 for identical sets


def frechet_distance_stats(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
