"""Data-parallel arithmetic shared by every training loop (plain torch.distributed, no orchestration).

The scheme that makes N workers train the same model as one (README "Distributed training"):
each step's global batch is a fixed list of items (components.data.sampling.SamplePlan); rank r
trains on its slice; each slice's loss is its *share* of the global mean (slice mean x slice share,
or a sum divided by a global count), so summed over micro-steps and ranks it is the global mean.
DDP averages gradients over ranks, so a rank backpropagates `world` x its share; micro-steps
before the last skip DDP's all-reduce (`no_sync`) and the last one reduces the accumulated sum.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextlib.contextmanager
def micro_step(model: torch.nn.Module, micro: int, grad_accum: int) -> Iterator[None]:
    """Forward + backward of one micro-step: gradients all-reduce only on the last micro-step
    (a DDP model's `no_sync` before it); a plain module is unaffected."""
    last = micro == grad_accum - 1
    no_sync = getattr(model, "no_sync", None)
    with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
        yield


def global_sum(value: float, device: torch.device | str = "cpu") -> float:
    """Sum of a float over all ranks (itself on a single process): the logged global-mean loss."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())
