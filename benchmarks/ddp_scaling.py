"""Paper-scale data-parallel scaling of CoordTok-L pretraining on 8 and 64 GPUs, from counted and measured figures.

Counted here (exact for the model in components/tokenizer):
  - FLOPs of one training step per video (forward + backward) at the paper geometry (128 frames of
    128x128, 1,024 sampled 8x8x1 patches), with torch.utils.flop_counter.FlopCounterMode on meta
    tensors (no memory, no compute): attention runs as matmuls there, so it is counted too.
  - Parameters -> gradient all-reduce bytes per step (fp32 gradients; DDP keeps them in the
    parameters' dtype under bf16 autocast); a ring all-reduce moves 2 (N-1)/N of them per GPU.
Measured here (this machine, 1 thread, contended: other processes share the 2 cores):
  - the data path's samples/s per CPU core: ClipSampler.batch (read a 128-frame window from the
    zstd frame store, draw and gather 1,024 patches) on stored 128x128 synthetic videos, as CPU time.
Assumed (labelled in the output): bf16 dense peak 989 TFLOP/s per H100/H200 GPU, 40% of it achieved,
NCCL bus bandwidth 400 GB/s inside an 8-GPU NVLink node and 45 GB/s per GPU across nodes
(400 Gb/s InfiniBand per GPU), gradients all-reduced while the backward pass runs (DDP buckets).
Prints the figures (README "Distributed training" quotes them); asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, print_json, table  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

PEAK_TFLOPS = 989.0          # assumed: H100 SXM / H200 bf16 dense
MFU = 0.40                   # assumed achieved fraction
NVLINK_BUSBW = 400e9         # assumed: bytes/s per GPU inside a node (NCCL bus bandwidth)
IB_BUSBW = 45e9              # assumed: bytes/s per GPU across nodes (400 Gb/s NIC per GPU)
GPUS_PER_NODE = 8


def count_step(preset: str, img: int, frames: int, patches: int) -> tuple[float, int]:
    """(FLOPs of forward + backward per video, parameters) of `preset`, counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    from components.tokenizer.model import CoordTok
    from components.tokenizer.presets import TOKENIZER_PRESETS

    with torch.device("meta"):
        model = CoordTok(TOKENIZER_PRESETS[preset], img, frames)
        video = torch.zeros(1, frames, img, img, 3)
        coords = torch.zeros(1, patches, 3)
        n = torch.full((1,), frames, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        model(video, coords, n).float().pow(2).mean().backward()
    return float(fc.get_total_flops()), sum(p.numel() for p in model.parameters())


def data_path_rate(img: int, frames: int, patches: int, videos: int, samples: int) -> dict[str, float]:
    """ClipSampler samples per CPU-second (and per wall second) on one thread."""
    from components.data.store import write_frames
    from components.data.synthetic import MOTION_FAMILIES, render_clip
    from components.tokenizer.training import ClipSampler

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(videos):
            clip = render_clip(MOTION_FAMILIES[i % len(MOTION_FAMILIES)], i, frames + 32, img, img)
            write_frames(Path(tmp) / f"v{i}.cft", clip, 25.0)
            rows.append({"frames_path": f"v{i}.cft"})
        sampler = ClipSampler(tmp, pd.DataFrame(rows), frames, 1, 8, patches, seed=0)
        sampler.batch(2, step=0)  # warm-up (file handles, allocator)
        cpu, wall = time.process_time(), time.perf_counter()
        for step in range(samples // 4):
            sampler.batch(4, step=step + 1)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = (samples // 4) * 4
    return {"per_cpu_second": n / cpu, "per_wall_second": n / wall}


def scale(gpus: int, flops_per_video: float, params: int, batch: int, samples_per_core: float) -> dict[str, float]:
    grad_bytes = params * 4
    per_gpu_batch = batch / gpus
    compute_s = flops_per_video * per_gpu_batch / (PEAK_TFLOPS * 1e12 * MFU)
    busbw = NVLINK_BUSBW if gpus <= GPUS_PER_NODE else IB_BUSBW
    allreduce_s = 2 * (gpus - 1) / gpus * grad_bytes / busbw
    step_s = max(compute_s, allreduce_s)  # overlapped with the backward pass (DDP buckets)
    return {"gpus": gpus, "videos_per_gpu": per_gpu_batch, "compute_s": compute_s, "allreduce_s": allreduce_s,
            "step_s": step_s, "comm_bound": allreduce_s > compute_s,
            "cores_per_gpu": per_gpu_batch / step_s / samples_per_core,
            "gpu_hours_1M": step_s * 1e6 * gpus / 3600, "days_1M": step_s * 1e6 / 86400}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="CoordTok-L")
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--patches", type=int, default=1024, help="sampled patches per video (paper: 1,024 = 3%%)")
    p.add_argument("--batch", type=int, default=256, help="global batch (paper: 256)")
    p.add_argument("--videos", type=int, default=6, help="stored videos the data path reads from")
    p.add_argument("--samples", type=int, default=64, help="samples timed on the data path")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    print(machine_note())
    flops, params = count_step(args.preset, args.img, args.frames, args.patches)
    rate = data_path_rate(args.img, args.frames, args.patches, args.videos, args.samples)
    rows = [scale(g, flops, params, args.batch, rate["per_cpu_second"]) for g in args.gpus]
    print(f"{args.preset} at {args.frames}x{args.img}x{args.img}, {args.patches} patches/video, global batch {args.batch}")
    print(f"counted:  {flops / 1e12:.2f} TFLOP per video (forward + backward), {flops * args.batch / 1e15:.2f} "
          f"PFLOP per step; {params / 1e6:.0f} M parameters -> {params * 4 / 1e9:.2f} GB of fp32 gradients per all-reduce")
    print(f"measured: data path {rate['per_cpu_second']:.1f} samples per CPU-second "
          f"({rate['per_wall_second']:.1f}/s wall, 1 thread, shared 2-core machine)")
    print(f"assumed:  {PEAK_TFLOPS:g} TFLOP/s bf16 peak x {MFU:.0%}, bus bandwidth {NVLINK_BUSBW / 1e9:g} GB/s "
          f"in a node / {IB_BUSBW / 1e9:g} GB/s per GPU across nodes, all-reduce overlapped with backward")
    print(table(["GPUs", "videos/GPU", "compute s", "all-reduce s", "step s (est.)", "cores/GPU", "GPU-h per 1M steps",
           "days"],
          [[r["gpus"], r["videos_per_gpu"], r["compute_s"], r["allreduce_s"],
            f"{r['step_s']:.3f}{' (comm-bound)' if r['comm_bound'] else ''}", r["cores_per_gpu"], r["gpu_hours_1M"],
            r["days_1M"]] for r in rows]))
    if args.json:
        print_json("ddp_scaling", {"flops_per_video": flops, "params": params, "data_path": rate, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
