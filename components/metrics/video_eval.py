"""Pure helpers of the evaluate stage: which clips, reconstruction metrics per video and their aggregation,
peak-memory measurement, and the report pieces (sample grid, contact sheet, dynamics scatter, paper table).

Definitions (the paper's reconstruction table; same as components.tokenizer.training.evaluate_reconstruction):
  PSNR   per video over its real (unpadded) frames, then the mean over videos;
  SSIM   per video (mean over its real frames), then the mean over videos;
  LPIPS  per real frame, then the mean over all real frames of all videos;
  rFVD   Fréchet distance of detector features of the real clips vs their reconstructions, where the
         padding frames of short videos (zeros in the real clip) are copied into the reconstruction too,
         so the two sets differ only on real frames.
No Ray, MLflow or DVC here.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from components.metrics.baselines import BASELINES, baseline_psnrs
from components.metrics.image import psnr, ssim
from components.paper import GENERATION, RECONSTRUCTION

# ------------------------------------------------------------------------------------ which clips


def pick_evenly(n_total: int, n: int) -> np.ndarray:
    """Indices of `n` items spread evenly over `n_total` sorted ones (as eval_clips picks test videos)."""
    if n_total <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n_total - 1, num=min(n, n_total)).round().astype(np.int64))


def real_clip_plan(lengths: Sequence[int], count: int, clip_len: int, seed: int) -> list[tuple[int, int]]:
    """(video index, start frame) of `count` real clips of `clip_len` frames: videos drawn from those with at
    least `clip_len` frames (without replacement when there are enough, else with), one uniformly random
    window per draw (StyleGAN-V samples real clips at random offsets). Deterministic in `seed`."""
    lengths = np.asarray(lengths, np.int64)
    eligible = np.flatnonzero(lengths >= clip_len)
    if eligible.size == 0:
        return []
    rng = np.random.default_rng([int(seed), int(clip_len)])
    chosen = rng.choice(eligible, size=count, replace=eligible.size < count)
    return [(int(i), int(rng.integers(0, lengths[i] - clip_len + 1))) for i in chosen]


# ------------------------------------------------------------------------------------ reconstruction


def mask_padding(recon: np.ndarray, real: np.ndarray, valid: Sequence[int]) -> np.ndarray:
    """A copy of `recon` whose frames beyond each video's real length are the real (padding) frames."""
    out = recon.copy()
    for i, n in enumerate(valid):
        out[i, int(n):] = real[i, int(n):]
    return out


@torch.no_grad()
def per_video_recon_metrics(real: np.ndarray, recon: np.ndarray, valid: Sequence[int], perceptual=None,
                            device: torch.device | str = "cpu",
                            baseline_grid: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per video: psnr, ssim (NaN for frames under 11x11), lpips_sum (sum over its real frames; NaN without
    `perceptual`) and frames (its real frame count). `perceptual`: [N,3,H,W] in [-1,1] pairs -> [N].
    With `baseline_grid` (the same-numbers grid of the tokenizer's triplane) also baseline_<name>: the PSNR
    of each naive baseline of components.metrics.baselines on the same video."""
    out = {k: np.zeros(len(real)) for k in ("psnr", "ssim", "lpips_sum", "frames")}
    if baseline_grid is not None:
        out.update({f"baseline_{k}": v for k, v in baseline_psnrs(real, valid, baseline_grid).items()})
    for i, (r, c, n) in enumerate(zip(recon, real, valid)):
        n = int(n)
        truth = torch.from_numpy(c[:n]).float().div(255)[None]
        pred = torch.from_numpy(r[:n]).float().div(255)[None]
        out["psnr"][i] = psnr(pred, truth).item()
        out["ssim"][i] = ssim(pred, truth).item() if min(truth.shape[2:4]) >= 11 else float("nan")
        out["frames"][i] = n
        if perceptual is None:
            out["lpips_sum"][i] = float("nan")
        else:
            x = torch.from_numpy(r[:n]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            y = torch.from_numpy(c[:n]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            out["lpips_sum"][i] = float(perceptual(x, y).double().sum().cpu())
    return out


def aggregate_recon(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Merge shards of per_video_recon_metrics into the table's numbers (see the module docstring)."""
    cat = {k: np.concatenate([np.asarray(p[k], np.float64) for p in parts]) for k in parts[0]}
    frames = cat["frames"].sum()
    lp = float(cat["lpips_sum"].sum() / frames) if frames and not np.isnan(cat["lpips_sum"]).any() else float("nan")
    ssim_ok = cat["ssim"][~np.isnan(cat["ssim"])]
    out = {"psnr": float(cat["psnr"].mean()), "ssim": float(ssim_ok.mean()) if ssim_ok.size else float("nan"),
           "lpips": lp, "videos": len(cat["psnr"]), "frames": int(frames)}
    out.update({f"baseline_{name}_psnr": float(cat[f"baseline_{name}"].mean())
                for name in BASELINES if f"baseline_{name}" in cat})
    return out


def per_class_table(classes: Sequence[str], per_video: dict[str, np.ndarray]) -> str:
    """Markdown: per class (motion family), videos and the mean PSNR of the model and of each baseline."""
    names = [("psnr", "model")] + [(f"baseline_{b}", b.replace("_", " ")) for b in BASELINES
                                   if f"baseline_{b}" in per_video]
    classes = np.asarray(classes)
    lines = ["| class | videos | " + " | ".join(f"{label} PSNR (dB)" for _, label in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for c in [*sorted(set(classes)), None]:
        pick = np.ones(len(classes), bool) if c is None else classes == c
        cells = " | ".join(f"{float(np.mean(np.asarray(per_video[k])[pick])):.2f}" for k, _ in names)
        lines.append(f"| {'all (mean over videos)' if c is None else c} | {int(pick.sum())} | {cells} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ cost


@dataclass
class PeakMemory:
    """Filled by `measure_peak`: seconds of the block and its peak memory in MiB (see `kind`)."""

    kind: str = ""
    peak_mb: float = float("nan")
    seconds: float = float("nan")
    notes: dict = field(default_factory=dict)


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def measure_peak(device: torch.device | str) -> Iterator[PeakMemory]:
    """Wall time and peak memory of the block, the same way on every run.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (absolute: includes the resident
    model weights, as a GPU memory figure like the paper's 4.5 GB does); kind "cuda_max_allocated".
    CPU: the process's peak resident set during the block minus its resident set at the start (Linux:
    VmHWM is reset through /proc/self/clear_refs, then VmHWM - VmRSS(start); elsewhere the growth of
    resource.getrusage's ru_maxrss, which misses peaks below an earlier high-water mark); kind
    "cpu_peak_rss_delta" or "cpu_maxrss_growth".
    """
    import time

    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        yield result
        torch.cuda.synchronize(device)
        result.seconds = time.perf_counter() - start
        result.kind, result.peak_mb = "cuda_max_allocated", torch.cuda.max_memory_allocated(device) / 2**20
        return
    rss0 = _status_kib("VmRSS")
    reset = False
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    if not reset or rss0 is None:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    yield result
    result.seconds = time.perf_counter() - start
    if reset and rss0 is not None:
        hwm = _status_kib("VmHWM") or rss0
        result.kind, result.peak_mb = "cpu_peak_rss_delta", max(0, hwm - rss0) / 1024
        result.notes["peak_rss_mb"] = hwm / 1024  # absolute, includes the interpreter, Ray and the models
    else:
        import resource

        result.kind = "cpu_maxrss_growth"
        result.peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


# ------------------------------------------------------------------------------------ report pieces


def tile_videos(videos: np.ndarray, cols: int | None = None, gap: int = 2) -> np.ndarray:
    """[N, T, H, W, 3] -> one [T, H', W', 3] video of the N tiled in a grid (white gaps)."""
    n, t, h, w, c = videos.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((t, rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
    for i in range(n):
        y, x = (i // cols) * (h + gap), (i % cols) * (w + gap)
        out[:, y:y + h, x:x + w] = videos[i]
    return out


def contact_sheet(generated: np.ndarray, real: np.ndarray, recon: np.ndarray, frames: int = 8,
                  gap: int = 2, band: int = 6) -> np.ndarray:
    """PNG-ready sheet: one row per generated video, then real/reconstruction row pairs, `frames` evenly spaced
    frames per row; a grey band separates the generated block from the reconstruction block."""
    rows = [v for v in generated] + [v for pair in zip(real, recon) for v in pair]
    t, h, w, c = rows[0].shape
    idx = np.linspace(0, t - 1, num=min(frames, t)).round().astype(int)
    sep = band if len(generated) and len(real) else 0
    height = len(rows) * (h + gap) - gap + sep
    sheet = np.full((height, len(idx) * (w + gap) - gap, c), 255, np.uint8)
    y = 0
    for r, video in enumerate(rows):
        if r == len(generated) and sep:
            sheet[y:y + sep - gap] = 160
            y += sep
        for j, f in enumerate(idx):
            sheet[y:y + h, j * (w + gap):j * (w + gap) + w] = video[f]
        y += h + gap
    return sheet


def scatter_png(x: Sequence[float], y: Sequence[float], title: str, xlabel: str, ylabel: str,
                size: tuple[int, int] = (640, 480)) -> bytes:
    """A scatter plot with axes, ticks, labels and a least-squares line, as PNG bytes (PIL only)."""
    from PIL import Image, ImageDraw

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    w, h = size
    left, right, top, bottom = 70, 40, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def span(v):
        if v.size == 0:
            return 0.0, 1.0
        lo, hi = float(v.min()), float(v.max())
        pad = (hi - lo) * 0.05 or max(abs(lo) * 0.05, 1e-3)
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span(x), span(y)
    px = lambda v: left + (v - x0) / (x1 - x0) * (w - left - right)
    py = lambda v: h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        tx, ty = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        d.line([px(tx), h - bottom, px(tx), h - bottom + 4], fill="black")
        d.text((px(tx) - 3 * len(f"{tx:.3g}"), h - bottom + 6), f"{tx:.3g}", fill="black")
        d.line([left - 4, py(ty), left, py(ty)], fill="black")
        d.text((5, py(ty) - 6), f"{ty:.3g}", fill="black")
    if x.size >= 2 and np.ptp(x) > 0:  # least-squares line, drawn only inside the plot box
        slope, icept = np.polyfit(x, y, 1)
        xs = np.linspace(x0, x1, 400)
        ys = slope * xs + icept
        inside = (ys >= y0) & (ys <= y1)
        for k in range(len(xs) - 1):
            if inside[k] and inside[k + 1]:
                d.line([px(xs[k]), py(ys[k]), px(xs[k + 1]), py(ys[k + 1])], fill=(200, 60, 60), width=2)
    for a, b in zip(x, y):
        d.ellipse([px(a) - 3, py(b) - 3, px(a) + 3, py(b) + 3], fill=(40, 90, 200))
    d.text((left, 12), title, fill="black")
    d.text(((w - len(xlabel) * 6) // 2, h - 18), xlabel, fill="black")
    d.text((5, top - 18), ylabel, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# Rows of the paper (components/paper.py): UCF-101, 128 frames at 128x128.
PAPER_RECON_ROWS = [  # (method, tokens, train frames, PSNR, LPIPS, rFVD)
    (r["method"] + (" (paper)" if r["method"] == "CoordTok" else ""), r["tokens"], r["train_frames"], r["psnr"],
     r["lpips"], r["rfvd"]) for r in RECONSTRUCTION]
PAPER_GEN_ROWS = [  # (method, FVD, seconds per video, GPU memory GB or None); the paper's own row last
    (r["method"] + (" (paper)" if r["method"].startswith("CoordTok") else ""), r["fvd"], r["seconds_per_video"],
     r["memory_gb"]) for r in sorted(GENERATION, key=lambda r: r["method"].startswith("CoordTok"))]


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def paper_table_markdown(m: dict) -> str:
    """reports/evaluate/paper_table.md: this run's numbers (metrics/evaluate.json layout) beside the paper's."""
    rec, gen, dyn = m["reconstruction"], m["generation"], m["dynamics"]
    flag = " **(stand-in weights: not comparable)**" if m["standin_weights"] else ""
    used = m.get("weights") or {}
    said = "; ".join(f"{k.upper()} from {v['assets']}" for k, v in used.items())
    lines = [
        "# This run beside the paper (CoordTok, arXiv 2411.14762)", "",
        (f"Setting of this run: {m['data']['num_frames']} frames at {m['data']['img_size']}x{m['data']['img_size']}, "
        f"tokenizer {m['tokenizer']['preset']} ({m['tokenizer']['tokens']} tokens), detector `{m['detector']}`{flag}. "
        + (f"Weights per metric: {said}. " if said else "")
        + "The paper's rows are UCF-101, 128 frames at 128x128; numbers are comparable only at that setting "
        "with real detector and LPIPS weights."), "",
        f"## Reconstruction (test split, {rec['videos']} videos)", "",
        "| Method | Tokens | Train frames | PSNR | SSIM | LPIPS | rFVD |", "|---|---|---|---|---|---|---|",
    ]
    for name, tokens, frames, p, lp, fvd in PAPER_RECON_ROWS:
        lines.append(f"| {name} | {tokens} | {frames} | {p:.1f} | – | {lp:.3f} | {fvd:.1f} |")
    lines.append(f"| **this run** | {m['tokenizer']['tokens']} | {m['data']['num_frames']} | {_fmt(rec['psnr'], '.1f')} | "
                 f"{_fmt(rec['ssim'], '.3f')} | {_fmt(rec['lpips'], '.3f')} | {_fmt(rec['rfvd'], '.1f')} |")
    fvd_cols = [k for k in ("fvd_clip", "fvd_full") if gen.get(k) is not None]
    heads = [f"FVD-{gen['clip_frames']}" if k == "fvd_clip" else f"FVD-{gen['full_frames']}" for k in fvd_cols]
    lines += ["", (f"## Generation ({gen['videos']} generated vs {gen['real_videos']} real videos, "
              f"{gen['sampler']} {gen['steps']} steps)"), "",
              "| Method | FVD (paper: 128 frames) | " + " | ".join(heads) + " | s / video | memory |",
              "|---|---|" + "---|" * len(heads) + "---|---|"]
    for name, fvd, sec, mem in PAPER_GEN_ROWS:
        lines.append(f"| {name} | {fvd} | " + " | ".join("–" for _ in heads) + f" | {sec} | {_fmt(mem, '.1f')} |")
    mb = gen["single_video_peak_memory_mb"]
    mem = "–" if mb is None else (f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f} MB")
    lines.append("| **this run** | – | " + " | ".join(_fmt(gen[k], ".1f") for k in fvd_cols)
                 + f" | {_fmt(gen['single_video_seconds'], '.2f')} | {mem} ({gen['memory_kind']}) |")
    y = m.get("yardstick")
    if y:
        sz = y["sizes"]
        real = "real" if y["detector_real"] else "STAND-IN"
        lines += ["", f"## FVD yardstick ({y['frames']} frames, each set vs the same {y['reference']}, "
                  f"detector `{y['detector']}` ({real}))", "",
                  "Where this run's FVD sits between real data (floor) and pure noise (ceiling). With small sets the "
                  "floor is far above 0 (FVD's bias) and sets that vary less than real data (blurry, static) can "
                  "score below it; compare sets of the same size.", "",
                  "| Set | Videos | FVD |", "|---|---|---|",
                  f"| real test clips (floor) | {sz['real_test']} | {_fmt(y['fvd_real_test_vs_train'], '.1f')} |",
                  f"| tokenizer reconstructions of them | {sz['recon']} | {_fmt(y['fvd_recon_vs_train'], '.1f')} |",
                  f"| SiT samples | {sz['samples']} | {_fmt(y['fvd_samples_vs_train'], '.1f')} |",
                  f"| uniform noise (ceiling) | {sz['noise']} | {_fmt(y['fvd_noise_vs_train'], '.1f')} |"]
    lines += ["", "## Dynamics vs reconstruction quality", "",
              (f"Pearson r between per-video dynamics (mean absolute frame difference) and reconstruction PSNR: "
              f"this run {_fmt(dyn['pearson_r'], '.3f')} over {dyn['videos']} test videos. Paper: r = 0.617 between "
              "reconstruction quality and dynamics (its exact quality measure and sign convention are not restated "
              "here; compare magnitudes)."), ""]
    return "\n".join(lines)


def write_bytes_report(folder: str | os.PathLike, name: str, data: bytes) -> str:
    """Write a report file atomically; returns its path."""
    from components.io import atomic_write_bytes

    path = os.path.join(folder, name)
    atomic_write_bytes(path, data)
    return path
