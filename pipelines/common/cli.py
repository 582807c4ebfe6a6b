"""Stage entry points: `python -m pipelines.<stage> [--params params.yaml]`.

Errors a user can cause end in one sentence on stderr and exit code 2; anything else keeps its
traceback (that is a bug to report).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from components.config import Params, load_params
from components.errors import UserError

StageFn = Callable[[Params, Path], object]


def run_stage(stage: str, fn: StageFn, argv: list[str] | None = None) -> int:
    """Parse arguments, validate params before any compute, run `fn(params, root)`."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}", description=fn.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    try:
        params = load_params(args.params)
        root = Path(args.params).resolve().parent
        fn(params, root)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {stage} interrupted; outputs were not replaced (rerun to start again).", file=sys.stderr)
        return 130
    return 0


def main_for(stage: str, fn: StageFn) -> None:
    sys.exit(run_stage(stage, fn))


def quiet_third_party() -> None:
    """Keep service chatter off the console and the network (telemetry/usage stats)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for name in ("alembic", "mlflow", "ray", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
