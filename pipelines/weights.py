"""Pretrained assets: `python -m pipelines.weights {fetch,standin,list}`.

  fetch [--assets NAME ...]   download and sha256-verify the real files (into weights.dir /
                              COORDTOK_WEIGHTS_DIR when set, else torchvision's cache $TORCH_HOME/hub/checkpoints)
  standin DIR [--assets ...]  write structurally valid random stand-ins + STANDIN.json into DIR (tests, offline demos)
  list                        one row per asset: status (found / stand-in / missing), path, checksum, URL
Errors a user can fix end in one sentence and exit code 2.
"""

from __future__ import annotations

import argparse
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


def cmd_fetch(params: Params, names: list[str]) -> None:
    rows = [["asset", "file", "source", "path"]]
    for name in names:
        r = W.resolve(name, params.weights.dir, allow_download=True)
        if r.standin:
            raise UserError(f"{name} resolves to a stand-in at {r.path}; unset {W.ENV_DIR} / weights.dir "
                            "or point it at a folder without STANDIN.json to fetch the real file.")
        rows.append([name, r.asset.filename, r.source, str(r.path)])
    print(_table(rows))


def cmd_standin(folder: str, names: list[str]) -> None:
    written = W.write_standins(folder, names)
    print(_table([["asset", "stand-in file"]] + [[n, str(p)] for n, p in written.items()]))
    print(f"set {W.ENV_DIR}={Path(folder).resolve()} (or weights.dir) to use them; runs on them are tagged stand-in.")


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
    p_fetch = sub.add_parser("fetch", help="download and verify the real assets")
    p_fetch.add_argument("--assets", nargs="+", default=list(W.ASSETS), choices=list(W.ASSETS), metavar="NAME")
    p_stand = sub.add_parser("standin", help="write stand-in assets into DIR")
    p_stand.add_argument("dir")
    p_stand.add_argument("--assets", nargs="+", default=list(W.ASSETS), choices=list(W.ASSETS), metavar="NAME")
    sub.add_parser("list", help="show every asset and where it resolves")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[weights] %(message)s")
    try:
        if args.command == "standin":
            cmd_standin(args.dir, args.assets)
        else:
            params = _params(args.params)
            if args.command == "fetch":
                cmd_fetch(params, args.assets)
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
