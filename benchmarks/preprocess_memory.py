"""Peak memory of preprocessing ONE long video: streaming (ours) vs decode-everything-then-write (naive).

Input: a long 640x360 UCF-style AVI (MPEG-4 Part 2, XVID, 25 fps) made by tests/media_factory.long_video,
20 minutes by default (30,000 frames), plus shorter ones (--minutes).
Ours:  pipelines.preprocess.process_video, the stage's own per-video function: VideoStream yields one
       frame at a time into a FrameWriter that holds one chunk (preprocess.chunk_frames frames) and
       appends it, compressed, to a spool file; the store file appears on close.
Naive: components.data.video.decode_video (every frame in one array) + components.data.store.write_frames,
       the same bytes out, the way the stage worked before streaming.
Each run happens in a fresh child process that first preprocesses a 2-second clip (so one-time codec,
scaler and zstd allocations are not counted), then reports its peak RSS growth over its RSS just before
the call: /proc/self/statm sampled every 2 ms by a thread (ru_maxrss growth as a cross-check), in MB
and in chunks' worth (chunk_frames x img x img x 3 bytes; 768 KiB at img_size 128, chunk_frames 16).
Naive runs only up to --naive-max-minutes (its memory grows with the length; longer ones are skipped).
Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

FPS = 25


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, path: str, warmup: str, img_size: int) -> dict:
    """Runs in the child: warm up on `warmup`, then preprocess `path` while sampling RSS."""
    from components.config import load_params
    from components.data.store import write_frames
    from components.data.ucf101 import SplitEntry
    from components.data.video import decode_video
    from pipelines.preprocess import process_video

    params = load_params(REPO / "params.yaml")
    data = params.data.model_copy(update={"img_size": img_size, "fps": None})
    cfg = params.preprocess
    out = Path(tempfile.mkdtemp(prefix="preprocess-memory-"))

    def run(video: str) -> int:
        entry = SplitEntry(rel_path=Path(video).name, video_id=Path(video).stem, class_name="Long", label=0,
                           split="train", listed_in="bench")
        if mode == "streaming":
            result = process_video(entry, str(Path(video).parent), str(out), data, cfg)
            assert result["ok"], result
            return result["n_frames"]
        v = decode_video(video, img_size, threads=cfg.decoder_threads)
        write_frames(out / f"{entry.video_id}.frames", v.frames, v.fps, chunk_frames=cfg.chunk_frames,
                     codec=cfg.compression, level=cfg.compression_level, temporal_delta=cfg.temporal_delta)
        return len(v.frames)

    run(warmup)
    base, base_max = _rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.process_time()
    frames = run(path)
    cpu = time.process_time() - started
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"frames": frames, "growth_mb": (peak[0] - base) / 2**20,
            "maxrss_growth_mb": max(0, maxrss - base_max) / 2**20, "cpu_seconds": cpu,
            "chunk_mb": cfg.chunk_frames * img_size * img_size * 3 / 2**20}


def measure(mode: str, path: Path, warmup: Path, img_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(warmup), str(img_size)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} {path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0, 20.0])
    ap.add_argument("--naive-max-minutes", type=float, default=2.0)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the generated videos here (reused)")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "WARMUP", "IMG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, path, warmup, img = args.child
        print(json.dumps(child(mode, path, warmup, int(img))))
        return

    import media_factory as mf

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="preprocess-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    warmup = work / "warmup.avi"
    if not warmup.exists():
        mf.long_video(warmup, 2 * FPS)
    print(f"img_size {args.img_size}, source 640x360 MPEG-4 Part 2 AVI at {FPS} fps; peak RSS growth of one "
          "child process over its RSS before the call (CPU-seconds of the call alongside; the machine is shared)")
    print(f"{'minutes':>8} {'frames':>7} {'mode':>9} {'growth MB':>10} {'chunks':>7} {'maxrss MB':>10} {'CPU s':>7}")
    figures = {}
    for minutes in sorted(args.minutes):
        n = int(round(minutes * 60 * FPS))
        path = work / f"long_{n}.avi"
        if not path.exists():
            started = time.perf_counter()
            mf.long_video(path, n)
            print(f"  (generated {path.name}: {n} frames, {path.stat().st_size / 1e6:.0f} MB, "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
        modes = ["streaming"] + (["naive"] if minutes <= args.naive_max_minutes else [])
        for mode in modes:
            r = measure(mode, path, warmup, args.img_size)
            figures[f"{mode}_{minutes:g}min_growth_mb"] = round(r["growth_mb"], 2)
            print(f"{minutes:8.1f} {r['frames']:7d} {mode:>9} {r['growth_mb']:10.1f} "
                  f"{r['growth_mb'] / r['chunk_mb']:7.1f} {r['maxrss_growth_mb']:10.1f} {r['cpu_seconds']:7.1f}",
                  flush=True)
        if minutes > args.naive_max_minutes:
            raw = n * args.img_size ** 2 * 3 / 2**20
            print(f"{minutes:8.1f} {n:7d} {'naive':>9} {'skipped':>10}   (its frame array alone: {raw:,.0f} MB)")
    print(json.dumps({"benchmark": "preprocess_memory", "img_size": args.img_size, **figures}))


if __name__ == "__main__":
    main()
