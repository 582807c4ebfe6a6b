"""Random-access store of encoded triplanes (latents/), written once by extract_latents, read by train_sit.

Layout of a store folder:
    xy.npy, yt.npy, xt.npy   one array per plane, [N, C, rows, cols] (float16 or float32), memory-mapped
    index.parquet            one row per latent: row, video_id, label, split, start, n_valid
    stats.json               LatentStats of exactly the stored values (what train_sit normalises with)
    meta.json                plane shapes, dtype, clip policy, num_frames, tokenizer config

Rows are written by position (any order, any process count) into preallocated .npy files, so the
writer never holds the set in memory and the reader gets O(1) random access without decompression.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from components.errors import UserError
from components.generator.latent_stats import PLANES, LatentStats
from components.io import atomic_write_json

__all__ = ["INDEX_FILE", "META_FILE", "STATS_FILE", "LatentStore", "LatentWriter", "clip_rows", "position_moments"]

INDEX_FILE = "index.parquet"
STATS_FILE = "stats.json"
META_FILE = "meta.json"
INDEX_COLUMNS = ("row", "video_id", "label", "split", "start", "n_valid")


def clip_rows(index: pd.DataFrame, num_frames: int, policy: str) -> pd.DataFrame:
    """The clips to encode: one row per clip with video_id, label, split, frames_path, start, n_valid.

    policy "first": the first `num_frames` frames of each video (padded when shorter);
    "windows": every non-overlapping `num_frames` window that fits (one padded window for short videos).
    Rows are sorted by (video_id, start) and numbered 0..N-1 (`row`), the store position.
    """
    if policy not in ("first", "windows"):
        raise UserError(f"unknown clip policy {policy!r}: use first or windows")
    out = []
    for r in index.sort_values("video_id").itertuples(index=False):
        n = int(r.n_frames)
        starts = range(0, max(n - num_frames, 0) + 1, num_frames) if policy == "windows" else (0,)
        for s in starts:
            out.append({"video_id": r.video_id, "label": int(r.label), "split": r.split,
                        "frames_path": r.frames_path, "start": int(s), "n_valid": int(min(num_frames, n - s))})
    rows = pd.DataFrame(out, columns=["video_id", "label", "split", "frames_path", "start", "n_valid"])
    rows.insert(0, "row", np.arange(len(rows), dtype=np.int64))
    return rows


class LatentWriter:
    """Fills a store folder: preallocated plane arrays, `write(rows, planes)` in any order, then `close`."""

    def __init__(self, folder: str | os.PathLike, n: int, plane_shapes: Sequence[tuple[int, int, int]],
                 dtype: str = "float16"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n, self.dtype = int(n), np.dtype(dtype)
        self.arrays = {name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=self.dtype,
                                                       shape=(self.n, *shape))
                       for name, shape in zip(PLANES, plane_shapes)}
        self.filled = np.zeros(self.n, bool)

    def write(self, rows: np.ndarray, planes: Sequence[np.ndarray]) -> None:
        """Store planes[k][i] at position rows[i] (planes already in the store dtype)."""
        rows = np.asarray(rows, np.int64)
        for name, x in zip(PLANES, planes):
            self.arrays[name][rows] = x
        self.filled[rows] = True

    def close(self, index: pd.DataFrame, stats: LatentStats, meta: dict[str, Any],
              skipped: Sequence[int] = ()) -> pd.DataFrame:
        """Flush the arrays and write index, stats and meta; every row must have been written or be
        in `skipped` (rows the stage skipped with a reason). Skipped rows are cut out and the rest
        renumbered 0..N-1 in order; returns the stored index."""
        skip = np.zeros(self.n, bool)
        skip[np.asarray(list(skipped), np.int64)] = True
        missing = np.flatnonzero(~self.filled & ~skip)
        if len(missing):
            raise RuntimeError(f"{len(missing)} latent rows were never written (first: {missing[:5].tolist()})")
        keep = np.flatnonzero(~skip)
        for name, arr in list(self.arrays.items()):
            arr.flush()
            if len(keep) < self.n:  # rewrite without the skipped rows, block by block (bounded memory)
                path = self.folder / f"{name}.npy"
                tmp = self.folder / f".tmp-{name}.npy"
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(len(keep), *arr.shape[1:]))
                for i in range(0, len(keep), 1024):
                    out[i:i + 1024] = arr[keep[i:i + 1024]]
                out.flush()
                del out, arr
                os.replace(tmp, path)
        self.arrays.clear()
        index = index.reindex(columns=list(INDEX_COLUMNS)).sort_values("row").reset_index(drop=True)
        index = index[~index["row"].isin(np.flatnonzero(skip))].reset_index(drop=True)
        index["row"] = np.arange(len(index), dtype=np.int64)
        index.to_parquet(self.folder / INDEX_FILE, index=False)
        atomic_write_json(self.folder / STATS_FILE, stats.to_dict())
        atomic_write_json(self.folder / META_FILE, {**meta, "count": len(keep), "dtype": self.dtype.name})
        return index


class LatentStore:
    """Read side: `len(store)`, `store.planes(rows)` -> float32 tensors, `store.index`, `store.stats`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        missing = [f for f in (*(f"{p}.npy" for p in PLANES), INDEX_FILE, STATS_FILE, META_FILE)
                   if not (self.folder / f).is_file()]
        if missing:
            raise UserError(f"latent store {self.folder} is missing {', '.join(missing)}; "
                            "run the extract_latents stage (dvc repro extract_latents)")
        self.meta = json.loads((self.folder / META_FILE).read_text())
        self.index = pd.read_parquet(self.folder / INDEX_FILE)
        self.stats = LatentStats.from_dict(json.loads((self.folder / STATS_FILE).read_text()))
        self.arrays = {p: np.load(self.folder / f"{p}.npy", mmap_mode="r") for p in PLANES}
        n = {len(a) for a in self.arrays.values()} | {len(self.index)}
        if len(n) != 1:
            raise UserError(f"latent store {self.folder} is inconsistent (row counts {sorted(n)}); "
                            "rerun the extract_latents stage")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def plane_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(self.arrays[p].shape[1:]) for p in PLANES)

    @property
    def labels(self) -> np.ndarray:
        # A copy: pandas hands out read-only views, which torch.from_numpy warns about.
        return self.index["label"].to_numpy(np.int64, copy=True)

    def planes(self, rows: Sequence[int] | np.ndarray, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """The latents at `rows` as float32 tensors (xy, yt, xt), in the order given."""
        rows = np.asarray(rows, np.int64)
        return tuple(torch.from_numpy(np.ascontiguousarray(self.arrays[p][rows], dtype=np.float32)).to(device)
                     for p in PLANES)

    def chunks(self, size: int = 256):
        """Every latent in store order, `size` rows at a time (float32 tensors)."""
        for start in range(0, len(self), size):
            yield self.planes(np.arange(start, min(start + size, len(self))))


def position_moments(batches) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per plane, the mean and (population) std of every (channel, row, col) over a set of triplanes.

    Finer than LatentStats (per channel only): pure noise matches normalised data per channel but
    not per position, so this is what tells a trained generator's samples from an untrained one's.
    """
    sums: dict[str, np.ndarray] = {}
    sq: dict[str, np.ndarray] = {}
    n = 0
    for planes in batches:
        for name, x in zip(PLANES, planes):
            x = x.detach().to(torch.float64).cpu().numpy()
            sums[name] = sums.get(name, 0) + x.sum(0)
            sq[name] = sq.get(name, 0) + (x * x).sum(0)
        n += planes[0].shape[0]
    if n == 0:
        raise ValueError("position_moments of an empty set")
    out = {}
    for name in PLANES:
        mean = sums[name] / n
        out[name] = (mean, np.sqrt(np.maximum(sq[name] / n - mean * mean, 0.0)))
    return out
