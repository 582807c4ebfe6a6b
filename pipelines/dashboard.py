"""Stage `dashboard`: the static comparison dashboard from the MLflow store and the Optuna sweep.

Reads every run of experiment `mlflow.experiment` (the same store the stages write:
MLFLOW_TRACKING_URI > mlflow.tracking_uri) and, when `dashboard.include_sweep`, the study at
`sweep.storage`. Writes <dashboard.out_dir>/index.html and media/ (default reports/dashboard/):
self-contained, opens from disk. Read-only: it starts no MLflow run of its own.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from components.config import Params, resolve_path
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.console import progress_bar
from pipelines.common.report import print_summary
from pipelines.common.tracking import _check_reachable, resolve_tracking_uri


def resolve_sweep_storage(params: Params, root: Path) -> str | None:
    """The sweep's Optuna storage with relative sqlite/journal paths made absolute; None when off/unset."""
    sweep = getattr(params, "sweep", None)  # the sweep section may not exist in every checkout
    storage = getattr(sweep, "storage", None)
    if not params.dashboard.include_sweep or not storage:
        return None
    from components.sweep import resolve_storage

    return resolve_storage(storage, root)


def dashboard(params: Params, root: Path) -> dict[str, Any]:
    """Build reports/dashboard/index.html from the MLflow runs and the Optuna study."""
    quiet_third_party()
    from dashboards.build import BUILD_PHASES, build_dashboard

    cfg = params.dashboard
    uri = resolve_tracking_uri(params, root)
    _check_reachable(uri)
    with contextlib.closing(progress_bar(total=len(BUILD_PHASES), desc="dashboard", unit="part")) as bar:
        def advance(phase: str) -> None:
            bar.set_postfix_str(f"{phase} done", refresh=False)
            bar.update()

        summary = build_dashboard(uri, params.mlflow.experiment, resolve_sweep_storage(params, root),
                                  resolve_path(root, cfg.out_dir), max_runs=cfg.max_runs, media_runs=cfg.media_runs,
                                  progress=advance)
    # Several figures per row: the stage's console stays within ~15 lines (README "What you will see").
    rows = [("runs", f"{summary['runs']:,} ({', '.join(summary['stages']) or 'no stages'})"),
            ("frontier points, learning-curve charts, sweep trials, media files",
             ", ".join(f"{summary[k]:,}" for k in ("frontier_points", "curve_charts", "sweep_trials", "media"))),
            ("seconds", summary["seconds"]), ("open", summary["index"])]
    rows += [("note", n) for n in summary["notes"]]
    print_summary("dashboard", rows)
    return summary


if __name__ == "__main__":
    main_for("dashboard", dashboard)
