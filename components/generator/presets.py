"""Named SiT architectures over triplane latents (like SiT's `SiT-XL/2`): params refer to them by name.

Depth, width and heads are those of DiT/SiT; the trailing `/2` is the latent patch size. `SiT-L/2`
is the paper's generator. `SiT-tiny/2` is CPU-sized for the embedded default and tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from components.errors import UserError


@dataclass(frozen=True)
class SiTArch:
    depth: int          # transformer blocks
    hidden_size: int    # token width
    num_heads: int
    patch_size: int     # latent patch (p x p on every plane)
    mlp_ratio: float = 4.0

    def replace(self, **changes) -> SiTArch:
        return dataclasses.replace(self, **changes)


SIT_PRESETS: dict[str, SiTArch] = {
    "SiT-S/2": SiTArch(depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "SiT-B/2": SiTArch(depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "SiT-L/2": SiTArch(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "SiT-XL/2": SiTArch(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    "SiT-tiny/2": SiTArch(depth=4, hidden_size=128, num_heads=4, patch_size=2),
}


def sit_preset(name: str) -> SiTArch:
    """The architecture called `name`; a UserError listing the known names otherwise."""
    try:
        return SIT_PRESETS[name]
    except KeyError:
        raise UserError(f"unknown SiT preset {name!r}: use one of {', '.join(SIT_PRESETS)}") from None
