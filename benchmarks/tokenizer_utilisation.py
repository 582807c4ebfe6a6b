"""Achieved FLOP/s of a CoordTok training step as a fraction of this machine's measured matmul peak.

Peak: the best time of a large square matmul (default 2048^3, 5 reps) in fp32 and in bf16 with the
same torch thread count as the step (default 2); FLOPs 2*n^3.
Step: one pretrain step as pipelines/pretrain.py runs it (forward + l2 + backward + grad-norm clip +
AdamW), in fp32 and under bf16 autocast; its FLOPs (forward + backward) are counted once with
torch.utils.flop_counter.FlopCounterMode. FlopCounterMode has no formula for the CPU fused attention
kernels (aten::_scaled_dot_product_flash_attention_for_cpu[_backward]): it would count 0 for them, so
this script registers the standard SDPA formulas for them (4*N*M*d forward, 2.5x that backward).
Achieved = step FLOPs / median step wall time (the time includes the optimizer, which does no counted
FLOPs). Fraction = achieved / peak of the same dtype. Goal: >= 40% of peak.
Peak and steps are measured in interleaved rounds (default 2) and the best of each is kept, so load
from other processes hits both alike.

Model (default): CoordTok-S geometry at its own width 384 and 6 heads, 2 layers per stack (ViT,
triplane cross/self blocks, decoder), img 128, T=32 frames, batch 2, 1,024 sampled coordinates per
video: matmuls of width 384 (MLP 1,536) over 512 video tokens (batch 2) and 2 x 1,024 decoder tokens.

If a fraction is below the goal (or with `--profile always`) one step is profiled with torch.profiler:
time per phase (forward / backward / optimizer) and the top operators by self CPU time.
Prints figures only.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, table  # noqa: E402
from tokenizer_cost import (  # noqa: E402
    add_model_options, amp_dtype, describe_arch, device_note, make_optimizer, pick_device, random_coords, resolve_arch,
    synthetic_batch, train_step,
)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from components.tokenizer.model import CoordTok  # noqa: E402

GOAL = 0.40
aten = torch.ops.aten


def _cpu_sdpa_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_bwd,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, dtype: torch.dtype, reps: int, device: torch.device) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype`."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


class Setup:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)
        self.arch = resolve_arch(args, device)
        self.model = CoordTok(self.arch, args.img_size, args.frames).to(device).train()
        self.opt = make_optimizer(self.model)
        b, m = args.batch, self.model
        self.video = synthetic_batch(m, b).to(device)
        self.coords = random_coords(m, b, args.coords).to(device)
        pt, p = m.patch_size
        self.target = torch.rand(b, args.coords, pt * p * p * 3).mul(2).sub(1).to(device)
        self.n_frames = torch.full((b,), args.frames, dtype=torch.long, device=device)
        self.device = device

    def step(self, amp: torch.dtype | None) -> None:
        train_step(self.model, self.opt, self.video, self.coords, self.target, self.n_frames, amp)
        sync(self.device)

    def time_steps(self, amp: torch.dtype | None, n: int) -> float:
        self.step(amp)  # warm-up (also re-warms autocast caches / allocator after the other dtype)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.step(amp)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def count_flops(self, amp: torch.dtype | None) -> tuple[int, dict[str, int]]:
        mapping = CPU_ATTENTION_FLOPS if self.device.type == "cpu" else {}
        with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            self.step(amp)
        by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
        return int(fc.get_total_flops()), by_op


def profile_step(s: Setup, amp: torch.dtype | None, top: int) -> tuple[dict[str, float], list[list]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    s.step(amp)
    with profile(activities=acts) as prof:
        s.step(amp)
    ev = prof.key_averages()
    # CPU: self CPU time; CUDA: self device (kernel) time, the phases stay host-side wall time
    attr = "self_device_time_total" if s.device.type == "cuda" else "self_cpu_time_total"
    phases = {e.key.split("/")[1]: e.cpu_time_total / 1e3 for e in ev if e.key.startswith("step/")}
    ops = [e for e in ev if not e.key.startswith("step/") and e.key.startswith("aten::")]
    total_self = sum(getattr(e, attr) for e in ops) / 1e3 or 1.0
    rows = []
    for e in sorted(ops, key=lambda e: getattr(e, attr), reverse=True)[:top]:
        ms = getattr(e, attr) / 1e3
        rows.append([e.key, e.count, ms, f"{100 * ms / total_self:.1f}%"])
    return phases, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=32, help="video length T (default 32)")
    p.add_argument("--coords", type=int, default=1024, help="sampled coordinates per video (default 1024)")
    p.add_argument("--batch", type=int, default=2, help="videos per step (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per dtype per round (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved peak/step rounds; best kept (default 2)")
    p.add_argument("--peak-size", type=int, default=2048, help="square matmul size for the peak (default 2048)")
    p.add_argument("--peak-reps", type=int, default=5, help="matmul repetitions per round (default 5)")
    p.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="precisions to measure (default fp32 bf16)")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="profile a step: auto = when below the goal (default auto)")
    p.add_argument("--top", type=int, default=12, help="operators listed by the profile (default 12)")
    add_model_options(p, width=0, heads=0, depth=2, precision=None, threads=2)
    args = p.parse_args()

    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    s = Setup(args, device)
    n_params = sum(q.numel() for q in s.model.parameters())
    print(device_note(device, args.threads))
    print(f"# model: {describe_arch(args.preset, s.arch)}; {n_params / 1e6:.1f} M parameters")
    print(f"# step: forward + l2 + backward + clip_grad_norm + AdamW; img {args.img_size}, T={args.frames}, "
          f"batch {args.batch}, {args.coords} coords/video ({math.prod(s.model.enc_grid)} video tokens/video); "
          f"peak: {args.peak_size}^3 matmul", flush=True)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    flops, by_op = {}, {}
    for name in args.dtypes:
        flops[name], by_op[name] = s.count_flops(amp_dtype(name))
    peak = {n: 0.0 for n in args.dtypes}
    step_s = {n: float("inf") for n in args.dtypes}
    for r in range(args.rounds):
        for name in args.dtypes:
            peak[name] = max(peak[name], matmul_peak(args.peak_size, dtypes[name], args.peak_reps, device))
            step_s[name] = min(step_s[name], s.time_steps(amp_dtype(name), args.steps))
            print(f"#   round {r + 1} {name}: peak {peak[name] / 1e9:.1f} GFLOP/s, step {step_s[name] * 1e3:.0f} ms "
                  f"(best so far)", flush=True)

    rows, out = [], {}
    for name in args.dtypes:
        achieved = flops[name] / step_s[name]
        frac = achieved / peak[name]
        attn = sum(v for k, v in by_op[name].items() if "attention" in k)
        conv = sum(v for k, v in by_op[name].items() if "conv" in k)
        out[name] = {"step_gflop": flops[name] / 1e9, "attention_gflop": attn / 1e9, "conv_gflop": conv / 1e9,
                     "step_ms": step_s[name] * 1e3, "achieved_gflops": achieved / 1e9,
                     "peak_gflops": peak[name] / 1e9, "fraction": frac, "goal_met": bool(frac >= GOAL)}
        rows.append([name if name == "fp32" else "bf16 autocast", flops[name] / 1e9, attn / 1e9, step_s[name] * 1e3,
                     achieved / 1e9, peak[name] / 1e9, f"{100 * frac:.1f}%"])
    print()
    print(table(["precision", "step GFLOP (fwd+bwd)", "of which attention", "step ms", "achieved GFLOP/s",
                 "matmul peak GFLOP/s", "fraction of peak"], rows,
                title=f"== training-step utilisation: {args.preset}-geometry width {s.arch.enc_embed_dim}, "
                      f"T={args.frames}, batch {args.batch}, {args.coords} coords, {device} =="))
    for name in args.dtypes:
        o = out[name]
        print(f"   goal >= {GOAL:.0%} of {name} peak: {o['fraction']:.1%} -> {'MET' if o['goal_met'] else 'NOT MET'}")
    if "fp32" in out and "bf16" in out:
        print(f"   bf16 step / fp32 step time: {out['bf16']['step_ms'] / out['fp32']['step_ms']:.2f}x; "
              f"bf16 / fp32 matmul peak: {out['bf16']['peak_gflops'] / out['fp32']['peak_gflops']:.2f}x")

    profiles = {}
    for name in args.dtypes:
        if args.profile == "always" or (args.profile == "auto" and not out[name]["goal_met"]):
            phases, top = profile_step(s, amp_dtype(name), args.top)
            total = sum(phases.values())
            print()
            print(f"-- profile of one {name} step: " + ", ".join(
                f"{k} {v:.0f} ms ({100 * v / total:.0f}%)" for k, v in phases.items()))
            print(table(["operator", "calls", "self ms", "share of op time"], top,
                        title=f"   top {len(top)} operators by self {'device' if device.type == 'cuda' else 'CPU'} "
                              f"time ({name})"))
            profiles[name] = {"phases_ms": phases, "top_ops": [{"op": r[0], "calls": r[1], "self_ms": r[2]}
                                                               for r in top]}
    print()
    print_json("tokenizer_utilisation", {
        "device": device.type, "threads": args.threads, "preset": args.preset, "width": s.arch.enc_embed_dim,
        "heads": s.arch.enc_num_heads, "depth": s.arch.dec_num_layers, "n_params": n_params,
        "frames": args.frames, "batch": args.batch, "coords": args.coords, "img_size": args.img_size,
        "goal_fraction": GOAL, "results": out, "profiles": profiles,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
