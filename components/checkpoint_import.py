"""Import the authors' released CoordTok / SiT checkpoints into this project's checkpoint schema.

Plain torch. A conversion is a list of `Mapping`s (released tensor names -> project tensor names,
with a forward transform and its inverse). `convert_state_dict` applies them strictly:
every source tensor is used or deliberately dropped (with a reason), every target tensor is filled,
shapes must match, otherwise one `ConversionError` lists every problem. The inverse direction
(`export_state_dict`) exists so that tests can produce released-format state dicts from this
project's models.

Released files are read with `torch.load(weights_only=True)` only. The SiT training script stores its
`argparse.Namespace` in the checkpoint; that one class is allow-listed (a plain attribute container,
no code runs when it is restored), nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from components.errors import UserError
from components.io import atomic_open
from components.tokenizer.presets import TokenizerArch

__all__ = [
    "TOKENIZER_DROPS",
    "ConversionError",
    "Mapping",
    "convert_released_sit",
    "convert_released_tokenizer",
    "convert_state_dict",
    "export_state_dict",
    "find_state_dict",
    "import_sit",
    "import_tokenizer",
    "parse_released_stats_log",
    "read_released_checkpoint",
    "released_sit_mappings",
    "released_tokenizer_mappings",
    "strip_prefixes",
    "write_checkpoint",
]

# Prefixes wrappers add to every key: DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 25


class ConversionError(UserError):
    """A released checkpoint does not map onto the target model; the message lists every problem."""


# --------------------------------------------------------------------------------------------------
# Reading released files
# --------------------------------------------------------------------------------------------------

def read_released_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load(path, weights_only=True), allowing argparse.Namespace; a UserError if that fails."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"released checkpoint {path} does not exist; download it first (see docs/released_checkpoints.md)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except Exception as e:  # noqa: BLE001 - every unpickling failure gets the same one-sentence answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path} with torch.load(weights_only=True) ({first}); it is either not a "
                        "PyTorch checkpoint or holds objects other than tensors and plain containers, which this "
                        "project will not unpickle: re-save its state dict (torch.save(ckpt['model'], ...)) "
                        "from a trusted environment") from None


def _can_mmap(path: Path) -> bool:
    # mmap keeps a 3.4 GB checkpoint out of RAM; it needs the zip format (torch >= 1.6 default).
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, MappingABC) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def find_state_dict(ckpt: Any, prefer: Iterable[str] = ("model", "state_dict", "ema")) -> tuple[str | None, dict[str, Tensor]]:
    """(key, state dict) of a loaded checkpoint: the first of `prefer` holding one, or ckpt itself."""
    if _is_state_dict(ckpt):
        return None, dict(ckpt)
    if isinstance(ckpt, MappingABC):
        for key in prefer:
            if key in ckpt and _is_state_dict(ckpt[key]):
                return key, dict(ckpt[key])
        keys = ", ".join(repr(k) for k in list(ckpt)[:10])
        raise UserError(f"no state dict found under {', '.join(repr(k) for k in prefer)} (top-level keys: {keys}); "
                        "this is not a released CoordTok/SiT checkpoint")
    raise UserError(f"the checkpoint holds a {type(ckpt).__name__}, not a dict of tensors or a dict with a state dict")


def strip_prefixes(state: dict[str, Tensor], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """Remove leading DDP/compile wrapper prefixes (repeatedly: 'module._orig_mod.x' -> 'x')."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        if key in out:
            raise UserError(f"two tensors map to {key!r} after removing wrapper prefixes; the checkpoint is inconsistent")
        out[key] = value
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Mappings and the strict converter
# --------------------------------------------------------------------------------------------------

Transform = Callable[[list[Tensor]], list[Tensor]]


def _same(ts: list[Tensor]) -> list[Tensor]:
    return ts


@dataclass(frozen=True)
class Mapping:
    """Released tensors `sources` -> project tensors `targets` (forward), and back (inverse)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    forward: Transform = _same
    inverse: Transform = _same
    note: str = ""


def rename(src: str, dst: str) -> Mapping:
    return Mapping((src,), (dst,))


def _permute(dims: tuple[int, ...]) -> Transform:
    return lambda ts: [ts[0].permute(*dims).contiguous()]


def _split_rows(first: int) -> Transform:
    return lambda ts: [ts[0][:first].clone(), ts[0][first:].clone()]


def _cat_rows(ts: list[Tensor]) -> list[Tensor]:
    return [torch.cat(ts, dim=0)]


def _reorder_rows(src_shape: tuple[int, ...], perm: tuple[int, ...]) -> Transform:
    """Rows of a Linear weight/bias indexed by a flattened `src_shape` are reordered by `perm`."""
    def fn(ts: list[Tensor]) -> list[Tensor]:
        t = ts[0]
        return [t.reshape(*src_shape, *t.shape[1:]).permute(*perm, *range(len(src_shape), t.dim() + len(src_shape) - 1))
                .reshape(t.shape).contiguous()]
    return fn


def _reorder_cols(blocks: tuple[int, ...]) -> Transform:
    """Columns of a weight, in equal blocks, reordered: block i of the output is block blocks[i] of the input."""
    def fn(ts: list[Tensor]) -> list[Tensor]:
        t = ts[0]
        parts = t.chunk(len(blocks), dim=1)
        return [torch.cat([parts[i] for i in blocks], dim=1).contiguous()]
    return fn


@dataclass
class ConversionReport:
    used: list[str]
    dropped: dict[str, str]
    mapped: int

    def as_dict(self) -> dict[str, Any]:
        return {"source_tensors_used": len(self.used), "source_tensors_dropped": dict(sorted(self.dropped.items())),
                "target_tensors": self.mapped}


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def convert_state_dict(source: dict[str, Tensor], mappings: list[Mapping], target_shapes: dict[str, torch.Size],
                       drops: list[tuple[str, str]] = (), target_dtypes: dict[str, torch.dtype] | None = None,
                       what: str = "checkpoint") -> tuple[dict[str, Tensor], ConversionReport]:
    """Apply `mappings` to `source` strictly; returns (target state dict, report).

    `drops` are (regex, reason): source tensors matching one are deliberately not converted. Raises
    ConversionError naming every missing source tensor, unknown source tensor, unfilled target and
    shape mismatch.
    """
    missing_src = sorted({s for m in mappings for s in m.sources if s not in source})
    consumed = {s for m in mappings for s in m.sources}
    dropped, unknown = {}, []
    for key in source:
        if key in consumed:
            continue
        reason = next((r for pattern, r in drops if re.match(pattern, key)), None)
        if reason is None:
            unknown.append(key)
        else:
            dropped[key] = reason
    out: dict[str, Tensor] = {}
    mismatched = []
    for m in mappings:
        if any(s not in source for s in m.sources):
            continue
        try:
            produced = m.forward([source[s] for s in m.sources])
        except (RuntimeError, ValueError, IndexError):  # the source's shape does not fit the layout change
            src = "+".join(f"{s} {tuple(source[s].shape)}" for s in m.sources)
            mismatched.append(f"{'/'.join(m.targets)} cannot be made from {src} ({m.note})")
            continue
        for name, tensor in zip(m.targets, produced, strict=True):
            want = target_shapes.get(name)
            if want is None:
                continue  # reported as an unknown target below
            if tuple(tensor.shape) != tuple(want):
                src = "+".join(f"{s} {tuple(source[s].shape)}" for s in m.sources)
                mismatched.append(f"{name} needs {tuple(want)} but {src} gives {tuple(tensor.shape)}")
                continue
            if target_dtypes is not None and name in target_dtypes and tensor.is_floating_point():
                tensor = tensor.to(target_dtypes[name])
            out[name] = tensor
    unknown_targets = sorted({t for m in mappings for t in m.targets if t not in target_shapes})
    unfilled = sorted(set(target_shapes) - set(out) - {t for m in mappings for t in m.targets if t in target_shapes
                                                        and any(s not in source for s in m.sources)})
    problems = []
    if missing_src:
        problems.append(f"{len(missing_src)} expected tensors are missing from the {what}: {_listing(missing_src)}")
    if unknown:
        problems.append(f"{len(unknown)} tensors of the {what} have no place in the model: {_listing(sorted(unknown))}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if unfilled:
        problems.append(f"{len(unfilled)} model tensors have no source: {_listing(unfilled)}")
    if unknown_targets:  # a bug in a mapping table, not in the file
        problems.append(f"mapping names tensors the model lacks: {_listing(unknown_targets)}")
    if problems:
        raise ConversionError(f"the {what} does not match the chosen architecture ({'; '.join(problems)}); "
                              "check the preset / image size / frame count options against the released run's")
    return out, ConversionReport(used=sorted(consumed), dropped=dropped, mapped=len(out))


def export_state_dict(state: dict[str, Tensor], mappings: list[Mapping]) -> dict[str, Tensor]:
    """The inverse direction: a project state dict -> released names and layouts (for tests and checks)."""
    out = {}
    for m in mappings:
        for name, tensor in zip(m.sources, m.inverse([state[t] for t in m.targets]), strict=True):
            out[name] = tensor
    return out


# --------------------------------------------------------------------------------------------------
# CoordTok
# --------------------------------------------------------------------------------------------------

TOKENIZER_DROPS: list[tuple[str, str]] = [
    (r"decoder\.lpips_loss\.", ("LPIPS loss network (frozen VGG + linear heads) used only as a training loss when "
                                "lpips_loss_scale > 0; the finetune stage builds its own LPIPS")),
]


def released_tokenizer_mappings(arch: TokenizerArch) -> list[Mapping]:
    """Released CoordTok (models/coordtok/coordtok_model.py) names -> ReleasedCoordTok names.

    The released (x, y) are (row, column): its 'yt' plane is this project's xt and vice versa, so those
    are swapped; weight tokens are channel-last; nn.MultiheadAttention's in_proj is split into q / kv;
    latent projector rows go from (p_row, p_col, C) to (C, p_row, p_col); the decoder input's plane
    features are concatenated (xy, released yt, released xt) = (xy, xt, yt) and are reordered.
    """
    a = arch
    d, c = a.enc_embed_dim, a.latent_n_features
    m: list[Mapping] = []
    to_cf, to_cl = (0, 3, 1, 2), (0, 2, 3, 1)
    for rel, ours in (("xy", "xy"), ("yt", "xt"), ("xt", "yt")):
        m.append(Mapping((f"weight_tokens_{rel}",), (f"query_{ours}",), _permute(to_cf), _permute(to_cl),
                         "channel-last [1, R, S, C] -> [1, C, R, S]"))
    m += [rename("encoder.cross_pos_emb", "cross_pos_embed"),
          rename("encoder.encoder.cls_token", "cls_token"),
          rename("encoder.encoder.pos_emb", "pos_embed"),
          rename("encoder.encoder.patch_embed.proj.weight", "patch_embed.weight"),
          rename("encoder.encoder.patch_embed.proj.bias", "patch_embed.bias"),
          rename("encoder.encoder.norm.weight", "vit_norm.weight"),
          rename("encoder.encoder.norm.bias", "vit_norm.bias")]
    for i in range(a.enc_patch_num_layers):
        src, dst = f"encoder.encoder.layers.{i}.", f"vit_blocks.{i}."
        m += [rename(src + k, dst + k) for k in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
            "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    for rel, ours in (("xy", "xy"), ("yt", "xt"), ("xt", "yt")):
        m += [rename(f"encoder.patch_embeds_{rel}.proj.weight", f"latent_embed_{ours}.weight"),
              rename(f"encoder.patch_embeds_{rel}.proj.bias", f"latent_embed_{ours}.bias")]
    for i in range(a.enc_num_layers):
        src, dst = f"encoder.transformer.layers.{i}.", f"enc_blocks.{i}."
        m += [rename(src + f"norm{j}.{w}", dst + f"norm{j}.{w}") for j in (1, 2, 3) for w in ("weight", "bias")]
        m.append(Mapping((src + "cross_attn.in_proj_weight",), (dst + "cross_attn.q.weight", dst + "cross_attn.kv.weight"),
                         _split_rows(d), _cat_rows, "in_proj [q; k; v] -> q, kv"))
        m += [rename(src + "cross_attn.out_proj.weight", dst + "cross_attn.proj.weight"),
              rename(src + "self_attn.in_proj_weight", dst + "self_attn.qkv.weight"),
              rename(src + "self_attn.out_proj.weight", dst + "self_attn.proj.weight"),
              rename(src + "mlp.0.weight", dst + "mlp.fc1.weight"), rename(src + "mlp.0.bias", dst + "mlp.fc1.bias"),
              rename(src + "mlp.3.weight", dst + "mlp.fc2.weight"), rename(src + "mlp.3.bias", dst + "mlp.fc2.bias")]
    m += [rename("encoder.transformer.norm.weight", "enc_norm.weight"),
          rename("encoder.transformer.norm.bias", "enc_norm.bias")]
    lps, lpt = a.latent_patch_size_xy, a.latent_patch_size_t
    for rel, ours, kh in (("xy", "xy", lps), ("yt", "xt", lpt), ("xt", "yt", lpt)):
        fwd = _reorder_rows((kh, lps, c), (2, 0, 1))  # (p_row, p_col, C) -> (C, p_row, p_col)
        inv = _reorder_rows((c, kh, lps), (1, 2, 0))
        for w in ("weight", "bias"):
            m.append(Mapping((f"encoder.projectors_{rel}.{w}",), (f"latent_proj_{ours}.{w}",), fwd, inv,
                             "output rows (p_row, p_col, C) -> (C, p_row, p_col)"))
    m += [rename("decoder.transformer.pos_embed", "dec_pos_table"),
          Mapping(("decoder.transformer.patch_embed.weight",), ("dec_embed.weight",), _reorder_cols((0, 2, 1)),
                  _reorder_cols((0, 2, 1)), "input features (xy, xt, yt) -> (xy, yt, xt)"),
          rename("decoder.transformer.patch_embed.bias", "dec_embed.bias")]
    for i in range(a.dec_num_layers):
        src, dst = f"decoder.transformer.layers.{i}.", f"dec_blocks.{i}."
        m += [rename(src + k, dst + k) for k in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
            "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    m += [rename("decoder.transformer.norm.weight", "dec_norm.weight"),
          rename("decoder.transformer.norm.bias", "dec_norm.bias"),
          rename("decoder.projector.weight", "dec_head.weight"),
          rename("decoder.projector.bias", "dec_head.bias")]
    return m


def _meta_tokenizer(arch: TokenizerArch, img_size: int, num_frames: int):
    from components.tokenizer.released import ReleasedCoordTok

    with torch.device("meta"):
        return ReleasedCoordTok(arch, img_size, num_frames)


def convert_released_tokenizer(source: dict[str, Tensor], arch: TokenizerArch, img_size: int, num_frames: int,
                               what: str = "checkpoint") -> tuple[dict[str, Any], dict[str, Tensor], ConversionReport]:
    """A released CoordTok state dict (prefixes already stripped) -> (config, state dict, report)."""
    model = _meta_tokenizer(arch, img_size, num_frames)
    target = model.state_dict()
    state, report = convert_state_dict(
        source, released_tokenizer_mappings(arch), {k: v.shape for k, v in target.items()}, TOKENIZER_DROPS,
        {k: v.dtype for k, v in target.items()}, what=what)
    return model.config, state, report


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save(payload) to `path` atomically (streamed: no second in-memory copy of a large model)."""
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def _step_of(ckpt: Any, default: int = 0) -> int:
    if isinstance(ckpt, MappingABC):
        for key in ("step", "epoch", "train_steps"):
            v = ckpt.get(key)
            if isinstance(v, int) or (isinstance(v, Tensor) and v.numel() == 1):
                return int(v)
        args = ckpt.get("args")
        if isinstance(args, argparse.Namespace) and isinstance(getattr(args, "train_steps", None), int):
            return int(args.train_steps)
    return default


def _other_entries(ckpt: Any, used_key: str | None) -> dict[str, str]:
    reasons = {"optimizer": "optimizer state of the released training run: the importing stage starts its own optimizer",
               "opt": "optimizer state of the released training run: the importing stage starts its own optimizer",
               "args": "the released run's argparse options (kept as provenance in 'imported_from.args')",
               "model": "raw (non-EMA) weights: the EMA weights are the released model"}
    if not isinstance(ckpt, MappingABC) or used_key is None:
        return {}
    return {k: reasons.get(k, "metadata (kept as provenance where it is a number or string)")
            for k in ckpt if k != used_key}


def _provenance(path: Path, ckpt: Any, used_key: str | None, report: ConversionReport, kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"file": path.name, "sha256": sha256_file(path), "format": kind, "state_dict_key": used_key,
                            "other_entries_not_converted": _other_entries(ckpt, used_key), **report.as_dict()}
    if isinstance(ckpt, MappingABC):
        for k, v in ckpt.items():
            if isinstance(v, (int, float, str, bool)):
                meta.setdefault("released_" + str(k), v)
            elif isinstance(v, Tensor) and v.numel() == 1:
                meta.setdefault("released_" + str(k), v.item())
        args = ckpt.get("args")
        if isinstance(args, argparse.Namespace):
            meta["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return meta


def import_tokenizer(src: str | os.PathLike, out: str | os.PathLike, arch: TokenizerArch, img_size: int,
                     num_frames: int) -> dict[str, Any]:
    """Convert the released CoordTok file `src` into a project checkpoint at `out`; returns its provenance."""
    src = Path(src)
    ckpt = read_released_checkpoint(src)
    key, state = find_state_dict(ckpt, prefer=("model", "state_dict", "ema"))
    config, converted, report = convert_released_tokenizer(strip_prefixes(state), arch, img_size, num_frames,
                                                           what=f"released tokenizer {src.name}")
    meta = _provenance(src, ckpt, key, report, "released-coordtok")
    write_checkpoint(out, {"config": config, "model": converted, "step": _step_of(ckpt), "imported_from": meta})
    return meta


# --------------------------------------------------------------------------------------------------
# SiT (EMA weights) and its latent normalisation statistics
# --------------------------------------------------------------------------------------------------

SIT_DROPS: list[tuple[str, str]] = []


def _fold_label_embedding(ts: list[Tensor]) -> list[Tensor]:
    # Released SiT: num_classes=1, no dropout, every label is 0, so c = t_emb(t) + table[0]; the
    # constant row folds into the timestep MLP's output bias of an unconditional model.
    bias, table = ts
    return [bias + table[0].to(bias.dtype)]


def _unfold_label_embedding(ts: list[Tensor]) -> list[Tensor]:
    return [ts[0].clone(), torch.zeros_like(ts[0])[None]]


def released_sit_mappings(depth: int) -> list[Mapping]:
    """Released SiT (models/diffusion/sit_models.py, as train_sit.py builds it) -> this project's SiT.

    The released 'yt' plane is this project's xt (and vice versa): embedders, final layers and type
    embedding rows are swapped. The label embedding of the single class is folded into the timestep
    MLP's output bias (this project's SiT is unconditional).
    """
    m: list[Mapping] = [rename("pos_embed_xy", "pos_embed_xy"), rename("pos_embed_t", "pos_embed_t"),
                        Mapping(("type_embed",), ("type_embed",), lambda ts: [ts[0][:, [0, 2, 1]].contiguous()],
                                lambda ts: [ts[0][:, [0, 2, 1]].contiguous()], "plane rows (xy, xt, yt) -> (xy, yt, xt)")]
    for rel, ours in (("xy", "xy"), ("yt", "xt"), ("xt", "yt")):
        m += [rename(f"x_embedder_{rel}.proj.{w}", f"x_embedder_{ours}.proj.{w}") for w in ("weight", "bias")]
        m += [rename(f"final_layer_{rel}.{k}", f"final_layer_{ours}.{k}") for k in (
            "linear.weight", "linear.bias", "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")]
    m += [rename("t_embedder.mlp.0.weight", "t_embedder.mlp.0.weight"), rename("t_embedder.mlp.0.bias", "t_embedder.mlp.0.bias"),
          rename("t_embedder.mlp.2.weight", "t_embedder.mlp.2.weight"),
          Mapping(("t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight"), ("t_embedder.mlp.2.bias",),
                  _fold_label_embedding, _unfold_label_embedding, "single-class label embedding folded into the bias")]
    for i in range(depth):
        m += [rename(f"blocks.{i}.{k}", f"blocks.{i}.{k}") for k in (
            "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias",
            "mlp.fc2.weight", "mlp.fc2.bias", "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")]
    return m


def convert_released_sit(source: dict[str, Tensor], arch: Any, in_channels: int, resolution_xy: int,
                         resolution_t: int, what: str = "checkpoint") -> tuple[dict[str, Any], dict[str, Tensor], ConversionReport]:
    """A released SiT state dict (EMA, prefixes stripped) -> (config, state dict, report)."""
    from components.generator.sit import SiT

    table = source.get("y_embedder.embedding_table.weight")
    if table is not None and table.shape[0] != 1:
        raise ConversionError(f"the {what} is class-conditional ({table.shape[0]} label rows); only the released "
                              "unconditional UCF-101 SiT (num_classes=1, no label dropout) is supported")
    with torch.device("meta"):
        model = SiT(arch, in_channels, resolution_xy, resolution_t, num_classes=0, learn_sigma=True)
    target = model.state_dict()
    state, report = convert_state_dict(source, released_sit_mappings(arch.depth), {k: v.shape for k, v in target.items()},
                                       SIT_DROPS, {k: v.dtype for k, v in target.items()}, what=what)
    return model.config, state, report


_LOG_LINE = re.compile(r"(xy|yt|xt)_(mean|std):\s*tensor\(\[([^\]]*)\]")


def parse_released_stats_log(text: str) -> dict[str, Any]:
    """Latent stats from the released train_sit.py log.txt ('xy_mean: tensor([...])' ... lines),
    in this project's stats.json schema (components/generator/latent_stats.LatentStats.to_dict).

    The released 'yt' plane is this project's xt (and vice versa). The log has no counts, so each
    plane gets count 1 and m2 = std^2 (mean and std, all that normalisation uses, are exact).
    """
    found: dict[tuple[str, str], list[float]] = {}
    for plane, kind, numbers in _LOG_LINE.findall(" ".join(text.split())):
        found.setdefault((plane, kind), [float(v) for v in numbers.replace(" ", "").split(",") if v])
    missing = [f"{p}_{k}" for p in ("xy", "yt", "xt") for k in ("mean", "std") if (p, k) not in found]
    if missing:
        raise UserError(f"the released log lacks {', '.join(missing)} lines (expected 'xy_mean: tensor([...])' as "
                        "train_sit.py writes them); pass the log.txt of the released SiT run")
    channels = len(found[("xy", "mean")])
    planes = {}
    for rel, ours in (("xy", "xy"), ("yt", "xt"), ("xt", "yt")):
        mean, std = found[(rel, "mean")], found[(rel, "std")]
        if len(mean) != channels or len(std) != channels:
            raise UserError(f"the released log's {rel} stats have {len(mean)}/{len(std)} values, expected {channels}")
        planes[ours] = {"count": 1, "mean": mean, "std": std, "m2": [s * s for s in std]}
    return {"channels": channels, "ddof": 0, "planes": planes, "source": "released train_sit.py log.txt"}


def import_sit(src: str | os.PathLike, out: str | os.PathLike, arch: Any, in_channels: int, resolution_xy: int,
               resolution_t: int, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert the released SiT file `src` (its EMA weights) into a project checkpoint at `out`.

    `stats` (stats.json schema) is stored under 'latent_stats': the released model was trained on
    latents normalised with them, so sampling needs them to denormalise.
    """
    src = Path(src)
    ckpt = read_released_checkpoint(src)
    key, state = find_state_dict(ckpt, prefer=("ema", "model", "state_dict"))
    config, converted, report = convert_released_sit(strip_prefixes(state), arch, in_channels, resolution_xy,
                                                     resolution_t, what=f"released SiT {src.name}")
    meta = _provenance(src, ckpt, key, report, "released-sit")
    payload: dict[str, Any] = {"config": config, "model": converted, "ema": converted, "step": _step_of(ckpt),
                               "imported_from": meta}
    if stats is not None:
        from components.generator.latent_stats import LatentStats

        parsed = LatentStats.from_dict(stats)
        if parsed.channels != in_channels:
            raise UserError(f"the latent stats have {parsed.channels} channels but the SiT takes {in_channels}")
        payload["latent_stats"] = stats
    write_checkpoint(out, payload)
    return meta
