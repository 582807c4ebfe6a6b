"""One rank of a plain torch.distributed (gloo) training run, for tests/test_distributed.py.

usage: python tests/ddp_worker.py STAGE PARAMS DATA_DIR RANK WORLD PORT START STOP OUT [RESUME]
STAGE is pretrain or finetune (DATA_DIR: the processed store) or train_sit (DATA_DIR: a latent store).
Trains steps START..STOP-1 of the stage's runner (the object its Ray Train workers step) with DDP
(world > 1) exactly as the stage's workers do (from RESUME's state, as a stage resumes a checkpoint,
when given), counts DDP's gradient all-reduces with a comm hook, and (rank 0) saves the per-step
losses, the final weights, the full state and the count to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist


def build_runner(stage: str, params, data_dir: str, rank: int, world: int):
    """The stage's runner on the CPU; returns (runner, name of its attribute the step runs)."""
    cpu = torch.device("cpu")
    if stage == "pretrain":
        from components.tokenizer.training import PretrainRunner

        index = pd.read_parquet(Path(data_dir) / "index.parquet")
        return PretrainRunner(params, data_dir, index, cpu, None, rank, world), "model"
    if stage == "finetune":
        from components.metrics.lpips import LPIPS
        from components.tokenizer.finetuning import FinetuneRunner
        from components.tokenizer.model import CoordTok
        from components.weights import weights_dir

        cfg = params.finetune
        torch.manual_seed(0)  # the start: a fixed tokenizer (the stage loads finetune.init_from)
        core = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames)
        lpips = LPIPS(cfg.lpips_backbone, weights_dir(params.weights.dir), allow_download=False, chunk=cfg.lpips_chunk)
        index = pd.read_parquet(Path(data_dir) / "index.parquet")
        return FinetuneRunner(params, data_dir, index, core, lpips, cpu, None, rank, world), "model"
    if stage == "train_sit":
        from components.generator.store import LatentStore
        from pipelines.train_sit import SiTRunner, build_sit

        store = LatentStore(data_dir)
        return SiTRunner(params.train_sit, build_sit(params, store), store, cpu, None, rank, world), "ddp"
    raise ValueError(f"unknown stage {stage!r}")


def main(stage: str, params_file: str, data_dir: str, rank: int, world: int, port: int, start: int, stop: int,
         out: str, resume: str | None = None) -> None:
    from components.config import load_params

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    runner, stepped = build_runner(stage, load_params(Path(params_file)), data_dir, rank, world)
    if resume:
        runner.load_state_dict(torch.load(resume, weights_only=True)["state"])
    reduces = [0]
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        ddp = torch.nn.parallel.DistributedDataParallel(getattr(runner, stepped))
        setattr(runner, stepped, ddp)

        def counting_allreduce(state, bucket):
            reduces[0] += 1
            fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        ddp.register_comm_hook(None, counting_allreduce)
    losses = []
    for step in range(start, stop):
        result = runner.train_step(step)[0]
        losses.append(result["loss"] if isinstance(result, dict) else result)
    if rank == 0:
        state = runner.state_dict()
        torch.save({"losses": losses, "model": state["model"], "state": state, "allreduce_calls": reduces[0]}, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), int(a[7]), a[8], a[9] if len(a) > 9 else None)
