"""Training-sample throughput on one core: our frame store vs the released CoordTok data path.

A sample = a random 128-frame window at 128x128 plus 1,024 random 1x8x8 patches with normalised
(t, x, y) coordinates (CoordTok's training input).

Ours:      every video is preprocessed ONCE (decode_video at 128 + write_frames, default store
           settings; this one-off cost is printed but not part of the per-sample figure), then per
           sample: read_clip(FrameFile, 128, rng) + sample_patches(clip, 1024, rng, 1, 8).
           FrameFile objects stay open across samples, as a dataset would keep them.
Baseline:  re-implemented here after the released code (tools/datasets.py: VideoTimeSplit +
           VideoTimeWrapperPatchMultiGPU + collate_fn): per sample, open the .avi with PyAV
           (one decoder thread) and decode ALL frames, pick a random 128-frame window (pad if
           shorter), convert each window frame through PIL (frame.to_image(), bicubic antialiased
           resize of the shorter side to 128, centre crop, np.asarray -> CHW float tensor / 255, as
           torchvision's ToTensor), stack to [T, H, W, 3] and map to [-1, 1] float32 as the
           collate function does, then gather the patches in a Python loop over the 1,024 patches
           (slice one 8x8 patch and compute its normalised coordinate per iteration).
           The released code decodes with decord and converts only the window's frames; decoding
           every frame with PyAV is the stated equivalent here (decord also decodes from a key
           frame up to the window end).

Both run in this process with torch.set_num_threads(1) (one core). Goal: ours >= 20x baseline.
Prints figures only.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_clip_options, machine_note, make_clips, print_json, table, work_dir  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from components.data.sampling import read_clip, sample_patches  # noqa: E402
from components.data.store import FrameFile, write_frames  # noqa: E402
from components.data.video import decode_video  # noqa: E402

GOAL = 20.0


# ----------------------------------------------------------------------------- baseline

class BaselineSampler:
    """Faithful single-process stand-in for the released CoordTok data path (see module doc)."""

    def __init__(self, files: list[str], num_frames: int, img_size: int, n_patches: int, patch=(1, 8, 8),
                 seed: int = 0):
        self.files, self.num_frames, self.img_size, self.n_patches = files, num_frames, img_size, n_patches
        self.p_t, self.p_x, self.p_y = patch
        self.rand = random.Random(seed)
        torch.manual_seed(seed)
        self.t_decode = self.t_pil = self.t_patch = 0.0

    def _transform(self, frame: av.VideoFrame) -> torch.Tensor:
        img = frame.to_image()  # YUV -> RGB PIL image (decord hands out RGB arrays)
        w, h = img.size
        s = self.img_size  # torchvision Resize(int): shorter side -> s, longer side truncated
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = img.resize((nw, nh), Image.BICUBIC)  # PIL's resize is antialiased when shrinking
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))  # torchvision CenterCrop
        img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor

    def video(self, path: str) -> tuple[torch.Tensor, int]:
        t0 = time.perf_counter()
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "SLICE", 1  # VideoReader(num_threads=1)
            frames = list(container.decode(stream))
        t1 = time.perf_counter()
        n = len(frames)
        if n >= self.num_frames:
            begin, length = self.rand.randint(0, n - self.num_frames), self.num_frames
        else:
            begin, length = 0, n
        encoded = [self._transform(f) for f in frames[begin:begin + length]]
        for _ in range(self.num_frames - length):
            encoded.append(-1 * torch.ones_like(encoded[-1]))
        out = torch.stack(encoded).permute(0, 2, 3, 1)  # [T, H, W, 3] in [0, 1]
        self.t_decode += t1 - t0
        self.t_pil += time.perf_counter() - t1
        return out, length

    def sample(self):
        path = self.files[self.rand.randrange(len(self.files))]
        video, n_frames = self.video(path)
        tp = time.perf_counter()
        t_size, h, w = self.num_frames // self.p_t, video.shape[1] // self.p_x, video.shape[2] // self.p_y
        n_t = (n_frames - self.p_t) // self.p_t + 1
        rt = torch.randint(0, n_t, (self.n_patches,)).tolist()
        rx = torch.randint(0, h, (self.n_patches,)).tolist()
        ry = torch.randint(0, w, (self.n_patches,)).tolist()
        patches, coords = [], []
        for i in range(self.n_patches):  # per-patch Python loop, as the released code's list comprehension
            t0, x0, y0 = rt[i] * self.p_t, rx[i] * self.p_x, ry[i] * self.p_y
            patches.append(video[t0:t0 + self.p_t, x0:x0 + self.p_x, y0:y0 + self.p_y, :])
            coords.append((rt[i] / max(t_size - 1, 1), rx[i] / (h - 1), ry[i] / (w - 1)))
        gt = torch.stack(patches).reshape(self.n_patches, -1)
        coords_t = torch.tensor(coords, dtype=torch.float32)
        out = video * 2 - 1, coords_t, gt * 2 - 1, n_frames  # collate_fn: videos * 2 - 1, gts * 2 - 1
        self.t_patch += time.perf_counter() - tp
        return out


# ----------------------------------------------------------------------------- ours

class StoreSampler:
    def __init__(self, store_files: list[Path], num_frames: int, n_patches: int, seed: int = 0):
        self.videos = [FrameFile(p) for p in store_files]
        self.num_frames, self.n_patches = num_frames, n_patches
        self.rng = np.random.default_rng(seed)
        self.t_read = self.t_patch = self.t_float = 0.0

    def sample(self, to_float: bool = False):
        v = self.videos[int(self.rng.integers(len(self.videos)))]
        t0 = time.perf_counter()
        clip, n_valid = read_clip(v, self.num_frames, self.rng)
        t1 = time.perf_counter()
        patches, coords, _ = sample_patches(clip, self.n_patches, self.rng, 1, 8, valid_frames=n_valid)
        t2 = time.perf_counter()
        self.t_read += t1 - t0
        self.t_patch += t2 - t1
        if to_float:  # what the baseline returns: float32 clip in [-1, 1]
            clip = torch.from_numpy(clip).float().div_(127.5).sub_(1.0)
            self.t_float += time.perf_counter() - t2
        return clip, coords, patches, n_valid


def rate(fn, n: int, warmup: int = 1) -> tuple[float, float]:
    """(samples/s wall, samples/s CPU) over n calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return n / w, n / c


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=400, help="timed samples of ours (default 400)")
    p.add_argument("--baseline-samples", type=int, default=16, help="timed samples of the baseline (default 16)")
    p.add_argument("--num-frames", type=int, default=128, help="frames per window (default 128)")
    p.add_argument("--img-size", type=int, default=128, help="frame size (default 128)")
    p.add_argument("--patches", type=int, default=1024, help="patches per sample (default 1024)")
    add_clip_options(p, clips=8, min_s=6.0, max_s=8.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(machine_note() + "; torch threads = 1")

    with work_dir(args.work_dir, "sample") as root:
        clips = make_clips(root, args.clips, args.min_seconds, args.max_seconds, args.seed)
        short = [c for c in clips if c.n_frames < args.num_frames]
        if short:
            print(f"# WARNING: {len(short)} clips shorter than {args.num_frames} frames (padded): not a fair test")

        # One-off preprocessing into the store (default settings).
        store = root / f"store_{args.img_size}"
        store.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        store_files, stored_bytes = [], 0
        for c in clips:
            v = decode_video(c.path, args.img_size, threads=1)
            out = store / (c.path.stem + ".frames")
            stored_bytes += write_frames(out, v.frames, v.fps)
            store_files.append(out)
        prep_s = time.perf_counter() - t0
        print(f"# one-off preprocessing: {prep_s:.2f} s for {len(clips)} clips "
              f"({stored_bytes / 1e6:.1f} MB in the store)")

        ours = StoreSampler(store_files, args.num_frames, args.patches, args.seed)
        base = BaselineSampler([str(c.path) for c in clips], args.num_frames, args.img_size, args.patches,
                               seed=args.seed)

        # Interleave halves so that load drift on a shared machine affects both alike.
        o_runs, f_runs, b_runs = [], [], []
        for half in range(2):
            ours.t_read = ours.t_patch = 0.0
            o_runs.append(rate(ours.sample, args.samples // 2) + (ours.t_read, ours.t_patch))
            base.t_decode = base.t_pil = base.t_patch = 0.0
            b_runs.append(rate(base.sample, max(1, args.baseline_samples // 2))
                          + (base.t_decode, base.t_pil, base.t_patch))
            ours.t_float = 0.0
            f_runs.append(rate(lambda: ours.sample(to_float=True), args.samples // 2) + (ours.t_float,))
        o_wall = max(r[0] for r in o_runs)
        o_cpu = max(r[1] for r in o_runs)
        best_o = max(o_runs, key=lambda r: r[0])
        n_half = args.samples // 2
        read_ms, patch_ms = best_o[2] / (n_half + 1) * 1e3, best_o[3] / (n_half + 1) * 1e3
        f_wall = max(r[0] for r in f_runs)
        f_cpu = max(r[1] for r in f_runs)
        float_ms = max(f_runs, key=lambda r: r[0])[2] / (n_half + 1) * 1e3
        b_wall = max(r[0] for r in b_runs)
        b_cpu = max(r[1] for r in b_runs)
        best_b = max(b_runs, key=lambda r: r[0])
        nb = max(1, args.baseline_samples // 2) + 1
        b_dec_ms, b_pil_ms, b_patch_ms = (x / nb * 1e3 for x in best_b[2:5])

        # Cost of opening a FrameFile per sample (if a dataset did not keep them open).
        t0 = time.perf_counter()
        for f in store_files * 10:
            FrameFile(f).close()
        open_ms = (time.perf_counter() - t0) / (len(store_files) * 10) * 1e3

    rows = [
        ["baseline (PyAV decode all + PIL + patch loop)", args.baseline_samples, b_wall, b_cpu, 1.0 / b_wall * 1e3,
         1.0, 1.0],
        ["ours (store read_clip + sample_patches)", args.samples, o_wall, o_cpu, 1.0 / o_wall * 1e3,
         o_wall / b_wall, o_cpu / b_cpu],
        ["ours + clip -> float32 [-1,1] (as baseline output)", args.samples, f_wall, f_cpu,
         1.0 / f_wall * 1e3, f_wall / b_wall, f_cpu / b_cpu],
    ]
    print()
    print(table(["variant", "samples", "samples/s (wall)", "samples/s (CPU)", "ms/sample (wall)", "x baseline (wall)",
                  "x baseline (CPU)"], rows,
                title=f"== {args.num_frames} frames x {args.img_size}^2, {args.patches} patches 1x8x8, one core, "
                      f"best of 2 interleaved halves =="))
    print(f"   ours breakdown per sample: read_clip {read_ms:.2f} ms, sample_patches {patch_ms:.2f} ms"
          f" (+ float conversion {float_ms:.2f} ms; FrameFile open if not kept: {open_ms:.3f} ms)")
    print(f"   baseline breakdown per sample: PyAV decode of all frames {b_dec_ms:.1f} ms, PIL transform + stack "
          f"{b_pil_ms:.1f} ms, patch loop + [-1,1] {b_patch_ms:.1f} ms")
    ratio = o_wall / b_wall
    print(f"   goal ours >= {GOAL:.0f}x baseline: {ratio:.1f}x (with float conversion {f_wall / b_wall:.1f}x) -> "
          f"{'MET' if ratio >= GOAL else 'NOT MET'}")
    print()
    print_json("sample_throughput", {
        "goal_ratio": GOAL, "ratio": ratio, "ratio_with_float": f_wall / b_wall, "goal_met": bool(ratio >= GOAL),
        "ours_samples_per_s": o_wall, "ours_samples_per_s_cpu": o_cpu, "ours_float_samples_per_s": f_wall,
        "baseline_samples_per_s": b_wall, "baseline_samples_per_s_cpu": b_cpu,
        "read_clip_ms": read_ms, "sample_patches_ms": patch_ms, "float_ms": float_ms,
        "baseline_decode_ms": b_dec_ms, "baseline_pil_ms": b_pil_ms, "baseline_patch_ms": b_patch_ms,
        "ratio_cpu": o_cpu / b_cpu, "preprocess_s": prep_s,
        "num_frames": args.num_frames, "img_size": args.img_size, "patches": args.patches, "clips": len(clips),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
