"""SiT training steps/s: cached latents (this project) vs re-encoding the clips at every step (released code).

What the released code does per step (huiwon-jang/CoordTok, train_sit.py + tools/datasets.py, read for
this benchmark): its DataLoader over `VideoTimeSplit` (the .avi files, batch = global batch / GPUs,
6 worker processes) opens each video with decord (one thread), picks a random `num_frames` window
(the first `len` frames, padded with -1 frames, when shorter), turns every window frame into a PIL
image, resizes the shorter side to img_size (bicubic), centre-crops and applies ToTensor. The
training loop then maps the batch to [-1, 1] (x*2-1), runs `first_stage_model.encode(x, n_frames)`
under no_grad, normalises the three planes with mean/std computed once at start-up, and takes the
SiT step: transport loss (y = zeros), zero_grad, backward, AdamW step, EMA update. Nothing is cached:
every clip is decoded and encoded again at every step of every epoch.

Sides timed here, all with the same config (the embedded default: params.yaml tokenizer preset at
data.img_size x data.num_frames, train_sit preset and batch size), one process, one core
(torch.set_num_threads(1), one decoder thread), fp32, random-init weights (a trained tokenizer costs
the same). Inputs: `--videos` synthetic UCF-like AVIs (320x240, 25 fps, MPEG-4 Part 2/XVID, made by
benchmarks/_common.py), turned once into this project's frame store (decode_video + write_frames, the
preprocess stage) and, from the store, into cached latents (the extract_latents stage, in-process).

  cached latents:       rows -> latent store read (float16 memmap) -> normalise -> SiT step.
  re-encode from store: rows -> read the clips from the frame store (uint8, already resized) ->
                        tokenizer.encode (no grad) -> normalise -> the same SiT step. No video decoding.
  re-encode from AVI:   the released path. Per video of the batch, `BaselineSampler.video` from
                        benchmarks/sample_throughput.py (our reimplementation of VideoTimeSplit): PyAV
                        decode of the whole AVI, random window, PIL bicubic shorter-side resize + centre
                        crop per frame, float tensor; then x*2-1 -> tokenizer.encode (no grad) ->
                        normalise -> the same SiT step. (decord decodes from a key frame up to the
                        window end; decoding every frame with PyAV is the stated stand-in.)
The SiT step is the same everywhere: transport loss -> backward -> AdamW -> EMA update.

`--source store|avi|both` picks the re-encode side(s) (default both: three rows, with the speed-up of
cached latents over each). The goal line uses the AVI side when it is run, as it is the released path.
Caveat: the released code spreads the decoding over DataLoader workers (6 per GPU) that overlap the
GPU step; one core runs everything in series, so the figures compare the work per step, not the
wall-clock of a multi-core GPU node. Each side runs `--steps` steps per pass; passes are interleaved
`--repeats` times and the median per-step time is reported (shared machine). The one-off preprocess
and extraction costs are printed too. Goal: >= 5x. Prints figures only.
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
from _common import REPO, machine_note, make_clips, median, print_json, table, work_dir

from components.config import Params, load_params, validate_params

GOAL = 5.0
SIDE_CACHED = "cached latents"
SIDE_STORE = "re-encode from store (no decode)"
SIDE_AVI = "re-encode from AVI (released path)"


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


def frame_store_from_avis(folder: Path, avis: list[Path], img_size: int) -> pd.DataFrame:
    """Preprocess each AVI into the frame store (as the preprocess stage does); a processed-style index."""
    from components.data.store import write_frames
    from components.data.video import decode_video

    (folder / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, avi in enumerate(avis):
        v = decode_video(avi, img_size, threads=1)
        rel = f"frames/v{i:04d}.frames"
        write_frames(folder / rel, v.frames, v.fps)
        rows.append({"video_id": f"v{i:04d}", "label": 0, "split": "train", "frames_path": rel,
                     "n_frames": len(v.frames), "avi": str(avi)})
    return pd.DataFrame(rows)


def default_params(**sections) -> Params:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    for name, values in sections.items():
        raw[name].update(values)
    return validate_params(raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["store", "avi", "both"], default="both",
                   help="where the re-encode side gets its clips: the frame store (no video decoding), the "
                        "AVIs as the released code does, or both (default both)")
    p.add_argument("--videos", type=int, default=32, help="videos in the training set (default 32)")
    p.add_argument("--min-seconds", type=float, default=6.0, help="shortest AVI (default 6; UCF-101 mean ~7)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="longest AVI (default 8)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the AVIs here and reuse them (default: a temp folder removed at exit)")
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

    from sample_throughput import BaselineSampler

    from components.data.store import FrameFile
    from components.generator.latent_stats import LatentStats, normalize
    from components.generator.sit import ema_update
    from components.generator.store import LatentStore, LatentWriter, clip_rows
    from components.generator.transport import Transport
    from components.tokenizer.model import CoordTok
    from components.data.pixels import to_unit
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
    nf, size = params.data.num_frames, params.data.img_size
    print(machine_note() + f"; torch threads = {args.threads}", flush=True)
    with work_dir(args.work_dir, "sit") as root, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = make_clips(root, args.videos, args.min_seconds, args.max_seconds)
        short = sum(c.n_frames < nf for c in clips)
        if short:
            print(f"# WARNING: {short} AVIs shorter than {nf} frames (padded)")
        t0 = time.perf_counter()
        index = frame_store_from_avis(tmp, [c.path for c in clips], size)
        preprocess_s = time.perf_counter() - t0
        rows = clip_rows(index, nf, "first")
        avi_of_row = index.set_index("frames_path").loc[rows.frames_path, "avi"].tolist()
        # Built before the tokenizer: its constructor seeds torch, which must not change the weights.
        released = BaselineSampler(avi_of_row, nf, size, n_patches=1, seed=0)
        torch.manual_seed(0)
        tok = CoordTok(params.tokenizer.arch, size, nf).eval()
        files = {r: FrameFile(tmp / r) for r in rows.frames_path}

        def read_clips(sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            out = np.zeros((len(sel), nf, size, size, 3), np.uint8)
            n_valid = rows.n_valid.to_numpy()[sel]
            for j, r in enumerate(sel):
                out[j, :n_valid[j]] = files[rows.frames_path[r]].read(0, int(n_valid[j]))
            return to_unit(torch.from_numpy(out)), torch.from_numpy(n_valid)

        def decode_clips(sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            """The released VideoTimeSplit per video + the training loop's x*2-1."""
            videos, lengths = zip(*(released.video(avi_of_row[r]) for r in sel))
            return torch.stack(videos) * 2 - 1, torch.tensor(lengths)

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
        ema = build_sit(params, store).requires_grad_(False).eval()
        ema_update(ema, sit, 0.0)
        opt = torch.optim.AdamW(sit.parameters(), lr=params.train_sit.lr)
        transport = Transport(params.train_sit.path)
        encode_s = {SIDE_STORE: 0.0, SIDE_AVI: 0.0}
        data_s = {SIDE_STORE: 0.0, SIDE_AVI: 0.0}

        def sit_step(x1) -> None:
            loss = transport.training_losses(sit, normalize(x1, stats))["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, sit, params.train_sit.ema_decay)

        def cached(sel):
            sit_step(store.planes(sel))

        def reencode(name, load):
            def step(sel):
                t0 = time.perf_counter()
                clips_, n_valid = load(sel)
                t1 = time.perf_counter()
                with torch.no_grad():
                    tri = tok.encode(clips_, n_valid)
                data_s[name] += t1 - t0
                encode_s[name] += time.perf_counter() - t1
                sit_step((tri.xy, tri.yt, tri.xt))
            return step

        sides = {SIDE_CACHED: cached}
        if args.source in ("store", "both"):
            sides[SIDE_STORE] = reencode(SIDE_STORE, read_clips)
        if args.source in ("avi", "both"):
            sides[SIDE_AVI] = reencode(SIDE_AVI, decode_clips)
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for fn in sides.values():  # warm-up
            fn(rng.integers(0, len(rows), batch))
        for k in data_s:
            data_s[k] = encode_s[k] = 0.0
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn(rng.integers(0, len(rows), batch))
                times[name].append((time.perf_counter() - t0) / args.steps)
    per_step = {k: median(v) for k, v in times.items()}
    n_timed = args.steps * args.repeats
    speedup = {k: per_step[k] / per_step[SIDE_CACHED] for k in per_step}
    table_rows = []
    for k, v in per_step.items():
        split = "" if k == SIDE_CACHED else f"{data_s[k] / n_timed:.3f} / {encode_s[k] / n_timed:.3f}"
        table_rows.append([k, v, 1.0 / v, split or "-", speedup[k]])
    print(table(["side", "s/step (median)", "steps/s", "clip load / encode s/step (mean)", "cached speed-up"],
                table_rows,
                title=f"SiT {params.train_sit.preset}, batch {batch}, tokenizer {params.tokenizer.preset} "
                      f"{size}px x {nf} frames, {len(rows)} videos, {args.threads} thread(s)"))
    headline = SIDE_AVI if SIDE_AVI in per_step else SIDE_STORE
    print(f"speed-up of cached latents over {headline}: {speedup[headline]:.1f}x (goal >= {GOAL:g}x) -> "
          f"{'MET' if speedup[headline] >= GOAL else 'NOT MET'}")
    print(f"one-off costs: preprocess of {len(clips)} AVIs into the frame store {preprocess_s:.1f} s, "
          f"extraction of {len(rows)} clips {extract_s:.1f} s")
    payload = {"source": args.source, "cached_steps_per_s": 1 / per_step[SIDE_CACHED],
               "speedup": speedup[headline], "goal": GOAL, "goal_met": bool(speedup[headline] >= GOAL),
               "preprocess_seconds": preprocess_s, "extract_seconds": extract_s, "batch": batch,
               "threads": args.threads, "videos": len(rows)}
    if SIDE_STORE in per_step:
        payload.update(reencode_store_steps_per_s=1 / per_step[SIDE_STORE], speedup_store=speedup[SIDE_STORE])
    if SIDE_AVI in per_step:
        payload.update(reencode_avi_steps_per_s=1 / per_step[SIDE_AVI], speedup_avi=speedup[SIDE_AVI])
    print_json("sit_cached_vs_reencode", payload)


if __name__ == "__main__":
    main()
