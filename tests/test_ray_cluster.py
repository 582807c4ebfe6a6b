"""Stages against a separately started Ray head on loopback (`ray start --head`), and a dead address."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(stage: str, params: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--params", str(params)],
                          cwd=params.parent, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_stages_run_on_a_separate_ray_head(tmp_path, tiny_params_file):
    port = _free_port()
    temp_dir = Path("/tmp") / f"ray-head-{port}"  # short: Ray's socket paths have a length limit
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--object-store-memory=200000000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if subprocess.run([str(ray_bin), "status", f"--address={address}"], env={**env, "RAY_AUTH_MODE": "token"},
                              capture_output=True).returncode == 0:
                break
            assert head.poll() is None, head.stdout.read()
            time.sleep(2)
        else:
            pytest.fail("ray head did not come up")
        env_remote = {**env, "RAY_ADDRESS": address}
        for stage in ("synthesize", "preprocess"):
            proc = _stage(stage, tiny_params_file, env_remote)
            assert proc.returncode == 0, proc.stderr[-3000:]
        index = pd.read_parquet(tmp_path / "data/processed/index.parquet")
        assert len(index) == 16
        # The tasks ran in that cluster's workers (their logs live under its temp dir).
        logs = list((temp_dir / "session_latest" / "logs").glob("worker-*.out"))
        assert logs
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_unreachable_cluster_is_one_clear_error(tmp_path, tiny_params_file):
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    proc = _stage("synthesize", tiny_params_file, env)
    assert proc.returncode == 2
    assert "cannot connect to the Ray cluster at" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "synthetic").exists()
