"""The one MLflow layer every stage uses: tracking URI, experiment, run naming, standard tags.

Precedence for the store: MLFLOW_TRACKING_URI (when set) > params `mlflow.tracking_uri`.
A relative sqlite path is resolved against the repository root, so every stage and every
DVC experiment workspace of one checkout can be pointed at the same file explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from components.config import Params
from components.errors import UserError


# mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ; remember what the user set
# before any of that, so one process can run several stages against different stores.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def resolve_tracking_uri(params: Params, root: Path) -> str:
    uri = _USER_TRACKING_URI or params.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:  # a plain folder path: file store
        uri = str((root / uri).resolve())
    return uri


def _check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            if resp.status == 200:
                return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"the MLflow tracking server at {uri} is unreachable ({reason}); start it, fix "
                        "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or unset it to use the local sqlite store") from None
    raise UserError(f"the MLflow tracking server at {uri} did not answer its health check")


def git_state(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def stage_run(params: Params, root: Path, stage: str, name_suffix: str = "",
              extra_tags: dict[str, str] | None = None, system_metrics: bool = False) -> Iterator[Any]:
    """An MLflow run for one stage execution, with the validated params and the standard tags."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # imported here: it is slow to import and not every code path tracks

    uri = resolve_tracking_uri(params, root)
    _check_reachable(uri)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if previous is None:  # undo the side effect on the environment (see _USER_TRACKING_URI)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    name = params.mlflow.experiment
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            artifact_location = (root / "mlartifacts").resolve().as_uri()
        with contextlib.suppress(Exception):  # another process may create it at the same moment
            mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)
    tags = {
        "stage": stage,
        "params.hash": params.digest(),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        **git_state(root),
        **(extra_tags or {}),
    }
    run_name = stage + (f" {name_suffix}" if name_suffix else "")
    # System metrics (CPU, memory, GPU where present) are sampled by a thread of this process.
    with mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=system_metrics) as run:
        flat = {k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v
                for k, v in flatten(params.model_dump(mode="json")).items()}
        mlflow.log_params(flat)
        yield run
