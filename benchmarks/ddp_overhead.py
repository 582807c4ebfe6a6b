"""Data-parallel overhead on a two-node Ray cluster on loopback: 1 vs 2 Ray Train workers at a fixed global batch.

For each model width, a CoordTok-tiny-shaped tokenizer (2 layers per stack, 4 heads, the embedded
default's 64x64x32 clips, 12.5% of patches decoded) trains `--steps` timed steps (after one warm-up
step) with 1 worker x the global batch and with 2 workers (one per node, DDP over gloo) x half of it,
on synthetic inputs (no data path: the model step alone). Per step it reports:
  - step wall time (median) with 1 and with 2 workers, and the ideal 2-worker time (half the 1-worker one);
  - overhead = 2-worker time - ideal: what data parallelism costs per step here;
  - all-reduce time: gloo's all_reduce of a flat fp32 buffer of the model's gradient size, timed alone
    (median of 5) on the 2 workers, and the DDP comm hook's in-flight time summed per step (it overlaps
    the backward pass, so it is an upper bound of what the step waits for).
On 2 cores no speed-up is expected (both nodes share the same 2 cores with everything else running):
the point is the overhead per step and how it grows with the gradient bytes (model width).
Starts (and stops) its own loopback cluster unless --address names one. Prints figures only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_note, print_json, table  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))


def train_loop(config: dict) -> None:
    """One Ray Train worker: time `steps` DDP steps on its share of a fixed global batch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from components.tokenizer.model import CoordTok
    from components.tokenizer.presets import TOKENIZER_PRESETS

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    w = config["width"]
    arch = TOKENIZER_PRESETS["CoordTok-tiny"].replace(enc_embed_dim=w, dec_embed_dim=w)
    torch.manual_seed(0)
    core = CoordTok(arch, 64, 32)
    model = ray.train.torch.prepare_model(core) if world > 1 else core
    opt = torch.optim.AdamW(core.parameters(), lr=1e-4)
    per_rank = config["batch"] // world
    g = torch.Generator().manual_seed(rank)
    video = torch.rand(per_rank, 32, 64, 64, 3, generator=g) * 2 - 1
    n_patches = 32 * 8 * 8 // 8
    coords = torch.rand(per_rank, n_patches, 3, generator=g)
    target = torch.rand(per_rank, n_patches, 8 * 8 * 3, generator=g)
    n_frames = torch.full((per_rank,), 32, dtype=torch.long)
    in_flight = [0.0]
    if world > 1:
        def timed_allreduce(state, bucket):
            t0 = time.perf_counter()
            fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

            def done(f):
                in_flight[0] += time.perf_counter() - t0
                return f.value()[0]
            return fut.then(done)

        model.register_comm_hook(None, timed_allreduce)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(video, coords, n_frames), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times, comm = [], []
    for _ in range(config["steps"]):
        if world > 1:
            dist.barrier()
        in_flight[0] = 0.0
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        comm.append(in_flight[0])
    n_params = sum(p.numel() for p in core.parameters())
    alone = []
    if world > 1:
        buf = torch.zeros(n_params)
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            alone.append(time.perf_counter() - t0)
    if rank == 0:  # Ray Train keeps no metrics without a checkpoint: hand them over as a file (same machine)
        import json

        Path(config["out"]).write_text(json.dumps({
            "step_s": statistics.median(times), "hook_s": statistics.median(comm),
            "allreduce_alone_s": statistics.median(alone) if alone else 0.0, "params": n_params}))


def measure(width: int, world: int, batch: int, steps: int) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    import json
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="ddp_overhead_")) / "metrics.json"
    trainer = TorchTrainer(
        train_loop, train_loop_config={"width": width, "batch": batch, "steps": steps, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=world, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"ddp-overhead-w{width}-n{world}-{time.time_ns()}",
                                       storage_path="/tmp/ddp_overhead_results"))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a loopback two-node one)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256], help="encoder/decoder width")
    p.add_argument("--batch", type=int, default=4, help="global batch (videos per step)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import os

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported; `ray start` clusters use tokens
    import ray

    cluster = None
    if args.address is None:
        from ray_nodes import TwoNodeCluster

        cluster = TwoNodeCluster()
    address = args.address or cluster.address
    print(machine_note())
    rows = []
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"py_modules": [str(REPO / "components")], "env_vars": {"OMP_NUM_THREADS": "1"}})
        print(f"cluster {address}: {len([n for n in ray.nodes() if n['Alive']])} node(s), "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs")
        for width in args.widths:
            one = measure(width, 1, args.batch, args.steps)
            two = measure(width, 2, args.batch, args.steps)
            ideal = one["step_s"] / 2
            rows.append({"width": width, "params": int(one["params"]), "grad_mb": one["params"] * 4 / 1e6,
                         "step_1w_s": one["step_s"], "step_2w_s": two["step_s"], "ideal_2w_s": ideal,
                         "overhead_s": two["step_s"] - ideal, "allreduce_alone_s": two["allreduce_alone_s"],
                         "hook_in_flight_s": two["hook_s"]})
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.stop()
    print(table(["width", "params", "grad MB", "1 worker s/step", "2 workers s/step", "ideal 2w", "overhead s",
                 "all-reduce alone s", "DDP hook in flight s"],
                [[r["width"], r["params"], r["grad_mb"], r["step_1w_s"], r["step_2w_s"], r["ideal_2w_s"],
                  r["overhead_s"], r["allreduce_alone_s"], r["hook_in_flight_s"]] for r in rows],
                title=f"global batch {args.batch}, medians of {args.steps} steps (measured, shared 2-core machine)"))
    if args.json:
        print_json("ddp_overhead", {"rows": rows, "batch": args.batch, "steps": args.steps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
