"""Before any compute: can the stage write every place it will write?

A stage that finds out at its end that its output folder or the MLflow store is read-only has wasted
its run. The places come from dvc.yaml (the stage's outs, metrics and plots, `${...}` filled from the
params), plus the MLflow store and, for training stages, the Ray Train storage path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from components.config import Params, resolve_path
from components.errors import UserError

DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"
MLFLOW_READERS = {"dashboard"}  # stages that only read the MLflow store (a read-only one is fine)


def _interpolate(text: str, values: dict[str, Any]) -> str:
    def lookup(match: re.Match) -> str:
        node: Any = values
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", lookup, text)


def stage_outputs(stage: str, params: Params) -> list[str]:
    """The stage's outs, metrics and plots in dvc.yaml (params interpolated); [] for an unknown stage."""
    spec = (yaml.safe_load(DVC_YAML.read_text()) or {}).get("stages", {}).get(stage, {})
    values = params.model_dump(mode="json")
    found = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            found.append(_interpolate(str(path), values))
    return found


def _mlflow_paths(params: Params, root: Path) -> Iterator[tuple[Path, str]]:
    from pipelines.common.tracking import resolve_tracking_uri, shared_root

    uri = resolve_tracking_uri(params, root)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        yield db, "the MLflow store (mlflow.tracking_uri / MLFLOW_TRACKING_URI)"
        yield db.parent, "the MLflow store's folder (sqlite writes a journal beside it)"
        yield shared_root(root) / "mlartifacts", "the MLflow artifact folder"
    elif "://" not in uri:
        yield Path(uri), "the MLflow store (mlflow.tracking_uri / MLFLOW_TRACKING_URI)"


def _unwritable(path: Path) -> str | None:
    """Why `path` (or, when it does not exist yet, the folder that would hold it) cannot be written."""
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            return None
        probe = probe.parent
    targets = [probe] if probe != path else [path, path.parent]
    for target in targets:
        if not os.access(target, os.W_OK):
            try:
                readonly = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
            except OSError:
                readonly = False
            return f"{target} is on a read-only filesystem" if readonly else f"{target} is not writable"
    return None


def check_writable(stage: str, params: Params, root: Path, extra: list[tuple[Path, str]] = ()) -> None:
    """One UserError sentence naming the first place the stage could not write (`extra`: more places,
    each with what it is)."""
    places = [(resolve_path(root, p), f"an output of the {stage} stage") for p in stage_outputs(stage, params)]
    places.extend(extra)
    section = getattr(params, stage, None)
    if getattr(section, "storage_path", None):
        places.append((resolve_path(root, section.storage_path), f"{stage}.storage_path (Ray Train checkpoints)"))
    if stage not in MLFLOW_READERS:
        places.extend(_mlflow_paths(params, root))
    for path, what in places:
        why = _unwritable(path)
        if why:
            raise UserError(f"{stage} cannot write {path}, {what}: {why}; make it writable or point it elsewhere, "
                            "then rerun (nothing was computed)")
