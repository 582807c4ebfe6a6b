"""Where FVD numbers sit, with the real Kinetics-400 detector, on the processed data of a params file: the
evaluate stage's real sets (test videos picked as it picks them, one random window per training video), FVD
against the real training clips of: real test clips (floor), degraded copies of them (blurred, 4x down-and-up
sampled, frozen on their first frame), uniform noise (ceiling). Every set is computed twice: with StyleGAN-V's
resize (bilinear, half-pixel centres: what the pipeline uses) and with the TF1 FVD code's tf.image.resize_bilinear
(no half-pixel centres), plus the FVD between the two kernels' features of the same real clips.

    PYTHONPATH=. .venv/bin/python benchmarks/fvd_yardstick.py [--params params.yaml] [--frames 16]

Needs `data/processed` (dvc repro preprocess) and the real i3d_kinetics400 asset (python -m pipelines.weights
fetch --assets i3d_kinetics400). CPU cost: about (sets x videos x 2 kernels) I3D passes at 224x224.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--frames", type=int, default=16, help="clip length (evaluate.fvd_clip_frames by default: 16)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from components.config import load_params
    from components.data.store import FrameFile
    from components.metrics.i3d import load_detector
    from components.metrics.video_eval import pick_evenly, real_clip_plan
    from pipelines.evaluate import fvd_of
    from pipelines.preprocess import INDEX_FILE

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    root = Path(args.params).resolve().parent
    processed = root / "data" / "processed"
    index = pd.read_parquet(processed / INDEX_FILE)
    ev, t = params.evaluate, args.frames
    test = index[index.split == "test"].sort_values("video_id").reset_index(drop=True)
    train = index[index.split == "train"].sort_values("video_id").reset_index(drop=True)
    test = test[test.n_frames >= t].reset_index(drop=True)
    test_rows = test.iloc[pick_evenly(len(test), ev.recon_videos)]
    read = lambda df, i, s: FrameFile(processed / df.loc[i, "frames_path"]).read(s, t)
    real_test = np.stack([read(test, i, 0) for i in test_rows.index])  # first frames, as evaluate reconstructs
    real_train = np.stack([read(train, i, s) for i, s in real_clip_plan(train["n_frames"], ev.real_videos, t, ev.seed)])

    def blur(v: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(v).permute(0, 1, 4, 2, 3).reshape(-1, 3, *v.shape[2:4]).float()
        k = torch.tensor([1.0, 4, 6, 4, 1])
        k = (k[:, None] * k[None, :] / 256).expand(3, 1, 5, 5)
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=3)
        return x.round().clamp(0, 255).byte().reshape(*v.shape[:2], 3, *v.shape[2:4]).permute(0, 1, 3, 4, 2).numpy()

    def down_up(v: np.ndarray, f: int = 4) -> np.ndarray:
        x = torch.from_numpy(v).permute(0, 1, 4, 2, 3).reshape(-1, 3, *v.shape[2:4]).float()
        x = F.interpolate(F.avg_pool2d(x, f), size=v.shape[2:4], mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).byte().reshape(*v.shape[:2], 3, *v.shape[2:4]).permute(0, 1, 3, 4, 2).numpy()

    rng = np.random.default_rng([ev.seed, 1])
    sets = {"real test clips (floor)": real_test, "blurred (5x5 binomial)": blur(real_test),
            "4x down + up sampled": down_up(real_test),
            "frozen first frame": np.repeat(real_test[:, :1], t, axis=1),
            "uniform noise (ceiling)": rng.integers(0, 256, real_test.shape, np.uint8)}
    out = {"frames": t, "img_size": params.data.img_size, "test_videos": len(real_test), "train_clips": len(real_train)}
    feats = {}
    for kernel in ("bilinear", "tf1"):
        det = load_detector("kinetics400", "cpu", 4, params.weights.dir, params.weights.allow_download,
                            resize_kernel=kernel)
        if det.standin:
            print("error: i3d_kinetics400 resolved to a stand-in; fetch the real one first.", file=sys.stderr)
            return 2
        start, cpu = time.perf_counter(), time.process_time()
        ref = det.features(real_train).numpy()
        feats[kernel] = {name: det.features(v).numpy() for name, v in sets.items()}
        out[kernel] = {name: fvd_of([f], [ref]) for name, f in feats[kernel].items()}
        out[kernel]["seconds"] = round(time.perf_counter() - start, 1)
        out[kernel]["cpu_seconds"] = round(time.process_time() - cpu, 1)
    out["fvd_bilinear_vs_tf1_same_real_test_clips"] = fvd_of([feats["bilinear"]["real test clips (floor)"]],
                                                             [feats["tf1"]["real test clips (floor)"]])
    print(json.dumps(out, indent=1))
    print(f"FVD-{t} vs {len(real_train)} real training clips ({params.data.img_size}px, {len(real_test)} videos per set):")
    print(f"  {'set':28s} {'bilinear (used)':>16s} {'tf1 resize':>12s}")
    for name in sets:
        print(f"  {name:28s} {out['bilinear'][name]:16.1f} {out['tf1'][name]:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
