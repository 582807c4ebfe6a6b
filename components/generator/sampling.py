"""Video generation: noise -> SiT sampler -> denormalised triplanes -> CoordTok decode -> uint8 videos.

Reproducible per video: video i's initial noise and SDE noise come from its own generator seeded by
(seed, i), so the same seed gives the same videos whatever the batch size (up to float rounding of
differently sized batches).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from components.errors import UserError
from components.generator.latent_stats import LatentStats, denormalize
from components.generator.sit import SiT
from components.generator.transport import sample_ode, sample_sde
from components.tokenizer.model import CoordTok, Triplane, reconstruct

__all__ = ["SAMPLERS", "generate_videos", "initial_noise", "sample_latents", "velocity_fn", "video_generators"]

SAMPLERS = ("sde", "euler", "heun")


def video_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per video index, seeded from (seed, index) through numpy's SeedSequence."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint64)[0]
        gens.append(torch.Generator(device="cpu").manual_seed(int(state)))
    return gens


def initial_noise(sit: SiT, generators: Sequence[torch.Generator], device=None) -> Triplane:
    """N(0, I) planes, row r drawn from generators[r] (on CPU, then moved: identical on every device)."""
    rows = [[torch.randn(shape, generator=g) for shape in sit.plane_shapes] for g in generators]
    return Triplane(*(torch.stack([r[k] for r in rows]).to(device) for k in range(3)))


def velocity_fn(sit: SiT, labels: Tensor | None = None, cfg_scale: float = 1.0, amp_dtype: torch.dtype | None = None):
    """The sampler's view of `sit`: (parts, t) -> float32 velocity parts; guidance and autocast inside."""
    device_type = sit.pos_embed_xy.device.type

    def fn(parts, t):
        ctx = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        with ctx:
            if cfg_scale != 1.0:
                out = sit.forward_with_cfg(parts, t, labels, cfg_scale)
            else:
                out = sit(parts, t, labels)
        return tuple(o.float() for o in out)

    return fn


@torch.no_grad()
def sample_latents(sit: SiT, noise: Triplane, *, sampler: str = "sde", steps: int = 250, cfg_scale: float = 1.0,
                   labels: Tensor | None = None, generators: Sequence[torch.Generator] | None = None,
                   amp_dtype: torch.dtype | None = None) -> Triplane:
    """Run a sampler from `noise` (t = 0) to normalised latents (t = 1). Model in eval mode is up to the caller."""
    v = velocity_fn(sit, labels, cfg_scale, amp_dtype)
    if sampler == "sde":
        return sample_sde(v, noise, steps, generators=generators)
    if sampler in ("euler", "heun"):
        return sample_ode(v, noise, steps, sampler)
    raise UserError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="video", desc="generate", dynamic_ncols=True)


def _to_uint8(video: Tensor) -> np.ndarray:
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def generate_videos(sit: SiT, tokenizer: CoordTok, stats: LatentStats, n: int, *, seed: int, batch_size: int = 16,
                    sampler: str = "sde", steps: int = 250, cfg_scale: float = 1.0,
                    labels: Sequence[int] | np.ndarray | None = None, device: torch.device | str = "cpu",
                    amp_dtype: torch.dtype | None = None, group_frames: int = 1,
                    progress: bool = True) -> np.ndarray:
    """Generate n videos -> uint8 [n, T, H, W, 3].

    Unconditional SiTs take no labels. A class-conditional SiT takes `labels` (n class indices) or
    draws them uniformly from each video's generator; cfg_scale != 1 applies classifier-free
    guidance. Models are run in eval mode (their modes are restored afterwards).
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if n < 0 or batch_size < 1:
        raise UserError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if (sit.resolution_xy, sit.resolution_t) != (tokenizer.arch.latent_resolution_xy, tokenizer.arch.latent_resolution_t) \
            or sit.in_channels != tokenizer.arch.latent_n_features:
        raise UserError(f"the SiT's planes {sit.plane_shapes} do not match the tokenizer's latents "
                        f"(C={tokenizer.arch.latent_n_features}, H'={tokenizer.arch.latent_resolution_xy}, "
                        f"T'={tokenizer.arch.latent_resolution_t}): train the SiT on this tokenizer's latents")
    if sit.num_classes == 0:
        if labels is not None or cfg_scale != 1.0:
            raise UserError("this SiT is unconditional: pass no labels and cfg_scale=1")
    elif labels is not None and len(labels) != n:
        raise UserError(f"{len(labels)} labels for {n} videos: give one label per video")
    device = torch.device(device)
    modes = (sit.training, tokenizer.training)
    sit.eval()
    tokenizer.eval()
    bar = _progress(n, progress)
    videos = []
    try:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            gens = video_generators(seed, idx)
            noise = initial_noise(sit, gens, device)
            y = None
            if sit.num_classes > 0:
                ys = ([int(labels[i]) for i in idx] if labels is not None
                      else [int(torch.randint(sit.num_classes, (1,), generator=g)) for g in gens])
                y = torch.tensor(ys, dtype=torch.long, device=device)
            latents = sample_latents(sit, noise, sampler=sampler, steps=steps, cfg_scale=cfg_scale, labels=y,
                                     generators=gens, amp_dtype=amp_dtype)
            planes = denormalize(latents, stats)
            ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                video = reconstruct(tokenizer, planes, group_frames=group_frames)
            videos.append(_to_uint8(video))
            if bar is not None:
                bar.update(len(idx))
            elif progress:
                print(f"generated {idx[-1] + 1}/{n} videos", flush=True)
    finally:
        if bar is not None:
            bar.close()
        sit.train(modes[0])
        tokenizer.train(modes[1])
    if not videos:
        t, s = tokenizer.num_frames, tokenizer.img_size
        return np.zeros((0, t, s, s, 3), np.uint8)
    return np.concatenate(videos)
