"""MLflow conventions: run names and tags, nested runs, the buffered metrics logger, the registry."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import yaml

from components.config import load_params
from components.errors import UserError
from pipelines.common import tracking


@pytest.fixture
def params(tmp_path, tiny_params_file, monkeypatch):
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "")  # captured at import; tests pick their store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_params(tiny_params_file)


def _client(params, root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.resolve_tracking_uri(params, root))


def test_stage_run_name_tags_params(tmp_path, params, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-42")
    with tracking.stage_run(params, tmp_path, "pretrain", "CoordTok-tiny xy=8 t=8 ratio=0.125",
                            extra_tags={"ray.run_name": "pretrain-abc"}, standin=True) as run:
        run_id = run.info.run_id
    got = _client(params, tmp_path).get_run(run_id)
    assert got.info.run_name == "pretrain CoordTok-tiny xy=8 t=8 ratio=0.125"
    assert got.info.status == "FINISHED"
    tags = got.data.tags
    assert tags["stage"] == "pretrain" and tags["params.hash"] == params.digest() and len(params.digest()) == 12
    assert tags["dvc.exp_name"] == "exp-42" and tags["ray.run_name"] == "pretrain-abc"
    assert tags["weights.standin"] == "true"
    # tmp_path is no git checkout: the state says so instead of pretending to be clean
    assert tags["git.commit"] == "unknown" and tags["git.dirty"] == "unknown"
    p = got.data.params
    assert p["pretrain.steps"] == "4" and p["data.img_size"] == "32" and p["ray.address"] == "null"
    assert p["mlflow.experiment"] == "coordtok"
    assert "mlflow.parentRunId" not in tags


def test_git_state_of_this_checkout():
    from tests.conftest import REPO

    state = tracking.git_state(REPO)
    assert len(state["git.commit"]) == 40 and state["git.dirty"] in ("true", "false")


def test_standin_unknown_then_logged(tmp_path, params):
    with tracking.stage_run(params, tmp_path, "evaluate") as run:
        tracking.log_standin(False)
        run_id = run.info.run_id
    client = _client(params, tmp_path)
    assert client.get_run(run_id).data.tags["weights.standin"] == "false"
    assert client.get_run(run_id).info.run_name == "evaluate"
    tracking.log_standin(True, run_id=run_id, client=client)
    assert client.get_run(run_id).data.tags["weights.standin"] == "true"


def test_nested_runs_in_process_and_across_processes(tmp_path, params):
    with tracking.stage_run(params, tmp_path, "sweep", "trials=2") as parent:
        parent_id = parent.info.run_id
        # same process, parent active: an ordinary nested run
        with tracking.child_run(params, tmp_path, "sweep", parent_id, "trial 0") as child:
            in_process = child.info.run_id
    # another process (a Ray trial) has no active parent: the tag is set explicitly
    with tracking.child_run(params, tmp_path, "sweep", parent_id, "trial 1") as child:
        detached = child.info.run_id
    client = _client(params, tmp_path)
    exp = client.get_experiment_by_name("coordtok")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_id for r in children) == sorted([in_process, detached])
    assert {r.info.run_name for r in children} == {"sweep trial 0", "sweep trial 1"}
    assert all(r.data.tags["stage"] == "sweep" for r in children)
    assert "mlflow.parentRunId" not in client.get_run(parent_id).data.tags


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_user_error(tmp_path, params):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(UserError) as err:
        tracking._check_reachable(uri)
    assert time.perf_counter() - started < 5
    msg = str(err.value)
    assert uri in msg and "unreachable" in msg and "MLFLOW_TRACKING_URI" in msg and "\n" not in msg
    assert not tracking.server_is_up(uri) and tracking.server_is_up("sqlite:///x.db")


# ------------------------------------------------------------------------------ MetricsBuffer


class FlakyClient:
    """log_batch fails while `down`; records what arrived."""

    def __init__(self):
        self.down = False
        self.received = []
        self.calls = 0

    def log_batch(self, run_id, metrics=()):
        self.calls += 1
        if self.down:
            raise ConnectionError("server went away")
        assert len(metrics) <= 1000
        self.received.extend(metrics)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_metrics_buffer_keeps_metrics_while_down_and_reports_late():
    client, clock = FlakyClient(), Clock()
    buf = tracking.MetricsBuffer(client, "run", backoff_s=1.0, clock=clock, tracking_uri="sqlite:///x")
    buf.add({"loss": 1.0, "lr": 0.1}, step=1)
    assert buf.flush() and buf.sent == 2 and buf.late == 0
    client.down = True
    buf.add({"loss": 0.5}, step=2)
    assert not buf.flush() and len(buf.pending) == 1 and buf.failures == 1
    buf.add({"loss": 0.25}, step=3)
    calls = client.calls
    assert not buf.flush()  # backing off: no request at all
    assert client.calls == calls
    clock.t = 1.01  # first back-off is 1 s, the next 2 s
    assert not buf.flush() and client.calls == calls + 1
    clock.t = 2.0
    assert not buf.flush() and client.calls == calls + 1
    client.down = False
    clock.t = 3.1
    assert buf.flush()
    assert [(m.key, m.value, m.step) for m in client.received] == [
        ("loss", 1.0, 1), ("lr", 0.1, 1), ("loss", 0.5, 2), ("loss", 0.25, 3)]
    report = buf.close()
    assert report == {"sent": 4, "late": 2, "dropped": 0, "pending": 0, "failures": 2,
                      "last_error": "ConnectionError: server went away"}


def test_metrics_buffer_chunks_overflow_and_final_drop():
    client = FlakyClient()
    buf = tracking.MetricsBuffer(client, "run", backoff_s=0.01, max_pending=2500, final_tries=2,
                                 tracking_uri="sqlite:///x")
    for step in range(2400):
        buf.add({"loss": float(step)}, step=step)
    assert buf.flush() and buf.sent == 2400 and client.calls == 3  # 1000 + 1000 + 400
    client.down = True
    for step in range(3000):
        buf.add({"x": float(step)}, step=step)
    assert buf.dropped == 500 and buf.pending[0].step == 500  # the oldest go first
    report = buf.close()
    assert report["dropped"] == 3000 and report["sent"] == 2400 and report["pending"] == 0
    assert client.calls == 3 + 2  # two final tries


# ------------------------------------------------------------------------------ registry


def _tiny_checkpoint(path):
    from components.tokenizer.model import CoordTok
    from components.tokenizer.presets import TOKENIZER_PRESETS

    torch.manual_seed(0)
    model = CoordTok(TOKENIZER_PRESETS["CoordTok-tiny"], 16, 8).eval()
    torch.save({"config": model.config, "model": model.state_dict(), "step": 7}, path)
    g = torch.Generator().manual_seed(1)
    video = torch.rand(2, 8, 16, 16, 3, generator=g) * 2 - 1
    coords = torch.rand(2, 5, 3, generator=g)
    return model, {"video": video, "coords": coords}


def register_and_reload(tmp_path, params, root, uri=None):
    """Shared with the server test: register a tiny CoordTok and load it back."""
    torch.set_num_threads(1)
    model, inputs = _tiny_checkpoint(tmp_path / "finetune.pt")
    with tracking.stage_run(params, root, "finetune", "CoordTok-tiny", standin=True) as run:
        run_id = run.info.run_id
        version = tracking.register_model(
            run_id, tmp_path / "finetune.pt", tracking.TOKENIZER_MODEL, "components.tokenizer.model:CoordTok.from_config",
            input_example={k: v.numpy() for k, v in inputs.items()}, tags={"checkpoint": "models/tokenizer/finetune.pt"})
    loaded = tracking.load_registered(tracking.TOKENIZER_MODEL, uri and None)
    with torch.no_grad():
        expected, got = model(**inputs), loaded(**inputs)
    return run_id, version, expected, got


def test_registry_round_trip_sqlite(tmp_path, params):
    run_id, version, expected, got = register_and_reload(tmp_path, params, tmp_path)
    assert torch.equal(got, expected) and got.shape == (2, 5, 1 * 8 * 8 * 3)
    assert version.name == "coordtok-tokenizer" and str(version.version) == "1"
    tags = version.tags
    assert tags["stage"] == "finetune" and tags["params.hash"] == params.digest()
    assert tags["weights.standin"] == "true" and tags["source.run_id"] == run_id
    assert tags["checkpoint"] == "models/tokenizer/finetune.pt" and "git.commit" in tags
    client = _client(params, tmp_path)
    mv = client.get_model_version("coordtok-tokenizer", "1")
    assert mv.tags == tags and mv.run_id == run_id
    # the stored config and the input example travel with the model
    import mlflow

    info = mlflow.models.get_model_info("models:/coordtok-tokenizer/1")
    assert info.metadata["config"]["img_size"] == 16 and info.metadata["config"]["num_frames"] == 8
    assert info.signature is not None and {i.name for i in info.signature.inputs.inputs} == {"video", "coords"}
    # a second registration makes version 2; "latest" follows it, explicit versions stay
    register_and_reload(tmp_path, params, tmp_path)
    assert str(client.get_registered_model("coordtok-tokenizer").latest_versions[-1].version) == "2"


def assert_no_pickled_code(artifacts):
    """A logged model holds no pickle of code: no python_model.pkl, no raw pickle file at all, and the
    checkpoint (a torch zip) loads with weights_only=True; its pyfunc is the project's source file."""
    import zipfile

    files = [p for p in artifacts.rglob("*") if p.is_file()]
    models = [p.parent for p in files if p.name == "MLmodel"]
    assert models, f"no logged model under {artifacts}"
    for path in files:
        assert path.name != "python_model.pkl", path
        head = path.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"pickle: {path}"
        if zipfile.is_zipfile(path):  # torch checkpoints are zips holding a tensor-only pickle
            torch.load(path, map_location="cpu", weights_only=True)
    for model in models:
        mlmodel = yaml.safe_load((model / "MLmodel").read_text())
        pyfunc = mlmodel["flavors"]["python_function"]
        assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
        # the model's code is a copy of the project's own source file, nothing else
        assert (model / "registry_model.py").read_text() == tracking.REGISTRY_MODEL_CODE.read_text()
        assert pyfunc["config"]["builder"] == "components.tokenizer.model:CoordTok.from_config"


def test_registered_model_holds_no_pickled_code(tmp_path, params, recwarn):
    register_and_reload(tmp_path, params, tmp_path)
    assert_no_pickled_code(tmp_path / "mlartifacts")
    assert not [w for w in recwarn if "CloudPickle" in str(w.message)]


def test_load_unknown_model_is_user_error(tmp_path, params):
    with tracking.stage_run(params, tmp_path, "evaluate"):
        pass
    with pytest.raises(UserError, match="coordtok-sit"):
        tracking.load_registered("coordtok-sit")


def test_resolve_uri_precedence(tmp_path, params, monkeypatch):
    assert tracking.resolve_tracking_uri(params, tmp_path) == f"sqlite:///{tmp_path / 'mlruns.db'}"
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = "sqlite:///stores/m.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    rel = load_params(tmp_path / "params.yaml")
    assert tracking.resolve_tracking_uri(rel, tmp_path) == f"sqlite:///{(tmp_path / 'stores/m.db').resolve()}"
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "http://team-server:5000")
    assert tracking.resolve_tracking_uri(rel, tmp_path) == "http://team-server:5000"
