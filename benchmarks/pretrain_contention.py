"""A pretrain step with and without one competing CPU-bound process, per thread setting.

The step is the embedded default's (params.yaml): CoordTok-tiny, 32 frames of 64x64, batch 8,
sampling ratio 0.125, fp32, AdamW + grad clip (benchmarks/tokenizer_cost.train_step). Each setting
runs in a fresh process (OpenMP reads its environment once, at load) and is timed alone, then with a
busy-loop process (`python -c 'while 1: pass'`) beside it, back to back, for several rounds; the
median step wall time of each is kept. Goal (issue 18): with one core taken, a step is at most 2x
slower than without.

Settings: "before" is how a training worker of a local cluster ran before this change: at Ray's
default worker niceness 15, torch threads = the worker's CPUs, OpenMP defaults (threads spin-wait
between parallel regions); "after" is `pipelines.common.cluster.size_threads` with the environment
`cluster.ray_cluster` now gives a local cluster's workers (WORKER_ENV: OMP_WAIT_POLICY=PASSIVE;
LOCAL_CLUSTER_ENV: niceness 0). The step runs at that niceness (os.nice, as the raylet does);
the busy process at 0. `--settings` adds others ("after-nice15", "before-nice0", "1-thread") to
separate the two effects.

On a shared machine the "alone" figure includes whatever else runs: read the ratios, measured back
to back, rather than the absolute times. Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def settings() -> dict[str, dict]:
    from pipelines.common.cluster import WORKER_ENV

    from pipelines.common.cluster import LOCAL_CLUSTER_ENV

    worker_nice = int(LOCAL_CLUSTER_ENV["RAY_worker_niceness"])
    return {  # nice: the niceness a Ray worker runs at (Ray's default 15; a local cluster now 0)
        "before": {"threads": 2, "env": {}, "nice": 15},
        "after": {"threads": "size_threads", "env": dict(WORKER_ENV), "nice": worker_nice},
        "after-nice15": {"threads": "size_threads", "env": dict(WORKER_ENV), "nice": 15},
        "before-nice0": {"threads": 2, "env": {}, "nice": 0},
        "1-thread": {"threads": 1, "env": {}, "nice": 0},
    }


def child(cfg: dict) -> dict:
    os.nice(cfg["nice"])  # as the raylet does for its workers
    import torch

    from components.config import load_params
    from components.tokenizer.model import CoordTok, grid_coords
    from tokenizer_cost import make_optimizer, random_coords, synthetic_batch, train_step

    if cfg["threads"] == "size_threads":
        from pipelines.common.cluster import size_threads

        threads = size_threads(cfg["cpus"])
    else:
        threads = int(cfg["threads"])
        torch.set_num_threads(threads)
    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    model = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames).train()
    opt = make_optimizer(model)
    batch = params.pretrain.batch_size
    n = max(1, int(len(grid_coords(model.grid)) * params.pretrain.sampling_ratio))
    video, coords = synthetic_batch(model, batch), random_coords(model, batch, n)
    n_frames = torch.full((batch,), model.num_frames, dtype=torch.long)
    with torch.no_grad():
        target = torch.rand_like(model(video, coords, n_frames))
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        t0 = time.perf_counter()
        train_step(model, opt, video, coords, target, n_frames, None)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    return {"threads": threads, "step_s": statistics.median(times)}


def run_setting(name: str, spec: dict, args: argparse.Namespace) -> dict:
    env = {**os.environ, **spec["env"], "PYTHONPATH": str(REPO)}
    cfg = {"threads": spec["threads"], "cpus": args.cpus, "steps": args.steps, "warmup": args.warmup,
           "nice": spec["nice"]}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["before", "after"], help="default: before after")
    p.add_argument("--rounds", type=int, default=3, help="alone/contended pairs per setting (default 3)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--cpus", type=float, default=2.0, help="CPUs the worker was granted (pretrain.cpus_per_worker)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    table = settings()
    results: dict[str, dict[str, list[float]]] = {s: {"alone": [], "contended": []} for s in args.settings}
    threads: dict[str, int] = {}
    for r in range(args.rounds):
        for name in args.settings:
            alone = run_setting(name, table[name], args)
            hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            try:
                time.sleep(0.5)
                contended = run_setting(name, table[name], args)
            finally:
                hog.kill()
                hog.wait()
            threads[name] = alone["threads"]
            results[name]["alone"].append(alone["step_s"])
            results[name]["contended"].append(contended["step_s"])
            print(f"round {r + 1} {name:>18}: alone {alone['step_s']:.3f} s/step, with a busy process "
                  f"{contended['step_s']:.3f} s/step ({contended['step_s'] / alone['step_s']:.2f}x)", flush=True)
    print(f"\npretrain step of the embedded default, {os.cpu_count()} CPUs, worker granted {args.cpus:g}; "
          f"median of {args.rounds} back-to-back rounds (goal: contended/alone <= 2x)")
    print(f"{'setting':>18} {'threads':>7} {'alone s/step':>13} {'contended s/step':>17} {'ratio':>6}")
    for name in args.settings:
        a, c = statistics.median(results[name]["alone"]), statistics.median(results[name]["contended"])
        ratios = [y / x for x, y in zip(results[name]["alone"], results[name]["contended"])]
        print(f"{name:>18} {threads[name]:>7} {a:>13.3f} {c:>17.3f} {statistics.median(ratios):>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
