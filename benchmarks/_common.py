"""Shared helpers of the benchmark scripts: synthetic UCF-like input clips and small timing utilities.

Clips are rendered with `components.data.synthetic.render_clip` and encoded with
`components.data.video.encode_avi` (320x240, 25 fps, MPEG-4 Part 2 with the XVID FourCC in AVI,
as UCF-101 is). Families cycle through MOTION_FAMILIES; lengths are drawn uniformly in
[min_seconds, max_seconds] from a fixed seed, so the same options give the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first, not the repo root
    sys.path.insert(0, str(REPO))

from components.data.synthetic import MOTION_FAMILIES, render_clip  # noqa: E402
from components.data.video import encode_avi  # noqa: E402

FPS = 25
HEIGHT, WIDTH = 240, 320


@dataclass(frozen=True)
class Clip:
    path: Path
    family: str
    n_frames: int

    @property
    def seconds(self) -> float:
        return self.n_frames / FPS


def add_clip_options(p: argparse.ArgumentParser, clips: int, min_s: float, max_s: float) -> None:
    g = p.add_argument_group("input clips (synthetic, UCF-like AVIs)")
    g.add_argument("--clips", type=int, default=clips, help=f"number of clips (default {clips})")
    g.add_argument("--min-seconds", type=float, default=min_s, help=f"shortest clip (default {min_s})")
    g.add_argument("--max-seconds", type=float, default=max_s, help=f"longest clip (default {max_s})")
    g.add_argument("--seed", type=int, default=0, help="seed of clip content and lengths (default 0)")
    g.add_argument("--work-dir", type=Path, default=None,
                   help="keep inputs/outputs here (e.g. benchmarks/out/<name>); default: a temp folder "
                        "that is removed at exit. Existing clips with the same options are reused.")


@contextlib.contextmanager
def work_dir(arg: Path | None, name: str) -> Iterator[Path]:
    if arg is not None:
        arg.mkdir(parents=True, exist_ok=True)
        yield arg
        return
    with tempfile.TemporaryDirectory(prefix=f"coordtok-bench-{name}-") as d:
        yield Path(d)


def make_clips(root: Path, n: int, min_seconds: float, max_seconds: float, seed: int = 0,
               verbose: bool = True) -> list[Clip]:
    """Render and encode `n` clips under root/clips (reusing files already there)."""
    rng = np.random.default_rng((seed, 12345))
    out_dir = root / f"clips_s{seed}_{min_seconds:g}-{max_seconds:g}s"
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        family = MOTION_FAMILIES[i % len(MOTION_FAMILIES)]
        n_frames = max(1, int(round(rng.uniform(min_seconds, max_seconds) * FPS)))
        path = out_dir / f"v_{family}_c{i:03d}_{n_frames}f.avi"
        if not path.exists():
            frames = render_clip(family, (seed, i), n_frames, height=HEIGHT, width=WIDTH)
            encode_avi(path, frames, fps=FPS)
        out.append(Clip(path, family, n_frames))
    if verbose:
        total = sum(c.n_frames for c in out)
        print(f"# inputs: {n} clips, {total} frames ({total / FPS:.1f} s of video), "
              f"{sum(c.path.stat().st_size for c in out) / 1e6:.2f} MB in {out_dir} "
              f"(ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """Plain-text table; floats are printed with 3 significant-ish digits."""
    def fmt(v) -> str:
        if isinstance(v, float):
            if v == 0:
                return "0"
            a = abs(v)
            return f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def print_json(name: str, payload: dict) -> None:
    print(json.dumps({"benchmark": name, **payload}, sort_keys=True, default=float))


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"# machine: {os.cpu_count()} CPUs, load average {load:.2f} (timings are noisy on a shared machine)"
