"""Pretraining: sampling/schedule/state math, then a tiny real Ray Train run, then kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.config import load_params
from components.tokenizer.training import (
    ClipSampler, DamagedCheckpoint, checkpoint_step, eval_clips, load_state, lr_factor, save_state,
)


def test_lr_schedule_closed_form():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, 0, 1.0) == pytest.approx(1.0)


def test_state_files_round_trip_and_detect_damage(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "step": 7, "history": [{"step": 7, "loss": 0.5}]}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert checkpoint_step(tmp_path) == 7
    data = bytearray((tmp_path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match="sha256"):
        load_state(tmp_path)
    (tmp_path / "state.pt").unlink()
    with pytest.raises(DamagedCheckpoint, match="unreadable"):
        load_state(tmp_path)


def test_resume_picks_the_newest_intact_checkpoint(tmp_path, capsys):
    import contextlib

    from pipelines.common.trainer import latest_intact_state as _latest_intact_state

    for step in (4, 8, 12):
        save_state(tmp_path / f"checkpoint_{step:03d}", {"step": step, "model": {"w": torch.full((2,), step)}})
    (tmp_path / "checkpoint_012" / "state.pt").write_bytes(b"torn")

    class Reported:  # what ray.train.get_checkpoint() returns: Ray's latest, here the damaged one
        @contextlib.contextmanager
        def as_directory(self):
            yield str(tmp_path / "checkpoint_012")

    state = _latest_intact_state(tmp_path, Reported())
    assert state["step"] == 8
    assert capsys.readouterr().out.count("skipping damaged checkpoint") == 2
    for step in (4, 8):
        (tmp_path / f"checkpoint_{step:03d}" / "manifest.json").unlink()
    assert _latest_intact_state(tmp_path, None) is None


def test_sampler_is_a_pure_function_of_step_and_never_samples_padding(processed):
    index = pd.read_parquet(processed / "data/processed/index.parquet")
    train = index[index.split == "train"]
    s = ClipSampler(processed / "data/processed", train, num_frames=64, patch_t=1, patch_xy=8, n_patches=40, seed=3)
    a, b = s.batch(4, step=5), s.batch(4, step=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = s.batch(4, step=6)
    assert not np.array_equal(a["coords"], c["coords"])
    assert a["video"].shape == (4, 64, 32, 32, 3) and a["targets"].shape == (4, 40, 192)
    # Clips are shorter than 64 frames here: padded frames exist and are never targets.
    assert (a["n_frames"] < 64).all()
    t_max = (a["coords"][..., 0] * 63).round()
    assert (t_max < a["n_frames"][:, None]).all()
    ids, clips, valid = eval_clips(processed / "data/processed", index[index.split == "test"], 8, 3)
    assert len(ids) == 3 and clips.shape == (3, 8, 32, 32, 3) and (valid == 8).all()


def _pretrain_params(root: Path, processed: Path, **pretrain) -> Path:
    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["pretrain"].update({"steps": 6, "batch_size": 4, "eval_every": 3, "eval_videos": 2, "checkpoint_every": 3,
                            "log_every": 1, "warmup_steps": 2, "cpus_per_worker": 1.0,
                            "storage_path": str(root / "ray_results"), **pretrain})
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "data"
    if not link.exists():
        link.symlink_to(processed / "data")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_auto_precision_is_bf16_only_for_big_steps_on_a_fast_bf16_cpu_and_explicit_settings_win():
    from pipelines.common.trainer import (
        CPU_BF16_MIN_ACTIVATION, autocast_dtype, cpu_has_fast_bf16, precision_name, step_activation,
    )

    cpu = torch.device("cpu")
    sit_tiny, pretrain_default = step_activation(16, 48, 128), step_activation(8, 512, 128)
    assert sit_tiny < CPU_BF16_MIN_ACTIVATION <= pretrain_default
    assert autocast_dtype("auto", cpu, sit_tiny) is None and autocast_dtype("auto", cpu) is None
    assert autocast_dtype("auto", cpu, pretrain_default) == (torch.bfloat16 if cpu_has_fast_bf16() else None)
    assert autocast_dtype("bf16", cpu, 1) == torch.bfloat16 and autocast_dtype("fp32", cpu, 10**9) is None
    assert precision_name(None) == "fp32" and precision_name(torch.bfloat16) == "bf16"


@pytest.mark.slow
def test_pretrain_stage_writes_outputs_and_tracks_run(tmp_path, processed, ray_local):
    from pipelines.pretrain import pretrain

    pfile = _pretrain_params(tmp_path / "run", processed)
    summary = pretrain(load_params(pfile), pfile.parent)
    root = pfile.parent
    ckpt = torch.load(root / "models/tokenizer/pretrain.pt", weights_only=True)
    assert ckpt["step"] == 6 and "arch" in ckpt["config"] and ckpt["model"]
    metrics = yaml.safe_load((root / "metrics/pretrain.json").read_text())
    assert metrics == summary
    for key in ("test_psnr", "test_ssim", "baseline_mean_colour_psnr", "baseline_same_numbers_psnr",
                "baseline_temporal_mean_psnr", "psnr_gain_over_same_numbers", "train_loss"):
        assert np.isfinite(metrics[key])
    assert metrics["num_tokens"] == 192 and metrics["precision"] in ("bf16", "fp32")
    loss = pd.read_csv(root / "plots/pretrain/loss.csv")
    assert list(loss["step"]) == [1, 2, 3, 4, 5, 6]
    evals = pd.read_csv(root / "plots/pretrain/eval.csv")
    assert list(evals["step"]) == [3, 6]

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    run = mlflow.search_runs(experiment_names=["coordtok"]).iloc[0]
    assert run["tags.stage"] == "pretrain" and run["tags.ray.run_name"].startswith("pretrain-")
    assert run["params.precision_used"] == metrics["precision"]
    history = mlflow.tracking.MlflowClient().get_metric_history(run["run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    arts = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run["run_id"], artifact_path="previews/step_000006")]
    assert sorted(Path(a).suffix for a in arts) == [".gif", ".mp4", ".png"]


def _run_stage(pfile: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", "--params", str(pfile)], cwd=pfile.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, processed):
    """Kill mid-run, damage the newest checkpoint, rerun: it resumes from the older intact one and
    ends with exactly the weights of an uninterrupted run (CPU, deterministic)."""
    settings = {"steps": 40, "checkpoint_every": 4, "eval_every": 40, "keep_checkpoints": 3, "log_every": 4}
    ref = _pretrain_params(tmp_path / "ref", processed, **settings)
    proc = _run_stage(ref)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    pfile = _pretrain_params(tmp_path / "killed", processed, **settings)
    run_dir_parent = tmp_path / "killed" / "ray_results"
    proc = _run_stage(pfile)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpts = [c for c in run_dir_parent.glob("pretrain-*/checkpoint_*") if (c / "manifest.json").exists()]
        if len(ckpts) >= 2:
            break
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # Ray's worker processes notice the dead driver and stop; let any straggler write land
    assert not (pfile.parent / "models/tokenizer/pretrain.pt").exists()
    # Damage every checkpoint but the oldest: the rerun must skip them all (Ray's latest included).
    ckpts = sorted((c for c in run_dir_parent.glob("pretrain-*/checkpoint_*") if (c / "manifest.json").exists()),
                   key=checkpoint_step)
    assert checkpoint_step(ckpts[-1]) < 40
    oldest = checkpoint_step(ckpts[0])
    for damaged in ckpts[1:]:
        (damaged / "state.pt").write_bytes((damaged / "state.pt").read_bytes()[:100])

    proc = _run_stage(pfile)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from step {oldest}" in out
    a = torch.load(ref.parent / "models/tokenizer/pretrain.pt", weights_only=True)["model"]
    b = torch.load(pfile.parent / "models/tokenizer/pretrain.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref.parent / "metrics/pretrain.json").read_text() == (pfile.parent / "metrics/pretrain.json").read_text()
