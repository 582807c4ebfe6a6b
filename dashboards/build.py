"""Static comparison dashboard: MLflow runs + the Optuna sweep -> one self-contained folder.

`build_dashboard(...)` writes <out_dir>/index.html (data, CSS and JS inline; hand-written SVG
charts, no library, no network) and <out_dir>/media/ (sample videos and frame grids copied from
the runs' MLflow artifacts, referenced relatively), so the folder works opened from disk.
Sections with no data say which stage has not run yet instead of failing.

Metric names it looks for (the first present wins) are in METRIC_ALIASES; stages that log one
of them show up in the frontier and generation sections without further wiring.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from components.io import atomic_write_text, commit_dir, remove_stale_staging, staging_dir
from components.paper import GENERATION, RECONSTRUCTION
from components.sweep import ATTR_DUPLICATE

log = logging.getLogger("dashboard")

ASSETS = Path(__file__).resolve().parent / "assets"
STAGES = ("synthesize", "preprocess", "pretrain", "finetune", "extract_latents", "train_sit", "evaluate", "sweep")
RECON_STAGES = ("pretrain", "finetune", "evaluate", "sweep")
GEN_STAGES = ("train_sit", "evaluate")
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    # evaluate logs its metrics.json flattened (reconstruction.*, generation.*); training stages
    # log final_<summary key>; sweep trials log their objectives by name.
    "tokens": ("tokenizer.tokens", "num_tokens", "final_num_tokens", "tokens"),
    "psnr": ("reconstruction.psnr", "rec_psnr", "psnr", "final_test_psnr", "test_psnr"),
    "lpips": ("reconstruction.lpips", "rec_lpips", "lpips", "final_test_lpips", "test_lpips"),
    "rfvd": ("reconstruction.rfvd", "rfvd", "rec_fvd", "final_rfvd"),
    "fvd": ("generation.fvd_full", "generation.fvd_clip", "gen_fvd", "fvd", "final_fvd"),
    "seconds_per_video": ("generation.single_video_seconds", "generation.seconds_per_video_batched",
                          "gen_seconds_per_video", "seconds_per_video"),
    "memory_gb": ("generation.single_video_peak_memory_mb", "generation.batch_peak_memory_mb",
                  "gen_peak_memory_gb", "peak_memory_gb", "gpu_memory_gb"),
}
MEDIA_KINDS = {".mp4": "video", ".webm": "video", ".gif": "image", ".png": "image", ".jpg": "image", ".jpeg": "image"}
# Naive baselines logged at every evaluation (components/metrics/baselines.py): flat lines on test_psnr.
BASELINE_CURVES = ("baseline_same_numbers_psnr", "baseline_mean_colour_psnr", "baseline_temporal_mean_psnr")
# System metrics worth a learning curve (MLflow samples a dozen; disk and network say little here).
SYSTEM_CURVES = ("cpu_utilization", "system_memory_usage_megabytes", "gpu_utilization", "gpu_memory_usage_megabytes")
TAG_COLUMNS = {"weights.standin": "standin", "dvc.exp_name": "dvc exp", "git.commit": "commit",
               "git.dirty": "dirty", "params.hash": "params"}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pick(metrics: dict[str, float], what: str) -> float | None:
    for key in METRIC_ALIASES[what]:
        if key in metrics and _finite(metrics[key]) is not None:
            return float(metrics[key]) / (1024 if key.endswith("_mb") else 1)  # MiB -> GiB
    return None


def _tokens_from_params(params: dict[str, str]) -> int | None:
    """H'W' + 2W'T' from the run's tokenizer params when the run did not log num_tokens."""
    try:
        from components.tokenizer.presets import TOKENIZER_PRESETS

        arch = TOKENIZER_PRESETS[params["tokenizer.preset"]]
        xy = params.get("tokenizer.latent_resolution_xy", "None")
        t = params.get("tokenizer.latent_resolution_t", "None")
        s = arch.latent_resolution_xy if xy in ("None", "null", "") else int(xy)
        lt = arch.latent_resolution_t if t in ("None", "null", "") else int(t)
        return s * s + 2 * s * lt
    except (KeyError, ValueError, ImportError):
        return None


def _downsample(points: list[list[float]], limit: int = 400) -> list[list[float]]:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


# ------------------------------------------------------------------------------ MLflow


def _sqlite_missing(uri: str) -> bool:
    """A sqlite URI whose file does not exist: read as an empty store instead of creating one."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()


def collect_runs(tracking_uri: str, experiment: str, max_runs: int) -> tuple[list[Any], Any, str | None]:
    """(runs newest first, client, note) of `experiment`; an absent store or experiment gives no runs."""
    if _sqlite_missing(tracking_uri):
        return [], None, f"the MLflow store {tracking_uri} does not exist yet (no stage has run)"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], client, f"the MLflow experiment '{experiment}' does not exist yet in {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=max_runs)
    return list(runs), client, None


def _run_row(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    start = dt.datetime.fromtimestamp(info.start_time / 1000, tz=dt.timezone.utc) if info.start_time else None
    duration = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    return {
        "id": info.run_id, "name": info.run_name or info.run_id[:8], "stage": data.tags.get("stage", "?"),
        "start": start.strftime("%Y-%m-%d %H:%M:%S") if start else "", "status": info.status,
        "duration_s": duration, "parent": data.tags.get("mlflow.parentRunId", ""),
        "metrics": {k: v for k, v in data.metrics.items() if _finite(v) is not None},
        "tags": {label: data.tags.get(tag, "") for tag, label in TAG_COLUMNS.items()},
    }


def _key_metrics(rows: list[dict[str, Any]], limit: int = 8) -> list[str]:
    """Columns of the runs table: the aliased metrics present, then the most common other ones."""
    present = {k for r in rows for k in r["metrics"]}
    keys = [k for aliases in METRIC_ALIASES.values() for k in aliases if k in present]
    counts: dict[str, int] = {}
    for r in rows:
        for k in r["metrics"]:
            if not k.startswith("system/") and k not in keys:
                counts[k] = counts.get(k, 0) + 1
    keys += sorted(counts, key=lambda k: (-counts[k], k))
    return keys[:limit]


def _frontier(runs: list[Any]) -> list[dict[str, Any]]:
    points = []
    for run in runs:
        stage = run.data.tags.get("stage", "")
        if stage not in RECON_STAGES:
            continue
        m = run.data.metrics
        quality = {q: _pick(m, q) for q in ("psnr", "lpips", "rfvd")}
        if all(v is None for v in quality.values()):
            continue
        tokens = _pick(m, "tokens") or _tokens_from_params(run.data.params)
        if tokens is None:
            continue
        points.append({"run": run.info.run_name or run.info.run_id[:8], "stage": stage, "tokens": tokens,
                       "standin": run.data.tags.get("weights.standin", ""), **quality})
    return points


def _baseline_label(key: str, metrics: dict[str, float]) -> str:
    """Legend of a baseline line, with how many values it keeps next to the triplane's."""
    triplane = _finite(metrics.get("final_triplane_values"))
    if key == "baseline_mean_colour_psnr":
        return "mean-colour baseline (3 values)"
    if key == "baseline_same_numbers_psnr":
        return "same-numbers baseline (as many values as the triplane)"
    values = _finite(metrics.get("final_baseline_temporal_mean_values"))
    if values and triplane:
        return f"temporal-mean baseline ({values:,.0f} values: {values / triplane:.0f}x the triplane)"
    return "temporal-mean baseline (a whole frame of values: larger than the triplane)"


def _curves(client: Any, runs: list[Any], runs_per_stage: int, charts_per_stage: int,
            refs: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """{stage: {metric: [{run, points: [[step, value], ...]}]}} for metrics with at least 2 points.

    The naive baselines (BASELINE_CURVES) get no chart of their own: the newest run's last value of
    each goes into `refs` ({stage: [{metric, name, value}]}), drawn as a flat line on test_psnr."""
    by_stage: dict[str, list[Any]] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("stage", "?"), []).append(run)
    curves: dict[str, Any] = {}
    for stage, stage_runs in by_stage.items():
        charts: dict[str, list[dict[str, Any]]] = {}
        for run in stage_runs[:runs_per_stage]:
            # training metrics first, system metrics after (they are many and less telling)
            keys = [k for k in run.data.metrics if not k.startswith("system/") or any(w in k for w in SYSTEM_CURVES)]
            for key in sorted(keys, key=lambda k: (k.startswith("system/"), k)):
                history = client.get_metric_history(run.info.run_id, key)
                points = sorted([[m.step, m.value] for m in history if _finite(m.value) is not None])
                if key in BASELINE_CURVES:
                    stage_refs = refs.setdefault(stage, []) if refs is not None else []
                    if points and key not in {r["metric"] for r in stage_refs}:
                        stage_refs.append({"metric": key, "name": _baseline_label(key, run.data.metrics),
                                           "value": points[-1][1]})
                    continue
                if len({p[0] for p in points}) < 2:
                    continue
                if key not in charts and len(charts) >= charts_per_stage:
                    continue
                charts.setdefault(key, []).append(
                    {"run": run.info.run_name or run.info.run_id[:8], "points": _downsample(points)})
        if charts:
            curves[stage] = charts
    return curves


def _generation(runs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        if run.data.tags.get("stage", "") not in GEN_STAGES:
            continue
        m = run.data.metrics
        row = {k: _pick(m, k) for k in ("fvd", "seconds_per_video", "memory_gb")}
        if any(v is not None for v in row.values()):
            tags = run.data.tags
            # Which FVD detector (and LPIPS weights) the run used and whether each is real (evaluate's tags).
            weights = "; ".join(f"{what} {tags[tag]}" for what, tag in (("FVD:", "evaluate.detector.weights"),
                                                                         ("LPIPS:", "evaluate.lpips.weights"))
                                if tags.get(tag))
            rows.append({"run": run.info.run_name or run.info.run_id[:8], "stage": tags.get("stage"),
                         "standin": tags.get("weights.standin", ""), "weights": weights,
                         "detector_standin": {"true": "false", "false": "true"}.get(tags.get("evaluate.detector.real", ""), ""),
                         **row})
    return rows


def _list_media(client: Any, run_id: str, path: str = "", depth: int = 0) -> list[Any]:
    found = []
    for f in client.list_artifacts(run_id, path or None):
        if f.is_dir:
            if depth < 4:
                found += _list_media(client, run_id, f.path, depth + 1)
        elif Path(f.path).suffix.lower() in MEDIA_KINDS:
            found.append(f)
    return found


def _media(client: Any, runs: list[Any], out: Path, max_runs: int, per_run: int,
           max_bytes: int = 20 * 1024 * 1024) -> list[dict[str, Any]]:
    """Copy the newest media artifacts of recent runs to out/media; entries reference them relatively."""
    groups = []
    for run in runs:
        if len(groups) >= max_runs:
            break
        files = [f for f in _list_media(client, run.info.run_id) if not f.file_size or f.file_size <= max_bytes]
        if not files:
            continue
        # newest previews first (paths carry zero-padded steps), one of each kind per folder
        files.sort(key=lambda f: f.path, reverse=True)
        items = []
        for f in files[:per_run]:
            rel = Path("media") / run.info.run_id[:12] / f.path
            local = client.download_artifacts(run.info.run_id, f.path, str(out / "tmp-download"))
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(local, out / rel)
            items.append({"src": rel.as_posix(), "kind": MEDIA_KINDS[Path(f.path).suffix.lower()],
                          "caption": f.path})
        shutil.rmtree(out / "tmp-download", ignore_errors=True)
        groups.append({"run": run.info.run_name or run.info.run_id[:8], "stage": run.data.tags.get("stage", "?"),
                       "items": items})
    return groups


# ------------------------------------------------------------------------------ Optuna


def _sweep(storage: str) -> tuple[dict[str, Any] | None, str | None]:
    """Trials, Pareto front and parameter importances of the sweep study (the newest one in storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///") and _sqlite_missing(storage):
        return None, f"the sweep storage {storage} does not exist yet (run the sweep stage)"
    if "://" not in storage:  # a journal file
        if not Path(storage).exists():
            return None, f"the sweep journal {storage} does not exist yet (run the sweep stage)"
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage_obj: Any = JournalStorage(JournalFileBackend(storage))
    else:
        storage_obj = storage
    names = optuna.study.get_all_study_names(storage=storage_obj)
    if not names:
        return None, f"the sweep storage {storage} holds no study yet"
    study = optuna.load_study(study_name=names[-1], storage=storage_obj)
    # A duplicate repeated an already-tried point and copied its result: one point, shown once.
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values
            and ATTR_DUPLICATE not in t.user_attrs]
    if not done:
        return None, f"study '{study.study_name}' has no completed trial yet"
    directions = [d.name.lower() for d in study.directions]
    objective_names = study.metric_names or [f"objective {i}" for i in range(len(directions))]
    trials = [{"number": t.number, "values": list(t.values),
               "params": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in t.params.items()}}
              for t in done]
    pareto = sorted(t.number for t in study.best_trials if ATTR_DUPLICATE not in t.user_attrs)
    importances: dict[str, dict[str, float]] = {}
    note = None
    if len(done) >= 2 and any(t.params for t in done):
        for i, name in enumerate(objective_names):
            try:
                # fANOVA, seeded: the default (PED-ANOVA) compares a top quantile and is uninformative
                # on the few trials of a small sweep (it rated a parameter the objective ignores equal).
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i: t.values[i],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
                importances[name] = {k: float(v) for k, v in imp.items()}
            except (RuntimeError, ValueError) as exc:  # e.g. all trials share one value of every param
                note = f"parameter importances unavailable: {exc}"
                break
    return {"study": study.study_name, "directions": directions, "objectives": objective_names,
            "trials": trials, "pareto": pareto, "importances": importances, "note": note}, None


# ------------------------------------------------------------------------------ page


def _json_for_script(obj: Any) -> str:
    # "</" inside a <script> would end it early; JSON allows the escaped form.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_html(data: dict[str, Any]) -> str:
    """The page: data as inline JSON, inline CSS and JS (assets/)."""
    css = (ASSETS / "dashboard.css").read_text()
    js = (ASSETS / "dashboard.js").read_text()
    title = f"CoordTok dashboard: {data['experiment']}"
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # No network: forbid every remote load, allow only inline code and local media.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self' data:\">"
        f"<title>{html.escape(title)}</title><style>{css}</style></head>\n<body>\n"
        f"<script id=\"dashboard-data\" type=\"application/json\">{_json_for_script(data)}</script>\n"
        f"<noscript>This dashboard draws its tables and charts with JavaScript.</noscript>\n"
        f"<div id=\"app\"></div>\n<script>{js}</script>\n</body></html>\n"
    )


BUILD_PHASES = ("runs", "sweep", "curves", "media", "page")


def build_dashboard(tracking_uri: str, experiment: str = "coordtok", sweep_storage: str | None = None,
                    out_dir: str | os.PathLike = "reports/dashboard", paper_rows: dict[str, list] | None = None,
                    max_runs: int = 200, curve_runs_per_stage: int = 6, charts_per_stage: int = 12,
                    media_runs: int = 6, media_per_run: int = 6,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write <out_dir>/index.html (+ media/) atomically; returns a summary (counts, seconds, notes).

    `progress(phase)` is called as each of BUILD_PHASES ends (a progress bar's hook)."""
    started = time.perf_counter()
    done = progress or (lambda phase: None)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = Path(out_dir)
    remove_stale_staging(out.parent, out.name)
    staged = staging_dir(out)
    try:
        runs, client, store_note = collect_runs(tracking_uri, experiment, max_runs)
        rows = [_run_row(r) for r in runs]
        present = {r["stage"] for r in rows}
        done("runs")
        sweep, sweep_note = (_sweep(sweep_storage) if sweep_storage else
                             (None, "no sweep storage given (sweep.storage, or dashboard.include_sweep: false)"))
        done("sweep")
        paper = paper_rows or {"reconstruction": RECONSTRUCTION, "generation": GENERATION}
        refs: dict[str, list[dict[str, Any]]] = {}
        curves = _curves(client, runs, curve_runs_per_stage, charts_per_stage, refs) if client else {}
        done("curves")
        media = _media(client, runs, staged, media_runs, media_per_run) if client else []
        done("media")
        data = {
            "experiment": experiment, "tracking_uri": tracking_uri,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "stages": list(STAGES), "stages_present": sorted(present),
            "store_note": store_note,
            "runs": rows, "key_metrics": _key_metrics(rows),
            "frontier": _frontier(runs), "paper": paper,
            "sweep": sweep, "sweep_note": sweep_note,
            "curves": curves, "curve_refs": refs,
            "generation": _generation(runs),
            "media": media,
        }
        atomic_write_text(staged / "index.html", render_html(data))
        for path in [staged, *staged.rglob("*")]:  # temp files/folders are private; a report is not
            path.chmod(0o755 if path.is_dir() else 0o644)
        commit_dir(staged, out)
        done("page")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return {"runs": len(rows), "stages": sorted(present), "frontier_points": len(data["frontier"]),
            "curve_charts": sum(len(c) for c in data["curves"].values()),
            "media": sum(len(g["items"]) for g in data["media"]), "sweep_trials": len(sweep["trials"]) if sweep else 0,
            "seconds": time.perf_counter() - started, "index": str(out / "index.html"),
            "notes": [n for n in (store_note, sweep_note) if n]}
