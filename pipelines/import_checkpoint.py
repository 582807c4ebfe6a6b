"""Convert the authors' released checkpoints into this project's checkpoint schema.

    python -m pipelines.import_checkpoint tokenizer CoordTok_UCF101_1M_50K.pth [--out models/tokenizer/released.pt]
        [--preset CoordTok-L] [--latent-resolution-xy 16 --latent-resolution-t 32]   (paper ablations: 8/16/32, 16/32/64)
    python -m pipelines.import_checkpoint sit CoordTok_SiT_L_2_UCF101_600K.pt --stats-log log.txt [--out models/sit/released.pt]

Defaults are the paper configuration (CoordTok-L at 128x128x128, SiT-L/2 on 8x16x16x32 triplanes).
Files are read with torch.load(weights_only=True) only. See docs/released_checkpoints.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.errors import UserError

TOKENIZER_OUT = "models/tokenizer/released.pt"
SIT_OUT = "models/sit/released.pt"


def _parser() -> argparse.ArgumentParser:
    from components.generator.presets import SIT_PRESETS
    from components.tokenizer.presets import TOKENIZER_PRESETS

    p = argparse.ArgumentParser(prog="python -m pipelines.import_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    tok = sub.add_parser("tokenizer", help="released CoordTok (.pth) -> project tokenizer checkpoint")
    tok.add_argument("src", help="released file, e.g. CoordTok_UCF101_1M_50K.pth")
    tok.add_argument("--out", default=TOKENIZER_OUT, help=f"output checkpoint (default {TOKENIZER_OUT})")
    tok.add_argument("--preset", default="CoordTok-L",
                     help=f"architecture preset the file was trained with: {', '.join(TOKENIZER_PRESETS)} (default CoordTok-L)")
    tok.add_argument("--latent-resolution-xy", type=int, default=None,
                     help="override the preset's triplane H' = W', as tokenizer.latent_resolution_xy (paper ablation: 8/16/32)")
    tok.add_argument("--latent-resolution-t", type=int, default=None,
                     help="override the preset's triplane T', as tokenizer.latent_resolution_t (paper ablation: 16/32/64)")
    tok.add_argument("--img-size", type=int, default=128)
    tok.add_argument("--num-frames", type=int, default=128)
    sit = sub.add_parser("sit", help="released SiT (.pt, EMA weights) -> project SiT checkpoint")
    sit.add_argument("src", help="released file, e.g. sit/CoordTok_SiT_L_2_UCF101_600K.pt")
    sit.add_argument("--out", default=SIT_OUT, help=f"output checkpoint (default {SIT_OUT})")
    sit.add_argument("--preset", default="SiT-L/2", help=f"one of {', '.join(SIT_PRESETS)} (default SiT-L/2)")
    sit.add_argument("--latent-channels", type=int, default=8)
    sit.add_argument("--latent-resolution-xy", type=int, default=16)
    sit.add_argument("--latent-resolution-t", type=int, default=32)
    stats = sit.add_mutually_exclusive_group()
    stats.add_argument("--stats", help="latent stats.json (this project's schema, e.g. from extract_latents "
                                       "run with the imported tokenizer)")
    stats.add_argument("--stats-log", help="log.txt of the released SiT run (its first lines hold the stats)")
    sit.add_argument("--stats-out", help="also write the stats as a stats.json here")
    return p


def _read_stats(args: argparse.Namespace) -> dict | None:
    from components.checkpoint_import import parse_released_stats_log

    if args.stats:
        path = Path(args.stats)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read latent stats {path} ({e}); pass a stats.json written by extract_latents") from None
    if args.stats_log:
        path = Path(args.stats_log)
        try:
            return parse_released_stats_log(path.read_text(errors="replace"))
        except OSError as e:
            raise UserError(f"cannot read the released log {path} ({e})") from None
    return None


def _tokenizer_arch(arch, latent_xy: int | None, latent_t: int | None):
    """The preset with the params' geometry overrides, checked as params.yaml's are."""
    changes = {k: v for k, v in (("latent_resolution_xy", latent_xy), ("latent_resolution_t", latent_t)) if v is not None}
    for name, value in changes.items():
        patch = arch.latent_patch_size_xy if name.endswith("xy") else arch.latent_patch_size_t
        if value < 1 or value % patch:
            raise UserError(f"--{name.replace('_', '-')} = {value} must be a positive multiple of the preset's latent "
                            f"patch size ({patch})")
    return arch.replace(**changes) if changes else arch


def run(argv: list[str] | None = None) -> dict:
    """Parse arguments and convert; returns the provenance written into the checkpoint."""
    args = _parser().parse_args(argv)
    from components.checkpoint_import import import_sit, import_tokenizer
    from components.io import atomic_write_json

    if args.kind == "tokenizer":
        from components.tokenizer.presets import TOKENIZER_PRESETS

        if args.preset not in TOKENIZER_PRESETS:
            raise UserError(f"unknown tokenizer preset {args.preset!r}: use one of {', '.join(TOKENIZER_PRESETS)}")
        arch = _tokenizer_arch(TOKENIZER_PRESETS[args.preset], args.latent_resolution_xy, args.latent_resolution_t)
        meta = import_tokenizer(args.src, args.out, arch, args.img_size, args.num_frames)
        rows = [("architecture", f"{args.preset} (released variant), {args.num_frames}x{args.img_size}x{args.img_size}, "
                                 f"triplane {arch.latent_resolution_xy}x{arch.latent_resolution_xy}x"
                                 f"{arch.latent_resolution_t} ({arch.num_tokens} tokens)"),
                ("decoding", "all frames in one attention context, as the released sampler, while "
                             "tokenizer.decode_group_frames is null")]
    else:
        from components.generator.presets import sit_preset

        stats = _read_stats(args)
        meta = import_sit(args.src, args.out, sit_preset(args.preset), args.latent_channels, args.latent_resolution_xy,
                          args.latent_resolution_t, stats=stats)
        shape = f"{args.latent_channels}x{args.latent_resolution_xy}x{args.latent_resolution_xy}x{args.latent_resolution_t}"
        rows = [("architecture", f"{args.preset} on {shape} triplanes"),
                ("latent stats", "stored in the checkpoint" if stats else
                 "NONE: sampling needs them (pass --stats or --stats-log)")]
        if stats is not None and args.stats_out:
            atomic_write_json(args.stats_out, stats)
            rows.append(("stats.json", args.stats_out))
    rows += [("source", f"{meta['file']} (sha256 {meta['sha256'][:16]}...)"),
             ("state dict", repr(meta["state_dict_key"])),
             ("tensors converted", f"{meta['source_tensors_used']} -> {meta['target_tensors']}"),
             ("tensors dropped", str(len(meta["source_tensors_dropped"]))),
             ("not converted", ", ".join(meta["other_entries_not_converted"]) or "-"),
             ("written", args.out)]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return meta


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
