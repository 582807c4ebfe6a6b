"""The compatibility variant of CoordTok that the authors' released checkpoints need.

`ReleasedCoordTok` is a `CoordTok` (same interface: `encode` -> `Triplane` in this project's plane
layout, `decode(planes, coords)` with this project's (t, x, y) coordinates, `reconstruct`,
`decode_frames`) whose layers compute what the released implementation computes. Every difference
from `CoordTok` is listed, with the reason, in docs/released_checkpoints.md; in short:

- the video ViT prepends a learned class token, uses no qkv bias and no padding mask;
- the triplane query blocks have no attention biases and LayerNorm eps 1e-6; queries have no
  positional embedding;
- padded video tokens are not masked in the cross-attention: the released code passes a float
  padding mask, which PyTorch *adds* to the logits (+1.0 for tokens at or after n_frames // ept);
- the decoder's position embedding is a learned table over every decoded patch position, indexed by
  truncating coordinate * (size - 1), instead of the fixed sin-cos embedding.

Plane names and coordinate order differ too (the released (t, x, y) is this project's (t, row, col)),
which the converter (components/checkpoint_import.py) absorbs by renaming and permuting weights, so
the triplanes this class returns are in this project's layout.

`tokenizer_from_config` / `load_tokenizer` build the right class for either checkpoint kind
(`config["variant"]` is "released" for this class; absent for `CoordTok`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from components.errors import UserError
from components.io import read_checkpoint
from components.tokenizer.model import DEFAULT_INIT, CoordTok, Triplane, init_weights, sample_triplane
from components.tokenizer.presets import TokenizerArch

__all__ = ["RELEASED_VARIANT", "ReleasedCoordTok", "load_tokenizer", "tokenizer_from_config"]

RELEASED_VARIANT = "released"
# The released query blocks (encoder_modules.TransformerDecoder) use LayerNorm(eps=1e-6); its ViT and
# decoder use timm's default nn.LayerNorm (eps 1e-5), as CoordTok does.
_QUERY_NORM_EPS = 1e-6
# The released code hands nn.MultiheadAttention a float key_padding_mask of 0/1, which is added to the
# attention logits: padded video tokens get +1.0, not -inf.
_PADDED_KEY_LOGIT_BIAS = 1.0


class ReleasedCoordTok(CoordTok):
    """CoordTok with the released checkpoint's architecture (see the module docstring)."""

    variant = RELEASED_VARIANT

    def __init__(self, arch: TokenizerArch, img_size: int, num_frames: int, init: str = DEFAULT_INIT):
        self._compat_built = False
        # The released model has no plane skip (this project's addition), whatever the preset says.
        super().__init__(arch.replace(plane_skip=False), img_size, num_frames, init)
        d, dd = arch.enc_embed_dim, arch.dec_embed_dim

        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        for blk in self.vit_blocks:  # timm Block default: qkv_bias=False
            blk.attn.qkv = nn.Linear(d, 3 * d, bias=False)
        for blk in self.enc_blocks:  # nn.MultiheadAttention(bias=False); LayerNorm(eps=1e-6)
            blk.norm1, blk.norm2, blk.norm3 = (nn.LayerNorm(d, eps=_QUERY_NORM_EPS) for _ in range(3))
            blk.cross_attn.q = nn.Linear(d, d, bias=False)
            blk.cross_attn.kv = nn.Linear(d, 2 * d, bias=False)
            blk.cross_attn.proj = nn.Linear(d, d, bias=False)
            blk.self_attn.qkv = nn.Linear(d, 3 * d, bias=False)
            blk.self_attn.proj = nn.Linear(d, d, bias=False)
        self.enc_norm = nn.LayerNorm(d, eps=_QUERY_NORM_EPS)
        del self.query_pos_embed  # the released queries carry no positional embedding
        del self.dec_pos_embed
        nt, ny, nx = self.grid
        self.dec_pos_table = nn.Parameter(torch.zeros(1, nt, ny, nx, dd))
        # Temporal token index of every video token (released padding rule: index >= n_frames // ept).
        t_index = torch.arange(self.enc_grid[0]).repeat_interleave(self.enc_grid[1] * self.enc_grid[2])
        self.register_buffer("token_t_index", t_index, persistent=False)

        self._compat_built = True
        self._init_weights()

    # ---- construction / checkpoints

    def _init_weights(self) -> None:
        if not self._compat_built:  # CoordTok.__init__ calls this before the layers above exist
            return
        init_weights(self, self.init_scheme, positions=(self.pos_embed, self.cross_pos_embed, self.cls_token),
                     queries=(self.query_xy, self.query_yt, self.query_xt), query_blocks=self.enc_blocks,
                     tables=[(self.dec_pos_table, self.dec_pos_table.shape[-1] ** -0.5)])  # release: width^-0.5

    @property
    def config(self) -> dict:
        return {**super().config, "variant": RELEASED_VARIANT}

    @classmethod
    def from_config(cls, config: dict) -> ReleasedCoordTok:
        return cls(TokenizerArch(**config["arch"]), int(config["img_size"]), int(config["num_frames"]))

    # ---- encoder

    def padding_bias(self, n_frames: Tensor) -> Tensor:
        """[B, N_video_tokens] float: +1.0 on the logits of tokens the released code flags as padding."""
        cutoff = torch.div(n_frames.to(self.token_t_index.device), self.arch.enc_patch_size_t, rounding_mode="floor")
        padded = self.token_t_index[None, :] >= cutoff.reshape(-1, 1)
        return padded.to(self.cross_pos_embed.dtype) * _PADDED_KEY_LOGIT_BIAS

    def _queries(self, batch: int) -> Tensor:
        q = [emb(plane).flatten(2).transpose(1, 2) for emb, plane in (
            (self.latent_embed_xy, self.query_xy), (self.latent_embed_yt, self.query_yt),
            (self.latent_embed_xt, self.query_xt))]
        return torch.cat(q, dim=1).expand(batch, -1, -1)

    def encode(self, video: Tensor, n_frames: Tensor | None = None) -> Triplane:
        """video [B, T, H, W, 3] in [-1, 1]; n_frames [B] -> Triplane (this project's layout).

        As released: padding frames are seen by the ViT, and padded tokens are *not* masked in the
        cross-attention (their logits get +1.0); see docs/released_checkpoints.md.
        """
        b = video.shape[0]
        x = self.video_tokens(video)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        for blk in self.vit_blocks:
            x = blk(x)
        context = self.vit_norm(x[:, 1:]) + self.cross_pos_embed
        bias = None if n_frames is None else self.padding_bias(n_frames).to(context.dtype)
        q = self._queries(b)
        for blk in self.enc_blocks:
            q = blk(q, context, bias)  # a float mask is added to the logits by scaled_dot_product_attention
        return self._planes_from_queries(self.enc_norm(q))

    # ---- decoder

    def table_index(self, coords: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, row, col) indices into the position table: truncated coord * (size - 1), as released.

        The truncation is the released code's; indices are clamped into the table so that coordinates
        slightly outside [0, 1] cannot index out of range (in range the clamp changes nothing).
        """
        nt, ny, nx = self.grid
        c = coords.to(torch.float32)
        it = (c[..., 0] * (nt - 1)).long().clamp_(0, nt - 1)
        ix = (c[..., 1] * (nx - 1)).long().clamp_(0, nx - 1)
        iy = (c[..., 2] * (ny - 1)).long().clamp_(0, ny - 1)
        return it, iy, ix

    def decode(self, planes: Triplane, coords: Tensor) -> Tensor:
        """coords [B, N, 3] (t, x, y) in [0, 1] -> patches [B, N, pt*p*p*3] ((pt, p, p, C) order)."""
        it, iy, ix = self.table_index(coords)
        h = self.dec_embed(sample_triplane(planes, coords)) + self.dec_pos_table[0, it, iy, ix]
        for blk in self.dec_blocks:
            h = blk(h)
        return self.dec_head(self.dec_norm(h))


# --------------------------------------------------------------------------------------------------
# Building / loading either kind of tokenizer checkpoint
# --------------------------------------------------------------------------------------------------

_VARIANTS: dict[str | None, type[CoordTok]] = {None: CoordTok, "native": CoordTok, RELEASED_VARIANT: ReleasedCoordTok}


def decode_group_frames(model: CoordTok, requested: int | None) -> int:
    """Decoder time steps per attention context when decoding `model`: `requested` (params'
    tokenizer.decode_group_frames) when set; else every step of the video at once for a converted
    release, as the released sampler (sample_sit.py decode_video) decodes, so its outputs match the
    release's; else 1."""
    if requested is not None:
        return int(requested)
    return int(model.grid[0]) if model.config.get("variant") == RELEASED_VARIANT else 1


def tokenizer_from_config(config: dict[str, Any]) -> CoordTok:
    """The model a checkpoint's `config` describes: `ReleasedCoordTok` when config["variant"] is
    "released", else `CoordTok`. (Usable as an MLflow builder: components.tokenizer.released:tokenizer_from_config.)"""
    variant = config.get("variant")
    if variant not in _VARIANTS:
        raise UserError(f"tokenizer config names variant {variant!r}, which this project does not know; "
                        f"use one of {sorted(v for v in _VARIANTS if v)} (or none)")
    return _VARIANTS[variant].from_config(config)


def load_tokenizer(config_or_path: dict[str, Any] | str | os.PathLike, map_location: str | torch.device = "cpu",
                   ) -> CoordTok:
    """A tokenizer from a config dict (fresh weights) or from a project checkpoint file (its weights).

    Files are read with torch.load(weights_only=True); either schema works (native or imported).
    """
    if isinstance(config_or_path, dict):
        return tokenizer_from_config(config_or_path)
    path = Path(config_or_path)
    ckpt = read_checkpoint(path, "tokenizer checkpoint", "train one (dvc repro pretrain) or import the released "
                           "one (python -m pipelines.import_checkpoint tokenizer ...)", "re-create it", map_location)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a project tokenizer checkpoint (needs 'config' and 'model'); "
                        "convert released checkpoints with python -m pipelines.import_checkpoint first")
    model = tokenizer_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model
