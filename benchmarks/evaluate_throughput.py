"""Evaluate-stage throughput: videos/s of (a) sampling (SiT sampler + tokenizer full decode) and (b) FVD feature
extraction (the I3D detector), both through the stage's own Ray actors (pipelines.evaluate.EvalWorker).

Models: a tokenizer preset and a SiT preset with random weights (speed does not depend on the values); the
detector from --weights-dir, or seeded stand-ins written to a temp folder (same architecture for
`videogpt`; the `styleganv` stand-in is a small TorchScript module, so real-weight figures need the real file).
Each actor's first call (model load, warm-up) is excluded; the figure is videos / wall time of the pool over
the remaining calls. Prints a table and one JSON line; no assertions.

    python benchmarks/evaluate_throughput.py                        # embedded default sizes, 2 CPU actors
    python benchmarks/evaluate_throughput.py --img-size 128 --frames 128 --tokenizer CoordTok-L \\
        --sit SiT-L/2 --steps 250 --batch 8 --actors 1 --cpus-per-actor 8 --gpus-per-actor 1 --weights-dir W
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import machine_note, print_json, table, work_dir

import pipelines  # noqa: F401  (before ray: it decides how this process presents Ray's auth token)


def _models(folder: Path, args) -> tuple[Path, Path]:
    import torch

    from components.generator.checkpoint import save_sit_payload
    from components.generator.latent_stats import PLANES, LatentStats
    from components.generator.presets import sit_preset
    from components.generator.sit import SiT
    from components.tokenizer.model import CoordTok
    from components.tokenizer.presets import TOKENIZER_PRESETS
    from pipelines.common.trainer import save_model_file

    torch.manual_seed(0)
    arch = TOKENIZER_PRESETS[args.tokenizer]
    tok = CoordTok(arch, args.img_size, args.frames)
    tok_path = folder / "tokenizer.pt"
    save_model_file(tok_path, {"config": tok.config, "model": tok.state_dict(), "step": 0})
    sit = SiT(sit_preset(args.sit), arch.latent_n_features, arch.latent_resolution_xy, arch.latent_resolution_t)
    c = arch.latent_n_features
    stats = LatentStats.from_mean_std({k: [0.0] * c for k in PLANES}, {k: [1.0] * c for k in PLANES})
    sit_path = folder / "sit.pt"
    save_sit_payload(sit_path, sit, None, stats, step=0)
    return tok_path, sit_path


def _pool_rate(actors, method: str, calls: list[tuple], videos_per_call: list[int]) -> tuple[float, float]:
    """Warm every actor with one call, then time the rest: (videos/s over the pool's wall, seconds)."""
    import ray

    ray.get([getattr(a, method).remote(*calls[0]) for a in actors])
    from pipelines.evaluate import _run_pool

    start = time.perf_counter()
    _run_pool(actors, [(method, c) for c in calls], method)
    wall = time.perf_counter() - start
    return sum(videos_per_call) / wall, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="CoordTok-tiny")
    p.add_argument("--sit", default="SiT-tiny/2")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--videos", type=int, default=16, help="videos timed for each figure (after warm-up)")
    p.add_argument("--batch", type=int, default=4, help="videos per actor call (evaluate.batch_size)")
    p.add_argument("--feature-batch", type=int, default=4, help="videos per detector forward (evaluate.feature_batch_size)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (paper: 250)")
    p.add_argument("--sampler", default="sde")
    p.add_argument("--detector", default="styleganv", choices=["kinetics400", "styleganv", "videogpt"])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--weights-dir", type=Path, default=None, help="real detector weights (default: stand-ins)")
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args()

    import ray

    from components.metrics.i3d import DETECTOR_ASSETS
    from components.weights import write_standins
    from pipelines.evaluate import EvalWorker

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with work_dir(args.work_dir, "evaluate") as folder:
        tok_path, sit_path = _models(folder, args)
        weights = args.weights_dir
        if weights is None:
            weights = folder / "weights"
            write_standins(weights, [DETECTOR_ASSETS[args.detector]])
        spec = {"tokenizer_path": str(tok_path), "sit_path": str(sit_path), "use_ema": True, "processed_dir": str(folder),
                "num_frames": args.frames, "group_frames": 1, "batch_size": args.batch,
                "feature_batch_size": args.feature_batch, "precision": args.precision, "detector": args.detector,
                "weights_dir": str(weights), "lpips_backbone": "alex", "seed": 0, "sampler": args.sampler,
                "steps": args.steps, "cfg_scale": 1.0, "clip_frames": None, "full": True,
                "use_gpu": args.gpus_per_actor > 0, "threads": max(1, int(args.cpus_per_actor))}
        ray.init(num_cpus=max(1, int(np.ceil(args.actors * args.cpus_per_actor))),
                 num_gpus=int(np.ceil(args.actors * args.gpus_per_actor)) or None, include_dashboard=False,
                 logging_level="WARNING", object_store_memory=256 * 2**20)
        try:
            cls = ray.remote(num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor)(EvalWorker)
            actors = [cls.remote(spec) for _ in range(args.actors)]
            batches = [list(range(i, min(i + args.batch, args.videos))) for i in range(0, args.videos, args.batch)]
            # Sampling alone: generate() also extracts features, so time sampling through its own clock.
            ray.get([a.generate.remote(batches[0], 0) for a in actors])  # warm-up
            from pipelines.evaluate import _run_pool

            start = time.perf_counter()
            results = _run_pool(actors, [("generate", (b, 0)) for b in batches], "generate")
            pool_wall = time.perf_counter() - start
            gen_s = sum(r["gen_s"] for r in results)
            sampling_rate = args.videos / gen_s * len(actors)  # actors sample in parallel
            generate_and_features_rate = args.videos / pool_wall
            rng = np.random.default_rng(0)
            video_batches = [rng.integers(0, 256, size=(len(b), args.frames, args.img_size, args.img_size, 3),
                                          dtype=np.uint8) for b in batches]
            feat_rate, _feat_wall = _pool_rate(actors, "features", [(v,) for v in video_batches],
                                              [len(v) for v in video_batches])
            device = results[0]["device"]
        finally:
            ray.shutdown()
    rows = [["sampling (SiT + decode)", args.videos, sampling_rate],
            ["generate + features (pool wall)", args.videos, generate_and_features_rate],
            ["feature extraction (detector)", args.videos, feat_rate]]
    print(machine_note())
    print(table(["what", "videos", "videos/s"], rows,
                title=f"{args.actors} actor(s) x {args.cpus_per_actor} CPU / {args.gpus_per_actor} GPU on {device}: "
                      f"{args.tokenizer} + {args.sit}, {args.frames}x{args.img_size}x{args.img_size}, "
                      f"{args.sampler} {args.steps} steps, batch {args.batch}, detector {args.detector}"))
    print_json("evaluate_throughput", {"sampling_videos_per_s": sampling_rate,
                                       "generate_and_features_videos_per_s": generate_and_features_rate,
                                       "feature_videos_per_s": feat_rate, "actors": args.actors, "device": device,
                                       "steps": args.steps, "frames": args.frames, "img_size": args.img_size,
                                       "detector": args.detector, "standin_detector": args.weights_dir is None})


if __name__ == "__main__":
    main()
