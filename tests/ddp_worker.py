"""One rank of a plain torch.distributed (gloo) pretraining run, for tests/test_distributed.py.

usage: python tests/ddp_worker.py PARAMS PROCESSED_DIR RANK WORLD PORT START STOP OUT [RESUME]
Trains steps START..STOP-1 of PretrainRunner with DDP (world > 1) exactly as the pretrain stage's
workers do (from RESUME's state, as a stage resumes a checkpoint, when given), counts DDP's gradient
all-reduces with a comm hook, and (rank 0) saves the per-step losses, the final weights, the full
state and the count to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist


def main(params_file: str, processed: str, rank: int, world: int, port: int, start: int, stop: int, out: str,
         resume: str | None = None) -> None:
    from components.config import load_params
    from components.tokenizer.training import PretrainRunner

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    params = load_params(Path(params_file))
    runner = PretrainRunner(params, processed, pd.read_parquet(Path(processed) / "index.parquet"),
                            torch.device("cpu"), None, rank, world)
    if resume:
        runner.load_state_dict(torch.load(resume, weights_only=True)["state"])
    reduces = [0]
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        runner.model = torch.nn.parallel.DistributedDataParallel(runner.core)

        def counting_allreduce(state, bucket):
            reduces[0] += 1
            fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        runner.model.register_comm_hook(None, counting_allreduce)
    losses = [runner.train_step(step)[0] for step in range(start, stop)]
    if rank == 0:
        torch.save({"losses": losses, "model": runner.core.state_dict(), "state": runner.state_dict(),
                    "allreduce_calls": reduces[0]}, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6]), a[7], a[8] if len(a) > 8 else None)
