"""Where a trained tokenizer's test PSNR sits among reference reconstructions, per motion class.

Reads the processed test split of a `dvc repro` (default `data/processed`, the embedded default)
and, for the first `data.num_frames` frames of every test video, prints PSNR (dB, averaged over
videos as the pretrain stage does) of:

- the training stages' baselines (components.metrics.baselines): mean colour (3 numbers per video),
  same numbers (box-averaged to a grid holding as many values as the triplane, trilinear back up)
  and temporal mean (every frame replaced by the video's mean frame; 8x the tiny triplane's values);
- mean @ SxS:      the temporal mean frame area-downsampled to SxS and bilinearly upsampled, for S
                   the tokenizer's triplane H' = W' and 2H' (what a static S x S plane could hold);
- each checkpoint: full reconstruction (`reconstruct`, tokenizer.decode_group_frames; null: the
                   checkpoint's own, i.e. the whole video at once for a converted release);
- its control:     the same decoder given the NEXT test video's triplane (how much of the result
                   comes from the video's own latent rather than from what the decoder memorised).

Figures only, no timing; about a minute on 2 CPU cores for the embedded default.

    python benchmarks/tokenizer_references.py [--processed data/processed] [--params params.yaml]
        [--checkpoint models/tokenizer/pretrain.pt --checkpoint models/tokenizer/finetune.pt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_json, table  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.pixels import to_uint8, to_unit  # noqa: E402
from components.metrics.baselines import baseline_psnrs, same_numbers_grid, triplane_values  # noqa: E402
from components.metrics.image import psnr  # noqa: E402
from components.tokenizer.model import reconstruct  # noqa: E402
from components.tokenizer.released import decode_group_frames, load_tokenizer  # noqa: E402
from components.tokenizer.training import eval_clips  # noqa: E402


def _psnr(pred: np.ndarray, real: np.ndarray) -> float:
    """PSNR of uint8/float frames [n, H, W, 3] on the [0, 1] scale (components.metrics.image.psnr)."""
    p = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float32)[None] / (255.0 if pred.dtype == np.uint8 else 1.0)
    r = torch.as_tensor(real, dtype=torch.float32)[None] / 255.0
    return float(psnr(p, r))


def low_res_mean(clip: np.ndarray, size: int) -> np.ndarray:
    """The clip's temporal mean frame through an S x S bottleneck (area down, bilinear up), float [0, 1]."""
    mean = torch.from_numpy(clip.astype(np.float32) / 255.0).mean(0).permute(2, 0, 1)[None]
    h, w = mean.shape[-2:]
    small = F.adaptive_avg_pool2d(mean, size)
    up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return np.broadcast_to(up[0].permute(1, 2, 0).clamp(0, 1).numpy(), clip.shape)


@torch.no_grad()
def model_psnrs(path: Path, clips: np.ndarray, valid: np.ndarray, group_frames: int | None) -> tuple[list[float], list[float]]:
    """Per-video PSNR of the checkpoint's reconstruction, and of decoding the next video's triplane instead."""
    model = load_tokenizer(path).eval()
    group_frames = decode_group_frames(model, group_frames)
    own, other = [], []
    for i in range(len(clips)):
        video = to_unit(torch.from_numpy(clips[i:i + 1]))
        planes = model.encode(video, torch.from_numpy(valid[i:i + 1]))
        j = (i + 1) % len(clips)
        planes_j = model.encode(to_unit(torch.from_numpy(clips[j:j + 1])), torch.from_numpy(valid[j:j + 1]))
        n = int(valid[i])
        own.append(_psnr(to_uint8(reconstruct(model, planes, group_frames))[0, :n], clips[i, :n]))
        other.append(_psnr(to_uint8(reconstruct(model, planes_j, group_frames))[0, :n], clips[i, :n]))
    return own, other


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", type=Path, default=REPO / "data/processed", help="processed store (preprocess stage)")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params the store and models were made with")
    p.add_argument("--checkpoint", type=Path, action="append", default=None,
                   help="tokenizer checkpoint(s) (default: models/tokenizer/pretrain.pt and finetune.pt where present)")
    p.add_argument("--videos", type=int, default=None, help="test videos, spread over the split (default all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    index_path = args.processed / "index.parquet"
    if not index_path.is_file():
        print(f"no processed store at {args.processed}: run `dvc repro preprocess` first", file=sys.stderr)
        return 2
    index = pd.read_parquet(index_path)
    test = index[index.split == "test"]
    ids, clips, valid = eval_clips(args.processed, test, params.data.num_frames, args.videos or len(test))
    classes = test.set_index("video_id").loc[ids, "class_name"].tolist()
    s = params.tokenizer.arch.latent_resolution_xy
    checkpoints = args.checkpoint or [c for c in (REPO / "models/tokenizer/pretrain.pt",
                                                   REPO / "models/tokenizer/finetune.pt") if c.is_file()]

    arch = params.tokenizer.arch
    values = triplane_values(arch.latent_n_features, s, arch.latent_resolution_t)
    grid = same_numbers_grid(values, clips.shape[1:4], (arch.latent_resolution_t, s, s))
    base = baseline_psnrs(clips, valid, grid)
    columns: dict[str, list[float]] = {
        "mean colour": list(base["mean_colour"]),
        f"same numbers {'x'.join(map(str, grid))}": list(base["same_numbers"]),
        "temporal mean": list(base["temporal_mean"]), f"mean @ {s}x{s}": [], f"mean @ {2 * s}x{2 * s}": []}
    for clip, n in zip(clips, valid):
        real = clip[:n]
        columns[f"mean @ {s}x{s}"].append(_psnr(low_res_mean(real, s), real))
        columns[f"mean @ {2 * s}x{2 * s}"].append(_psnr(low_res_mean(real, 2 * s), real))
    for path in checkpoints:
        own, other = model_psnrs(path, clips, valid, params.tokenizer.decode_group_frames)
        columns[path.stem] = own
        columns[f"{path.stem} (next video's triplane)"] = other

    frame = pd.DataFrame(columns).assign(cls=classes)
    per_class = frame.groupby("cls").mean()
    rows = [[c, *(f"{v:.2f}" for v in per_class.loc[c])] for c in per_class.index]
    rows.append(["all (mean over videos)", *(f"{frame[k].mean():.2f}" for k in columns)])
    print(f"# {len(ids)} test videos from {args.processed}, first {params.data.num_frames} frames at "
          f"{params.data.img_size}x{params.data.img_size}; triplane H'=W'={s}, T'={arch.latent_resolution_t}: {values} values; "
          f"same-numbers grid {'x'.join(map(str, grid))} x 3 = {3 * int(np.prod(grid))} values; temporal mean "
          f"{3 * clips.shape[2] * clips.shape[3]} values")
    print(table(["class", *columns], rows, title="== PSNR (dB) of reference reconstructions and tokenizers =="))
    print_json("tokenizer_references", {
        "videos": len(ids), "img_size": params.data.img_size, "num_frames": params.data.num_frames,
        "latent_resolution_xy": s, "triplane_values": values, "same_numbers_grid": list(grid), "checkpoints": [str(c) for c in checkpoints],
        "mean": {k: float(frame[k].mean()) for k in columns},
        "per_class": {c: {k: float(per_class.loc[c, k]) for k in columns} for c in per_class.index},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
