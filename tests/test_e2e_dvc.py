"""End to end: `dvc repro` of the real dvc.yaml (every stage) on a fresh copy of the repository,
shrunk params and explicit stand-in weights; then what a team does with it: no-op reruns, param
granularity, a from-scratch rerun with identical metrics, queued experiments two at a time, and
sharing through a DVC remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

STAGES = ["synthesize", "preprocess", "pretrain", "finetune", "extract_latents", "train_sit", "sweep", "evaluate",
          "dashboard"]
# Numbers that measure the machine, not the model: they may differ between two identical runs.
VOLATILE = ("seconds", "per_second", "videos_per_s", "peak", "memory", "rss", "throughput", "wall")


def _run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1500,
         one_stream: bool = False) -> subprocess.CompletedProcess:
    """`one_stream`: stderr into stdout, in the order a terminal would show them (per-stage line counts)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "COORDTOK_WEIGHTS_DIR"):
        env.pop(var, None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if one_stream else subprocess.PIPE, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _git_commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def shrink_all(raw: dict, weights: Path) -> dict:
    """Every stage at test size (16 frames: the FVD detector needs at least 9)."""
    raw["synthesize"].update(num_classes=2, groups=8, clips_per_group=1, min_seconds=0.8, max_seconds=1.0,
                             width=96, height=64)
    raw["data"].update(img_size=32, num_frames=16)
    raw["ray"].update(num_cpus=2)
    raw["pretrain"].update(steps=4, batch_size=2, eval_every=4, eval_videos=2, checkpoint_every=4, log_every=2,
                           warmup_steps=1)
    raw["finetune"].update(steps=2, batch_size=2, eval_every=2, eval_videos=2, checkpoint_every=2, log_every=1,
                           warmup_steps=1, frames_per_video=2)
    raw["extract_latents"].update(batch_size=4)
    raw["train_sit"].update(steps=4, batch_size=4, eval_every=4, checkpoint_every=4, log_every=2, warmup_steps=1,
                            eval_samples=8, eval_steps=2)
    raw["sweep"].update(n_trials=2, max_concurrent=2, cpus_per_trial=1.0, trial_steps=2, report_every=2,
                        eval_videos=2, batch_size=2, latent_resolution_xy=[4, 8], latent_resolution_t=[4, 8],
                        sampling_ratio=[0.125, 0.25], max_tokens=200, sampler="random", startup_trials=1)
    raw["evaluate"].update(recon_videos=3, num_videos=4, real_videos=4, fvd_clip_frames=9, sampling_steps=2,
                           batch_size=2, feature_batch_size=2, num_actors=2, cpus_per_actor=0.5, grid_videos=4)
    raw["weights"].update(dir=str(weights), allow_download=False)  # CI uses stand-ins, explicitly
    return raw


@pytest.fixture
def repo_copy(tmp_path: Path, standin_weights: Path) -> Path:
    """The committed and new (not ignored) files of this checkout, as a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dst = tmp_path / "repo"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("metrics/", "plots/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    raw = shrink_all(yaml.safe_load((dst / "params.yaml").read_text()), standin_weights)
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run(["git", "init", "-q"], dst)
    _git_commit(dst, "copy")
    return dst


def _would_run(repo: Path, **changes: object) -> set[str]:
    """Stages `dvc repro` would run after setting `section.key` params (then restored)."""
    path = repo / "params.yaml"
    original = path.read_text()
    raw = yaml.safe_load(original)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        out = _run(["dvc", "repro", "--dry"], repo).stdout
    finally:
        path.write_text(original)
    return {s for s in STAGES if f"Running stage '{s}'" in out}


def _metrics(repo: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}


def _stable(d: object) -> object:
    if isinstance(d, dict):
        return {k: _stable(v) for k, v in d.items() if not any(v_ in k.lower() for v_ in VOLATILE)}
    if isinstance(d, list):
        return [_stable(v) for v in d]
    return d


def assert_quiet_console(console: str, repo: Path) -> None:
    """The console contract (issue 18): per stage a start line, a bar, the summary (plus DVC's own lines);
    Ray/Ray Train chatter and warnings only in logs/<stage>.log, which holds Ray's output."""
    from test_console import BAR, PROJECT_WARNING, assert_within_budget, console_lines, stage_sections

    for chatter in ("Reporting training result", "PlacementGroupCleaner", "RayTrainWorker", "TrainController"):
        assert chatter not in console, chatter
    assert not PROJECT_WARNING.search(console), PROJECT_WARNING.search(console)
    for part in console.split("Running stage '")[1:]:
        stage, lines = part.split("'", 1)[0], console_lines(part)
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{stage}: "))
        end = max(i for i, line in enumerate(lines) if line.startswith("+-"))  # the summary's last line
        assert f"logs/{stage}.log" in lines[start], lines[start]
        # Only the contract: start line, bar(s), warnings/notes in the project's words, the summary table.
        for line in lines[start + 1:end + 1]:
            assert line.startswith((f"{stage}", "warning: ", "resuming from step", "+-", "| ")) or BAR.match(line), \
                (stage, line)
        # a progress bar (rate, ETA) that got to the end, in every stage
        assert [line for line in lines if BAR.match(line) and line.startswith(stage) and "100%|" in line], \
            (stage, lines)
    for stage, lines in stage_sections(console).items():
        assert_within_budget(lines, stage)
        log = (repo / "logs" / f"{stage}.log").read_text()
        assert not PROJECT_WARNING.search(log), (stage, PROJECT_WARNING.search(log))
    assert "RayTrainWorker" in (repo / "logs" / "pretrain.log").read_text()


@pytest.mark.slow
def test_full_pipeline_reproduces_shares_and_runs_experiments(repo_copy: Path, tmp_path: Path):
    started = time.perf_counter()
    first = _run(["dvc", "repro"], repo_copy, one_stream=True)
    first_seconds = time.perf_counter() - started
    out = first.stdout
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out, stage
    assert_quiet_console(first.stdout, repo_copy)
    index = pd.read_parquet(repo_copy / "data/processed/index.parquet")
    assert len(index) == 16 and set(index["split"]) == {"train", "test"}
    for rel in ("models/tokenizer/pretrain.pt", "models/tokenizer/finetune.pt", "latents/stats.json",
                "models/sit/sit.pt", "reports/evaluate/paper_table.md", "reports/sweep/best.yaml",
                "reports/dashboard/index.html", "mlruns.db"):
        assert (repo_copy / rel).exists(), rel
    metrics = _metrics(repo_copy)
    assert set(metrics) == {f"{s}.json" for s in ("pretrain", "finetune", "extract_latents", "train_sit", "sweep",
                                                  "evaluate")}
    assert metrics["finetune.json"]["standin_weights"] is True and metrics["evaluate.json"]["standin_weights"] is True
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    assert "test_psnr" in json.dumps(shown) and "fvd" in json.dumps(shown).lower()
    # Outputs are git-ignored by DVC; the lock file records them.
    status = _run(["git", "status", "--porcelain"], repo_copy).stdout
    assert "data/" not in status and "models/" not in status and "dvc.lock" in status

    started = time.perf_counter()
    again = _run(["dvc", "repro"], repo_copy)
    noop_seconds = time.perf_counter() - started
    assert "Running stage" not in again.stdout
    print(f"\nfull shrunk repro {first_seconds:.0f} s; no-op repro {noop_seconds:.1f} s")

    # One param per stage: exactly the stages that read it are out of date (`--dry` does not
    # propagate; at run time a stage downstream reruns only if its inputs really changed).
    assert _would_run(repo_copy, synthesize__seed=1) == {"synthesize"}
    assert _would_run(repo_copy, data__min_frames=9) == {"preprocess"}
    assert _would_run(repo_copy, pretrain__steps=5) == {"pretrain"}
    assert _would_run(repo_copy, pretrain__lr=0.002) == {"pretrain", "sweep"}  # trials train with pretrain.*
    assert _would_run(repo_copy, finetune__lpips_weight=0.5) == {"finetune"}
    assert _would_run(repo_copy, extract_latents__clip_policy="windows") == {"extract_latents"}
    assert _would_run(repo_copy, train_sit__lr=0.002) == {"train_sit"}
    assert _would_run(repo_copy, sweep__trial_steps=4) == {"sweep"}
    assert _would_run(repo_copy, evaluate__seed=1) == {"evaluate"}
    assert _would_run(repo_copy, dashboard__max_runs=10) == {"dashboard"}
    assert _would_run(repo_copy, ray__num_cpus=1) == set()  # resources do not change results
    assert _would_run(repo_copy, data__num_frames=8) == {"pretrain", "finetune", "extract_latents", "sweep",
                                                          "evaluate"}

    # Same params, same results: a from-scratch rerun (no Ray checkpoints, no study, no outputs)
    # gives identical metrics files up to the machine-dependent timings.
    first = _metrics(repo_copy)
    for folder in ("ray_results", "optuna", "data", "models", "latents", "reports", "metrics", "plots"):
        shutil.rmtree(repo_copy / folder, ignore_errors=True)
    _run(["dvc", "repro", "--force"], repo_copy)
    assert _stable(_metrics(repo_copy)) == _stable(first)

    # `dvc exp run -S` overrides go through the same validation, before any compute.
    bad = _run(["dvc", "exp", "run", "-S", "data.img_size=60"], repo_copy, check=False)
    assert bad.returncode != 0
    assert "data.img_size = 60 is not allowed: it must be a multiple of" in bad.stdout + bad.stderr
    _run(["git", "checkout", "--", "params.yaml"], repo_copy)  # DVC leaves a failed -S applied in the workspace

    # Two queued experiments at once: each gets its own results; both MLflow runs land in the
    # checkout's store; the workspace is untouched.
    _git_commit(repo_copy, "run")
    before = (repo_copy / "metrics/evaluate.json").read_text()
    for seed in (1, 2):
        _run(["dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"evaluate.seed={seed}"], repo_copy)
    _run(["dvc", "queue", "start", "-j", "2"], repo_copy)
    deadline = time.time() + 1200
    while time.time() < deadline:
        state = _run(["dvc", "queue", "status"], repo_copy).stdout
        if "Queued" not in state and "Running" not in state:
            break
        time.sleep(5)
    assert "Failed" not in state, state + _run(["dvc", "queue", "logs", "seed1"], repo_copy, check=False).stdout
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo_copy).stdout)
    text = json.dumps(shown)
    assert "seed1" in text and "seed2" in text
    assert (repo_copy / "metrics/evaluate.json").read_text() == before
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["coordtok"])
    evals = runs[runs["tags.stage"] == "evaluate"]
    assert {"seed1", "seed2"} <= set(evals["tags.dvc.exp_name"])

    # A teammate: push, clone, pull; `dvc repro` has nothing to do.
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], repo_copy)
    _run(["dvc", "push"], repo_copy)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo_copy), str(clone)], tmp_path)
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], clone)
    _run(["dvc", "pull"], clone)
    assert (clone / "models/sit/sit.pt").read_bytes() == (repo_copy / "models/sit/sit.pt").read_bytes()
    assert "up to date" in _run(["dvc", "status"], clone).stdout
    assert "Running stage" not in _run(["dvc", "repro"], clone).stdout
