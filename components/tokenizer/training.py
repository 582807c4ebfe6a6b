"""Tokenizer training pieces with no orchestration: sample batches, schedule, steps, evaluation, state files.

Sampling is a pure function of (seed, step, item of the global batch): a resumed run draws exactly
the batches an uninterrupted run would, so with the optimizer state restored the weights match,
and any number of workers trains on the same global batch (components.data.sampling.SamplePlan).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from components.data.pixels import to_uint8, to_unit
from components.data.sampling import SamplePlan, item_rng, read_clip, sample_patches
from components.data.store import FrameFile
from components.io import atomic_write_bytes, atomic_write_json
from components.metrics.baselines import BASELINES, baseline_psnrs, baseline_summary, same_numbers_grid, triplane_values
from components.metrics.image import psnr, ssim

# ---------------------------------------------------------------------------------------- data


class ClipSampler:
    """Training batches from the frame store: random clip windows and random patches with targets."""

    def __init__(self, processed_dir: str | os.PathLike, index: pd.DataFrame, num_frames: int,
                 patch_t: int, patch_xy: int, n_patches: int, seed: int):
        self.files = [FrameFile(Path(processed_dir) / p) for p in index["frames_path"]]
        if not self.files:
            raise ValueError("no videos to sample from")
        self.num_frames, self.patch_t, self.patch_xy = num_frames, patch_t, patch_xy
        self.n_patches, self.seed = n_patches, seed

    def batch(self, items: int | Sequence[int], step: int) -> dict[str, np.ndarray]:
        """The given items of step `step`'s global batch (an int n: items 0..n-1); each item is a
        function of (seed, step, item) alone, so any split of a global batch over ranks and
        micro-steps (components.data.sampling.SamplePlan) trains on the same samples."""
        videos, valid, coords, targets = [], [], [], []
        for item in (range(items) if isinstance(items, int) else items):
            rng = item_rng(self.seed, step, int(item))
            clip, n = read_clip(self.files[int(rng.integers(len(self.files)))], self.num_frames, rng)
            patches, c, _ = sample_patches(clip, self.n_patches, rng, self.patch_t, self.patch_xy, valid_frames=n)
            videos.append(clip)
            valid.append(n)
            coords.append(c)
            targets.append(patches.reshape(len(patches), -1))
        return {"video": np.stack(videos), "n_frames": np.asarray(valid, np.int64),
                "coords": np.stack(coords), "targets": np.stack(targets)}


def eval_clips(processed_dir: str | os.PathLike, index: pd.DataFrame, num_frames: int,
               n_videos: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The first `num_frames` frames of `n_videos` test videos spread evenly over the sorted test set."""
    rows = index.sort_values("video_id").reset_index(drop=True)
    pick = np.unique(np.linspace(0, len(rows) - 1, num=min(n_videos, len(rows))).round().astype(int))
    clips, valid = [], []
    for i in pick:
        f = FrameFile(Path(processed_dir) / rows.loc[i, "frames_path"])
        n = min(f.n_frames, num_frames)
        clip = np.zeros((num_frames, f.header.height, f.header.width, f.header.channels), np.uint8)
        clip[:n] = f.read(0, n)
        clips.append(clip)
        valid.append(n)
    return list(rows.loc[pick, "video_id"]), np.stack(clips), np.asarray(valid, np.int64)


def sampled_patches(data: Any, arch: Any, sampling_ratio: float) -> int:
    """Patches decoded per clip per pretraining step: `sampling_ratio` of the clip's decoder grid."""
    n_total = (data.num_frames // arch.dec_patch_size_t) * (data.img_size // arch.dec_patch_size_xy) ** 2
    return max(1, round(sampling_ratio * n_total))


def pretrain_tokens_per_clip(data: Any, arch: Any, sampling_ratio: float) -> int:
    """Rows per clip of a pretraining step's biggest matmuls (encoder tokens or decoded patches)."""
    return max(arch.video_tokens(data.img_size, data.num_frames), sampled_patches(data, arch, sampling_ratio))


# ------------------------------------------------------------------------------------ schedule


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_with_schedule(parameters, cfg: Any, betas: tuple[float, float] = (0.9, 0.95)):
    """AdamW at `cfg.lr` / `cfg.weight_decay` with the warm-up + cosine schedule of `lr_factor`
    (`cfg` is a training params section); returns (optimizer, scheduler)."""
    opt = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    return opt, sched


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, grad_clip: float) -> None:
    """Clip the accumulated gradients' global norm (when grad_clip > 0), step the optimizer and the
    schedule, and clear the gradients: the end of every training step of the tokenizer stages."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class ReconResult:
    psnr: float
    ssim: float
    baselines: dict[str, Any]     # components.metrics.baselines.baseline_summary of the same clips
    per_video_psnr: list[float]
    recon: np.ndarray             # uint8 [B, T, H, W, 3]
    lpips: float | None = None    # mean over real frames, when a perceptual metric was given
    per_video_baselines: dict[str, list[float]] = field(default_factory=dict)

    @property
    def baseline_psnr(self) -> float:
        """The temporal-mean baseline (8x the tiny triplane's numbers; kept for comparison)."""
        return float(self.baselines["baseline_temporal_mean_psnr"])

    def baseline_row(self) -> dict[str, float]:
        """The baselines' PSNRs as curve/MLflow metrics (baseline_<name>_psnr)."""
        return {f"baseline_{name}_psnr": float(self.baselines[f"baseline_{name}_psnr"]) for name in BASELINES}


def baseline_grid(arch: Any, clip_thw: tuple[int, int, int]) -> tuple[int, int, int]:
    """The same-numbers baseline's grid for a triplane geometry (see components.metrics.baselines)."""
    s, t = arch.latent_resolution_xy, arch.latent_resolution_t
    return same_numbers_grid(triplane_values(arch.latent_n_features, s, t), clip_thw, (t, s, s))


@torch.no_grad()
def reconstruct_clips(model, clips: np.ndarray, valid: np.ndarray, group_frames: int, device: torch.device,
                      autocast_dtype: torch.dtype | None = None, batch_size: int = 4) -> np.ndarray:
    """Encode + batched full decode of uint8 clips [B, T, H, W, 3] -> uint8 reconstructions (eval mode)."""
    from components.tokenizer.model import reconstruct

    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(clips), batch_size):
        video = to_unit(torch.from_numpy(clips[i:i + batch_size]).to(device))
        n = torch.from_numpy(np.asarray(valid[i:i + batch_size])).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            planes = model.encode(video, n)
            out.append(to_uint8(reconstruct(model, planes, group_frames=group_frames)))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros_like(clips)


@torch.no_grad()
def evaluate_reconstruction(model, clips: np.ndarray, valid: np.ndarray, group_frames: int,
                            device: torch.device, autocast_dtype: torch.dtype | None = None,
                            batch_size: int = 4, perceptual=None) -> ReconResult:
    """Encode and fully reconstruct test clips; PSNR/SSIM (and LPIPS when `perceptual` is given:
    frames [N, 3, H, W] in [-1, 1] -> [N]) over their real (unpadded) frames, beside the naive
    baselines of the same clips (components.metrics.baselines; the same-numbers grid from the
    model's triplane geometry)."""
    recon = reconstruct_clips(model, clips, valid, group_frames, device, autocast_dtype, batch_size)
    p_list, s_list = [], []
    for r, c, n in zip(recon, clips, valid):
        real = torch.from_numpy(c[:n]).float().div(255)[None]
        pred = torch.from_numpy(r[:n]).float().div(255)[None]
        p_list.append(psnr(pred, real).item())
        s_list.append(ssim(pred, real).item() if min(real.shape[2:4]) >= 11 else float("nan"))
    grid = baseline_grid(model.arch, clips.shape[1:4])
    per_video = baseline_psnrs(clips, valid, grid)
    lp = None
    if perceptual is not None:
        dists = []
        for r, c, n in zip(recon, clips, valid):
            x = torch.from_numpy(r[:n]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            y = torch.from_numpy(c[:n]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            dists.append(perceptual(x, y).float().cpu())
        lp = float(torch.cat(dists).mean())
    return ReconResult(float(np.mean(p_list)), float(np.nanmean(s_list)),
                       baseline_summary(per_video, grid, clips.shape[2:4], clips.shape[4]), p_list, recon, lp,
                       {k: [float(v) for v in vals] for k, vals in per_video.items()})


# ----------------------------------------------------------------------------------- state files

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"


class DamagedCheckpoint(Exception):
    """A checkpoint whose file is missing, truncated or altered."""


def save_state(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    """state.pt plus a manifest with its sha256 and step, each written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(Path(folder) / STATE_FILE, data)
    atomic_write_json(Path(folder) / MANIFEST_FILE, {"step": int(state["step"]),
                                                     "sha256": hashlib.sha256(data).hexdigest()})


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    """Load a state saved by `save_state`, verifying its checksum first (never half-loads)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        data = (folder / STATE_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{folder}: unreadable ({exc})") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise DamagedCheckpoint(f"{folder}: {STATE_FILE} does not match its recorded sha256")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def checkpoint_step(folder: str | os.PathLike) -> int:
    try:
        return int(json.loads((Path(folder) / MANIFEST_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


# ------------------------------------------------------------------------------------ one run


class PretrainRunner:
    """One process's share of a coordinate-sampling pretraining run: model, AdamW, schedule,
    batches and the evaluation clips, all from the validated params.

    The pretrain stage's Ray Train workers wrap `core` for DDP (`runner.model = prepare_model(runner.core)`)
    after restoring a checkpoint; a sweep trial uses it single-process (`runner.core.to(device)`).
    torch is seeded before the model is built, so the same params start from the same weights.
    """

    def __init__(self, params: Any, processed_dir: str | os.PathLike, index: pd.DataFrame,
                 device: torch.device, amp: torch.dtype | None = None, rank: int = 0, world: int = 1,
                 model_class: type | None = None, init: str | None = None):
        from components.tokenizer.model import DEFAULT_INIT, CoordTok

        data, tok, cfg = params.data, params.tokenizer, params.pretrain
        self.cfg, self.group_frames = cfg, tok.group_frames
        self.device, self.amp, self.rank = device, amp, rank
        torch.manual_seed(cfg.seed)
        # model_class / init: other architectures or initialisations on the same recipe (benchmarks)
        self.core = (model_class or CoordTok)(tok.arch, data.img_size, data.num_frames, init or DEFAULT_INIT)
        self.model: torch.nn.Module = self.core  # what the step runs (a DDP wrapper in the stage)
        self.opt, self.sched = adamw_with_schedule(self.core.parameters(), cfg)
        arch = tok.arch
        self.n_sample = sampled_patches(data, arch, cfg.sampling_ratio)
        self.sampler = ClipSampler(processed_dir, index[index.split == "train"], data.num_frames,
                                   arch.dec_patch_size_t, arch.dec_patch_size_xy, self.n_sample, cfg.seed)
        self.plan = SamplePlan(cfg.batch_size, world, cfg.grad_accum)
        self.eval_ids, self.eval_x, self.eval_n = eval_clips(processed_dir, index[index.split == "test"],
                                                             data.num_frames, cfg.eval_videos)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimizer step (with gradient accumulation) on this rank's slices of the step's global
        batch; returns (the global batch's mean loss, videos this rank saw)."""
        from components.parallel import global_sum, micro_step

        cfg, device, plan = self.cfg, self.device, self.plan
        loss_sum, seen = 0.0, 0
        for micro in range(cfg.grad_accum):
            b = self.sampler.batch(plan.items(self.rank, micro), step)
            video = to_unit(torch.from_numpy(b["video"]).to(device))
            coords = torch.from_numpy(b["coords"]).to(device)
            target = to_unit(torch.from_numpy(b["targets"]).to(device))
            n_frames = torch.from_numpy(b["n_frames"]).to(device)
            with micro_step(self.model, micro, cfg.grad_accum):
                with self.autocast():
                    pred = self.model(video, coords, n_frames)
                # Every slice has as many patches: its mean x share is its part of the global mean;
                # x world undoes DDP's gradient averaging over ranks.
                loss = torch.nn.functional.mse_loss(pred.float(), target) * plan.share
                (loss * plan.world).backward()
            loss_sum += loss.item()
            seen += len(video)
        loss_sum = global_sum(loss_sum, device)
        optimizer_step(self.model, self.opt, self.sched, cfg.grad_clip)
        return loss_sum, seen

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def evaluate(self) -> ReconResult:
        """Full reconstruction of the evaluation clips (PSNR/SSIM and the temporal-mean baseline)."""
        return evaluate_reconstruction(self.core, self.eval_x, self.eval_n, self.group_frames, self.device, self.amp)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.core.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "config": self.core.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
