"""Stage entry points: `python -m pipelines.<stage> [--params params.yaml]`.

The console of a stage (pipelines/common/console.py): one line saying what starts, one progress bar,
the warnings that matter, the summary table; everything else goes to `logs/<stage>.log`. Errors a
user can cause end in one sentence on stderr (exit code 2); anything else is a bug: one sentence
naming the log file, which holds the traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from components.config import Params, load_params
from components.errors import UserError
from pipelines.common import console

StageFn = Callable[[Params, Path], object]
LOG_DIR = "logs"

# The params a stage's start line shows (missing ones are left out).
KEY_PARAMS: dict[str, tuple[str, ...]] = {
    "synthesize": ("synthesize.num_classes", "synthesize.groups", "synthesize.seed"),
    "preprocess": ("data.split", "data.img_size", "data.num_frames"),
    "pretrain": ("tokenizer.preset", "pretrain.steps", "pretrain.batch_size", "pretrain.sampling_ratio",
                 "pretrain.num_workers", "pretrain.cpus_per_worker"),
    "finetune": ("tokenizer.preset", "finetune.steps", "finetune.batch_size", "finetune.lpips_weight",
                 "finetune.num_workers", "finetune.cpus_per_worker"),
    "extract_latents": ("extract_latents.clip_policy", "extract_latents.num_actors",
                        "extract_latents.batch_size"),
    "train_sit": ("train_sit.preset", "train_sit.steps", "train_sit.batch_size", "train_sit.num_workers"),
    "evaluate": ("evaluate.recon_videos", "evaluate.num_videos", "evaluate.fvd_detector",
                 "evaluate.sampling_steps"),
    "sweep": ("sweep.mode", "sweep.n_trials", "sweep.sampler", "sweep.max_concurrent"),
}
NO_RAY = {"dashboard"}


def _param(params: Params, dotted: str) -> Any:
    obj: Any = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def start_line(stage: str, params: Params, log: str) -> str:
    """`<stage>: <key params> on <where>; log: <file>` (the first line a stage prints)."""
    shown = []
    for dotted in KEY_PARAMS.get(stage, ()):
        try:
            shown.append(f"{dotted.split('.')[-1]}={_param(params, dotted)}")
        except AttributeError:
            continue
    if stage in NO_RAY:
        where = "this process"
    else:
        from pipelines.common.cluster import resolve_address

        address = resolve_address(params.ray)
        where = (f"local Ray cluster ({params.ray.num_cpus or os.cpu_count()} CPUs)" if address is None
                 else f"Ray cluster at {address}")
    return f"{stage}: {' '.join(shown) + ' ' if shown else ''}on {where}; log: {log}"


def run_stage(stage: str, fn: StageFn, argv: list[str] | None = None) -> int:
    """Parse arguments, validate params before any compute, run `fn(params, root)` behind the console contract."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}", description=fn.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    root = Path(args.params).resolve().parent
    path = root / LOG_DIR / f"{stage}.log"
    try:
        params = load_params(args.params)
        from pipelines.common.preflight import check_writable

        # A read-only output folder or MLflow store: one sentence now, not after the compute.
        check_writable(stage, params, root, [(path.parent, "the stage's log folder")])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    with console.stage_console(stage, path):
        try:
            console.say(start_line(stage, params, shown))
            fn(params, root)
        except UserError as exc:
            cause = getattr(exc, "cause", None)  # raised inside a Ray task: arrives wrapped in Ray's traceback
            exc = cause if isinstance(cause, UserError) else exc
            logging.getLogger(stage).info("stopped: %s", exc)
            console.say(f"error: {exc} (log: {shown})", console.err())
            return 2
        except KeyboardInterrupt:
            console.say(f"error: {stage} interrupted; outputs were not replaced (rerun to start again).",
                        console.err())
            return 130
        except Exception as exc:  # a bug: the traceback goes to the log, one sentence to the user
            logging.getLogger(stage).exception("%s failed", stage, extra={"console": False})
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            console.say(f"error: {stage} failed ({type(exc).__name__}{': ' + first if first else ''}); "
                        f"the traceback is in {shown}", console.err())
            return 1
    return 0


def main_for(stage: str, fn: StageFn) -> None:
    sys.exit(run_stage(stage, fn))


def quiet_third_party() -> None:
    """Keep service chatter off the network (telemetry/usage stats) and out of the log's INFO noise."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for name in ("alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
