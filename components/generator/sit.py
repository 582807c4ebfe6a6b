"""SiT: a diffusion transformer with adaLN-Zero blocks over the three triplane planes.

Each plane (xy [B, C, S, S], yt [B, C, T', S], xt [B, C, T', S]) is cut into p x p patches by its own
patch embedding; the tokens of the three planes (xy, then yt, then xt, each row-major) share one
transformer. A token gets its plane's fixed 2D sin-cos position (yt and xt share one table: same
grid) plus a learned per-plane type embedding. The condition c = timestep embedding (+ class
embedding) modulates every block (adaLN-Zero) and the per-plane final layers, which map tokens back
to patches: the output has each input plane's shape (velocity prediction).

Module and parameter names mirror the released CoordTok SiT (`x_embedder_xy.proj`, `t_embedder.mlp`,
`y_embedder.embedding_table`, `blocks.N.{attn,mlp,adaLN_modulation}`, `final_layer_{xy,yt,xt}`,
`pos_embed_xy`, `pos_embed_t`, `type_embed`): with `num_classes=1, class_dropout_prob=0,
learn_sigma=True` the state dict has exactly the released keys and shapes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.generator.presets import SiTArch
from components.tokenizer.model import SelfAttention, Triplane

__all__ = [
    "FinalLayer",
    "LabelEmbedder",
    "SiT",
    "SiTBlock",
    "TimestepEmbedder",
    "ema_update",
    "patchify_plane",
    "sincos_pos_embed_2d",
    "timestep_embedding",
    "unpatchify_plane",
]

PLANES = ("xy", "yt", "xt")


# --------------------------------------------------------------------------------------------------
# Plane patches and positions
# --------------------------------------------------------------------------------------------------

def patchify_plane(x: Tensor, p: int) -> Tensor:
    """[B, C, R, S] -> [B, (R/p)(S/p), p*p*C], patches row-major, each flattened (p_row, p_col, C)."""
    b, c, r, s = x.shape
    if r % p or s % p:
        raise ValueError(f"plane {r}x{s} is not divisible into {p}x{p} patches")
    x = x.reshape(b, c, r // p, p, s // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (r // p) * (s // p), p * p * c)


def unpatchify_plane(tokens: Tensor, grid: tuple[int, int], p: int) -> Tensor:
    """Inverse of `patchify_plane`: [B, gr*gs, p*p*C] -> [B, C, gr*p, gs*p]."""
    b, n, d = tokens.shape
    gr, gs = grid
    c = d // (p * p)
    if n != gr * gs or c * p * p != d:
        raise ValueError(f"{n} tokens of size {d} do not make a {gr}x{gs} grid of {p}x{p} patches")
    x = tokens.reshape(b, gr, gs, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, gr * p, gs * p)


def sincos_pos_embed_2d(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2D sin-cos positions [rows*cols, dim] (row-major), float32.

    The first half of the channels encodes the column index, the second half the row index; each
    half is [sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/4)) (the MAE/DiT layout).
    Computed in float64 so the table does not depend on the device.
    """
    if dim % 4:
        raise ValueError(f"width {dim} must be divisible by 4 for a 2D sin-cos embedding")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        ang = pos.reshape(-1, 1) * omega
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    return torch.cat([axis(c), axis(r)], dim=1).to(torch.float32)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Conditioning embeddings
# --------------------------------------------------------------------------------------------------

def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) times t [B] -> [B, dim], laid out [cos | sin] as released.

    SiT feeds t in [0, 1] unscaled; keeping that keeps released weights usable.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t followed by an MLP (Linear, SiLU, Linear)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; with dropout_prob > 0 it has one extra row, the null class (index num_classes),
    which training labels are replaced by with probability dropout_prob (classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
        else:
            drop = force_drop_ids.to(labels.device).bool()
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """adaLN-Zero block: c gives (shift, scale, gate) for attention and for the MLP; gates start at 0."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)  # the tokenizer's fused attention; same qkv/proj names as SiT
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a linear map from a token to its p*p*C_out patch values."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """p x p patches of a plane -> tokens [B, N, D] (a strided convolution)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# SiT over a triplane
# --------------------------------------------------------------------------------------------------

class SiT(nn.Module):
    """Velocity model over triplanes: forward(planes, t, y=None) -> planes of the same shapes.

    num_classes=0: unconditional (the paper's setting; `y` must be None). num_classes>0: class
    conditional; class_dropout_prob>0 adds a null class for classifier-free guidance.
    learn_sigma=True only exists to load released weights (their final layers predict 2C channels,
    of which the second half is discarded, as in SiT).
    """

    def __init__(self, arch: SiTArch, in_channels: int, resolution_xy: int, resolution_t: int,
                 num_classes: int = 0, class_dropout_prob: float = 0.0, learn_sigma: bool = False):
        super().__init__()
        p, d = arch.patch_size, arch.hidden_size
        problems = [f"{what} ({n}) is not divisible by the patch size {p}"
                    for what, n in (("resolution_xy", resolution_xy), ("resolution_t", resolution_t)) if n % p]
        if d % arch.num_heads:
            problems.append(f"hidden_size ({d}) is not divisible by num_heads ({arch.num_heads})")
        if num_classes < 0 or not 0.0 <= class_dropout_prob < 1.0:
            problems.append(f"num_classes ({num_classes}) must be >= 0 and class_dropout_prob "
                            f"({class_dropout_prob}) in [0, 1)")
        if num_classes == 0 and class_dropout_prob > 0:
            problems.append("class_dropout_prob > 0 needs num_classes > 0")
        if problems:
            raise ValueError("SiT config: " + "; ".join(problems))
        self.arch, self.in_channels = arch, in_channels
        self.resolution_xy, self.resolution_t = resolution_xy, resolution_t
        self.num_classes, self.class_dropout_prob, self.learn_sigma = num_classes, class_dropout_prob, learn_sigma
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.grid_xy = (resolution_xy // p, resolution_xy // p)
        self.grid_t = (resolution_t // p, resolution_xy // p)  # yt and xt: rows t, cols space

        self.x_embedder_xy = PatchEmbed(in_channels, d, p)
        self.x_embedder_yt = PatchEmbed(in_channels, d, p)
        self.x_embedder_xt = PatchEmbed(in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(num_classes, d, class_dropout_prob) if num_classes > 0 else None
        # Fixed positions, persistent so a checkpoint carries them (released weights hold a learned t table).
        self.register_buffer("pos_embed_xy", sincos_pos_embed_2d(d, *self.grid_xy)[None])
        self.register_buffer("pos_embed_t", sincos_pos_embed_2d(d, *self.grid_t)[None])
        self.type_embed = nn.Parameter(torch.zeros(1, 3, d))
        self.blocks = nn.ModuleList([SiTBlock(d, arch.num_heads, arch.mlp_ratio) for _ in range(arch.depth)])
        self.final_layer_xy = FinalLayer(d, p, self.out_channels)
        self.final_layer_yt = FinalLayer(d, p, self.out_channels)
        self.final_layer_xt = FinalLayer(d, p, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT/SiT init: xavier linears, zeroed adaLN modulations and output layers (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.x_embedder_xy, self.x_embedder_yt, self.x_embedder_xt):
            w = emb.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(emb.proj.bias)
        nn.init.normal_(self.type_embed, std=1.0)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for fl in (self.final_layer_xy, self.final_layer_yt, self.final_layer_xt):
            for lin in (fl.adaLN_modulation[-1], fl.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    # ---- checkpoints

    @property
    def config(self) -> dict:
        """Plain dict that `from_config` rebuilds the model from (stored in checkpoints)."""
        return {"arch": dataclasses.asdict(self.arch), "in_channels": self.in_channels,
                "resolution_xy": self.resolution_xy, "resolution_t": self.resolution_t,
                "num_classes": self.num_classes, "class_dropout_prob": self.class_dropout_prob,
                "learn_sigma": self.learn_sigma}

    @classmethod
    def from_config(cls, config: dict) -> SiT:
        return cls(SiTArch(**config["arch"]), int(config["in_channels"]), int(config["resolution_xy"]),
                   int(config["resolution_t"]), num_classes=int(config.get("num_classes", 0)),
                   class_dropout_prob=float(config.get("class_dropout_prob", 0.0)),
                   learn_sigma=bool(config.get("learn_sigma", False)))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid_xy) + 2 * math.prod(self.grid_t)

    @property
    def plane_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(C, rows, cols) of xy, yt, xt."""
        c, s, t = self.in_channels, self.resolution_xy, self.resolution_t
        return (c, s, s), (c, t, s), (c, t, s)

    # ---- forward

    def _check(self, planes: Sequence[Tensor]) -> None:
        got = tuple(tuple(x.shape[1:]) for x in planes)
        if got != self.plane_shapes:
            raise ValueError(f"planes of shapes {got} but the model takes {self.plane_shapes}")

    def condition(self, t: Tensor, y: Tensor | None, batch: int, force_drop_ids: Tensor | None = None) -> Tensor:
        """c = t_embedder(t) (+ y_embedder(y)) -> [B, D]; a scalar t is broadcast to the batch."""
        t = torch.as_tensor(t, device=self.pos_embed_xy.device)
        if t.ndim == 0:
            t = t.expand(batch)
        c = self.t_embedder(t)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this SiT is unconditional (num_classes=0) but labels were given")
            return c
        if y is None:
            raise ValueError(f"this SiT is class-conditional ({self.num_classes} classes): pass labels y")
        return c + self.y_embedder(y, self.training, force_drop_ids)

    def forward(self, planes: Triplane | Sequence[Tensor], t: Tensor | float, y: Tensor | None = None,
                force_drop_ids: Tensor | None = None):
        """planes (Triplane or (xy, yt, xt)), t [B] in [0, 1] -> velocity of the same type and shapes."""
        is_triplane = isinstance(planes, Triplane)
        xs = (planes.xy, planes.yt, planes.xt) if is_triplane else tuple(planes)
        self._check(xs)
        b = xs[0].shape[0]
        embedders = (self.x_embedder_xy, self.x_embedder_yt, self.x_embedder_xt)
        positions = (self.pos_embed_xy, self.pos_embed_t, self.pos_embed_t)
        tokens = [emb(x) + pos + self.type_embed[:, i] for i, (emb, pos, x) in enumerate(zip(embedders, positions, xs))]
        sizes = [tok.shape[1] for tok in tokens]
        h = torch.cat(tokens, dim=1)
        c = self.condition(t, y, b, force_drop_ids)
        for blk in self.blocks:
            h = blk(h, c)
        outs = []
        for tok, final, grid in zip(h.split(sizes, dim=1), (self.final_layer_xy, self.final_layer_yt, self.final_layer_xt),
                                    (self.grid_xy, self.grid_t, self.grid_t)):
            out = unpatchify_plane(final(tok, c), grid, self.arch.patch_size)
            outs.append(out[:, :self.in_channels] if self.learn_sigma else out)
        return Triplane(*outs) if is_triplane else tuple(outs)

    def forward_with_cfg(self, planes: Triplane | Sequence[Tensor], t: Tensor | float, y: Tensor,
                         cfg_scale: float):
        """Classifier-free guidance: v_uncond + cfg_scale * (v_cond - v_uncond), one batched forward.

        cfg_scale == 1 is the plain conditional forward. Needs a null class (class_dropout_prob > 0).
        """
        if cfg_scale == 1.0:
            return self.forward(planes, t, y)
        if self.y_embedder is None or self.class_dropout_prob <= 0:
            raise ValueError("classifier-free guidance needs a class-conditional SiT trained with "
                             "class_dropout_prob > 0 (a null class); use cfg_scale=1")
        is_triplane = isinstance(planes, Triplane)
        xs = (planes.xy, planes.yt, planes.xt) if is_triplane else tuple(planes)
        b = xs[0].shape[0]
        t = torch.as_tensor(t, device=xs[0].device)
        t2 = t.expand(b).repeat(2) if t.ndim == 0 else t.repeat(2)
        y2 = torch.cat([y, torch.full_like(y, self.num_classes)])
        out = self.forward(tuple(torch.cat([x, x]) for x in xs), t2, y2)
        guided = tuple(u + cfg_scale * (c - u) for c, u in (o.chunk(2) for o in out))
        return Triplane(*guided) if is_triplane else guided


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers are copied.

    decay=0 copies the model (initialise the EMA with it). Works on DDP-unwrapped modules.
    """
    ema_params = dict(ema_model.named_parameters())
    for name, p in model.named_parameters():
        if decay == 0.0:
            ema_params[name].copy_(p)
        else:
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - decay)
    ema_buffers = dict(ema_model.named_buffers())
    for name, buf in model.named_buffers():
        ema_buffers[name].copy_(buf)
