"""Fine-tuning pieces (the paper's phase 2) with no orchestration: frame sampling and its loss.

Frame sampling decodes whole frames so a perceptual loss (LPIPS) can see them. Frames are taken
as whole attention groups of `group_steps` decoder time steps aligned like evaluation's
`reconstruct(group_frames=group_steps)`, so each decoded frame sees exactly the attention context
it has at test time. Sampling is a pure function of (seed, step, item of the global batch), like pretraining.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.data.sampling import item_rng, read_window, window_start
from components.data.store import FrameFile


class FrameSampler:
    """Batches of clip windows plus, per video, `frames_per_video` whole frames as attention groups."""

    def __init__(self, processed_dir: str | os.PathLike, index: pd.DataFrame, num_frames: int, patch_t: int,
                 group_steps: int, frames_per_video: int, seed: int):
        self.files = [FrameFile(Path(processed_dir) / p) for p in index["frames_path"]]
        if not self.files:
            raise ValueError("no videos to sample from")
        span = patch_t * group_steps
        if frames_per_video % span or frames_per_video > num_frames or num_frames % span:
            raise ValueError(f"frames_per_video {frames_per_video} must be a multiple of {span} frames and fit "
                             f"in {num_frames}")
        self.num_frames, self.patch_t, self.group_steps, self.seed = num_frames, patch_t, group_steps, seed
        self.groups_per_video = frames_per_video // span

    def _plan_item(self, step: int, item: int) -> tuple[int, int, np.ndarray]:
        """(file index, window start, group starts) of one item of step `step`'s global batch:
        a function of (seed, step, item) alone, drawn without decoding."""
        rng = item_rng(self.seed, step, item, stream=1)
        f = int(rng.integers(len(self.files)))
        start = window_start(self.files[f].n_frames, self.num_frames, rng)
        n = min(self.files[f].n_frames, self.num_frames)
        span = self.patch_t * self.group_steps
        n_groups = -(-n // span)  # groups holding at least one real frame: never sample pure padding
        pick = rng.choice(n_groups, size=self.groups_per_video, replace=n_groups < self.groups_per_video)
        return f, start, np.sort(pick) * self.group_steps

    def batch(self, items: int | Sequence[int], step: int) -> dict[str, np.ndarray]:
        """The given items of the step's global batch (an int n: items 0..n-1):
        video uint8 [B, T, H, W, 3], n_frames [B], starts [B, G] (decoder time steps, sorted)."""
        videos, valid, starts = [], [], []
        for item in (range(items) if isinstance(items, int) else items):
            f, start, groups = self._plan_item(step, int(item))
            clip, n = read_window(self.files[f], start, self.num_frames)
            videos.append(clip)
            valid.append(n)
            starts.append(groups)
        return {"video": np.stack(videos), "n_frames": np.asarray(valid, np.int64),
                "starts": np.stack(starts).astype(np.int64)}

    def valid_frames(self, step: int, global_batch: int) -> int:
        """Real (unpadded) frames decoded in the whole global batch of step `step`: the loss's
        denominator on every rank, so per-rank sums add up to the single-worker mean."""
        span = self.patch_t * self.group_steps
        total = 0
        for item in range(global_batch):
            f, _, groups = self._plan_item(step, item)
            n = min(self.files[f].n_frames, self.num_frames)
            total += int(np.clip(n - groups * self.patch_t, 0, span).sum())
        return total


def group_frames(video: torch.Tensor, starts: torch.Tensor, length: int, patch_t: int) -> torch.Tensor:
    """The frames of each group: video [B, T, ...], starts [B, G] time steps -> [B, G, length*pt, ...]."""
    frames = (starts[..., None] * patch_t + torch.arange(length * patch_t, device=starts.device))  # [B, G, F]
    idx = frames.reshape(frames.shape[0], -1)
    picked = torch.gather(video, 1, idx.view(*idx.shape, *([1] * (video.dim() - 2))).expand(
        -1, -1, *video.shape[2:]))
    return picked.view(*frames.shape, *video.shape[2:])


def valid_frame_mask(starts: torch.Tensor, n_frames: torch.Tensor, length: int, patch_t: int) -> torch.Tensor:
    """[B, G, length*pt] bool: True for frames inside the video (padding never counts in the loss)."""
    frames = starts[..., None] * patch_t + torch.arange(length * patch_t, device=starts.device)
    return frames < n_frames[:, None, None]


def frame_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
               lpips_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """l2 + lpips_weight x LPIPS over the valid frames; returns (total, l2, lpips).

    pred/target [B, G, F, H, W, 3] in [-1, 1]; valid [B, G, F]; `perceptual(x, y)` takes
    [N, 3, H, W] in [-1, 1] and returns per-frame distances [N].
    """
    p, t = pred.float()[valid], target.float()[valid]  # [N, H, W, 3]
    l2 = torch.nn.functional.mse_loss(p, t)
    if perceptual is None or lpips_weight == 0:
        lp = torch.zeros((), device=pred.device)
    else:
        lp = perceptual(p.permute(0, 3, 1, 2), t.permute(0, 3, 1, 2)).mean()
    return l2 + lpips_weight * lp, l2, lp


class FrameSamplingModel(torch.nn.Module):
    """Encoder + frame-sampling decode in one forward, so DDP sees (and synchronises) the whole step."""

    def __init__(self, tokenizer: torch.nn.Module):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, video: torch.Tensor, n_frames: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        from components.tokenizer.model import decode_time_groups

        return decode_time_groups(self.tokenizer, self.tokenizer.encode(video, n_frames), starts, length)


def frame_loss_backward(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                        lpips_weight: float, chunk: int, scale: float = 1.0,
                        denominator: int | None = None) -> tuple[float, float, float]:
    """Backpropagate `scale` x `frame_loss` into `pred`'s graph with LPIPS run `chunk` frames at a time.

    LPIPS keeps its activations for the backward pass, so a plain chunked forward does not bound
    memory. Here each chunk's LPIPS is backpropagated to the decoded frames right away (its
    activations freed), the frame gradients accumulate, and one backward then runs through the
    tokenizer. Same gradients as `frame_loss(...).backward()`; returns (total, l2, lpips) values.
    `denominator` (default: these valid frames) is the frame count the means divide by: the global
    batch's, so that a rank's or micro-step's values are its part of the global mean.
    """
    leaf = pred.detach().float().requires_grad_(True)
    n = int(valid.sum())
    denom = n if denominator is None else denominator
    l2 = torch.nn.functional.mse_loss(leaf[valid], target.float()[valid], reduction="sum") / (
        denom * leaf[valid].shape[1:].numel())
    (scale * l2).backward()
    lp_total = 0.0
    if perceptual is not None and lpips_weight != 0:
        t_all = target.float()[valid]
        for s in range(0, n, chunk):
            p = leaf[valid][s:s + chunk].permute(0, 3, 1, 2)
            d = perceptual(p, t_all[s:s + chunk].permute(0, 3, 1, 2)).sum() / denom
            (scale * lpips_weight * d).backward()
            lp_total += d.detach().item()
    pred.backward(leaf.grad.to(pred.dtype))
    l2_value = l2.detach().item()  # float(l2) of a grad-tracking tensor warns
    return l2_value + lpips_weight * lp_total, l2_value, lp_total


class FinetuneRunner:
    """One process's share of a fine-tuning run: the tokenizer it starts from (`core`, already
    loaded), AdamW + schedule, the frame sampler and the step's global sample plan.

    The finetune stage's Ray Train workers wrap `model` for DDP (`runner.model = prepare_model(runner.model)`)
    after restoring a checkpoint; tests/ddp_worker.py wraps it in plain DDP. torch is seeded before
    the optimizer is built, as the stage always did.
    """

    def __init__(self, params, processed_dir: str | os.PathLike, index: pd.DataFrame, core: torch.nn.Module,
                 perceptual: torch.nn.Module | None, device: torch.device, amp: torch.dtype | None = None,
                 rank: int = 0, world: int = 1):
        from components.data.sampling import SamplePlan
        from components.tokenizer.training import adamw_with_schedule

        data, tok, cfg = params.data, params.tokenizer, params.finetune
        self.cfg, self.device, self.amp, self.rank = cfg, device, amp, rank
        self.core, self.perceptual = core, perceptual
        self.group, self.patch_t = tok.group_frames, tok.arch.dec_patch_size_t
        torch.manual_seed(cfg.seed)
        self.opt, self.sched = adamw_with_schedule(core.parameters(), cfg)
        self.model: torch.nn.Module = FrameSamplingModel(core)  # what the step runs (a DDP wrapper in the stage)
        self.sampler = FrameSampler(processed_dir, index[index.split == "train"], data.num_frames, self.patch_t,
                                    self.group, cfg.frames_per_video, cfg.seed)
        self.plan = SamplePlan(cfg.batch_size, world, cfg.grad_accum)

    def train_step(self, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step (with gradient accumulation) on this rank's slices of the step's global
        batch; returns ({loss, l2, lpips} of the global batch, videos this rank saw)."""
        from components.data.pixels import to_unit
        from components.parallel import global_sum, micro_step
        from components.tokenizer.training import optimizer_step

        cfg, device, plan = self.cfg, self.device, self.plan
        sums, seen = {"loss": 0.0, "l2": 0.0, "lpips": 0.0}, 0
        # Means divide by the global batch's real frames (not this slice's): per-slice values add up
        # to the single-worker mean whatever the split (components/parallel.py).
        denominator = self.sampler.valid_frames(step, cfg.batch_size)
        for micro in range(cfg.grad_accum):
            b = self.sampler.batch(plan.items(self.rank, micro), step)
            video = to_unit(torch.from_numpy(b["video"]).to(device))
            n_frames = torch.from_numpy(b["n_frames"]).to(device)
            starts = torch.from_numpy(b["starts"]).to(device)
            with micro_step(self.model, micro, cfg.grad_accum):
                with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    pred = self.model(video, n_frames, starts, self.group)
                target = group_frames(video, starts, self.group, self.patch_t)
                valid = valid_frame_mask(starts, n_frames, self.group, self.patch_t)
                # LPIPS backpropagated chunk by chunk: its activations never all sit in memory at once.
                # x world: DDP averages gradients over ranks.
                values = frame_loss_backward(pred, target, valid, self.perceptual, cfg.lpips_weight, cfg.lpips_chunk,
                                             scale=float(plan.world), denominator=denominator)
            for k, v in zip(("loss", "l2", "lpips"), values):
                sums[k] += v
            seen += len(video)
        sums = {k: global_sum(v, device) for k, v in sums.items()}
        optimizer_step(self.model, self.opt, self.sched, cfg.grad_clip)
        return sums, seen

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"model": self.core.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "config": self.core.config}

    def load_state_dict(self, state: dict) -> None:
        self.core.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
