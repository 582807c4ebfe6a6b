"""Stage `sweep`: an Optuna study over the triplane size and the coordinate sampling ratio, trials on Ray.

The driver asks Optuna for trials and runs each as a Ray task (a short single-process pretrain run,
`sweep.cpus_per_trial` / `sweep.gpus_per_trial`, at most `sweep.max_concurrent` at once). A trial
re-attaches to the study through the shared storage to report its test PSNR every
`sweep.report_every` steps and to ask the pruner whether to stop; the driver tells the result.

Resume: the study lives in `sweep.storage` under a name derived from the params that define it, so a
rerun continues it: finished trials are kept, trials a kill left RUNNING are marked FAIL and their
params re-enqueued, and the sampler rebuilds its model from the stored trials (reseeded with
`sweep.seed` + trials so far, so it does not replay its first random proposals). One driver per study.

MLflow: one parent run per study (reopened on resume) and one child per trial, created by the trial
process with the `mlflow.parentRunId` tag set explicitly.
Outputs: reports/sweep/{trials.csv, best.yaml, pareto.png, importances.png, history.png}, metrics/sweep.json.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from components.config import Params, RatioRange, validate_params
from components.errors import UserError
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from components.sweep import (
    ATTR_DUPLICATE,
    DIRECTIONS,
    OBJECTIVES,
    Candidate,
    best_fragment,
    pareto_mask,
    pick_best,
    set_overrides,
    study_name,
    trial_params,
    validate_search_space,
    within_budget,
)
from pipelines.common import console
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import (
    PARENT_TAG,
    _check_reachable,
    resolve_tracking_uri,
    stage_run,
)
from pipelines.preprocess import INDEX_FILE, PROCESSED_DIR, processed_store

log = logging.getLogger("sweep")

REPORT_DIR = "reports/sweep"
METRICS_OUT = "metrics/sweep.json"
TRIALS_CSV = f"{REPORT_DIR}/trials.csv"
BEST_YAML = f"{REPORT_DIR}/best.yaml"
PLOTS = {"pareto": f"{REPORT_DIR}/pareto.png", "importances": f"{REPORT_DIR}/importances.png",
         "history": f"{REPORT_DIR}/history.png"}

# Study user attributes (the study is the durable record; MLflow mirrors it).
ATTR_PARENT, ATTR_URI = "mlflow_parent_run_id", "mlflow_tracking_uri"
# Trial user attributes.
ATTR_REJECTED, ATTR_INTERRUPTED, ATTR_RETRY_OF = "rejected", "interrupted", "retry_of"
ATTR_RUN_ID, ATTR_ERROR, ATTR_CURVE, ATTR_TOKENS = "mlflow_run_id", "error", "psnr_curve", "num_tokens"
# The same-numbers baseline of the trial's own triplane geometry, on the clips its PSNR is measured on.
ATTR_BASELINE = "baseline_same_numbers_psnr"

# The paper's ablations (UCF-101, 128 frames at 128x128; ../shared/paper.md): triplane sizes and their
# token counts. The paper reports a verdict for each, and a PSNR only for its final model.
PAPER_ABLATIONS = [
    {"label": "8x8 (T'=32): insufficient", "xy": 8, "t": 32},
    {"label": "32x32 (T'=32): redundant", "xy": 32, "t": 32},
    {"label": "T'=16 (16x16): insufficient", "xy": 16, "t": 16},
    {"label": "T'=64 (16x16): redundant", "xy": 16, "t": 64},
]
PAPER_FINAL = {"label": "CoordTok paper: 16x16, T'=32", "tokens": 1280, "psnr": 28.6}


# ------------------------------------------------------------------------------ Optuna plumbing


def resolve_storage(params: Params, root: Path) -> str:
    """`sweep.storage`, absolute (see components.sweep.resolve_storage)."""
    from components.sweep import resolve_storage as resolve

    return resolve(params.sweep.storage, root)


def open_storage(spec: str) -> Any:
    """An Optuna storage: a journal file (a path) or an RDB (an SQLAlchemy URL)."""
    import optuna

    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec))
    if spec.startswith("sqlite:///"):
        Path(spec[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # Trials write from other processes: wait for sqlite's lock instead of failing at once.
        return optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}})
    try:
        return optuna.storages.RDBStorage(spec)
    except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad URL: one answer
        raise UserError(f"sweep.storage = {spec!r} could not be opened ({str(exc).splitlines()[0]}); fix the URL, "
                        "start the database, or use a journal file path") from None


def make_sampler(params: Params, seed: int) -> Any:
    import optuna

    sw = params.sweep
    if sw.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sw.sampler == "grid":
        space = {"latent_resolution_xy": list(sw.latent_resolution_xy),
                 "latent_resolution_t": list(sw.latent_resolution_t),
                 "sampling_ratio": list(sw.sampling_ratio)}

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """GridSampler.after_trial calls study.stop(), which raises outside optimize(); the
            driver stops asking when `is_exhausted` instead."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return AskTellGridSampler(space, seed=seed)
    if sw.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, sw.startup_trials))
    # constant_liar: running trials count as bad guesses, so concurrent trials spread out.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sw.startup_trials, constant_liar=True)


def make_pruner(params: Params) -> Any:
    import optuna

    sw = params.sweep
    if sw.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sw.startup_trials, n_warmup_steps=sw.pruner_warmup_steps)
    if sw.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=sw.report_every, max_resource=sw.trial_steps)
    return optuna.pruners.NopPruner()


def distributions(params: Params) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    sw = params.sweep
    ratio = sw.sampling_ratio
    return {"latent_resolution_xy": CategoricalDistribution(list(sw.latent_resolution_xy)),
            "latent_resolution_t": CategoricalDistribution(list(sw.latent_resolution_t)),
            "sampling_ratio": (FloatDistribution(ratio.low, ratio.high, log=ratio.log) if isinstance(ratio, RatioRange)
                               else CategoricalDistribution(list(ratio)))}


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def counts_toward_budget(t: Any) -> bool:
    """Trials that trained: complete, pruned by the pruner, or failed on their own (not rejected over
    the budget, not a repeat of a tried point, not killed with their driver)."""
    from optuna.trial import TrialState

    attrs = t.user_attrs
    if ATTR_DUPLICATE in attrs or ATTR_REJECTED in attrs or attrs.get(ATTR_INTERRUPTED):
        return False
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def reuse_result(study: Any, trial: Any, source: Any) -> None:
    """Tell `trial` the outcome of `source`, a trial with the same params (same params and seed train
    the same model, so the budget goes to new points instead)."""
    from optuna.trial import TrialState

    trial.set_user_attr(ATTR_DUPLICATE, source.number)
    trial.set_user_attr(ATTR_CURVE, source.user_attrs.get(ATTR_CURVE, []))
    if ATTR_BASELINE in source.user_attrs:
        trial.set_user_attr(ATTR_BASELINE, source.user_attrs[ATTR_BASELINE])
    if source.state == TrialState.COMPLETE:
        study.tell(trial, list(source.values))
    elif source.state == TrialState.PRUNED:
        if source.last_step is not None:
            trial.report(source.intermediate_values[source.last_step], source.last_step)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(ATTR_ERROR, f"same params as trial {source.number}, which failed")
        study.tell(trial, state=TrialState.FAIL)


def grid_exhausted(study: Any, params: Params) -> bool:
    """Every grid point has been started and nothing is enqueued (GridSampler.is_exhausted waits for
    running trials to finish, and would let a concurrent driver loop ask for duplicates meanwhile)."""
    from optuna.trial import TrialState

    sw = params.sweep
    size = len(sw.latent_resolution_xy) * len(sw.latent_resolution_t) * len(sw.sampling_ratio)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    return len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}) >= size


def recover_interrupted(study: Any) -> list[int]:
    """Mark trials a killed driver left RUNNING as FAIL (interrupted) and enqueue their params again.

    Optuna stores a trial's parameters one at a time, so a kill between two suggestions leaves a
    trial with only some of them; the retry keeps those and the sampler draws the rest.
    """
    import optuna
    from optuna.trial import TrialState

    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr(ATTR_INTERRUPTED, True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={ATTR_RETRY_OF: t.number})
        retried.append(t.number)
    return retried


# ------------------------------------------------------------------------------ the trial (Ray worker)


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """One trial in a Ray worker: a short pretrain run that reports test PSNR to the study and logs
    a child MLflow run (its parent set explicitly). Returns the outcome for the driver to tell."""
    import mlflow
    import optuna
    import torch
    from mlflow.tracking import MlflowClient

    from components.tokenizer.training import PretrainRunner, pretrain_tokens_per_clip
    from pipelines.common import trainer
    from pipelines.common.tracking import MetricsBuffer, child_run

    _quiet_optuna()
    started = time.perf_counter()
    # Ray workers are children of their node's raylet: when a killed driver takes its local cluster
    # down, the trial stops at its next step instead of finishing unseen and racing the resumed study.
    raylet = os.getppid()
    params = validate_params(spec["params"], source="sweep trial params")
    cfg, sw = params.pretrain, params.sweep
    torch.set_num_threads(max(1, int(sw.cpus_per_trial)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda" if sw.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
    arch = params.tokenizer.arch
    amp = trainer.autocast_dtype(cfg.precision, device, trainer.step_activation(
        cfg.batch_size // cfg.grad_accum, pretrain_tokens_per_clip(params.data, arch, cfg.sampling_ratio), arch.width))
    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]),
                              sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(params))
    trial = optuna.trial.Trial(study, spec["trial_id"])
    multi = len(study.directions) > 1  # Optuna prunes single-objective studies only
    root = Path(spec["root"])
    tags = {"optuna.study": spec["study"], "optuna.trial_number": str(spec["number"]), "sweep.trial_state": "running",
            "sweep.num_tokens": str(spec["num_tokens"])}
    with child_run(params, root, "sweep", spec["parent_run_id"], f"trial {spec['number']} {spec['label']}",
                   extra_tags=tags) as run:
        run_id = run.info.run_id
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        metrics = MetricsBuffer(MlflowClient(resolve_tracking_uri(params, root)), run_id)
        curve: list[list[float]] = []
        state, last = "complete", None
        try:
            processed = Path(spec["processed_dir"])
            runner = PretrainRunner(params, processed, pd.read_parquet(processed / INDEX_FILE), device, amp)
            runner.core.to(device)
            runner.model.train()
            for step in range(cfg.steps):
                if os.getppid() != raylet:
                    raise RuntimeError("the Ray node running this trial went away (driver killed?); stopping")
                loss, _ = runner.train_step(step)
                done = step + 1
                if done % cfg.log_every == 0:
                    metrics.add({"loss": loss, "lr": runner.lr}, step=done)
                if done % sw.report_every and done != cfg.steps:
                    continue
                last = runner.evaluate()
                curve.append([done, last.psnr])
                metrics.add({"test_psnr": last.psnr, "test_ssim": last.ssim, "baseline_psnr": last.baseline_psnr,
                             **last.baseline_row()}, step=done)
                trial.set_user_attr(ATTR_BASELINE, float(last.baselines[ATTR_BASELINE]))
                metrics.flush()
                if not multi:
                    trial.report(last.psnr, done)
                    if done != cfg.steps and trial.should_prune():
                        state = "pruned"
                        break
        except Exception as exc:
            metrics.close()
            mlflow.set_tags({"sweep.trial_state": "failed", "sweep.error": f"{type(exc).__name__}: {exc}"[:4000]})
            raise  # the run ends FAILED; the driver tells the study
        final = {"final_test_psnr": last.psnr, "final_test_ssim": last.ssim, "final_baseline_psnr": last.baseline_psnr,
                 "final_" + ATTR_BASELINE: float(last.baselines[ATTR_BASELINE]),
                 "num_tokens": float(spec["num_tokens"]), "last_step": float(curve[-1][0]),
                 "trial_seconds": time.perf_counter() - started}
        metrics.add(final, step=int(curve[-1][0]))
        metrics.close()
        mlflow.set_tag("sweep.trial_state", state)
    return {"state": state, "test_psnr": float(last.psnr), "test_ssim": float(last.ssim), "curve": curve,
            "run_id": run_id, "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------ MLflow parent


@contextlib.contextmanager
def parent_run(params: Params, root: Path, study: Any, suffix: str, tags: dict[str, str]) -> Iterator[str]:
    """The study's parent MLflow run: reopened when a previous execution of this study created it
    in the same store, else a new stage run. Yields its run id."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(params, root)
    previous = study.user_attrs.get(ATTR_PARENT)
    if previous and study.user_attrs.get(ATTR_URI) == uri:
        _check_reachable(uri)
        client = MlflowClient(uri)
        try:
            run = client.get_run(previous)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(previous, status="RUNNING")
            executions = int(run.data.tags.get("sweep.executions", "1")) + 1
            for key, value in {**tags, "sweep.executions": str(executions)}.items():
                client.set_tag(previous, key, value)
            try:
                yield previous
            except KeyboardInterrupt:
                client.set_terminated(previous, "KILLED")
                raise
            except BaseException:
                client.set_terminated(previous, "FAILED")
                raise
            client.set_terminated(previous, "FINISHED")
            return
    with stage_run(params, root, "sweep", suffix, extra_tags={**tags, "sweep.executions": "1"}) as run:
        study.set_user_attr(ATTR_PARENT, run.info.run_id)
        study.set_user_attr(ATTR_URI, uri)
        yield run.info.run_id


def close_orphan_children(uri: str, experiment: str, parent_id: str, trial_number: int | None = None) -> int:
    """Children of `parent_id` still RUNNING (their process died): KILLED and tagged interrupted, or,
    for one `trial_number` whose task failed, FAILED and tagged failed."""
    from mlflow.tracking import MlflowClient

    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"
    if trial_number is not None:
        query += f" and tags.`optuna.trial_number` = '{trial_number}'"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], filter_string=query)
    for r in runs:
        client.set_tag(r.info.run_id, "sweep.trial_state", "failed" if trial_number is not None else "interrupted")
        client.set_terminated(r.info.run_id, "FAILED" if trial_number is not None else "KILLED")
    return len(runs)


def mark_interrupted_runs(client: Any, study: Any) -> int:
    """Child runs of trials the study records as interrupted -> KILLED, tagged interrupted (the study is
    the record; a trial that finished its run after its driver died still did not count)."""
    from mlflow.exceptions import MlflowException

    marked = 0
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get(ATTR_RUN_ID)
        if not (t.user_attrs.get(ATTR_INTERRUPTED) and run_id):
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:  # another tracking store
            continue
        if run.data.tags.get("sweep.trial_state") != "interrupted":
            client.set_tag(run_id, "sweep.trial_state", "interrupted")
            client.set_terminated(run_id, "KILLED")
            marked += 1
    return marked


# ------------------------------------------------------------------------------ driver


def _trial_row(t: Any) -> dict[str, Any]:
    from optuna.trial import TrialState

    attrs = t.user_attrs
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
    if ATTR_DUPLICATE in attrs:
        state = "duplicate"
    elif ATTR_REJECTED in attrs:
        state = "rejected"
    elif attrs.get(ATTR_INTERRUPTED):
        state = "interrupted"
    curve = attrs.get(ATTR_CURVE) or [[s, v] for s, v in sorted(t.intermediate_values.items())]
    psnr = t.values[0] if t.state == TrialState.COMPLETE and t.values else (curve[-1][1] if curve else math.nan)
    p = t.params
    xy, tt = p.get("latent_resolution_xy"), p.get("latent_resolution_t")
    return {"number": t.number, "state": state, "test_psnr": psnr, ATTR_BASELINE: attrs.get(ATTR_BASELINE),
            "num_tokens": xy * xy + 2 * xy * tt if xy and tt else None,
            "latent_resolution_xy": xy, "latent_resolution_t": tt, "sampling_ratio": p.get("sampling_ratio"),
            "last_step": int(curve[-1][0]) if curve else None,
            "seconds": (t.duration.total_seconds() if t.duration else None),
            "retry_of": attrs.get(ATTR_RETRY_OF), "mlflow_run_id": attrs.get(ATTR_RUN_ID),
            "note": attrs.get(ATTR_REJECTED) or attrs.get(ATTR_ERROR) or (
                f"same params as trial {attrs[ATTR_DUPLICATE]}: its result reused" if ATTR_DUPLICATE in attrs else "")}


def trials_frame(study: Any, max_tokens: int | None) -> pd.DataFrame:
    """One row per trial; `pareto` marks completed trials on the PSNR/tokens front (within the budget)."""
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    frame = pd.DataFrame(rows, columns=["number", "state", "test_psnr", ATTR_BASELINE, "num_tokens", "latent_resolution_xy",
                                        "latent_resolution_t", "sampling_ratio", "last_step", "seconds", "retry_of",
                                        "mlflow_run_id", "note"])
    frame["pareto"] = False
    ok = frame[(frame.state == "complete") & frame.test_psnr.notna()]
    if max_tokens is not None:
        ok = ok[ok.num_tokens <= max_tokens]
    if len(ok):
        frame.loc[ok.index, "pareto"] = pareto_mask(ok.test_psnr.to_numpy(), ok.num_tokens.to_numpy())
    return frame


def sweep(params: Params, root: Path) -> dict[str, Any]:
    """Run (or continue) the Optuna study; write reports/sweep/ and metrics/sweep.json."""
    import optuna
    import ray
    from optuna.trial import TrialState

    from pipelines.common.cluster import check_fits, ray_cluster

    quiet_third_party()
    _quiet_optuna()
    sw = params.sweep
    candidates = validate_search_space(params)  # before any storage, cluster or trial
    processed = processed_store(root)
    index = pd.read_parquet(processed / INDEX_FILE)
    if not (index.split == "train").any() or not (index.split == "test").any():
        raise UserError(f"{PROCESSED_DIR}/{INDEX_FILE} needs both train and test videos")
    uri = resolve_tracking_uri(params, root)
    _check_reachable(uri)
    storage_spec = resolve_storage(params, root)
    storage = open_storage(storage_spec)
    name = study_name(params)
    study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS[sw.mode]),
                                load_if_exists=True, pruner=make_pruner(params))
    if not study.metric_names:
        study.set_metric_names(list(OBJECTIVES[sw.mode]))
    retried = recover_interrupted(study)
    prior = len(study.trials)
    study.sampler = make_sampler(params, sw.seed + prior)
    dists = distributions(params)
    counted = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
    if retried:
        log.info("study %s: %d interrupted trial(s) marked failed and re-enqueued: %s", name, len(retried), retried)
        # A resumed sweep matters to the user (console contract): said once, on the console too.
        console.note_once(f"sweep: {len(retried)} interrupted trial(s) re-enqueued with the parameters they drew")
    if prior:
        log.info("continuing study %s in %s (%d trials so far, %d count toward sweep.n_trials = %d)",
                 name, storage_spec, prior, counted, sw.n_trials)

    suffix = f"{sw.mode} {params.tokenizer.preset} trials={sw.n_trials}"
    tags = {"optuna.study": name, "optuna.storage": storage_spec, "sweep.n_trials": str(sw.n_trials)}
    started = time.perf_counter()
    launched_now = 0
    with parent_run(params, root, study, suffix, tags) as parent_id:
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        orphans = close_orphan_children(uri, params.mlflow.experiment, parent_id)
        orphans += mark_interrupted_runs(client, study)
        if orphans:
            log.info("%d trial run(s) left running by an interrupted sweep marked KILLED in MLflow", orphans)
        base = params.model_dump(mode="json")
        base["mlflow"]["tracking_uri"] = uri  # trial processes use the driver's store, whatever their env says
        base_params = validate_params(base)
        with ray_cluster(params.ray) as resources:
            check_fits({"CPU": sw.cpus_per_trial, "GPU": sw.gpus_per_trial},
                       {"CPU": "sweep.cpus_per_trial", "GPU": "sweep.gpus_per_trial"}, "trial")
            slots = int(resources.get("CPU", 0) // sw.cpus_per_trial)
            if sw.gpus_per_trial > 0:
                slots = min(slots, int(resources.get("GPU", 0) // sw.gpus_per_trial))
            in_flight = max(1, min(sw.max_concurrent, slots))
            remote = ray.remote(run_trial).options(num_cpus=sw.cpus_per_trial, num_gpus=sw.gpus_per_trial,
                                                   max_retries=0)
            pending: dict[Any, tuple[Any, Candidate]] = {}
            rejected_in_a_row = 0
            # Trials that trained, by params: a repeated proposal reuses the result (same params and seed
            # give the same training), so the budget goes to new points.
            done_states = (TrialState.COMPLETE, TrialState.PRUNED)
            finished: dict[tuple, Any] = {Candidate(**t.params).key(): t
                                          for t in study.get_trials(deepcopy=False, states=done_states)
                                          if counts_toward_budget(t)}
            followers: dict[tuple, list[Any]] = {}  # proposals equal to a running trial, waiting for its result
            enumerable = not isinstance(sw.sampling_ratio, RatioRange)
            deadline = None if sw.timeout is None else started + sw.timeout
            bar = console.progress_bar(total=sw.n_trials, initial=min(counted, sw.n_trials), desc="sweep trials",
                                       unit="trial")

            def may_launch() -> bool:
                if counted + len(pending) >= sw.n_trials or len(pending) >= in_flight:
                    return False
                if deadline is not None and time.perf_counter() >= deadline:
                    return False
                if enumerable and len(finished) >= len(candidates):  # every point has a result
                    return False
                return not (sw.sampler == "grid" and grid_exhausted(study, params))

            while True:
                while may_launch():
                    trial = study.ask(dists)
                    cand = Candidate(**trial.params)
                    if not within_budget(cand, sw.max_tokens):  # no training: the sampler learns to avoid it
                        trial.set_user_attr(ATTR_REJECTED, f"{cand.num_tokens} tokens > sweep.max_tokens = {sw.max_tokens}")
                        study.tell(trial, state=TrialState.PRUNED)
                        rejected_in_a_row += 1
                        if rejected_in_a_row > 200 * len(candidates):
                            raise UserError("the sampler keeps proposing triplanes over sweep.max_tokens; "
                                            "narrow the search space or raise the budget")
                        continue
                    trial.set_user_attr(ATTR_TOKENS, cand.num_tokens)
                    key = cand.key()
                    if key in finished or key in {c.key() for _, c in pending.values()}:
                        if key in finished:
                            reuse_result(study, trial, finished[key])
                        else:  # told when the running one finishes
                            followers.setdefault(key, []).append(trial)
                        rejected_in_a_row += 1
                        if rejected_in_a_row > 200 * len(candidates):
                            raise UserError("the sampler keeps proposing points already tried; raise the "
                                            "search space or lower sweep.n_trials")
                        continue
                    rejected_in_a_row = 0
                    tp = trial_params(base_params, cand)
                    spec = {"params": tp.model_dump(mode="json"), "study": name, "storage": storage_spec,
                            "trial_id": trial._trial_id, "number": trial.number, "label": cand.label(),
                            "num_tokens": cand.num_tokens, "parent_run_id": parent_id, "root": str(root.resolve()),
                            "processed_dir": str(processed.resolve())}
                    pending[remote.remote(spec)] = (trial, cand)
                    launched_now += 1
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    trial, cand = pending.pop(ref)
                    counted += 1
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the trial raised or its worker died: recorded, not fatal
                        message = str(exc).strip().splitlines()[-1][:2000] if str(exc).strip() else type(exc).__name__
                        trial.set_user_attr(ATTR_ERROR, message)
                        frozen = study.tell(trial, state=TrialState.FAIL)
                        close_orphan_children(uri, params.mlflow.experiment, parent_id, trial.number)
                        log.warning("trial %d (%s) failed: %s", trial.number, cand.label(), message)
                    else:
                        trial.set_user_attr(ATTR_CURVE, result["curve"])
                        if result["state"] == "pruned":
                            frozen = study.tell(trial, state=TrialState.PRUNED)
                        else:
                            values = [result["test_psnr"]] + ([float(cand.num_tokens)] if sw.mode == "multi" else [])
                            frozen = study.tell(trial, values)
                        finished[cand.key()] = frozen
                        bar.set_postfix_str(f"#{trial.number} {cand.label()} {result['state']} "
                                            f"{result['test_psnr']:.2f} dB")
                    for follower in followers.pop(cand.key(), []):
                        reuse_result(study, follower, frozen)
                    bar.update(1)
            bar.close()
        wall = time.perf_counter() - started
        summary = write_outputs(study, params, root, wall, launched_now)
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        client.log_batch(parent_id, metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
                                             for k, v in flat.items()])
        best = summary.get("best")
        if best:
            client.set_tag(parent_id, "sweep.best_trial", str(best["number"]))
        client.set_tag(parent_id, "sweep.pareto_trials", ",".join(str(p["number"]) for p in summary["pareto"]))
        for path in [METRICS_OUT, TRIALS_CSV, BEST_YAML, *PLOTS.values()]:
            if (root / path).exists():
                client.log_artifact(parent_id, str(root / path), artifact_path="sweep")
    # Several figures per row: the stage's console stays within ~15 lines (README "What you will see").
    rows = [("study, mode", f"{name}, {sw.mode}"),
            ("trials complete/pruned/failed/rejected, run now, wall seconds",
             f"{summary['n_complete']}/{summary['n_pruned']}/{summary['n_failed']}/{summary['n_rejected']}, "
             f"{launched_now}, {wall:,.1f}")]
    if best:
        rows += [("best trial: test PSNR (dB), its same-numbers baseline, tokens",
                  f"#{best['number']}: {best['test_psnr']:.2f}, "
                  f"{'-' if best[ATTR_BASELINE] is None else format(best[ATTR_BASELINE], '.2f')}, {best['num_tokens']:,}"),
                 ("spread of completed trials (dB)", summary["test_psnr_spread"]),
                 ("best params", " ".join(set_overrides(best["fragment"])))]
    rows += [("Pareto front", ", ".join(f"#{p['number']} {p['num_tokens']} tok {p['test_psnr']:.2f} dB"
                                        for p in summary["pareto"]) or "-"), ("best.yaml", BEST_YAML)]
    print_summary("sweep", rows)
    return summary


# ------------------------------------------------------------------------------ outputs


def write_outputs(study: Any, params: Params, root: Path, wall: float, launched_now: int) -> dict[str, Any]:
    """trials.csv, best.yaml, the three plots and metrics/sweep.json, from the study's stored trials."""
    sw = params.sweep
    frame = trials_frame(study, sw.max_tokens)
    atomic_write_text(root / TRIALS_CSV, frame.to_csv(index=False))
    done = frame[(frame.state == "complete") & frame.test_psnr.notna()]
    records = [{"number": int(r.number), "test_psnr": float(r.test_psnr), "num_tokens": int(r.num_tokens),
                ATTR_BASELINE: None if pd.isna(getattr(r, ATTR_BASELINE)) else float(getattr(r, ATTR_BASELINE)),
                "params": {"latent_resolution_xy": int(r.latent_resolution_xy),
                           "latent_resolution_t": int(r.latent_resolution_t),
                           "sampling_ratio": float(r.sampling_ratio)}} for r in done.itertuples()]
    best = pick_best(records, sw.max_tokens)
    pareto = [rec for rec in records if bool(frame.loc[frame.number == rec["number"], "pareto"].iloc[0])]
    pareto.sort(key=lambda r: r["num_tokens"])
    failed = frame[frame.state == "failed"]
    if best is None:
        why = (f"every trial failed (first error: {failed.note.iloc[0]})" if len(failed) else
               "no trial completed (sweep.timeout too short or sweep.n_trials reached by pruned trials)")
        raise UserError(f"the sweep has no completed trial within the token budget: {why}; fix the cause and rerun "
                        "(the study continues)")
    best = {**best, "fragment": best_fragment(best["params"])}
    for rec in pareto:
        rec["fragment"] = best_fragment(rec["params"])
    write_best_yaml(root / BEST_YAML, study.study_name, sw.mode, best, pareto)
    importances, note = param_importances(study, sw.mode)
    plot_pareto(root / PLOTS["pareto"], frame, sw.max_tokens)
    plot_importances(root / PLOTS["importances"], importances, note)
    plot_history(root / PLOTS["history"], frame, sw.mode)
    counts = frame.state.value_counts()
    summary = {
        "study": study.study_name, "mode": sw.mode, "objectives": list(OBJECTIVES[sw.mode]),
        "n_trials": len(frame), "n_complete": int(counts.get("complete", 0)),
        "n_pruned": int(counts.get("pruned", 0)), "n_failed": int(counts.get("failed", 0)),
        "n_rejected": int(counts.get("rejected", 0)), "n_interrupted": int(counts.get("interrupted", 0)),
        "n_duplicate": int(counts.get("duplicate", 0)),
        "trials_run_now": launched_now, "wall_seconds": round(wall, 2),
        "best_test_psnr": best["test_psnr"], "best_num_tokens": best["num_tokens"],
        "best_" + ATTR_BASELINE: best[ATTR_BASELINE],
        # How far apart the completed trials are: a sweep that cannot tell configurations apart has ~0.
        "test_psnr_spread": float(done.test_psnr.max() - done.test_psnr.min()),
        "best": best, "pareto": pareto, "importances": importances, "importances_note": note,
    }
    atomic_write_json(root / METRICS_OUT, summary)
    return summary


def write_best_yaml(path: Path, study: str, mode: str, best: dict[str, Any], pareto: list[dict[str, Any]]) -> None:
    """A params fragment (tokenizer/pretrain keys) with the provenance and the -S commands as comments."""
    lines = [(f"# Best trial of Optuna study {study} ({mode} mode): trial {best['number']}, "
             f"test PSNR {best['test_psnr']:.3f} dB, {best['num_tokens']} tokens."),
             "# Apply: dvc exp run " + " ".join(f"-S {o}" for o in set_overrides(best["fragment"]))]
    if mode == "multi":
        lines.append("# Pareto front (PSNR vs tokens):")
        lines += [f"#   trial {p['number']}: {p['num_tokens']} tokens, {p['test_psnr']:.3f} dB: "
                  + " ".join(f"-S {o}" for o in set_overrides(p["fragment"])) for p in pareto]
    text = "\n".join(lines) + "\n" + yaml.safe_dump(best["fragment"], sort_keys=False)
    atomic_write_text(path, text)


def param_importances(study: Any, mode: str) -> tuple[dict[str, float], str | None]:
    """fANOVA importances of the parameters for test PSNR ({} and a reason when not computable)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"needs at least 2 completed trials ({len(complete)} so far)"
    try:
        target = (lambda t: t.values[0]) if mode == "multi" else None
        imp = optuna.importance.get_param_importances(
            study, target=target, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return {}, f"not computable yet ({exc})"
    return {k: float(v) for k, v in imp.items()}, None


def _save_figure(fig: Any, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(path: Path, frame: pd.DataFrame, max_tokens: int | None) -> None:
    """Test PSNR vs tokens: completed and pruned trials, this sweep's front, the budget, and the
    paper's ablation sizes (token counts; the paper gives a verdict, not a PSNR, for each) with its
    final model's PSNR (128 frames at 128x128: drawn at the top edge when off this sweep's scale)."""
    from matplotlib.transforms import blended_transform_factory

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    shown = frame[frame.state.isin(["complete", "pruned"]) & frame.test_psnr.notna()]
    for state, style in (("complete", {"marker": "o", "color": "tab:blue"}), ("pruned", {"marker": "x", "color": "grey"})):
        sub = shown[shown.state == state]
        ax.scatter(sub.num_tokens, sub.test_psnr, label=f"{state} trials", zorder=3, **style)
        for r in sub.itertuples():
            ax.annotate(f"#{r.number}", (r.num_tokens, r.test_psnr), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    front = frame[frame.pareto].sort_values("num_tokens")
    if len(front):
        ax.step(front.num_tokens, front.test_psnr, where="post", color="tab:red", label="Pareto front", zorder=2)
    if max_tokens is not None:
        ax.axvline(max_tokens, color="tab:orange", linestyle="--", label=f"sweep.max_tokens = {max_tokens}")
    if len(shown):
        lo, hi = float(shown.test_psnr.min()), float(shown.test_psnr.max())
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
    top = blended_transform_factory(ax.transData, ax.transAxes)  # x in tokens, y in axes fraction
    for ab in PAPER_ABLATIONS:
        tokens = ab["xy"] ** 2 + 2 * ab["xy"] * ab["t"]
        ax.axvline(tokens, color="tab:green", linestyle=":", alpha=0.7)
        ax.text(tokens, 0.03, f" paper {ab['label']} ({tokens})", transform=top, rotation=90, fontsize=6,
                color="tab:green", va="bottom")
    lo, hi = ax.get_ylim()
    final = PAPER_FINAL
    if lo <= final["psnr"] <= hi:
        ax.scatter([final["tokens"]], [final["psnr"]], marker="*", s=140, color="tab:green", zorder=3,
                   label=f"{final['label']} ({final['psnr']} dB)")
    else:  # another scale (128 frames at 128x128): mark its token count at the edge, PSNR in the label
        y = 0.97 if final["psnr"] > hi else 0.03
        ax.scatter([final["tokens"]], [y], transform=top, marker="*", s=140, color="tab:green", zorder=3,
                   clip_on=False, label=f"{final['label']}: {final['psnr']} dB (off this scale)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per video (H'W' + 2 H'T', log scale)")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("Sweep: reconstruction quality vs token count (paper: UCF-101, 128x128x128)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save_figure(fig, path)


def plot_importances(path: Path, importances: dict[str, float], note: str | None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.8))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("fANOVA importance for test PSNR")
        ax.set_xlim(0, 1)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"parameter importances: {note}", ha="center", va="center", wrap=True)
    ax.set_title("Parameter importances")
    _save_figure(fig, path)


def plot_history(path: Path, frame: pd.DataFrame, mode: str) -> None:
    """Test PSNR per trial in order, with the best-so-far line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for state, style in (("complete", {"marker": "o", "color": "tab:blue"}), ("pruned", {"marker": "x", "color": "grey"}),
                         ("failed", {"marker": "v", "color": "tab:red"})):
        sub = frame[(frame.state == state) & frame.test_psnr.notna()]
        ax.scatter(sub.number, sub.test_psnr, label=state, zorder=3, **style)
    ranked = frame[frame.state == "complete"].sort_values("number")  # over-budget trials never complete
    if len(ranked):
        ax.step(ranked.number, ranked.test_psnr.cummax(), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_figure(fig, path)


if __name__ == "__main__":
    main_for("sweep", sweep)
