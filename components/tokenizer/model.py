"""CoordTok: a video -> factorized triplane encoder and a coordinate-based patch decoder.

Plain torch (no Ray / MLflow / DVC). One file holds the whole model family; the architecture comes
from a `TokenizerArch` preset (components/tokenizer/presets.py).

Conventions (shared with components/data/sampling.py):
- a video is [B, T, H, W, 3] float in [-1, 1];
- a decoded patch is pt x p x p pixels (pt = dec_patch_size_t, p = dec_patch_size_xy); its index is
  (t, x, y) with x the column (width) axis and y the row (height) axis; the decoder grid is
  (Nt, Ny, Nx) = (T // pt, H // p, W // p);
- a patch coordinate is the index normalised per axis as i / (n - 1) (0 when n == 1), given to the
  decoder as (t, x, y) in [0, 1];
- a flattened patch is ordered (pt, p_rows, p_cols, C), as `gather_patches` returns it.

Triplane layout: xy [B, C, H', W'] (rows y, cols x), yt [B, C, T', H'] (rows t, cols y),
xt [B, C, T', W'] (rows t, cols x). A coordinate (t, x, y) reads xy at (x, y), yt at (y, t) and
xt at (x, t), bilinearly with the align-corners convention (c in [0, 1] -> c * (size - 1)).

Padding: frames >= n_frames are padding. A video token whose temporal patch starts at or beyond
n_frames is a padded key: it gets exactly zero attention weight in the encoder's ViT self-attention
and in the triplane cross-attention (boolean masks, True = attend), so the triplane does not depend
on the content of such frames at all. Padding frames that share a temporal encoder patch with a real
frame (n_frames not a multiple of enc_patch_size_t) are part of a real token and do influence it;
data loaders zero-pad them, so this is deterministic.

Decoding a whole video (`reconstruct`) or some frames of it (`decode_frames`) runs the decoder's
self-attention over "attention groups": `group_frames` consecutive decoder time-steps with all their
patches. Groups are fixed by (Nt, group_frames), so decoding some frames gives the same result as the
same frames of a full decode with the same `group_frames` (up to float rounding of differently sized
batches). A `region` decode attends only over the region's patches of the group: it is therefore
NOT the same as cropping a full decode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.tokenizer.presets import TokenizerArch

__all__ = [
    "CoordTok", "DEFAULT_INIT", "INIT_SCHEMES", "Triplane", "init_weights", "attend", "decode_frames", "grid_coords", "patchify", "read_plane",
    "decode_time_groups", "reconstruct", "sample_triplane", "unpatchify",
]


# --------------------------------------------------------------------------------------------------
# Triplane container
# --------------------------------------------------------------------------------------------------

@dataclass
class Triplane:
    """The three latent planes of a batch of videos.

    xy [B, C, H', W'] (rows y, cols x); yt [B, C, T', H'] (rows t, cols y); xt [B, C, T', W'] (rows t, cols x).
    """

    xy: Tensor
    yt: Tensor
    xt: Tensor

    @property
    def batch_size(self) -> int:
        return self.xy.shape[0]

    @property
    def channels(self) -> int:
        return self.xy.shape[1]

    @property
    def resolution(self) -> tuple[int, int]:
        """(spatial H' = W', temporal T')."""
        return self.xy.shape[-1], self.yt.shape[-2]

    @property
    def num_tokens(self) -> int:
        return self.xy[0, 0].numel() + self.yt[0, 0].numel() + self.xt[0, 0].numel()

    def _map(self, fn) -> "Triplane":
        return Triplane(fn(self.xy), fn(self.yt), fn(self.xt))

    def to(self, *args, **kwargs) -> "Triplane":
        return self._map(lambda p: p.to(*args, **kwargs))

    def float(self) -> "Triplane":
        return self._map(lambda p: p.float())

    def detach(self) -> "Triplane":
        return self._map(lambda p: p.detach())

    def index(self, idx: int | slice | Tensor | Sequence[int]) -> "Triplane":
        """Select batch entries (an int keeps the batch dimension)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        elif not isinstance(idx, (slice, Tensor)):
            idx = torch.as_tensor(list(idx), dtype=torch.long, device=self.xy.device)
        return self._map(lambda p: p[idx])

    __getitem__ = index

    def __len__(self) -> int:
        return self.batch_size

    @staticmethod
    def cat(planes: Sequence["Triplane"]) -> "Triplane":
        return Triplane(torch.cat([p.xy for p in planes]), torch.cat([p.yt for p in planes]),
                        torch.cat([p.xt for p in planes]))

    def to_tokens(self) -> Tensor:
        """[B, H'W' + T'H' + T'W', C]: xy (row-major y, x), then yt (t, y), then xt (t, x)."""
        return torch.cat([p.flatten(2).transpose(1, 2) for p in (self.xy, self.yt, self.xt)], dim=1)

    @classmethod
    def from_tokens(cls, tokens: Tensor, resolution_xy: int, resolution_t: int) -> "Triplane":
        """Inverse of `to_tokens`."""
        s, t = resolution_xy, resolution_t
        b, n, c = tokens.shape
        if n != s * s + 2 * s * t:
            raise ValueError(f"{n} tokens do not make a {s}x{s}x{t} triplane ({s * s + 2 * s * t} tokens)")
        xy, yt, xt = tokens.split([s * s, t * s, t * s], dim=1)
        return cls(xy.transpose(1, 2).reshape(b, c, s, s), yt.transpose(1, 2).reshape(b, c, t, s),
                   xt.transpose(1, 2).reshape(b, c, t, s))


# --------------------------------------------------------------------------------------------------
# Patches and coordinates
# --------------------------------------------------------------------------------------------------

def patchify(video: Tensor, pt: int, p: int) -> Tensor:
    """[B, T, H, W, C] -> [B, Nt, Ny, Nx, pt*p*p*C], each patch flattened in (pt, p_rows, p_cols, C) order."""
    b, t, h, w, c = video.shape
    if t % pt or h % p or w % p:
        raise ValueError(f"video {tuple(video.shape[1:4])} is not divisible into {pt}x{p}x{p} patches")
    x = video.reshape(b, t // pt, pt, h // p, p, w // p, p, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # b, nt, ny, nx, pt, p, p, c
    return x.reshape(b, t // pt, h // p, w // p, pt * p * p * c)


def unpatchify(patches: Tensor, pt: int, p: int) -> Tensor:
    """Exact inverse of `patchify`: [B, Nt, Ny, Nx, pt*p*p*C] -> [B, Nt*pt, Ny*p, Nx*p, C]."""
    b, nt, ny, nx, d = patches.shape
    c = d // (pt * p * p)
    if c * pt * p * p != d:
        raise ValueError(f"patch size {d} is not pt*p*p*C for pt={pt}, p={p}")
    x = patches.reshape(b, nt, ny, nx, pt, p, p, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, nt * pt, ny * p, nx * p, c)


def _axis_coords(idx: Tensor, n: int) -> Tensor:
    # float32 idx / float32 (n - 1): the same IEEE division as sampling.normalise_indices.
    return idx.to(torch.float32) / float(max(n - 1, 1))


def _coords(grid: tuple[int, int, int], ts: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Coordinates (t, x, y) of the patches ts x ys x xs, in (t, y, x)-major order: [len(ts)*len(ys)*len(xs), 3]."""
    nt, ny, nx = grid
    t, y, x = torch.meshgrid(_axis_coords(ts, nt), _axis_coords(ys, ny), _axis_coords(xs, nx), indexing="ij")
    return torch.stack([t, x, y], dim=-1).reshape(-1, 3)


def grid_coords(grid: tuple[int, int, int], frames: Sequence[int] | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """All normalised (t, x, y) patch coordinates of `grid` = (Nt, Ny, Nx): [n*Ny*Nx, 3].

    Ordered (t, y, x)-major, i.e. the order of `patchify(video)[b].reshape(-1, D)`. `frames` selects
    decoder time steps (patch indices along t, i.e. frame // dec_patch_size_t), default all.
    """
    nt, ny, nx = grid
    ts = (torch.arange(nt, device=device) if frames is None
          else torch.as_tensor(list(frames), dtype=torch.long, device=device))
    return _coords(grid, ts, torch.arange(ny, device=device), torch.arange(nx, device=device))


# --------------------------------------------------------------------------------------------------
# Plane reads
# --------------------------------------------------------------------------------------------------

def read_plane(plane: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Bilinear read of plane [B, C, R, S] at column u and row v in [0, 1] ([B, N] each) -> [B, N, C].

    Align-corners convention: u maps to u * (S - 1) pixels, v to v * (R - 1); out-of-range
    coordinates clamp to the border. Computed in float32 (also under autocast).
    """
    grid = torch.stack([u, v], dim=-1).to(torch.float32).mul(2.0).sub(1.0).unsqueeze(1)  # [B, 1, N, 2]
    out = F.grid_sample(plane.to(torch.float32), grid, mode="bilinear", padding_mode="border",
                        align_corners=True)  # [B, C, 1, N]
    return out.squeeze(2).transpose(1, 2)


def sample_triplane(planes: Triplane, coords: Tensor) -> Tensor:
    """Features at coordinates [B, N, 3] (t, x, y) -> [B, N, 3C]: concat(xy(x, y), yt(y, t), xt(x, t))."""
    t, x, y = coords.unbind(-1)
    return torch.cat([read_plane(planes.xy, x, y), read_plane(planes.yt, y, t), read_plane(planes.xt, x, t)], -1)


# --------------------------------------------------------------------------------------------------
# Transformer pieces
# --------------------------------------------------------------------------------------------------

def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Fused multi-head attention. q [B, h, Nq, d], k/v [B, h, Nk, d]; key_mask [B, Nk] bool, True = attend.

    Masked keys get logit -inf, hence exactly zero weight. (`attend(q, k, eye)` returns the weights.)
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        out = attend(*self.qkv_heads(x), key_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        m, h = context.shape[1], self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, key_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class CrossSelfBlock(nn.Module):
    """Triplane queries: cross-attention to the video features, self-attention among queries, MLP (pre-norm)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, q: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q = q + self.cross_attn(self.norm1(q), context, key_mask)
        q = q + self.self_attn(self.norm2(q))
        return q + self.mlp(self.norm3(q))


class SinCosPosEmbed3d(nn.Module):
    """Fixed sin-cos embedding of continuous (t, x, y) coordinates scaled to patch-grid units.

    Each axis gets 2 * (dim // 6) channels (sin and cos at geometric frequencies); the rest are zero.
    Works for any subset of positions (and for fractional ones). Tables are buffers (no host copies).
    """

    def __init__(self, dim: int, grid: tuple[int, int, int], temperature: float = 10000.0):
        super().__init__()
        nt, ny, nx = grid
        self.dim = dim
        f = dim // 6
        if f < 1:
            raise ValueError(f"width {dim} is too small for a 3D sin-cos embedding")
        self.register_buffer("scale", torch.tensor([nt - 1, nx - 1, ny - 1], dtype=torch.float32), persistent=False)
        self.register_buffer("omega", 1.0 / temperature ** (torch.arange(f, dtype=torch.float32) / f),
                             persistent=False)

    def forward(self, coords: Tensor) -> Tensor:
        pos = coords.to(torch.float32) * self.scale  # [..., 3] in grid units
        ang = pos[..., None] * self.omega  # [..., 3, f]
        emb = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)  # [..., 6f]
        return F.pad(emb, (0, self.dim - emb.shape[-1]))


def _resize_plane(plane: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, R, S] -> [B, C, *size]: unchanged when equal, else bilinear with antialiasing (an area-like
    average when shrinking, interpolation when growing), computed in float32."""
    if tuple(plane.shape[-2:]) == tuple(size):
        return plane
    return F.interpolate(plane.float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True).to(plane.dtype)


# --------------------------------------------------------------------------------------------------
# CoordTok
# --------------------------------------------------------------------------------------------------

# How CoordTok's weights start. "release" is what the authors' released code gets from PyTorch's and
# timm's defaults; "vit" is the ViT/MAE convention (std-0.02 linears and positions); "positions" is
# "vit" with the release's unit-scale encoder position embeddings. Measured on the embedded default
# (benchmarks/tokenizer_learning.py, docs/tokenizer-learning.md), "release" reaches +1.7 dB test PSNR
# at the same CPU budget, from its larger linear layers ("positions" gains nothing), but overfits
# one clip worse (tests/test_tokenizer.py: 24.9 dB where "vit" and "positions" pass 28 dB).
INIT_SCHEMES = ("release", "vit", "positions")
DEFAULT_INIT = "vit"


def init_weights(model: nn.Module, scheme: str, positions: Sequence[Tensor], queries: Sequence[Tensor],
                 query_pos: Tensor | None = None, query_blocks: Sequence[nn.Module] = (),
                 tables: Sequence[tuple[Tensor, float]] = ()) -> None:
    """Initialise `model` in place by `scheme` (see INIT_SCHEMES).

    positions: learned encoder position embeddings (and class tokens); queries: the learnable
    triplane query planes; query_pos: the query position embedding (CoordTok only);
    query_blocks: blocks whose attention projections the release initialises the way
    nn.MultiheadAttention does (xavier-uniform, no bias); tables: (tensor, the release's std) of
    other learned position tables. "vit" draws in the order this project always has, so a seed
    gives the weights it gave before the schemes existed.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; use one of {INIT_SCHEMES}")
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            if scheme == "release":
                m.reset_parameters()  # PyTorch's default: kaiming-uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in))
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:  # patch embeddings: xavier on the flattened kernel
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
    if scheme == "release":
        for blk in query_blocks:  # nn.MultiheadAttention: xavier-uniform on the joint in-projection
            for attn in (blk.cross_attn, blk.self_attn):
                for lin in (getattr(attn, "q", None), getattr(attn, "kv", None), getattr(attn, "qkv", None)):
                    if lin is not None:
                        d = lin.weight.shape[1]
                        bound = math.sqrt(6.0 / (d + 3 * d))  # fan_out of the joint [3d, d] matrix
                        nn.init.uniform_(lin.weight, -bound, bound)
                        if lin.bias is not None:
                            nn.init.zeros_(lin.bias)
                if attn.proj.bias is not None:
                    nn.init.zeros_(attn.proj.bias)
    with torch.no_grad():
        for p in positions:
            if scheme in ("release", "positions"):
                p.normal_(0.0, 1.0)  # torch.randn, as released
            else:
                nn.init.trunc_normal_(p, std=0.02)
        if query_pos is not None:
            if scheme == "release":  # the release has none: start from zero (the query planes differ already)
                nn.init.zeros_(query_pos)
            else:
                nn.init.trunc_normal_(query_pos, std=0.02)
        for p, release_std in tables:
            if scheme in ("release", "positions"):
                p.normal_(0.0, release_std)
            else:
                nn.init.trunc_normal_(p, std=0.02)
        for p in queries:
            nn.init.trunc_normal_(p, std=1.0, a=-2.0, b=2.0)


class CoordTok(nn.Module):
    """Encoder (3D patch ViT + triplane cross/self-attention) and coordinate-based patch decoder."""

    def __init__(self, arch: TokenizerArch, img_size: int, num_frames: int, init: str = DEFAULT_INIT):
        super().__init__()
        a = arch
        self.arch, self.img_size, self.num_frames = arch, img_size, num_frames
        ept, ep, dpt, dp = a.enc_patch_size_t, a.enc_patch_size_xy, a.dec_patch_size_t, a.dec_patch_size_xy
        s, lt, lps, lpt = a.latent_resolution_xy, a.latent_resolution_t, a.latent_patch_size_xy, a.latent_patch_size_t
        problems = [f"{what} ({n}) is not divisible by {by}" for what, n, by in [
            ("img_size", img_size, ep), ("img_size", img_size, dp), ("num_frames", num_frames, ept),
            ("num_frames", num_frames, dpt), ("latent_resolution_xy", s, lps), ("latent_resolution_t", lt, lpt),
        ] if n % by]
        if problems:
            raise ValueError("CoordTok config: " + "; ".join(problems))
        d, c = a.enc_embed_dim, a.latent_n_features
        self.grid: tuple[int, int, int] = (num_frames // dpt, img_size // dp, img_size // dp)
        self.enc_grid = (num_frames // ept, img_size // ep, img_size // ep)
        n_video = math.prod(self.enc_grid)
        # Query token layout: xy (s/lps)^2 patches, then yt and xt (lt/lpt)*(s/lps) each.
        self.query_grid_xy = (s // lps, s // lps)
        self.query_grid_t = (lt // lpt, s // lps)
        n_query = math.prod(self.query_grid_xy) + 2 * math.prod(self.query_grid_t)

        # --- encoder: video patches -> ViT
        self.patch_embed = nn.Conv3d(3, d, kernel_size=(ept, ep, ep), stride=(ept, ep, ep))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_video, d))
        self.vit_blocks = nn.ModuleList([Block(d, a.enc_num_heads) for _ in range(a.enc_patch_num_layers)])
        self.vit_norm = nn.LayerNorm(d)
        self.cross_pos_embed = nn.Parameter(torch.zeros(1, n_video, d))
        # Temporal start frame of every video token (for the padding mask).
        t_start = torch.arange(self.enc_grid[0]).repeat_interleave(self.enc_grid[1] * self.enc_grid[2]) * ept
        self.register_buffer("token_t_start", t_start, persistent=False)

        # --- encoder: learnable triplane queries, cut into latent patches
        self.query_xy = nn.Parameter(torch.zeros(1, c, s, s))
        self.query_yt = nn.Parameter(torch.zeros(1, c, lt, s))
        self.query_xt = nn.Parameter(torch.zeros(1, c, lt, s))
        self.latent_embed_xy = nn.Conv2d(c, d, kernel_size=lps, stride=lps)
        self.latent_embed_yt = nn.Conv2d(c, d, kernel_size=(lpt, lps), stride=(lpt, lps))
        self.latent_embed_xt = nn.Conv2d(c, d, kernel_size=(lpt, lps), stride=(lpt, lps))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, n_query, d))
        self.enc_blocks = nn.ModuleList([CrossSelfBlock(d, a.enc_num_heads) for _ in range(a.enc_num_layers)])
        self.enc_norm = nn.LayerNorm(d)
        self.latent_proj_xy = nn.Linear(d, c * lps * lps)
        self.latent_proj_yt = nn.Linear(d, c * lpt * lps)
        self.latent_proj_xt = nn.Linear(d, c * lpt * lps)

        # --- decoder
        dd = a.dec_embed_dim
        self.dec_embed = nn.Linear(3 * c, dd)
        self.dec_pos_embed = SinCosPosEmbed3d(dd, self.grid)
        self.dec_blocks = nn.ModuleList([Block(dd, a.dec_num_heads) for _ in range(a.dec_num_layers)])
        self.dec_norm = nn.LayerNorm(dd)
        self.dec_head = nn.Linear(dd, dpt * dp * dp * 3)

        # --- plane skip (arch.plane_skip; this project's, not the release's): one linear map per plane
        # from the encoder's video features averaged over the axis that plane lacks (xy: time, yt: x,
        # xt: y), resampled to the plane's size and added to it. The queries must first learn where to
        # look before any local detail reaches the planes; this path carries it from the first step.
        self.plane_skip = nn.ModuleList([nn.Linear(d, c) for _ in range(3)]) if a.plane_skip else None

        self.init_scheme = init
        self._init_weights()

    # ---- construction / checkpoints

    def _init_weights(self) -> None:
        init_weights(self, self.init_scheme, positions=(self.pos_embed, self.cross_pos_embed),
                     queries=(self.query_xy, self.query_yt, self.query_xt), query_pos=self.query_pos_embed,
                     query_blocks=self.enc_blocks)
        if self.plane_skip is not None:  # starts as the query path alone (measured this way)
            for lin in self.plane_skip:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    @property
    def config(self) -> dict:
        return {"arch": dataclasses.asdict(self.arch), "img_size": self.img_size, "num_frames": self.num_frames}

    @classmethod
    def from_config(cls, config: dict) -> "CoordTok":
        return cls(TokenizerArch(**config["arch"]), int(config["img_size"]), int(config["num_frames"]))

    @property
    def num_tokens(self) -> int:
        return self.arch.num_tokens

    @property
    def patch_size(self) -> tuple[int, int]:
        """(pt, p) of a decoded patch."""
        return self.arch.dec_patch_size_t, self.arch.dec_patch_size_xy

    # ---- encoder

    def padding_mask(self, n_frames: Tensor) -> Tensor:
        """[B, N_video_tokens] bool, True for real tokens (temporal patch starts before n_frames)."""
        return self.token_t_start[None, :] < n_frames.to(self.token_t_start.device)[:, None]

    def video_tokens(self, video: Tensor) -> Tensor:
        """[B, T, H, W, 3] -> embedded video patches with positions [B, N_video_tokens, D]."""
        b, t, h, w, ch = video.shape
        if (t, h, w, ch) != (self.num_frames, self.img_size, self.img_size, 3):
            raise ValueError(f"video of shape {tuple(video.shape[1:])} but the model takes "
                             f"({self.num_frames}, {self.img_size}, {self.img_size}, 3)")
        x = self.patch_embed(video.permute(0, 4, 1, 2, 3))  # [B, D, t', h', w']
        return x.flatten(2).transpose(1, 2) + self.pos_embed

    def _queries(self, batch: int) -> Tensor:
        q = [emb(plane).flatten(2).transpose(1, 2) for emb, plane in (
            (self.latent_embed_xy, self.query_xy), (self.latent_embed_yt, self.query_yt),
            (self.latent_embed_xt, self.query_xt))]
        return (torch.cat(q, dim=1) + self.query_pos_embed).expand(batch, -1, -1)

    def _unpatch_plane(self, tokens: Tensor, proj: nn.Linear, grid: tuple[int, int], kernel: tuple[int, int]) -> Tensor:
        b, c = tokens.shape[0], self.arch.latent_n_features
        (gh, gw), (kh, kw) = grid, kernel
        x = proj(tokens).view(b, gh, gw, c, kh, kw).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, gh * kh, gw * kw)

    def encode(self, video: Tensor, n_frames: Tensor | None = None) -> Triplane:
        """video [B, T, H, W, 3] in [-1, 1]; n_frames [B] (frames >= n_frames are padding) -> Triplane."""
        key_mask = None
        if n_frames is not None:
            if n_frames.device.type == "cpu":
                if not bool((n_frames >= 1).all()):
                    raise ValueError(f"n_frames must be >= 1 for every video, got {n_frames.tolist()}")
            else:  # no host sync on accelerators: a device-side check
                torch._assert_async((n_frames >= 1).all(), "n_frames must be >= 1 for every video")
            key_mask = self.padding_mask(n_frames)
        x = self.video_tokens(video)
        for blk in self.vit_blocks:
            x = blk(x, key_mask)
        features = self.vit_norm(x)
        context = features + self.cross_pos_embed
        q = self._queries(video.shape[0])
        for blk in self.enc_blocks:
            q = blk(q, context, key_mask)
        planes = self._planes_from_queries(self.enc_norm(q))
        return planes if self.plane_skip is None else self._add_plane_skip(planes, features, key_mask)

    def _add_plane_skip(self, planes: Triplane, features: Tensor, key_mask: Tensor | None) -> Triplane:
        """planes + per-plane Linear(video features averaged over the missing axis), resampled to the
        plane's size. Padded tokens are zeroed first, so (as everywhere in the encoder) the triplane does
        not depend on the content of padding frames; the xy average is over real time steps only."""
        b = features.shape[0]
        nt, ny, nx = self.enc_grid
        grid = features.view(b, nt, ny, nx, -1)  # video tokens are (t, y, x)-major
        if key_mask is None:
            over_t = grid.mean(1)
        else:
            real = key_mask.view(b, nt, ny, nx, 1).to(grid.dtype)
            grid = grid * real
            over_t = grid.sum(1) / real.sum(1).clamp_min(1)
        s, lt = self.arch.latent_resolution_xy, self.arch.latent_resolution_t
        skip_xy, skip_yt, skip_xt = (
            _resize_plane(lin(pooled).permute(0, 3, 1, 2), size) for lin, pooled, size in (
                (self.plane_skip[0], over_t, (s, s)),            # [B, y, x, D] -> xy rows y, cols x
                (self.plane_skip[1], grid.mean(3), (lt, s)),     # [B, t, y, D] -> yt rows t, cols y
                (self.plane_skip[2], grid.mean(2), (lt, s))))    # [B, t, x, D] -> xt rows t, cols x
        return Triplane(planes.xy + skip_xy, planes.yt + skip_yt, planes.xt + skip_xt)

    def _planes_from_queries(self, q: Tensor) -> Triplane:
        """Encoded query tokens [B, N_xy + 2 N_t, D] -> the three planes (each cut back from its latent patches)."""
        n_xy, n_t = math.prod(self.query_grid_xy), math.prod(self.query_grid_t)
        q_xy, q_yt, q_xt = q.split([n_xy, n_t, n_t], dim=1)
        lps, lpt = self.arch.latent_patch_size_xy, self.arch.latent_patch_size_t
        return Triplane(
            self._unpatch_plane(q_xy, self.latent_proj_xy, self.query_grid_xy, (lps, lps)),
            self._unpatch_plane(q_yt, self.latent_proj_yt, self.query_grid_t, (lpt, lps)),
            self._unpatch_plane(q_xt, self.latent_proj_xt, self.query_grid_t, (lpt, lps)),
        )

    # ---- decoder

    def decode(self, planes: Triplane, coords: Tensor) -> Tensor:
        """coords [B, N, 3] (t, x, y) in [0, 1] -> patches [B, N, pt*p*p*3] ((pt, p, p, C) order).

        The N coordinate tokens of a sample attend to each other (one attention context per row).
        """
        h = self.dec_embed(sample_triplane(planes, coords)) + self.dec_pos_embed(coords)
        for blk in self.dec_blocks:
            h = blk(h)
        return self.dec_head(self.dec_norm(h))

    def forward(self, video: Tensor, coords: Tensor, n_frames: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(video, n_frames), coords)


# --------------------------------------------------------------------------------------------------
# Full and random-access decoding
# --------------------------------------------------------------------------------------------------

def _groups(nt: int, group_frames: int) -> list[tuple[int, int]]:
    g = max(1, min(int(group_frames), nt))
    return [(s, min(s + g, nt)) for s in range(0, nt, g)]


def _decode_groups(model: CoordTok, planes: Triplane, groups: list[tuple[int, int]], ys: Tensor, xs: Tensor,
                   max_tokens_per_chunk: int) -> Tensor:
    """Decode attention groups (time-step ranges) over patch rows ys x cols xs.

    Returns [B, sum of group lengths, len(ys), len(xs), D] in the order of `groups`. Groups of equal
    length are batched as extra rows, in chunks of at most max_tokens_per_chunk tokens (at least one
    group per chunk: a group is never split, which would change its attention context).
    """
    b, dev = planes.batch_size, planes.xy.device
    ny, nx = len(ys), len(xs)
    by_len: dict[int, list[int]] = {}
    for i, (s, e) in enumerate(groups):
        by_len.setdefault(e - s, []).append(i)
    pieces: list[Tensor | None] = [None] * len(groups)
    for length, members in by_len.items():
        starts = torch.tensor([groups[i][0] for i in members], device=dev)
        ts = (starts[:, None] + torch.arange(length, device=dev)).reshape(-1)
        coords = _coords(model.grid, ts, ys, xs).view(len(members), length * ny * nx, 3)
        rows = b * len(members)
        coords = coords.repeat(b, 1, 1)  # row r: sample r // n_groups, group r % n_groups
        batch_idx = torch.arange(b, device=dev).repeat_interleave(len(members))
        per_chunk = max(1, max_tokens_per_chunk // (length * ny * nx))
        out = torch.cat([model.decode(planes.index(batch_idx[r:r + per_chunk]), coords[r:r + per_chunk])
                         for r in range(0, rows, per_chunk)])
        out = out.view(b, len(members), length, ny, nx, -1)
        for j, i in enumerate(members):
            pieces[i] = out[:, j]
    return torch.cat(pieces, dim=1)


@torch.no_grad()
def reconstruct(model: CoordTok, planes: Triplane, group_frames: int = 1,
                max_tokens_per_chunk: int = 16384) -> Tensor:
    """Decode every patch of the video: [B, T, H, W, 3].

    The decoder attends within groups of `group_frames` consecutive decoder time steps (the last
    group is shorter when Nt is not a multiple); groups are batched into chunks of at most
    `max_tokens_per_chunk` tokens, which changes memory use but not the result.
    """
    nt, ny, nx = model.grid
    dev = planes.xy.device
    patches = _decode_groups(model, planes, _groups(nt, group_frames), torch.arange(ny, device=dev),
                             torch.arange(nx, device=dev), max_tokens_per_chunk)
    return unpatchify(patches, *model.patch_size)


@torch.no_grad()
def decode_frames(model: CoordTok, planes: Triplane, frames: Sequence[int], group_frames: int = 1,
                  region: tuple[int, int, int, int] | None = None, max_tokens_per_chunk: int = 16384) -> Tensor:
    """Random access: decode only the attention groups holding `frames` -> [B, len(frames), H, W, 3].

    `frames` are video frame indices (any order, repeats allowed). The result equals the same frames
    of `reconstruct(model, planes, group_frames)` (up to float rounding of batching).

    `region=(y0, x0, h, w)` in pixels (multiples of the decoder patch size) decodes only that region's
    patches -> [B, len(frames), h, w, 3]. The region's patches form their own attention context (the
    group's frames x the region), so a region decode is NOT bit-identical to cropping a full decode.
    """
    nt, ny, nx = model.grid
    pt, p = model.patch_size
    frames = [int(f) for f in frames]
    if not frames:
        raise ValueError("decode_frames needs at least one frame")
    bad = [f for f in frames if not 0 <= f < nt * pt]
    if bad:
        raise ValueError(f"frames {bad} are outside the video's {nt * pt} frames")
    dev = planes.xy.device
    if region is None:
        ys, xs = torch.arange(ny, device=dev), torch.arange(nx, device=dev)
    else:
        y0, x0, h, w = (int(v) for v in region)
        if any(v % p for v in (y0, x0, h, w)) or h <= 0 or w <= 0 or y0 < 0 or x0 < 0 \
                or y0 + h > ny * p or x0 + w > nx * p:
            raise ValueError(f"region {region} must be positive multiples of {p} pixels inside "
                             f"the {ny * p}x{nx * p} frame")
        ys = torch.arange(y0 // p, (y0 + h) // p, device=dev)
        xs = torch.arange(x0 // p, (x0 + w) // p, device=dev)
    all_groups = _groups(nt, group_frames)
    g = all_groups[0][1] - all_groups[0][0]
    groups = [all_groups[i] for i in sorted({(f // pt) // g for f in frames})]
    patches = _decode_groups(model, planes, groups, ys, xs, max_tokens_per_chunk)
    video = unpatchify(patches, pt, p)  # frames of the decoded groups, in group order
    first_frame = {}
    offset = 0
    for s, e in groups:
        first_frame[s] = offset
        offset += (e - s) * pt
    pos = [first_frame[((f // pt) // g) * g] + f - ((f // pt) // g) * g * pt for f in frames]
    return video[:, torch.tensor(pos, device=dev)]


def decode_time_groups(model: CoordTok, planes: Triplane, starts: Tensor, length: int,
                       max_tokens_per_chunk: int | None = None) -> Tensor:
    """Differentiable frame-sampling decode (fine-tuning): every patch of G attention groups per video.

    starts [B, G] are decoder time steps where each group begins; a group is `length` consecutive
    time steps with all their patches in one attention context, as in `reconstruct(model, planes,
    group_frames=length)` when the starts are multiples of `length`. Returns [B, G, length*pt, H, W, 3].
    """
    nt, ny, nx = model.grid
    b, g = starts.shape
    dev = planes.xy.device
    if length < 1 or bool((starts < 0).any()) or bool((starts + length > nt).any()):
        raise ValueError(f"groups of {length} time steps starting at {starts.tolist()} do not fit in {nt} steps")
    ts = starts.reshape(-1, 1) + torch.arange(length, device=dev)  # [B*G, L]
    tok = length * ny * nx
    yx = _coords(model.grid, torch.zeros(1, dtype=torch.long, device=dev), torch.arange(ny, device=dev),
                 torch.arange(nx, device=dev))[:, 1:]  # [Ny*Nx, 2] (x, y)
    t_norm = _axis_coords(ts, nt)  # [B*G, L]
    coords = torch.cat([t_norm[:, :, None, None].expand(-1, -1, ny * nx, 1),
                        yx[None, None].expand(b * g, length, -1, -1)], dim=-1).reshape(b * g, tok, 3)
    rows = torch.arange(b, device=dev).repeat_interleave(g)
    per_chunk = b * g if max_tokens_per_chunk is None else max(1, max_tokens_per_chunk // tok)
    out = torch.cat([model.decode(planes.index(rows[r:r + per_chunk]), coords[r:r + per_chunk])
                     for r in range(0, b * g, per_chunk)])
    video = unpatchify(out.view(b * g, length, ny, nx, -1), *model.patch_size)
    return video.view(b, g, *video.shape[1:])
