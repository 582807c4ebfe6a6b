"""SiT generator over CoordTok triplanes: presets, model, transport (paths, loss, samplers), latent stats, sampling."""

from components.generator.latent_stats import LatentStats, denormalize, normalize
from components.generator.presets import SIT_PRESETS, SiTArch, sit_preset
from components.generator.sampling import generate_videos, sample_latents
from components.generator.sit import SiT, ema_update
from components.generator.transport import (
    GVPPath,
    LinearPath,
    Path,
    Transport,
    make_path,
    sample_ode,
    sample_sde,
)

__all__ = [
    "SIT_PRESETS",
    "GVPPath",
    "LatentStats",
    "LinearPath",
    "Path",
    "SiT",
    "SiTArch",
    "Transport",
    "denormalize",
    "ema_update",
    "generate_videos",
    "make_path",
    "normalize",
    "sample_latents",
    "sample_ode",
    "sample_sde",
    "sit_preset",
]
