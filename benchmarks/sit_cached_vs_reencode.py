"""SiT training steps/s: cached latents (this project) vs re-encoding every clip at every step (released code).

Same config on both sides: the embedded default (params.yaml: tokenizer CoordTok-tiny at
data.img_size x data.num_frames, train_sit preset and batch size), one process, one core
(torch.set_num_threads(1)), fp32, random-init weights (a trained tokenizer costs the same).

Cached:     rows -> latents/ store read (float16 memmap) -> normalise -> transport loss -> backward -> AdamW.
Re-encode:  rows -> read the clips from the frame store -> tokenizer.encode (no grad) -> normalise
            -> the same SiT step. This is what the released training script does at every step.
Each side runs `--steps` steps per pass; passes are interleaved `--repeats` times and the median
per-step time is reported (shared machine). The one-off extraction cost is printed too. Goal: >= 5x.
Prints figures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import pandas as pd
import torch
from _common import REPO, machine_note, median, print_json, table

from components.config import Params, load_params, validate_params


def make_frame_store(folder: Path, n_videos: int, params: Params, seed: int = 0) -> pd.DataFrame:
    """n synthetic videos written to the frame store at data.img_size, and a processed-style index."""
    from components.data.store import write_frames
    from components.data.synthetic import MOTION_FAMILIES, render_clip

    size, frames = params.data.img_size, params.data.num_frames
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(seed)
    for i in range(n_videos):
        family = MOTION_FAMILIES[i % len(MOTION_FAMILIES)]
        n = int(rng.integers(frames, 2 * frames))
        clip = render_clip(family, (seed, i), n, height=size, width=size)
        rel = f"frames/v{i:04d}.frames"
        write_frames(folder / rel, clip, 25.0)
        rows.append({"video_id": f"v{i:04d}", "label": i % len(MOTION_FAMILIES), "split": "train",
                     "frames_path": rel, "n_frames": n})
    return pd.DataFrame(rows)


def default_params(**sections) -> Params:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    for name, values in sections.items():
        raw[name].update(values)
    return validate_params(raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=32, help="videos in the training set (default 32)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed pass (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes per side (default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="default: train_sit.batch_size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--tokenizer-preset", default=None, help="default: tokenizer.preset (e.g. CoordTok-S)")
    p.add_argument("--sit-preset", default=None, help="default: train_sit.preset (e.g. SiT-S/2)")
    p.add_argument("--img-size", type=int, default=None, help="default: data.img_size")
    p.add_argument("--frames", type=int, default=None, help="default: data.num_frames")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from components.data.store import FrameFile
    from components.generator.latent_stats import LatentStats, normalize
    from components.generator.store import LatentStore, LatentWriter, clip_rows
    from components.generator.transport import Transport
    from components.tokenizer.model import CoordTok
    from components.tokenizer.training import to_unit
    from pipelines.train_sit import build_sit

    overrides: dict[str, dict] = {"data": {}, "tokenizer": {}, "train_sit": {}}
    if args.tokenizer_preset:
        overrides["tokenizer"]["preset"] = args.tokenizer_preset
    if args.sit_preset:
        overrides["train_sit"]["preset"] = args.sit_preset
    if args.img_size:
        overrides["data"]["img_size"] = args.img_size
    if args.frames:
        overrides["data"]["num_frames"] = args.frames
    params = default_params(**overrides)
    batch = args.batch_size or params.train_sit.batch_size
    nf = params.data.num_frames
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = make_frame_store(tmp, args.videos, params)
        rows = clip_rows(index, nf, "first")
        torch.manual_seed(0)
        tok = CoordTok(params.tokenizer.arch, params.data.img_size, nf).eval()
        files = {r: FrameFile(tmp / r) for r in rows.frames_path}

        def read_clips(sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            out = np.zeros((len(sel), nf, params.data.img_size, params.data.img_size, 3), np.uint8)
            n_valid = rows.n_valid.to_numpy()[sel]
            for j, r in enumerate(sel):
                out[j, :n_valid[j]] = files[rows.frames_path[r]].read(0, int(n_valid[j]))
            return to_unit(torch.from_numpy(out)), torch.from_numpy(n_valid)

        # One-off extraction (what the extract_latents stage does, here in-process).
        t0 = time.perf_counter()
        planes = []
        with torch.no_grad():
            for s in range(0, len(rows), 8):
                sel = np.arange(s, min(s + 8, len(rows)))
                tri = tok.encode(*read_clips(sel))
                planes.append([x.numpy().astype(np.float16) for x in (tri.xy, tri.yt, tri.xt)])
        shapes = [tuple(x.shape[1:]) for x in planes[0]]
        w = LatentWriter(tmp / "latents", len(rows), shapes)
        stats = LatentStats(shapes[0][0])
        for s, chunk in zip(range(0, len(rows), 8), planes):
            w.write(np.arange(s, s + len(chunk[0])), chunk)
            stats.update([torch.from_numpy(x.astype(np.float32)) for x in chunk])
        w.close(rows, stats, {"num_frames": nf})
        extract_s = time.perf_counter() - t0
        store = LatentStore(tmp / "latents")

        sit = build_sit(params, store)
        opt = torch.optim.AdamW(sit.parameters(), lr=params.train_sit.lr)
        transport = Transport(params.train_sit.path)

        def sit_step(x1) -> None:
            loss = transport.training_losses(sit, normalize(x1, stats))["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def cached(sel):
            sit_step(store.planes(sel))

        def reencode(sel):
            with torch.no_grad():
                tri = tok.encode(*read_clips(sel))
            sit_step((tri.xy, tri.yt, tri.xt))

        rng = np.random.default_rng(0)
        sides = {"cached latents": cached, "re-encode each step": reencode}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for fn in sides.values():  # warm-up
            fn(rng.integers(0, len(rows), batch))
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn(rng.integers(0, len(rows), batch))
                times[name].append((time.perf_counter() - t0) / args.steps)
        per_step = {k: median(v) for k, v in times.items()}
        speedup = per_step["re-encode each step"] / per_step["cached latents"]
        print(machine_note())
        print(table(["side", "s/step (median)", "steps/s"],
                    [[k, v, 1.0 / v] for k, v in per_step.items()],
                    title=f"SiT {params.train_sit.preset}, batch {batch}, tokenizer {params.tokenizer.preset} "
                          f"{params.data.img_size}px x {nf} frames, {args.threads} thread(s)"))
        print(f"speed-up of cached latents: {speedup:.1f}x (goal >= 5x); one-off extraction of "
              f"{len(rows)} clips: {extract_s:.1f} s")
        print_json("sit_cached_vs_reencode", {"cached_steps_per_s": 1 / per_step["cached latents"],
                                              "reencode_steps_per_s": 1 / per_step["re-encode each step"],
                                              "speedup": speedup, "extract_seconds": extract_s, "batch": batch,
                                              "threads": args.threads})


if __name__ == "__main__":
    main()
