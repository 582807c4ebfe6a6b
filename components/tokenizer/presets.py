"""Named CoordTok architectures (like DiT's `DiT-XL/2`): params refer to them by name.

Field names follow the released CoordTok constructor so checkpoints map one-to-one.
`CoordTok-L` is the paper configuration (1280 tokens for a 128x128x128 video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerArch:
    enc_patch_size_xy: int      # encoder 3D patch embedding, spatial
    enc_patch_size_t: int       # encoder 3D patch embedding, temporal
    enc_embed_dim: int
    enc_patch_num_layers: int   # ViT blocks over the video patches
    enc_num_layers: int         # cross-then-self attention blocks (triplane queries)
    enc_num_heads: int
    latent_resolution_xy: int   # H' = W' of the triplane
    latent_resolution_t: int    # T' of the triplane
    latent_n_features: int      # channels per plane
    latent_patch_size_xy: int   # query tokens: planes cut into latent patches
    latent_patch_size_t: int
    dec_embed_dim: int
    dec_num_layers: int
    dec_num_heads: int
    dec_patch_size_xy: int      # decoded video patch, spatial
    dec_patch_size_t: int       # decoded video patch, temporal
    # This project's addition, not in the released model (off in the paper presets): each plane also
    # gets a linear projection of the encoder's video features averaged over the axis the plane lacks,
    # a direct local path from the video to the triplane (CoordTok.plane_skip).
    plane_skip: bool = False

    @property
    def num_tokens(self) -> int:
        """H'W' + W'T' + H'T' (1280 for the paper's 16x16x32 planes)."""
        s, t = self.latent_resolution_xy, self.latent_resolution_t
        return s * s + 2 * s * t

    @property
    def width(self) -> int:
        """The widest transformer (encoder or decoder): what decides whether bf16 pays on a CPU."""
        return max(self.enc_embed_dim, self.dec_embed_dim)

    def video_tokens(self, img_size: int, num_frames: int) -> int:
        """Encoder tokens of one clip: (T / enc_patch_t) x (H / enc_patch_xy)^2."""
        return (num_frames // self.enc_patch_size_t) * (img_size // self.enc_patch_size_xy) ** 2

    def replace(self, **changes: int | bool) -> "TokenizerArch":
        return dataclasses.replace(self, **changes)


_L = TokenizerArch(
    enc_patch_size_xy=16, enc_patch_size_t=8, enc_embed_dim=1024, enc_patch_num_layers=8,
    enc_num_layers=24, enc_num_heads=16, latent_resolution_xy=16, latent_resolution_t=32,
    latent_n_features=8, latent_patch_size_xy=8, latent_patch_size_t=16, dec_embed_dim=1024,
    dec_num_layers=24, dec_num_heads=16, dec_patch_size_xy=8, dec_patch_size_t=1,
)

TOKENIZER_PRESETS: dict[str, TokenizerArch] = {
    "CoordTok-L": _L,
    "CoordTok-B": _L.replace(enc_embed_dim=768, enc_num_layers=12, enc_num_heads=12, enc_patch_num_layers=6,
                             dec_embed_dim=768, dec_num_layers=12, dec_num_heads=12),
    "CoordTok-S": _L.replace(enc_embed_dim=384, enc_num_layers=8, enc_num_heads=6, enc_patch_num_layers=4,
                             dec_embed_dim=384, dec_num_layers=8, dec_num_heads=6),
    # CPU-sized: trains in minutes on 2 cores at 64x64x32 (the embedded default). The plane skip is
    # on: at equal CPU it learns ~4 dB faster here (docs/tokenizer-learning.md).
    "CoordTok-tiny": TokenizerArch(
        enc_patch_size_xy=8, enc_patch_size_t=4, enc_embed_dim=128, enc_patch_num_layers=2,
        enc_num_layers=2, enc_num_heads=4, latent_resolution_xy=8, latent_resolution_t=8,
        latent_n_features=8, latent_patch_size_xy=4, latent_patch_size_t=4, dec_embed_dim=128,
        dec_num_layers=2, dec_num_heads=4, dec_patch_size_xy=8, dec_patch_size_t=1, plane_skip=True,
    ),
}
