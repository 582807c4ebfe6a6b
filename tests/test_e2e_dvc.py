"""End to end: `dvc repro` of the real dvc.yaml on a fresh copy of the repository, shrunk params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def repo_copy(tmp_path: Path, standin_weights: Path) -> Path:
    """The committed and new (not ignored) files of this checkout, as a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dst = tmp_path / "repo"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    raw = yaml.safe_load((dst / "params.yaml").read_text())
    raw["synthesize"].update(num_classes=2, groups=8, clips_per_group=1, min_seconds=0.6, max_seconds=1.0,
                             width=96, height=64)
    raw["data"].update(img_size=32, num_frames=8)
    raw["ray"].update(num_cpus=2)
    raw["pretrain"].update(steps=4, batch_size=2, eval_every=4, eval_videos=2, checkpoint_every=4, log_every=2,
                           warmup_steps=1)
    raw["finetune"].update(steps=2, batch_size=2, eval_every=2, eval_videos=2, checkpoint_every=2, log_every=1,
                           warmup_steps=1, frames_per_video=2)
    raw["weights"].update(dir=str(standin_weights), allow_download=False)  # CI uses stand-ins, explicitly
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run(["git", "init", "-q"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dst)
    return dst


@pytest.mark.slow
def test_dvc_repro_synthesize_and_preprocess(repo_copy: Path):
    out = _run(["dvc", "repro"], repo_copy)
    for stage in ("synthesize", "preprocess", "pretrain", "finetune"):
        assert f"Running stage '{stage}'" in out.stdout
    index = pd.read_parquet(repo_copy / "data/processed/index.parquet")
    assert len(index) == 16 and set(index["split"]) == {"train", "test"}
    assert (repo_copy / "reports/preprocess.json").is_file()
    assert (repo_copy / "mlruns.db").is_file()
    assert (repo_copy / "models/tokenizer/pretrain.pt").is_file()
    assert json.loads((repo_copy / "metrics/finetune.json").read_text())["standin_weights"] is True
    metrics = _run(["dvc", "metrics", "show", "--json"], repo_copy).stdout
    assert "test_psnr" in metrics
    # Outputs are git-ignored by DVC; the lock file records them.
    status = _run(["git", "status", "--porcelain"], repo_copy).stdout
    assert "data/" not in status and "models/" not in status and "dvc.lock" in status

    again = _run(["dvc", "repro"], repo_copy)
    assert "Running stage" not in again.stdout

    # A teammate: clone, pull the pushed artifacts, and `dvc repro` has nothing to do.
    clone = _share_and_clone(repo_copy, repo_copy.parent)
    assert (clone / "models/tokenizer/finetune.pt").read_bytes() == (repo_copy / "models/tokenizer/finetune.pt").read_bytes()
    status = _run(["dvc", "status"], clone).stdout
    assert "up to date" in status, status
    assert "Running stage" not in _run(["dvc", "repro"], clone).stdout

    # A param of one stage reruns that stage only.
    raw = yaml.safe_load((repo_copy / "params.yaml").read_text())
    raw["data"]["img_size"] = 48
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dry = _run(["dvc", "repro", "--dry"], repo_copy).stdout
    assert "Running stage 'preprocess'" in dry and "Running stage 'synthesize'" not in dry
    raw["data"]["img_size"] = 32
    raw["pretrain"]["lr"] = 0.002
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dry = _run(["dvc", "repro", "--dry"], repo_copy).stdout
    assert "Running stage 'pretrain'" in dry and "Running stage 'preprocess'" not in dry
    raw["pretrain"]["lr"] = 0.001
    raw["finetune"]["lpips_weight"] = 0.5
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dry = _run(["dvc", "repro", "--dry"], repo_copy).stdout
    assert "Running stage 'finetune'" in dry and "Running stage 'pretrain'" not in dry

    # `dvc exp run -S` overrides go through the same validation, before any compute.
    bad = _run(["dvc", "exp", "run", "-S", "data.img_size=60"], repo_copy, check=False)
    assert bad.returncode != 0
    assert "data.img_size = 60 is not allowed: it must be a multiple of" in bad.stdout + bad.stderr


def _share_and_clone(repo: Path, tmp: Path) -> Path:
    """Push a finished run to a local DVC remote, clone the repository fresh and pull it."""
    remote = tmp / "remote"
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo)
    _run(["dvc", "push"], repo)
    clone = tmp / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp)
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], clone)
    _run(["dvc", "pull"], clone)
    return clone
