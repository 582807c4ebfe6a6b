"""Full-video decode throughput: `reconstruct` vs the released code's per-patch Python assembly loop.

Ours:      components.tokenizer.model.reconstruct(model, planes, group_frames, max_tokens_per_chunk):
           batched decoder calls over attention groups, then one torch.cat + `unpatchify`.
Baseline:  after the released CoordTok `render_video` (tools/utils_coordtok.py): decode chunks of
           coordinates, then write every predicted patch into the output video in a Python loop,
           `video[b, t0[j]:t0[j]+pt, y0[j]:y0[j]+p, x0[j]:x0[j]+p] = pred[j]`, with the patch starts
           held in tensors as there.
Both make EXACTLY the same decoder forward passes: the same groups of `group_frames` decoder time
steps, the same rows, the same chunks of at most `max_tokens_per_chunk` tokens and the same (t, x, y)
coordinates (the script checks that the two videos are bit-identical). The difference is the
assembly. `model.decode` is wrapped with a timer, so each side's time splits into decoder forward
(inside model.decode) and assembly (everything else: coordinates, plane indexing, writing the video).

Default: CoordTok-tiny preset (width 128, 2 decoder layers, 4 heads) at 128x128, T=32 frames,
batch 1, group_frames 1 (the pipeline's decode_group_frames), max_tokens_per_chunk 16,384
(reconstruct's default), fp32. The planes come from encoding a random video (untimed).
Frames/s = decoded frames / wall time; best of `--repeats` interleaved runs after one warm-up each.
Goal: ours >= 10x baseline frames/s. Prints figures only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, table  # noqa: E402
from tokenizer_cost import (  # noqa: E402
    add_model_options, amp_dtype, describe_arch, device_note, pick_device, resolve_arch, synthetic_batch,
)

import torch  # noqa: E402

from components.tokenizer.model import CoordTok, Triplane, grid_coords, reconstruct  # noqa: E402

GOAL = 10.0


class DecodeTimer:
    """Wraps model.decode (as an instance attribute, so `reconstruct` calls it too) and sums its wall time."""

    def __init__(self, model: CoordTok):
        self.model, self.inner, self.seconds, self.calls = model, model.decode, 0.0, 0
        self.cuda = next(model.parameters()).device.type == "cuda"

    def __call__(self, planes: Triplane, coords: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inner(planes, coords)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def __enter__(self) -> "DecodeTimer":
        self.model.decode = self
        return self

    def __exit__(self, *exc) -> None:
        del self.model.decode  # back to the class method


@torch.no_grad()
def reconstruct_patch_loop(model: CoordTok, planes: Triplane, group_frames: int = 1,
                           max_tokens_per_chunk: int = 16384) -> torch.Tensor:
    """Baseline: `reconstruct`'s decoder calls, assembled patch by patch in Python (released render_video style)."""
    nt, ny, nx = model.grid
    pt, p = model.patch_size
    b, dev = planes.batch_size, planes.xy.device
    video = torch.zeros(b, nt * pt, ny * p, nx * p, 3, device=dev)
    g = max(1, min(int(group_frames), nt))
    groups = [(s, min(s + g, nt)) for s in range(0, nt, g)]
    by_len: dict[int, list[tuple[int, int]]] = {}
    for s, e in groups:  # groups of equal length share rows, in the order reconstruct batches them
        by_len.setdefault(e - s, []).append((s, e))
    per_frame = ny * nx
    for length, members in by_len.items():
        coords = torch.stack([grid_coords(model.grid, range(s, e), device=dev) for s, e in members])
        coords = coords.repeat(b, 1, 1)  # row r: sample r // len(members), group r % len(members)
        batch_idx = torch.arange(b, device=dev).repeat_interleave(len(members))
        per_chunk = max(1, max_tokens_per_chunk // (length * per_frame))
        k = torch.arange(length * per_frame, device=dev)
        dt, y_starts, x_starts = (k // per_frame) * pt, (k // nx) % ny * p, k % nx * p
        for r in range(0, b * len(members), per_chunk):
            pred = model.decode(planes.index(batch_idx[r:r + per_chunk]), coords[r:r + per_chunk])
            for i in range(pred.shape[0]):
                row = r + i
                bi, (s, _) = row // len(members), members[row % len(members)]
                patches = pred[i].reshape(-1, pt, p, p, 3)
                t_starts = s * pt + dt
                for j in range(patches.shape[0]):  # the released code's per-patch loop
                    video[bi, t_starts[j]:t_starts[j] + pt, y_starts[j]:y_starts[j] + p,
                          x_starts[j]:x_starts[j] + p] = patches[j]
    return video


def timed(fn, model: CoordTok, device: torch.device) -> tuple[torch.Tensor, float, float, int]:
    """(video, total s, decoder-forward s, decoder calls)."""
    with DecodeTimer(model) as timer:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
    return out, total, timer.seconds, timer.calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=32, help="video length T (default 32)")
    p.add_argument("--batch", type=int, default=1, help="videos decoded together (default 1)")
    p.add_argument("--group-frames", type=int, default=1, help="decoder time steps per attention group (default 1)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="max_tokens_per_chunk of both sides (default 16384, reconstruct's default)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each side; best kept (default 3)")
    add_model_options(p, preset="CoordTok-tiny", width=0, heads=0, depth=0, precision="fp32")
    args = p.parse_args()

    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    arch = resolve_arch(args, device)
    torch.manual_seed(0)
    model = CoordTok(arch, args.img_size, args.frames).to(device).eval()
    amp = amp_dtype(args.precision)
    print(device_note(device, args.threads))
    print(f"# model: {describe_arch(args.preset, arch)}")
    nt, ny, nx = model.grid
    n_patches = args.batch * nt * ny * nx
    print(f"# decode: {args.batch} x {args.frames} frames at {args.img_size}x{args.img_size} = {n_patches:,} "
          f"patches, group_frames {args.group_frames}, max_tokens_per_chunk {args.max_tokens}, {args.precision}",
          flush=True)

    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        planes = model.encode(synthetic_batch(model, args.batch).to(device))

        def ours():
            return reconstruct(model, planes, group_frames=args.group_frames, max_tokens_per_chunk=args.max_tokens)

        def base():
            return reconstruct_patch_loop(model, planes, group_frames=args.group_frames,
                                          max_tokens_per_chunk=args.max_tokens)

        v_ours, v_base = timed(ours, model, device)[0], timed(base, model, device)[0]  # warm-up + outputs
        runs = {"ours": [], "base": []}
        for _ in range(args.repeats):
            runs["ours"].append(timed(ours, model, device)[1:])
            runs["base"].append(timed(base, model, device)[1:])

    identical = bool(v_ours.shape == v_base.shape and torch.equal(v_ours, v_base))
    max_diff = float((v_ours.float() - v_base.float()).abs().max()) if v_ours.shape == v_base.shape else float("nan")
    n_frames = args.batch * args.frames
    best = {k: min(v, key=lambda r: r[0]) for k, v in runs.items()}
    res = {}
    for k, (total, fwd, calls) in best.items():
        res[k] = {"fps": n_frames / total, "total_ms": total * 1e3, "forward_ms": fwd * 1e3,
                  "assembly_ms": (total - fwd) * 1e3, "decoder_calls": calls}
    ratio = res["ours"]["fps"] / res["base"]["fps"]
    asm_ratio = res["base"]["assembly_ms"] / res["ours"]["assembly_ms"]
    rows = []
    for k, name in (("base", "baseline: same decoder calls + per-patch Python loop"),
                    ("ours", "ours: reconstruct (cat + unpatchify)")):
        r = res[k]
        rows.append([name, r["decoder_calls"], r["total_ms"], r["fps"], r["forward_ms"], r["assembly_ms"],
                     f"{100 * r['assembly_ms'] / r['total_ms']:.1f}%", f"{r['fps'] / res['base']['fps']:.2f}x"])
    print()
    print(table(["variant", "decoder calls", "total ms", "frames/s", "decoder fwd ms", "assembly ms",
                 "assembly share", "x baseline"], rows,
                title=f"== full-video decode, {args.preset}, {args.batch}x{args.frames}x{args.img_size}^2, "
                      f"group_frames {args.group_frames}, {args.precision}, best of {args.repeats} =="))
    print(f"   identical videos: {identical} (max |diff| {max_diff:.3g})")
    print(f"   assembly alone: {asm_ratio:.0f}x faster ({res['base']['assembly_ms']:.1f} -> "
          f"{res['ours']['assembly_ms']:.2f} ms; {res['base']['assembly_ms'] / n_patches * 1e3:.1f} us "
          f"per patch in the loop)")
    bound = res["base"]["total_ms"] / res["ours"]["forward_ms"]
    print(f"   goal ours >= {GOAL:.0f}x baseline frames/s: {ratio:.2f}x -> {'MET' if ratio >= GOAL else 'NOT MET'}"
          f" (with identical decoder passes the ratio cannot exceed baseline total / decoder forward = {bound:.2f}x)")
    print()
    print_json("tokenizer_decode", {
        "preset": args.preset, "frames": args.frames, "batch": args.batch, "img_size": args.img_size,
        "group_frames": args.group_frames, "max_tokens_per_chunk": args.max_tokens, "precision": args.precision,
        "device": device.type, "threads": args.threads, "identical": identical, "max_abs_diff": max_diff,
        "goal_ratio": GOAL, "ratio": ratio, "goal_met": bool(ratio >= GOAL), "assembly_ratio": asm_ratio,
        "ratio_upper_bound": bound, "ours": res["ours"], "baseline": res["base"],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
