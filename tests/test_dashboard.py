"""Dashboard build from a fixture store (real MLflow runs and an Optuna study) and from an empty one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.config import load_params
from dashboards.build import build_dashboard
from dashboards.demo import write_demo_store
from components.paper import GENERATION, RECONSTRUCTION
from tests.conftest import SHARED


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    return write_demo_store(folder / "store") | {"folder": folder}


def page_data(index: Path) -> dict:
    text = index.read_text()
    raw = re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', text, re.S).group(1)
    return json.loads(raw.replace("<\\/", "</"))


def test_build_from_fixture_store(demo):
    out = demo["folder"] / "dashboard"
    summary = build_dashboard(demo["tracking_uri"], "coordtok", demo["sweep_storage"], out)
    index = out / "index.html"
    html = index.read_text()
    # self-contained: no external script/style/link, nothing fetched from a host
    assert "<script src" not in html and "<link" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    data = page_data(index)
    assert summary["runs"] == len(data["runs"]) == 17
    assert set(data["stages_present"]) == {"synthesize", "preprocess", "pretrain", "finetune", "evaluate",
                                           "train_sit", "sweep"}

    # frontier: tokens from the logged metric or from the tokenizer params; quality from aliases
    pts = {(p["stage"], p["tokens"]): p for p in data["frontier"]}
    assert sorted(t for s, t in pts if s == "pretrain") == [80, 192, 320]  # xy^2 + 2*xy*t for (4,8) (8,8) (8,16)
    assert pts[("evaluate", 192)]["rfvd"] == 410.0 and pts[("evaluate", 192)]["lpips"] == pytest.approx(0.23)
    assert pts[("finetune", 192)]["standin"] == "true"
    assert data["paper"]["reconstruction"] == RECONSTRUCTION

    # learning curves: every pretrain run's loss history, 20 steps each
    loss = data["curves"]["pretrain"]["loss"]
    assert len(loss) == 3 and all([p[0] for p in r["points"]] == list(range(10, 210, 10)) for r in loss)
    assert "sweep" not in data["curves"]  # trials log single values only
    # naive baselines: no charts of their own, one flat reference each for the test-PSNR chart,
    # from the newest pretrain run (xy=8, t=16: 320 tokens x 8 channels = 2,560 values)
    assert not [k for k in data["curves"]["pretrain"] if k.startswith("baseline_")]
    refs = {r["metric"]: r for r in data["curve_refs"]["pretrain"]}
    assert set(refs) == {"baseline_mean_colour_psnr", "baseline_same_numbers_psnr", "baseline_temporal_mean_psnr"}
    assert refs["baseline_same_numbers_psnr"]["value"] == pytest.approx(17 + 320 / 64)
    assert refs["baseline_temporal_mean_psnr"]["name"] == "temporal-mean baseline (12,288 values: 5x the triplane)"

    # sweep: the Pareto front equals a brute-force non-dominated filter of the trials
    sweep = data["sweep"]
    assert sweep["objectives"] == ["test_psnr", "seconds_per_step"] and sweep["directions"] == ["maximize", "minimize"]
    trials = sweep["trials"]
    dominated = {a["number"] for a in trials for b in trials
                 if b["values"][0] >= a["values"][0] and b["values"][1] <= a["values"][1] and b["values"] != a["values"]}
    assert sweep["pareto"] == sorted({t["number"] for t in trials} - dominated)
    for imp in sweep["importances"].values():
        assert set(imp) == {"sampling_ratio", "lr"} and sum(imp.values()) == pytest.approx(1.0)
    # the demo's cost objective is 0.05 + 0.6 * sampling_ratio: lr cannot matter much
    assert sweep["importances"]["seconds_per_step"]["sampling_ratio"] > 0.7

    # generation and media
    (gen,) = data["generation"]
    assert (gen["fvd"], gen["seconds_per_video"], gen["memory_gb"]) == (1650.0, 0.8, 0.3)
    (group,) = data["media"]
    assert group["stage"] == "pretrain" and len(group["items"]) == 6
    assert group["items"][0]["caption"].startswith("previews/step_000200/")  # newest first
    for item in group["items"]:
        assert (out / item["src"]).stat().st_size > 0 and not Path(item["src"]).is_absolute()
    assert {i["kind"] for i in group["items"]} == {"video", "image"}
    assert not list(out.parent.glob(".tmp-*"))


def test_sweep_panel_leaves_out_trials_that_reused_another_trials_result(tmp_path):
    """The sweep marks a repeated point `duplicate_of` and copies its result; the dashboard shows the
    point once (in the trial list and on the Pareto front), as the sweep's own reports do."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from components.sweep import ATTR_DUPLICATE
    from dashboards.build import _sweep

    journal = tmp_path / "sweep.journal"
    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"],
                                storage=JournalStorage(JournalFileBackend(str(journal))))
    study.set_metric_names(["test_psnr", "num_tokens"])
    dist = {"latent_resolution_xy": optuna.distributions.CategoricalDistribution([4, 8])}
    for xy, values in ((4, [14.0, 48]), (8, [15.0, 192])):
        study.add_trial(optuna.trial.create_trial(params={"latent_resolution_xy": xy}, distributions=dist,
                                                  values=values))
    study.add_trial(optuna.trial.create_trial(params={"latent_resolution_xy": 8}, distributions=dist,
                                              values=[15.0, 192], user_attrs={ATTR_DUPLICATE: 1}))
    assert len(study.best_trials) == 3  # Optuna counts the copy as a tied best trial
    panel, note = _sweep(str(journal))
    assert note is None
    assert [t["number"] for t in panel["trials"]] == [0, 1] and panel["pareto"] == [0, 1]


def test_build_from_missing_store_says_so(tmp_path):
    out = tmp_path / "dash"
    summary = build_dashboard(f"sqlite:///{tmp_path / 'none.db'}", "coordtok", str(tmp_path / "journal.log"), out)
    assert summary["runs"] == 0 and not (tmp_path / "none.db").exists()  # read-only: no store created
    data = page_data(out / "index.html")
    assert "does not exist yet" in data["store_note"] and "does not exist yet" in data["sweep_note"]
    assert data["runs"] == [] and data["frontier"] == [] and data["media"] == []


def test_paper_rows_match_paper_md():
    paper = (SHARED / "paper.md")
    if not paper.exists():
        pytest.skip("../shared/paper.md is not beside this checkout")
    text = paper.read_text()
    rows = re.findall(r"^\| ([\w-]+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert [(m, int(t), int(f), float(p), float(l), float(r)) for m, t, f, p, l, r in rows] == [
        (r["method"], r["tokens"], r["train_frames"], r["psnr"], r["lpips"], r["rfvd"]) for r in RECONSTRUCTION]
    assert "CoordTok-SiT-L/2 FVD 369.3, 9.8 s per video,\n4.5 GB" in text
    assert GENERATION[0] == {"method": "CoordTok-SiT-L/2", "fvd": 369.3, "seconds_per_video": 9.8, "memory_gb": 4.5}
    for method, fvd, sec in re.findall(r"([\w-]+(?:-L/2|-L)?) ([\d.]+) / ([\d.]+) s", text):
        row = next(r for r in GENERATION if r["method"] == method)
        assert (row["fvd"], row["seconds_per_video"]) == (float(fvd), float(sec))


def test_stage_resolves_sweep_storage(tmp_path, tiny_params_file):
    from pipelines.dashboard import resolve_sweep_storage

    params = load_params(tiny_params_file)
    if not hasattr(params, "sweep"):
        pytest.skip("no sweep section in params yet")
    raw = yaml.safe_load(tiny_params_file.read_text())
    raw.setdefault("sweep", {})["storage"] = "sqlite:///optuna/sweep.db"
    tiny_params_file.write_text(yaml.safe_dump(raw))
    params = load_params(tiny_params_file)
    assert resolve_sweep_storage(params, tmp_path) == f"sqlite:///{(tmp_path / 'optuna/sweep.db').resolve()}"
    raw["dashboard"] = {"include_sweep": False}
    tiny_params_file.write_text(yaml.safe_dump(raw))
    assert resolve_sweep_storage(load_params(tiny_params_file), tmp_path) is None


@pytest.mark.slow
def test_dashboard_stage_on_real_synthesize_run(tmp_path, tiny_params_file, ray_local, monkeypatch, capsys):
    """A real tiny store (one synthesize run) through `python -m pipelines.dashboard`'s entry."""
    from pipelines.common import tracking
    from pipelines.common.cli import run_stage
    from pipelines.dashboard import dashboard
    from pipelines.synthesize import synthesize

    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load(tiny_params_file.read_text())
    raw["dashboard"] = {"out_dir": str(tmp_path / "reports" / "dashboard")}
    tiny_params_file.write_text(yaml.safe_dump(raw))
    synthesize(load_params(tiny_params_file), tmp_path)
    assert run_stage("dashboard", dashboard, ["--params", str(tiny_params_file)]) == 0
    shown = capsys.readouterr()
    assert "| runs" in shown.out
    assert "dashboard: 100%|" in shown.err and "page done" in shown.err  # its one progress bar, to the end
    data = page_data(tmp_path / "reports" / "dashboard" / "index.html")
    (run,) = data["runs"]
    assert run["stage"] == "synthesize" and run["metrics"]["clips"] == 16 and run["status"] == "FINISHED"
