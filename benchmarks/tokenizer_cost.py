"""CoordTok training-step cost versus video length: coordinate sampling vs decoding every patch.

The paper's claim: with coordinate-based patch reconstruction the training cost hardly grows with the
video length, because the decoder only reconstructs a fixed number of randomly sampled patches per
video (1,024 = 3% of a 128x128x128 video), while a conventional tokenizer decodes every patch.

For each length T (default 16, 32, 64, 128 frames at 128x128) and the SAME model, this measures one
training step (forward + l2 loss + backward + grad-norm clip + AdamW step, as pipelines/pretrain.py
does it, bf16 autocast by default) in two modes:
  sampled: the decoder gets `--coords` random distinct patch coordinates per video (default 1,024);
  full:    the decoder gets ALL T*(H/8)*(W/8) patch coordinates of the video. By default they form one
           attention context per video, exactly what `model(video, coords)` does with them
           (`--full-context frame` makes one context per frame instead, as `reconstruct` decodes).
Every (T, mode) runs in a fresh subprocess, so its memory figure is clean:
  CPU:  peak RSS growth (ru_maxrss after the steps minus ru_maxrss once the model, optimizer and inputs
        exist): activations + gradients + AdamW state + allocator slack;
  CUDA: torch.cuda.max_memory_allocated() minus the memory allocated before the first step.
Full-frame steps above `--full-max-frames` (default 64 on CPU: one bf16 step at T=128 takes minutes
on 2 cores) are NOT run: they are extrapolated, and labelled so, by a quadratic fit in the number of
decoded patches N through the measured full-frame points (self-attention over N tokens is O(N^2));
memory by a linear fit (the fused attention kernels keep O(N) memory).

Model (CPU default): the CoordTok-S / paper geometry (encoder patches 8x16x16, triplane 16x16x32 with
8 channels = 1,280 tokens, latent patches 8x8 / 16x8, decoded patches 1x8x8) scaled down to width 128,
4 heads and 2 layers in each of the three stacks (ViT, triplane cross/self blocks, decoder).
`--width/--heads/--depth 0` keep the preset's own value. On CUDA the defaults are the preset's own
sizes: `--preset CoordTok-L` is the paper configuration.

Timings on a shared machine are noisy; compare the ratios of one run. Prints figures only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, print_json, table  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from components.tokenizer.model import CoordTok, Triplane, grid_coords, patchify  # noqa: E402
from components.tokenizer.presets import TOKENIZER_PRESETS, TokenizerArch  # noqa: E402

CPU_SCALE = {"width": 128, "heads": 4, "depth": 2}  # CPU defaults of --width/--heads/--depth
CHILD_TAG = "CHILD_RESULT "


# ------------------------------------------------------------------------- shared with the other scripts

def add_model_options(p: argparse.ArgumentParser, preset: str = "CoordTok-S", width: int | None = None,
                      heads: int | None = None, depth: int | None = None, img_size: int = 128,
                      precision: str | None = "bf16", threads: int = 1) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=preset, choices=sorted(TOKENIZER_PRESETS),
                   help=f"architecture preset (default {preset})")
    for name, val, what in (("width", width, "encoder and decoder width"), ("heads", heads, "attention heads"),
                            ("depth", depth, "layers of EACH stack: ViT, triplane blocks, decoder")):
        g.add_argument(f"--{name}", type=int, default=val,
                       help=f"{what}; 0 = the preset's own; default: {val if val is not None else CPU_SCALE[name]}"
                            + ("" if val is not None else " on CPU, the preset's own on CUDA"))
    g.add_argument("--img-size", type=int, default=img_size, help=f"frame size (default {img_size})")
    if precision is not None:  # None: the script measures both
        g.add_argument("--precision", choices=["bf16", "fp32"], default=precision,
                       help=f"bf16 autocast (as pretrain's precision: auto on CPU) or plain fp32 (default {precision})")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    g.add_argument("--threads", type=int, default=threads,
                   help=f"torch CPU threads (default {threads}; with other work on a 2-core machine, 2 threads can "
                        f"run 10x slower than 1)")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    return torch.device(name)


def device_note(device: torch.device, threads: int) -> str:
    """The machine line printed at the top of each tokenizer benchmark."""
    where = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", torch threads {threads}"
    return machine_note() + f"; device {device}" + where


def resolve_arch(args: argparse.Namespace, device: torch.device) -> TokenizerArch:
    """The preset with --width/--heads/--depth applied (None: CPU scale-down on CPU, preset on CUDA)."""
    a = TOKENIZER_PRESETS[args.preset]
    over = {}
    for name in ("width", "heads", "depth"):
        v = getattr(args, name)
        if v is None and device.type == "cpu":
            v = CPU_SCALE[name]
        over[name] = v or None  # None or 0: the preset's own
    changes = {}
    if over["width"]:
        changes.update(enc_embed_dim=over["width"], dec_embed_dim=over["width"])
    if over["heads"]:
        changes.update(enc_num_heads=over["heads"], dec_num_heads=over["heads"])
    if over["depth"]:
        changes.update(enc_patch_num_layers=over["depth"], enc_num_layers=over["depth"],
                       dec_num_layers=over["depth"])
    return a.replace(**changes)


def describe_arch(preset: str, a: TokenizerArch) -> str:
    return (f"{preset} geometry, width {a.enc_embed_dim}/{a.dec_embed_dim} (enc/dec), heads {a.enc_num_heads}, "
            f"layers ViT {a.enc_patch_num_layers} + triplane {a.enc_num_layers} + decoder {a.dec_num_layers}, "
            f"enc patch {a.enc_patch_size_t}x{a.enc_patch_size_xy}x{a.enc_patch_size_xy}, triplane "
            f"{a.latent_resolution_xy}x{a.latent_resolution_xy}x{a.latent_resolution_t}x{a.latent_n_features} "
            f"({a.num_tokens} tokens), dec patch {a.dec_patch_size_t}x{a.dec_patch_size_xy}x{a.dec_patch_size_xy}")


def amp_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # As pipelines/pretrain.py (paper lr 1e-4, weight decay 0.001), default implementation choice.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.001, betas=(0.9, 0.95))


def random_coords(model: CoordTok, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """[batch, n, 3] distinct random patch coordinates per video (normalised (t, x, y), as sampling does)."""
    g = torch.Generator().manual_seed(seed)
    all_c = grid_coords(model.grid)
    if n > len(all_c):
        raise ValueError(f"{n} coordinates but the video has only {len(all_c)} patches")
    return torch.stack([all_c[torch.randperm(len(all_c), generator=g)[:n]] for _ in range(batch)])


def synthetic_batch(model: CoordTok, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.num_frames, model.img_size, model.img_size, 3, generator=g) * 2 - 1


def train_step(model: CoordTok, opt: torch.optim.Optimizer, video: torch.Tensor, coords: torch.Tensor,
               target: torch.Tensor, n_frames: torch.Tensor, amp: torch.dtype | None,
               group_rows: int = 1) -> float:
    """One pretrain step. group_rows > 1: coords [B*group_rows, n, 3] are separate attention contexts,
    row r decoding video r // group_rows (the `--full-context frame` layout)."""
    dev = video.device
    with record_function("step/forward"):
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            if group_rows == 1:
                pred = model(video, coords, n_frames)
            else:
                planes: Triplane = model.encode(video, n_frames)
                idx = torch.arange(video.shape[0], device=dev).repeat_interleave(group_rows)
                pred = model.decode(planes.index(idx), coords)
        loss = F.mse_loss(pred.float(), target)
    with record_function("step/backward"):
        loss.backward()
    with record_function("step/optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


# ------------------------------------------------------------------------------------------- child side

def run_child(cfg: dict) -> dict:
    device = torch.device(cfg["device"])
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    arch = TokenizerArch(**cfg["arch"])
    model = CoordTok(arch, cfg["img_size"], cfg["T"]).to(device).train()
    opt = make_optimizer(model)
    b = cfg["batch"]
    video = synthetic_batch(model, b).to(device)
    pt, p = model.patch_size
    patches = patchify(video, pt, p).reshape(b, -1, pt * p * p * 3)  # (t, y, x)-major = grid_coords order
    group_rows = 1
    if cfg["mode"] == "sampled":
        coords = random_coords(model, b, cfg["coords"]).to(device)
        # coords are grid points: recover their flat index to take the matching targets
        nt, ny, nx = model.grid
        ti = (coords[..., 0] * max(nt - 1, 1)).round().long()
        xi = (coords[..., 1] * max(nx - 1, 1)).round().long()
        yi = (coords[..., 2] * max(ny - 1, 1)).round().long()
        flat = (ti * ny + yi) * nx + xi
        target = torch.gather(patches, 1, flat[..., None].expand(-1, -1, patches.shape[-1]))
    else:
        coords = grid_coords(model.grid, device=device)[None].expand(b, -1, -1).contiguous()
        target = patches
        if cfg["full_context"] == "frame":
            group_rows = model.grid[0]
            per = model.grid[1] * model.grid[2]
            coords, target = coords.reshape(b * group_rows, per, 3), target.reshape(b * group_rows, per, -1)
    n_frames = torch.full((b,), cfg["T"], dtype=torch.long, device=device)
    amp = amp_dtype(cfg["precision"])
    n_params = sum(q.numel() for q in model.parameters())

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    def step() -> float:
        t0 = time.perf_counter()
        train_step(model, opt, video, coords, target, n_frames, amp, group_rows)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = [step() for _ in range(cfg["warmup"])]
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < cfg["steps"]:
        times.append(step())
        if time.perf_counter() - t_start > cfg["max_seconds"]:
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_mem
    return {"ms": statistics.median(times) * 1e3, "ms_min": min(times) * 1e3, "steps": len(times),
            "warmup_ms": [w * 1e3 for w in warm], "peak_mb": peak / 2**20, "n_params": n_params,
            "decoded": int(coords.shape[0] * coords.shape[1])}


def spawn(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else '?'}"}


# ------------------------------------------------------------------------------------------ parent side

def polyfit(xs: list[float], ys: list[float], deg: int):
    """Least-squares polynomial of degree <= deg through (xs, ys), as a callable."""

    deg = min(deg, len(xs) - 1)
    c = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), deg)
    if deg == 2 and c[0] < 0:  # noise bent the parabola down: a straight line is the safer extrapolation
        c = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return lambda x: float(np.polyval(c, x))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128],
                   help="video lengths T (default 16 32 64 128)")
    p.add_argument("--coords", type=int, default=1024, help="sampled coordinates per video (default 1024)")
    p.add_argument("--batch", type=int, default=1, help="videos per step (default 1)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop timing a configuration after this many seconds (at least one timed step; default 20)")
    p.add_argument("--full-max-frames", type=int, default=None,
                   help="longest T whose full-frame step is run; longer ones are extrapolated "
                        "(default 64 on CPU, all on CUDA)")
    p.add_argument("--full-context", choices=["video", "frame"], default="video",
                   help="full-frame baseline: one attention context per video (model(video, all_coords); "
                        "default) or one per frame (as reconstruct with group_frames=1)")
    p.add_argument("--no-full", action="store_true", help="sampled mode only")
    add_model_options(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(CHILD_TAG + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0

    device = pick_device(args.device)
    arch = resolve_arch(args, device)
    full_max = args.full_max_frames if args.full_max_frames is not None else (64 if device.type == "cpu" else 10**9)
    print(device_note(device, args.threads))
    print(f"# model: {describe_arch(args.preset, arch)}")
    print(f"# step: forward + l2 + backward + clip_grad_norm + AdamW, {args.precision}, batch {args.batch}, "
          f"img {args.img_size}, median of <= {args.steps} steps after {args.warmup} warm-up; "
          f"fresh process per configuration", flush=True)
    base = {"arch": dataclasses.asdict(arch), "img_size": args.img_size,
            "batch": args.batch, "precision": args.precision, "device": device.type, "threads": args.threads,
            "warmup": args.warmup, "steps": args.steps, "max_seconds": args.max_seconds, "coords": args.coords,
            "full_context": args.full_context}

    grid_xy = (args.img_size // arch.dec_patch_size_xy) ** 2
    results: dict[tuple[int, str], dict] = {}
    for T in args.frames:
        for mode in ("sampled", "full"):
            if mode == "full" and (args.no_full or T > full_max):
                continue
            t0 = time.perf_counter()
            r = spawn({**base, "T": T, "mode": mode})
            results[(T, mode)] = r
            msg = r.get("error") or (f"{r['ms']:.0f} ms/step ({r['steps']} steps), peak +{r['peak_mb']:.0f} MB")
            print(f"#   T={T:4d} {mode:7s}: {msg}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    # Extrapolate the full-frame points that were not run.
    measured = [(T * grid_xy // arch.dec_patch_size_t, results[(T, "full")]) for T in args.frames
                if (T, "full") in results and "error" not in results[(T, "full")]]
    fit_t = fit_m = None
    if len(measured) >= 2:
        fit_t = polyfit([n for n, _ in measured], [r["ms"] for _, r in measured], 2)
        fit_m = polyfit([n for n, _ in measured], [r["peak_mb"] for _, r in measured], 1)
    fit_from = ",".join(str(n // grid_xy) for n, _ in measured)

    rows, out_rows = [], []
    for T in args.frames:
        s = results.get((T, "sampled"), {})
        f = results.get((T, "full"))
        n_all = T * grid_xy // arch.dec_patch_size_t
        extrap = False
        if f is None and not args.no_full and fit_t is not None:
            f = {"ms": fit_t(n_all), "peak_mb": fit_m(n_all)}
            extrap = True
        f = f or {}
        s_ms, s_mb = s.get("ms", float("nan")), s.get("peak_mb", float("nan"))
        f_ms, f_mb = f.get("ms", float("nan")), f.get("peak_mb", float("nan"))
        tag = " (extrap.)" if extrap else ""
        rows.append([str(T), n_all, f"{args.coords} ({100 * args.coords / n_all:.1f}%)", s_ms, s_mb,
                     f"{f_ms:,.0f}{tag}" if f else "-", f"{f_mb:,.0f}{tag}" if f else "-",
                     f"{f_ms / s_ms:.1f}x" if f else "-", f"{f_mb / s_mb:.1f}x" if f and s_mb > 0 else "-"])
        out_rows.append({"T": T, "patches": n_all, "sampled_ms": s_ms, "sampled_peak_mb": s_mb,
                         "full_ms": f_ms if f else None, "full_peak_mb": f_mb if f else None,
                         "full_extrapolated": extrap, "sampled_steps": s.get("steps"),
                         "full_steps": f.get("steps"), "errors": [x.get("error") for x in (s, f) if x.get("error")]})
    print()
    mem_what = "peak GPU MB (alloc)" if device.type == "cuda" else "peak RSS +MB"
    print(table(["T", "patches/video", "sampled coords", "sampled ms/step", f"sampled {mem_what}",
                 "full ms/step", f"full {mem_what}", "full/sampled time", "full/sampled mem"], rows,
                title=f"== training-step cost vs length: {args.coords} sampled coords vs all patches "
                      f"(full context: {args.full_context}), {args.precision}, batch {args.batch}, "
                      f"{args.img_size}x{args.img_size} =="))
    if any(r["full_extrapolated"] for r in out_rows):
        kind = ["", "linear", "quadratic"][min(2, len(measured) - 1)]
        print(f"   (extrap.) = NOT measured: {kind} least-squares fit "
              f"of time and linear fit of memory in the number of decoded "
              f"patches through the measured full-frame points (T = {fit_from}); run with --full-max-frames 128 "
              f"to measure (minutes per step on 2 CPU cores).")
    summary = {}
    first, last = out_rows[0], out_rows[-1]
    if first["T"] != last["T"]:
        summary["sampled_growth"] = last["sampled_ms"] / first["sampled_ms"]
        line = (f"   sampled: T={first['T']} -> {last['T']} ({last['T'] // first['T']}x longer) costs "
                f"{summary['sampled_growth']:.2f}x the time")
        if first["full_ms"] and last["full_ms"]:
            summary["full_growth"] = last["full_ms"] / first["full_ms"]
            line += f"; full: {summary['full_growth']:.1f}x"
        print(line)
    if last["full_ms"]:
        summary.update(ratio_time=last["full_ms"] / last["sampled_ms"],
                       ratio_mem=last["full_peak_mb"] / last["sampled_peak_mb"] if last["sampled_peak_mb"] else None)
        print(f"   full/sampled at T={last['T']}: {summary['ratio_time']:.1f}x time, "
              f"{summary['ratio_mem'] or float('nan'):.1f}x peak memory"
              + (" (full-frame figures extrapolated)" if last["full_extrapolated"] else ""))
    n_params = next((r["n_params"] for r in results.values() if "n_params" in r), None)
    print()
    print_json("tokenizer_cost", {
        "device": device.type, "preset": args.preset, "arch": base["arch"], "n_params": n_params,
        "precision": args.precision, "batch": args.batch, "img_size": args.img_size, "coords": args.coords,
        "full_context": args.full_context, "threads": args.threads, "rows": out_rows, **summary,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
