"""Sweep: search-space validation, objective/Pareto math, study recovery; then tiny real sweeps on Ray
(2 concurrent trials, nested MLflow runs, best.yaml round trip) and resume after SIGKILL."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, shrink

from components.config import ParamsError, load_params, validate_params
from components.sweep import (
    Candidate,
    SearchSpaceError,
    apply_fragment,
    best_fragment,
    num_tokens,
    pareto_mask,
    pick_best,
    set_overrides,
    study_name,
    trial_params,
    validate_search_space,
)


def _params(tmp_path: Path, **sweep) -> dict:
    raw = shrink(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    raw["sweep"] = {**raw["sweep"], **sweep}
    return raw


# ------------------------------------------------------------------------------ search space


def test_token_count_matches_the_paper():
    assert num_tokens(16, 32) == 1280  # paper: 16x16 + 32x16 + 32x16
    assert num_tokens(8, 32) == 576 and num_tokens(32, 32) == 3072 and num_tokens(16, 64) == 2304
    assert Candidate(8, 4, 0.1).num_tokens == 64 + 64


@pytest.mark.parametrize("key, values, bad", [
    ("latent_resolution_xy", [4, 6], 6),        # CoordTok-tiny cuts planes into 4x4 latent patches
    ("latent_resolution_t", [8, 10], 10),
    ("sampling_ratio", [0.001, 0.25], 0.001),   # 8 frames x 4 x 4 = 128 patches: 0.128 rounds to none
])
def test_search_space_rejects_sizes_the_model_cannot_take_before_any_trial(tmp_path, key, values, bad):
    from pipelines.sweep import sweep

    raw = _params(tmp_path, **{key: values})
    params = validate_params(raw)  # the section itself is well-formed; the model is what refuses it
    with pytest.raises(SearchSpaceError, match=rf"sweep\.{key} holds {bad}") as err:
        validate_search_space(params)
    assert "remove it from the search space" in str(err.value)
    # The stage stops on it first: no study, no cluster, no MLflow store (data is not even there).
    with pytest.raises(SearchSpaceError):
        sweep(params, tmp_path)
    assert not (tmp_path / "optuna").exists() and not (tmp_path / "mlruns.db").exists()


def test_search_space_uses_the_same_rules_as_params_yaml(tmp_path):
    """Every accepted candidate validates as a params file; what validation refuses, the sweep refuses."""
    params = validate_params(_params(tmp_path, latent_resolution_xy=[4, 8], latent_resolution_t=[4, 8],
                                     sampling_ratio=[0.125], max_tokens=150))
    feasible = validate_search_space(params)
    assert sorted((c.latent_resolution_xy, c.latent_resolution_t) for c in feasible) == [(4, 4), (4, 8), (8, 4)]
    tp = trial_params(params, Candidate(8, 4, 0.125))
    assert tp.tokenizer.arch.latent_resolution_xy == 8 and tp.tokenizer.arch.latent_resolution_t == 4
    assert tp.pretrain.steps == params.sweep.trial_steps and tp.pretrain.eval_every == params.sweep.report_every
    assert tp.tokenizer.arch.num_tokens == 128
    # A candidate the model cannot take fails exactly like the same value in params.yaml.
    raw = _params(tmp_path)
    raw["tokenizer"]["latent_resolution_xy"] = 6
    with pytest.raises(ParamsError, match="latent patch size"):
        validate_params(raw)
    with pytest.raises(ParamsError, match="latent patch size"):
        trial_params(params, Candidate(6, 4, 0.125))


@pytest.mark.parametrize("sweep, message", [
    ({"latent_resolution_xy": [8, 8]}, "distinct"),
    ({"sampling_ratio": {"low": 0.2, "high": 0.1}}, "low must be below high"),
    ({"sampling_ratio": {"low": 0.05, "high": 0.2}, "sampler": "grid"}, "grid sampler needs"),
    ({"report_every": 500}, "must not exceed sweep.trial_steps"),
    ({"max_tokens": 40}, "smallest triplane of the search space has 48 tokens"),
    ({"sampler": "nsga2"}, "NSGA-II is for sweep.mode: multi"),
    ({"mode": "pareto"}, "sweep.mode"),
])
def test_params_validation_of_the_sweep_section(tmp_path, sweep, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(_params(tmp_path, **sweep))


def test_ratio_range_is_accepted_and_validated_at_both_ends(tmp_path):
    # a range needs a sampler that draws from it (the embedded default's grid takes lists only)
    params = validate_params(_params(tmp_path, sampler="tpe", sampling_ratio={"low": 0.03, "high": 0.25, "log": True}))
    assert len(validate_search_space(params)) > 0
    params = validate_params(_params(tmp_path, sampler="tpe", sampling_ratio={"low": 0.001, "high": 0.25}))
    with pytest.raises(SearchSpaceError, match="sampling_ratio holds 0.001"):
        validate_search_space(params)


def test_study_name_ignores_budget_and_resources_but_not_what_a_trial_measures(tmp_path):
    base = validate_params(_params(tmp_path))
    same = validate_params(_params(tmp_path, n_trials=50, timeout=10.0, max_concurrent=8, cpus_per_trial=2.0,
                                   storage="sqlite:///elsewhere.db"))
    assert study_name(base) == study_name(same)
    for change in ({"trial_steps": 70}, {"latent_resolution_t": [4]}, {"mode": "multi"}, {"max_tokens": 100}):
        assert study_name(validate_params(_params(tmp_path, **change))) != study_name(base), change
    raw = _params(tmp_path)
    raw["pretrain"]["lr"] = 0.01
    assert study_name(validate_params(raw)) != study_name(base)
    assert study_name(validate_params(_params(tmp_path, study_name="mine"))) == "mine"


# ------------------------------------------------------------------------------ objective math


def test_pareto_front_closed_form():
    psnr = [20.0, 22.0, 21.0, 22.0, 19.0, 22.0]
    tokens = [48, 128, 128, 192, 48, 128]
    # 48/20 beats 48/19; 128/22 beats 128/21 and 192/22; the duplicate 128/22 stays.
    assert pareto_mask(psnr, tokens).tolist() == [True, True, False, False, False, True]
    assert pareto_mask([], []).tolist() == []


def test_pick_best_respects_the_budget_and_breaks_ties_by_tokens_then_order():
    rows = [{"number": 0, "test_psnr": 21.0, "num_tokens": 192}, {"number": 1, "test_psnr": 21.0, "num_tokens": 80},
            {"number": 2, "test_psnr": 25.0, "num_tokens": 512}, {"number": 3, "test_psnr": float("nan"), "num_tokens": 48},
            {"number": 4, "test_psnr": 21.0, "num_tokens": 80}]
    assert pick_best(rows, 400)["number"] == 1
    assert pick_best(rows, None)["number"] == 2
    assert pick_best(rows, 40) is None


def test_best_fragment_round_trips_through_params_validation():
    fragment = best_fragment({"latent_resolution_xy": 8, "latent_resolution_t": 16, "sampling_ratio": 0.0625})
    assert fragment == {"tokenizer": {"latent_resolution_xy": 8, "latent_resolution_t": 16},
                        "pretrain": {"sampling_ratio": 0.0625}}
    assert set_overrides(fragment) == ["tokenizer.latent_resolution_xy=8", "tokenizer.latent_resolution_t=16",
                                       "pretrain.sampling_ratio=0.0625"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = validate_params(apply_fragment(raw, yaml.safe_load(yaml.safe_dump(fragment))))
    assert params.tokenizer.arch.latent_resolution_xy == 8 and params.tokenizer.arch.latent_resolution_t == 16
    assert params.pretrain.sampling_ratio == 0.0625 and params.tokenizer.arch.num_tokens == 64 + 2 * 8 * 16
    assert raw["tokenizer"]["latent_resolution_xy"] is None  # applying returns a copy


# ------------------------------------------------------------------------------ study recovery


def test_killed_trials_are_failed_and_reenqueued_and_budget_counts_only_real_trials(tmp_path):
    import optuna

    from pipelines.sweep import (
        ATTR_DUPLICATE,
        ATTR_INTERRUPTED,
        ATTR_REJECTED,
        ATTR_RETRY_OF,
        counts_toward_budget,
        open_storage,
        recover_interrupted,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(path), direction="maximize")
    dists = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3])}
    done, running, rejected = study.ask(dists), study.ask(dists), study.ask(dists)
    study.tell(done, 1.0)
    rejected.set_user_attr(ATTR_REJECTED, "over budget")
    study.tell(rejected, state=optuna.trial.TrialState.PRUNED)
    repeat = study.ask(dists)  # a repeated point: told the earlier result, never trained
    repeat.set_user_attr(ATTR_DUPLICATE, done.number)
    study.tell(repeat, state=optuna.trial.TrialState.PRUNED)

    # A new driver (fresh storage object, as after a kill) recovers the RUNNING trial.
    study = optuna.load_study(study_name="s", storage=open_storage(path))
    assert recover_interrupted(study) == [running.number]
    trials = study.get_trials()
    killed = trials[running.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs[ATTR_INTERRUPTED]
    retry = trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.user_attrs[ATTR_RETRY_OF] == running.number
    assert study.ask(dists).params == running.params  # the next proposal is the interrupted one
    assert [counts_toward_budget(t) for t in trials] == [True, False, False, False, False]
    assert recover_interrupted(optuna.load_study(study_name="s", storage=open_storage(path))) == [retry.number]


# ------------------------------------------------------------------------------ real sweeps


def _sweep_root(root: Path, processed: Path, **sweep) -> Path:
    """A stage root using the shared processed data, its own stores, and a tiny search space."""
    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    raw["sweep"].update({"n_trials": 3, "max_concurrent": 2, "cpus_per_trial": 1.0, "trial_steps": 4,
                         "report_every": 2, "eval_videos": 2, "batch_size": 2, "latent_resolution_xy": [4, 8],
                         "latent_resolution_t": [4, 8], "sampling_ratio": [0.125, 0.25], "max_tokens": 150,
                         "sampler": "random", "startup_trials": 1, "storage": "optuna/sweep.journal", **sweep})
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to(processed / "data")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root / "params.yaml"


def _load_study(root: Path, params):
    import optuna

    from pipelines.sweep import open_storage, resolve_storage

    return optuna.load_study(study_name=study_name(params), storage=open_storage(resolve_storage(params, root)))


def _runs(root: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    return mlflow.search_runs(experiment_names=["coordtok"])


@pytest.mark.slow
def test_tiny_sweep_runs_two_trials_at_once_and_tracks_nested_runs(tmp_path, processed, ray_local):
    from mlflow.tracking import MlflowClient

    from pipelines.sweep import sweep

    pfile = _sweep_root(tmp_path / "run", processed)
    root, params = pfile.parent, load_params(pfile)
    summary = sweep(params, root)

    study = _load_study(root, params)
    trained = [t for t in study.trials if not {"rejected", "duplicate_of"} & set(t.user_attrs)]
    assert len(trained) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trained)
    # Two trials ran at the same time (the cluster has 2 CPUs, 1 per trial).
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trained)
    assert any(a[1] > b[0] for a, b in itertools.pairwise(spans)), spans
    for t in study.trials:  # over-budget triplanes never train
        tokens = num_tokens(t.params["latent_resolution_xy"], t.params["latent_resolution_t"])
        assert ("rejected" in t.user_attrs) == (tokens > 150)

    frame = pd.read_csv(root / "reports/sweep/trials.csv")
    assert len(frame) == len(study.trials) and set(frame.number) == {t.number for t in study.trials}
    complete = frame[frame.state == "complete"]
    best_row = complete.sort_values(["test_psnr", "num_tokens"], ascending=[False, True]).iloc[0]
    metrics = yaml.safe_load((root / "metrics/sweep.json").read_text())
    assert metrics == summary and metrics["best"]["number"] == best_row.number
    assert metrics["best_test_psnr"] == pytest.approx(best_row.test_psnr)
    assert np.isfinite(complete.test_psnr).all() and (complete.num_tokens <= 150).all()
    assert np.isfinite(complete.baseline_same_numbers_psnr).all()  # each trial's, of its own triplane geometry
    assert metrics["test_psnr_spread"] == pytest.approx(complete.test_psnr.max() - complete.test_psnr.min())
    assert metrics["best_baseline_same_numbers_psnr"] == pytest.approx(best_row.baseline_same_numbers_psnr)
    for name in ("pareto", "importances", "history"):
        assert (root / f"reports/sweep/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # best.yaml applies to params.yaml and passes validation, giving the best trial's model.
    fragment = yaml.safe_load((root / "reports/sweep/best.yaml").read_text())
    applied = validate_params(apply_fragment(yaml.safe_load(pfile.read_text()), fragment))
    assert applied.tokenizer.arch.latent_resolution_xy == best_row.latent_resolution_xy
    assert applied.tokenizer.arch.latent_resolution_t == best_row.latent_resolution_t
    assert applied.pretrain.sampling_ratio == pytest.approx(best_row.sampling_ratio)
    assert "dvc exp run -S tokenizer.latent_resolution_xy=" in (root / "reports/sweep/best.yaml").read_text()

    # MLflow: one parent, one child per trained trial, parent set explicitly by the trial process.
    runs = _runs(root)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1
    parent = parents.iloc[0]
    assert parent["tags.optuna.study"] == study.study_name and parent["status"] == "FINISHED"
    assert parent["metrics.best_test_psnr"] == pytest.approx(best_row.test_psnr)
    assert parent["tags.sweep.best_trial"] == str(best_row.number)
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert len(children) == 3
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    for _, child in children.iterrows():
        row = frame[frame.number == int(child["tags.optuna.trial_number"])].iloc[0]
        run = client.get_run(child["run_id"])
        assert run.data.tags["sweep.trial_state"] == row.state
        assert int(run.data.params["tokenizer.latent_resolution_xy"]) == row.latent_resolution_xy
        assert float(run.data.params["pretrain.sampling_ratio"]) == pytest.approx(row.sampling_ratio)
        history = client.get_metric_history(child["run_id"], "test_psnr")
        assert [m.step for m in history] == list(range(2, int(row.last_step) + 1, 2))
        assert history[-1].value == pytest.approx(row.test_psnr)
        assert row.mlflow_run_id == child["run_id"]
    arts = {a.path for a in client.list_artifacts(parent["run_id"], "sweep")}
    assert {"sweep/trials.csv", "sweep/best.yaml", "sweep/pareto.png", "sweep/sweep.json"} <= arts

    # Raising the budget and rerunning continues the same study under the same parent run.
    pfile = _sweep_root(root, processed, n_trials=4)
    more = sweep(load_params(pfile), root)
    assert more["study"] == summary["study"] and more["trials_run_now"] == 1
    runs = _runs(root)
    assert (runs["tags.mlflow.parentRunId"].isna()).sum() == 1
    assert (runs["tags.mlflow.parentRunId"] == parent["run_id"]).sum() == 4
    # A repeated proposal reuses the earlier result instead of training the same point again.
    study = _load_study(root, params)
    trained = [t for t in study.trials if not {"rejected", "duplicate_of"} & set(t.user_attrs)]
    assert len(trained) == 4 and len({tuple(sorted(t.params.items())) for t in trained}) == 4
    for t in study.trials:
        if "duplicate_of" in t.user_attrs:
            source = study.trials[t.user_attrs["duplicate_of"]]
            assert t.params == source.params and t.state == source.state and t.values == source.values


@pytest.mark.slow
def test_multi_objective_sweep_writes_the_pareto_front(tmp_path, processed, ray_local):
    from pipelines.sweep import sweep

    pfile = _sweep_root(tmp_path / "multi", processed, mode="multi", sampler="grid", n_trials=3, max_tokens=None,
                        latent_resolution_xy=[4, 8], latent_resolution_t=[4], sampling_ratio=[0.25], pruner="median",
                        storage="sqlite:///optuna/sweep.db")  # the RDB storage path (trials write to it concurrently)
    root, params = pfile.parent, load_params(pfile)
    summary = sweep(params, root)
    assert (root / "optuna/sweep.db").is_file()
    study = _load_study(root, params)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 2  # the grid has 2 points: it stops there, below n_trials
    expected = sorted(t.number for t in study.best_trials)
    assert sorted(p["number"] for p in summary["pareto"]) == expected
    frame = pd.read_csv(root / "reports/sweep/trials.csv")
    assert sorted(frame[frame.pareto].number) == expected
    text = (root / "reports/sweep/best.yaml").read_text()
    assert "Pareto front" in text and text.count("#   trial") == len(expected)


def _start(pfile: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "pipelines.sweep", "--params", str(pfile)], cwd=pfile.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_killed_sweep_continues_the_same_study(tmp_path, processed):
    import optuna

    pfile = _sweep_root(tmp_path / "killed", processed, n_trials=4, trial_steps=24, report_every=8,
                        max_tokens=None, pruner="none")
    root, params = pfile.parent, load_params(pfile)
    proc = _start(pfile)
    deadline, study = time.time() + 420, None
    while time.time() < deadline:
        if (root / "optuna/sweep.journal").exists():
            try:
                study = _load_study(root, params)
            except KeyError:  # the study is not created yet
                study = None
            trials = study.trials if study else []
            # A finished trial, and a running one whose MLflow child run exists (so the kill orphans it).
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and any(
                    t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials):
                break
        assert proc.poll() is None, "the sweep ended before it could be killed:\n" + proc.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no moment with a complete and a running trial")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # Ray's workers notice the dead driver and stop
    before = {t.number: (t.state, t.values, t.params) for t in _load_study(root, params).trials}
    running = [n for n, (s, _, _) in before.items() if s == optuna.trial.TrialState.RUNNING]
    assert running and not (root / "reports/sweep/best.yaml").exists()

    proc = _start(pfile)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "re-enqueued" in out
    study = _load_study(root, params)
    trials = {t.number: t for t in study.trials}
    for number, (state, values, params_) in before.items():  # finished trials kept as they were
        if state == optuna.trial.TrialState.COMPLETE:
            assert trials[number].state == state and trials[number].values == values
    for number in running:  # interrupted: failed, and their params ran again
        assert trials[number].state == optuna.trial.TrialState.FAIL and trials[number].user_attrs["interrupted"]
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
        # Every parameter the interrupted trial had drawn is kept; one killed between two suggestions
        # had only some of them, and the sampler draws the rest for the retry.
        drawn = trials[number].params
        assert len(retry) == 1 and {k: retry[0].params[k] for k in drawn} == drawn
        assert set(retry[0].params) == {"latent_resolution_xy", "latent_resolution_t", "sampling_ratio"}
        assert retry[0].state == optuna.trial.TrialState.COMPLETE
    counted = [t for t in study.trials
               if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 4
    assert yaml.safe_load((root / "metrics/sweep.json").read_text())["n_interrupted"] == len(running)

    runs = _runs(root)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert parents.iloc[0]["tags.sweep.executions"] == "2"
    children = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[0]["run_id"]]
    killed = children[children["tags.sweep.trial_state"] == "interrupted"]
    assert (killed.status == "KILLED").all() and len(killed) >= 1
    assert (children[children.status == "FINISHED"]["tags.sweep.trial_state"] == "complete").sum() == 4


@pytest.mark.parametrize("mode, sampler, pruner", [
    ("single", "tpe", "median"), ("single", "random", "hyperband"), ("single", "grid", "none"),
    ("multi", "nsga2", "none"), ("multi", "tpe", "median"),
])
def test_every_sampler_and_pruner_runs_ask_and_tell_and_the_grid_knows_when_it_is_done(tmp_path, mode, sampler, pruner):
    import optuna

    from components.sweep import DIRECTIONS
    from pipelines.sweep import (
        distributions,
        grid_exhausted,
        make_pruner,
        make_sampler,
        open_storage,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = validate_params(_params(tmp_path, mode=mode, sampler=sampler, pruner=pruner, latent_resolution_xy=[4, 8],
                                     latent_resolution_t=[4], sampling_ratio=[0.125, 0.25]))
    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "j.journal")),
                                directions=list(DIRECTIONS[mode]), pruner=make_pruner(params))
    study.sampler = make_sampler(params, 0)
    dists = distributions(params)
    seen = set()
    for i in range(4):
        assert not grid_exhausted(study, params) or sampler != "grid"
        trial = study.ask(dists)
        seen.add(tuple(sorted(trial.params.items())))
        if mode == "single":
            trial.report(10.0 + i, 2)
            trial.should_prune()
        study.tell(trial, [10.0 + i] + ([float(num_tokens(trial.params["latent_resolution_xy"], 4))]
                                        if mode == "multi" else []))
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    if sampler == "grid":  # 2 x 1 x 2 points, each once, then done
        assert len(seen) == 4 and grid_exhausted(study, params)
