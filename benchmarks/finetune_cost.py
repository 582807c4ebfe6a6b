"""Fine-tuning (frame sampling + LPIPS) versus pretraining (coordinate sampling): step time and memory.

The same model and batch, one training step as the stages run it:
  pretrain:  `--coords` random patches per video, l2 loss (pipelines/pretrain.py);
  finetune:  `--frames` whole frames per video, every patch decoded, l2 + LPIPS(VGG) on the frames
             (pipelines/finetune.py), with the LPIPS forward in chunks of `--lpips-chunk` frames.
Each mode runs in a fresh subprocess so its memory figure is clean: CPU peak RSS growth
(VmHWM after the steps minus VmRSS once model, optimizer, LPIPS and inputs exist, with the peak
mark reset there through /proc/self/clear_refs);
CUDA max_memory_allocated minus what was allocated before the first step. LPIPS weights are
stand-ins (same architecture, random values): cost does not depend on the values.

Example: python benchmarks/finetune_cost.py            (embedded default geometry, CPU)
         python benchmarks/finetune_cost.py --img-size 128 --num-frames 128 --frames 16 --coords 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, table  # noqa: E402

import torch  # noqa: E402

CHILD_TAG = "CHILD_RESULT "


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak-RSS mark (Linux: '5' > /proc/self/clear_refs) so set-up transients (loading
    weights) do not hide the steps' own peak; returns the current RSS in bytes."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def child(args: argparse.Namespace) -> dict:
    from components.metrics.lpips import LPIPS
    from components.tokenizer.finetuning import FrameSamplingModel, frame_loss_backward, group_frames, valid_frame_mask
    from components.tokenizer.model import CoordTok, grid_coords, patchify
    from components.tokenizer.presets import TOKENIZER_PRESETS
    from components.weights import write_standins

    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    arch = TOKENIZER_PRESETS[args.preset]
    model = CoordTok(arch, args.img_size, args.num_frames).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = args.batch
    video = torch.rand(b, args.num_frames, args.img_size, args.img_size, 3, device=dev) * 2 - 1
    n_frames = torch.full((b,), args.num_frames, device=dev)
    pt = arch.dec_patch_size_t
    if args.mode == "finetune":
        wdir = Path(tempfile.mkdtemp())
        write_standins(wdir, ["vgg16", "lpips_vgg"])
        lp = LPIPS("vgg", wdir, allow_download=False, chunk=args.lpips_chunk[0]).to(dev)
        fs = FrameSamplingModel(model)
        g = args.frames // pt
        starts = torch.stack([torch.randperm(model.grid[0], device=dev)[:g].sort().values for _ in range(b)])

        def step() -> None:  # as pipelines/finetune.py: LPIPS backpropagated chunk by chunk
            pred = fs(video, n_frames, starts, 1)
            target = group_frames(video, starts, 1, pt)
            frame_loss_backward(pred, target, valid_frame_mask(starts, n_frames, 1, pt), lp, 1.0,
                                args.lpips_chunk[0])
    else:
        allc = grid_coords(model.grid, device=dev)
        idx = torch.stack([torch.randperm(len(allc), device=dev)[:args.coords] for _ in range(b)])
        coords = allc[idx]
        target = patchify(video, *model.patch_size).reshape(b, -1, pt * arch.dec_patch_size_xy ** 2 * 3)
        target = torch.gather(target, 1, idx[..., None].expand(-1, -1, target.shape[-1]))

        def step() -> None:
            loss = torch.nn.functional.mse_loss(model(video, coords, n_frames), target)
            loss.backward()

    def full_step() -> None:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _reset_peak_rss()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        full_step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status_kb("VmHWM") * 1024) - base
    decoded = (args.frames // pt) * model.grid[1] * model.grid[2] if args.mode == "finetune" else args.coords
    return {"mode": args.mode, "ms_per_step": 1000 * statistics.median(times), "peak_mb": peak / 2**20,
            "decoded_patches_per_video": decoded, "device": str(dev)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="CoordTok-tiny")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--coords", type=int, default=256, help="pretrain: sampled patches per video (default: 1/8)")
    p.add_argument("--frames", type=int, default=4, help="finetune: whole frames per video")
    p.add_argument("--lpips-chunk", type=int, nargs="+", default=[32, 4], help="finetune LPIPS chunk sizes to run")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["pretrain", "finetune"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(CHILD_TAG + json.dumps(child(args)), flush=True)
        return
    print(machine_note())
    print(f"{args.preset} at {args.num_frames}x{args.img_size}x{args.img_size}, batch {args.batch}, "
          f"threads {args.threads}, median of {args.steps} steps")
    rows = []
    runs = [("pretrain", None)] + [("finetune", c) for c in args.lpips_chunk]
    for mode, chunk in runs:
        cmd = [sys.executable, __file__, "--mode", mode] + [
            a for k, v in vars(args).items() if k not in ("mode", "lpips_chunk") and v is not None
            for a in (f"--{k.replace('_', '-')}", str(v))]
        if chunk is not None:
            cmd += ["--lpips-chunk", str(chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith(CHILD_TAG))[len(CHILD_TAG):])
        res["lpips_chunk"] = chunk
        rows.append(res)
    ref = rows[0]
    print(table(["mode", "LPIPS chunk", "decoded patches/video", "ms/step", "peak MB", "time x pretrain", "memory x pretrain"],
          [[r["mode"], r["lpips_chunk"] or "-", r["decoded_patches_per_video"], f"{r['ms_per_step']:.0f}",
            f"{r['peak_mb']:.0f}", f"{r['ms_per_step'] / ref['ms_per_step']:.2f}",
            f"{r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}"] for r in rows]))


if __name__ == "__main__":
    main()
