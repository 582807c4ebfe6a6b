"""Frame-store footprint: disk bytes per stored video-second, and random-window read time.

For img_size 64 and 128, every clip is decoded once (decode_video) and stored under several store
settings: the default (zstd level 1, chunk 16, temporal delta on) and one-change alternatives
(delta off, chunk 8 / 32, no compression, zstd level 3 / 9). Reported per setting: bytes per
video-second, compression ratio vs raw uint8, encode time per frame (encode_frames, CPU only)
and the median time of FrameFile.read of a random 128-frame window (page cache warm, one core).
The source AVI bytes per second are printed for reference.

Finally an ESTIMATE for real UCF-101 (13,320 clips, ~27 h ~= 97,000 s of video at 25 fps):
store size = bytes/s x 97,000. It is extrapolated from SYNTHETIC content; natural video (camera
noise, texture, motion everywhere) compresses differently, typically worse with temporal delta,
so treat it as an order of magnitude, not a figure to provision disks with. Prints figures only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FPS, add_clip_options, machine_note, make_clips, print_json, table, work_dir  # noqa: E402

import numpy as np  # noqa: E402

from components.data.store import FrameFile, encode_frames  # noqa: E402
from components.data.video import decode_video  # noqa: E402

UCF_SECONDS = 97_000
UCF_CLIPS = 13_320

SETTINGS: dict[str, dict] = {
    "default (zstd 1, chunk 16, delta)": {},
    "delta off": {"temporal_delta": False},
    "chunk 8": {"chunk_frames": 8},
    "chunk 32": {"chunk_frames": 32},
    "compression none": {"codec": "none"},
    "zstd level 3": {"level": 3},
    "zstd level 9": {"level": 9},
}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="img_size values (default 64 128)")
    p.add_argument("--window", type=int, default=128, help="frames per timed read (default 128)")
    p.add_argument("--reads", type=int, default=60, help="timed random-window reads per setting (default 60)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="store settings to measure (default: all)")
    add_clip_options(p, clips=12, min_s=6.0, max_s=8.0)
    args = p.parse_args()
    print(machine_note())
    rng = np.random.default_rng(args.seed)
    results: dict = {}

    with work_dir(args.work_dir, "footprint") as root:
        clips = make_clips(root, args.clips, args.min_seconds, args.max_seconds, args.seed)
        video_s = sum(c.seconds for c in clips)
        avi_bytes = sum(c.path.stat().st_size for c in clips)
        avi_bps = avi_bytes / video_s
        short = sum(c.n_frames < args.window for c in clips)
        if short:
            print(f"# note: {short} clips shorter than the {args.window}-frame window are read whole")

        for size in args.sizes:
            t0 = time.perf_counter()
            decoded = [decode_video(c.path, size, threads=1) for c in clips]
            dec_s = time.perf_counter() - t0
            n_frames = sum(len(v.frames) for v in decoded)
            raw_bps = n_frames * size * size * 3 / video_s
            rows, per_size = [], {}
            opened: dict[str, list[FrameFile]] = {}
            sizes_b: dict[str, int] = {}
            enc_t: dict[str, float] = {}
            for k, name in enumerate(args.settings):
                kw = SETTINGS[name]
                folder = root / f"store_{size}_{k}"
                folder.mkdir(exist_ok=True)
                total, enc_s, files = 0, 0.0, []
                for c, v in zip(clips, decoded):
                    t = time.perf_counter()
                    data = encode_frames(v.frames, v.fps, **kw)
                    enc_s += time.perf_counter() - t
                    f = folder / (c.path.stem + ".frames")
                    f.write_bytes(data)  # same bytes write_frames would write (minus fsync/rename)
                    total += len(data)
                    files.append(FrameFile(f))
                opened[name] = files
                sizes_b[name], enc_t[name] = total, enc_s
            # Random-window reads, interleaved across settings (same windows for every setting) so
            # that load drift on a shared machine hits all alike; one warm-up read per file first.
            for files in opened.values():
                for ff in files:
                    ff.read(0, min(args.window, ff.n_frames))
            times: dict[str, list[float]] = {name: [] for name in opened}
            for _ in range(args.reads):
                j = int(rng.integers(len(clips)))
                n = len(decoded[j].frames)
                w = min(args.window, n)
                start = int(rng.integers(0, n - w + 1))
                for name, files in opened.items():
                    t = time.perf_counter()
                    files[j].read(start, w)
                    times[name].append(time.perf_counter() - t)
            for name, files in opened.items():
                for ff in files:
                    ff.close()
                total, enc_s = sizes_b[name], enc_t[name]
                bps = total / video_s
                read_ms = float(np.median(times[name]) * 1e3)
                rows.append([name, bps / 1e3, raw_bps / bps, enc_s / n_frames * 1e3, read_ms,
                             human(bps * UCF_SECONDS)])
                per_size[name] = {"bytes_per_s": bps, "ratio_vs_raw": raw_bps / bps,
                                  "encode_ms_per_frame": enc_s / n_frames * 1e3, "read_window_ms": read_ms,
                                  "ucf101_estimate_bytes": bps * UCF_SECONDS}
            print()
            print(table(["setting", "KB per video-s", "x smaller than raw", "encode ms/frame",
                         f"read {args.window}-frame window ms", "UCF-101 est."], rows,
                        title=f"== img_size {size}: {len(clips)} clips, {video_s:.1f} s of video, {n_frames} frames "
                              f"(raw uint8 {raw_bps / 1e3:,.0f} KB/s; decode took {dec_s:.1f} s) =="))

            # Per-family spread at the default settings: the estimate depends heavily on content.
            fam: dict[str, list[float]] = {}
            for c, v in zip(clips, decoded):
                fam.setdefault(c.family, [0, 0.0])
                fam[c.family][0] += len(encode_frames(v.frames, v.fps))
                fam[c.family][1] += c.seconds
            fam_bps = {k: b / s for k, (b, s) in fam.items()}
            print("   default setting, KB per video-s by motion family: "
                  + ", ".join(f"{k} {b / 1e3:,.0f}" for k, b in sorted(fam_bps.items(), key=lambda kv: kv[1])))
            results[str(size)] = {"settings": per_size, "raw_bytes_per_s": raw_bps, "family_bytes_per_s": fam_bps}

    print()
    print(f"source AVI (MPEG-4 Part 2 XVID, 320x240, ~800 kb/s as encoded here): {avi_bps / 1e3:,.1f} KB per video-s"
          f" -> x {UCF_SECONDS:,} s = {human(avi_bps * UCF_SECONDS)}")
    print()
    print(f"ESTIMATE for real UCF-101 ({UCF_CLIPS:,} clips, ~27 h = ~{UCF_SECONDS:,} s at {FPS} fps), store at the "
          f"default settings, = (bytes per video-s measured on SYNTHETIC clips) x {UCF_SECONDS:,} s:")
    est_rows = []
    default = next(iter(SETTINGS))
    for size in args.sizes:
        s = results[str(size)]["settings"]
        row = [f"img_size {size}"]
        row.append(human(s[default]["ucf101_estimate_bytes"]) if default in s else "-")
        fam = results[str(size)]["family_bytes_per_s"]
        row.append(f"{human(min(fam.values()) * UCF_SECONDS)} .. {human(max(fam.values()) * UCF_SECONDS)}")
        row.append(human(results[str(size)]["raw_bytes_per_s"] * UCF_SECONDS))
        est_rows.append(row)
    print(table(["", "default store (est.)", "range over families", "raw uint8 (upper bound)"], est_rows))
    print("   CAVEAT: synthetic content (flat shading, exact repeats, no sensor noise) compresses differently "
          "from natural video; natural UCF-101 footage will likely compress worse (closer to the upper families "
          "or beyond). Raw uint8 is the hard upper bound (compression 'none').")
    print()
    print_json("store_footprint", {"ucf101_seconds": UCF_SECONDS, "video_seconds": video_s, "clips": len(clips),
                                   "avi_bytes_per_s": avi_bps, "window": args.window, "sizes": results,
                                   "estimate_from": "synthetic clips"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
