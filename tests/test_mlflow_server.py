"""Server mode: a real `mlflow server` on loopback; a stage run over HTTP, the registry over HTTP,
an unreachable server failing before compute, and the metrics buffer surviving a server that dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from components.config import load_params
from pipelines.common import tracking
from pipelines.common.cli import run_stage
from pipelines.synthesize import synthesize


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` with a sqlite backend and a local artifact store, both under `folder`."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Server":  # ~5-60 s on a busy 2-core machine
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.folder / "server.log", "ab"),
            start_new_session=True)  # its own process group: stop() ends the server and its workers
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError("mlflow server did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # abrupt on purpose: a server that dies
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server").start()
    yield srv
    srv.stop()


@pytest.fixture
def use_uri(monkeypatch):
    """Point the tracking layer at a URI as MLFLOW_TRACKING_URI would (it is read at import time)."""
    def set_uri(uri: str) -> None:
        monkeypatch.setattr(tracking, "_USER_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return set_uri


@pytest.mark.slow
def test_stage_and_registry_over_http(tmp_path, tiny_params_file, ray_local, server, use_uri):
    from mlflow.tracking import MlflowClient

    use_uri(server.uri)
    params = load_params(tiny_params_file)
    figures = synthesize(params, tmp_path)
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("coordtok")
    (run,) = client.search_runs([exp.experiment_id], "tags.stage = 'synthesize'")
    assert run.info.run_name == "synthesize classes=2 clips=16" and run.info.status == "FINISHED"
    assert run.data.tags["params.hash"] == params.digest() and run.data.tags["git.commit"] == "unknown"
    assert run.data.params["synthesize.num_classes"] == "2"
    assert run.data.metrics["clips"] == 16 == figures["clips"]
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to the sqlite default

    # the registry round-trips over HTTP too (artifacts proxied by the server)
    from tests.test_tracking import assert_no_pickled_code, register_and_reload

    run_id, version, expected, got = register_and_reload(tmp_path, params, tmp_path)
    assert torch.equal(got, expected)
    assert client.get_model_version("coordtok-tokenizer", version.version).tags["source.run_id"] == run_id
    assert any((server.folder / "artifacts").rglob("finetune.pt"))
    assert_no_pickled_code(server.folder / "artifacts")


def test_unreachable_server_fails_before_compute(tmp_path, tiny_params_file, use_uri, capsys):
    use_uri(f"http://127.0.0.1:{_free_port()}")
    started = time.perf_counter()
    code = run_stage("synthesize", synthesize, ["--params", str(tiny_params_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - started < 10
    assert len(err) == 1 and err[0].startswith("error: the MLflow tracking server at http://127.0.0.1:")
    assert "unreachable" in err[0]
    assert not (tmp_path / "synthetic").exists()  # no clip was rendered


@pytest.mark.slow
def test_metrics_buffer_survives_server_death(tmp_path, server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    exp_id = client.create_experiment("buffer")
    run_id = client.create_run(exp_id).info.run_id
    buf = tracking.MetricsBuffer(client, run_id, backoff_s=0.2, final_tries=2)
    for step in range(5):
        buf.add({"loss": 1.0 / (step + 1)}, step=step)
    assert buf.flush() and buf.sent == 5

    server.stop()  # the server dies mid-run; training goes on
    started = time.perf_counter()
    for step in range(5, 15):
        buf.add({"loss": 1.0 / (step + 1)}, step=step)
        buf.flush()
    assert time.perf_counter() - started < 10  # health probes fail fast; no long client retries
    assert len(buf.pending) == 10 and buf.failures >= 1 and "not answering" in buf.last_error

    server.start()  # same port, same store: the held metrics arrive late, in order
    time.sleep(0.3)
    assert buf.flush(force=True)
    report = buf.close()
    assert report["sent"] == 15 and report["late"] == 10 and report["dropped"] == 0
    history = MlflowClient(server.uri).get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(15))

    server.stop()  # down for good: close() reports what was lost instead of raising
    buf.add({"loss": 0.0}, step=15)
    report = buf.close()
    assert report["dropped"] == 1 and report["sent"] == 15
