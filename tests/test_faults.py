"""Fault injection on real tiny runs (docs/reliability.md lists what each test shows).

Each fault is real: a SIGKILL of the Ray process doing the work, a Ctrl-C to `dvc repro`, a full or
read-only filesystem (a small tmpfs, as root), an exception raised inside a Ray task or actor. Each test
checks that nothing is lost or half-written and that the result equals an undisturbed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, shrink
from test_console import console_lines

from components.config import load_params
from pipelines.common.cluster import TASK_RETRIED_NOTE

pytestmark = pytest.mark.slow


# Clips long enough (and enough of them) that a Ray worker is caught mid-task.
DATA = {"num_frames": 16}
SYNTH = {"min_seconds": 1.5, "max_seconds": 2.5}


# ------------------------------------------------------------------------------ helpers

def _write_params(root: Path, edit: Callable[[dict], None] | None = None) -> Path:
    raw = shrink(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["data"].update(DATA)
    raw["synthesize"].update(SYNTH)
    if edit is not None:
        edit(raw)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # dvc runs `python`
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    return env


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A stage (or dvc) in its own session, output to a file (a full pipe would stall it)."""
    return subprocess.Popen(args, cwd=cwd, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stage(stage: str, pfile: Path, log: Path) -> subprocess.Popen:
    return _start([sys.executable, "-m", f"pipelines.{stage}", "--params", str(pfile)], pfile.parent, log)


def _finish(proc: subprocess.Popen, log: Path, timeout: int = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text()


def _descendants(pid: int) -> list[int]:
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kill_worker(proc: subprocess.Popen, log: Path, title: str, ready: Callable[[], bool] = lambda: True,
                 timeout: float = 300) -> str:
    """SIGKILL the first process of `proc`'s tree whose title matches `title` (Ray names a worker
    `ray::<task or Actor.method>` while it runs one) once `ready()`; returns the killed title."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before a worker could be killed:\n{log.read_text()[-3000:]}"
        if ready():
            for pid in _descendants(proc.pid):
                cmd = _cmdline(pid)
                if re.match(title, cmd):
                    os.kill(pid, signal.SIGKILL)
                    return cmd
        time.sleep(0.01)
    raise AssertionError(f"no process titled {title!r} appeared")


def _by_value(monkeypatch, module_attr: str, replacement) -> None:
    """Patch `module.attr` with something defined here, shipped by value to Ray's workers (this test
    module is not importable there)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(module_attr, replacement)


@pytest.fixture(autouse=True)
def _unregister():
    yield
    from ray import cloudpickle

    try:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    except ValueError:
        pass


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, ray_local) -> Path:
    """synthesize + preprocess, undisturbed (the reference), plus a tiny tokenizer at finetune.pt."""
    from components.tokenizer.model import CoordTok
    from pipelines.common.trainer import save_model_file
    from pipelines.preprocess import preprocess
    from pipelines.synthesize import synthesize

    root = tmp_path_factory.mktemp("undisturbed")
    params = load_params(_write_params(root))
    synthesize(params, root)
    preprocess(params, root)
    torch.manual_seed(0)
    tok = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames)
    save_model_file(root / "models/tokenizer/finetune.pt", {"config": tok.config, "model": tok.state_dict(), "step": 0})
    return root


def _stage_root(root: Path, undisturbed: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A new stage root reading the reference's data/ and tokenizer (symlinked)."""
    pfile = _write_params(root, edit)
    (root / "data").symlink_to(undisturbed / "data")
    (root / "models/tokenizer").mkdir(parents=True)
    (root / "models/tokenizer/finetune.pt").symlink_to(undisturbed / "models/tokenizer/finetune.pt")
    return pfile


# ------------------------------------------------------------------------------ 5a: killed Ray task workers

def test_killed_task_workers_in_synthesize_and_preprocess_are_retried_to_identical_bytes(tmp_path, undisturbed):
    pfile = _write_params(tmp_path)
    for stage, out in (("synthesize", "synthetic"), ("preprocess", "data/processed")):
        log = tmp_path / f"{stage}.log"
        proc = _stage(stage, pfile, log)
        killed = _kill_worker(proc, log, r"ray::run_item")
        text = _finish(proc, log)
        assert proc.returncode == 0, text[-3000:]
        # The retry is said once on the console (the stage's stdout/stderr), in the project's words.
        assert console_lines(text).count(TASK_RETRIED_NOTE) == 1, text[-3000:]
        assert _digest(tmp_path / out) == _digest(undisturbed / out), f"{stage} after killing {killed!r}"
    assert (tmp_path / "reports/preprocess.json").read_bytes() == (undisturbed / "reports/preprocess.json").read_bytes()


# ------------------------------------------------------------------------------ 5b: killed Ray Train worker

def test_killed_train_worker_recovers_in_the_same_invocation_to_the_same_weights(tmp_path, undisturbed):
    from components.tokenizer.training import load_state

    def settings(raw: dict) -> None:
        raw["pretrain"].update(steps=12, batch_size=2, eval_every=12, eval_videos=2, checkpoint_every=4,
                               log_every=4, keep_checkpoints=3, cpus_per_worker=1.0)

    runs = {}
    for name in ("reference", "killed"):
        pfile = _stage_root(tmp_path / name, undisturbed, settings)
        log = tmp_path / f"{name}.log"
        proc = _stage("pretrain", pfile, log)
        if name == "killed":
            results = pfile.parent / "ray_results"

            def checkpointed() -> bool:  # an intact one: Ray may still be copying the newest into storage
                for folder in results.glob("pretrain-*/checkpoint_*"):
                    try:
                        return load_state(folder)["step"] >= 4
                    except Exception:  # noqa: BLE001 - half-copied: not yet
                        continue
                return False

            _kill_worker(proc, log, r"ray::RayTrainWorker", ready=checkpointed)
        runs[name] = (_finish(proc, log), pfile.parent)
        assert proc.returncode == 0, runs[name][0][-3000:]
    out, root = runs["killed"]
    # Ray Train restarted the worker group: said once on the console (the stage's stdout/stderr), with the
    # checkpoint step it continues from (a checkpoint of step >= 4 existed when the worker was killed).
    lost = [line for line in console_lines(out) if "worker was lost" in line]
    assert len(lost) == 1 and re.fullmatch(r"warning: a training worker was lost; the run continues from "
                                           r"checkpoint step (4|8|12)", lost[0]), out[-3000:]
    assert "resuming from step" not in out  # a fresh invocation: nothing to resume
    a = torch.load(runs["reference"][1] / "models/tokenizer/pretrain.pt", weights_only=True)["model"]
    b = torch.load(root / "models/tokenizer/pretrain.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (runs["reference"][1] / "metrics/pretrain.json").read_text() == (root / "metrics/pretrain.json").read_text()


# ------------------------------------------------------------------------------ 5c: killed Ray Data actor

TIMING = ("seconds", "clips_per_second", "first_batch_seconds")


def test_killed_extract_latents_actor_gives_identical_latents_and_stats(tmp_path, undisturbed):
    def small_batches(raw: dict) -> None:
        raw["extract_latents"].update(batch_size=2, num_actors=1, cpus_per_actor=0.5, splits=["train", "test"])

    runs = {}
    for name in ("reference", "killed"):
        pfile = _stage_root(tmp_path / name, undisturbed, small_batches)
        log = tmp_path / f"{name}.log"
        proc = _stage("extract_latents", pfile, log)
        if name == "killed":
            runs["title"] = _kill_worker(proc, log, r"ray::_?MapWorker")
        out = _finish(proc, log)
        assert proc.returncode == 0, out[-3000:]
        runs[name] = pfile.parent
    ref, got = runs["reference"], runs["killed"]
    assert _digest(got / "latents") == _digest(ref / "latents"), runs["title"]
    a, b = (json.loads((r / "metrics/extract_latents.json").read_text()) for r in (ref, got))
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


# ------------------------------------------------------------------------------ 5d: Ctrl-C to dvc repro

def _dvc_project(dst: Path) -> Path:
    """The pipeline's code, dvc.yaml and shrunk params (relative paths) as a fresh DVC project."""
    for rel in ("components", "pipelines"):
        shutil.copytree(REPO / rel, dst / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "dvc.yaml", dst / "dvc.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["synthesize"].update(num_classes=2, groups=8, clips_per_group=1, width=96, height=64, **SYNTH)
    raw["data"].update(img_size=32, **DATA)
    raw["ray"].update(num_cpus=2)
    raw["preprocess"].update(max_in_flight=1)  # slow enough to be interrupted mid-way
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=dst, check=True,
                   env=_env())
    return dst


def test_ctrl_c_to_dvc_repro_leaves_nothing_that_looks_complete_and_a_rerun_completes(tmp_path):
    repo = _dvc_project(tmp_path / "project")
    dvc = str(Path(sys.executable).parent / "dvc")
    log = tmp_path / "interrupted.log"
    proc = _start([dvc, "repro", "preprocess"], repo, log)
    deadline = time.time() + 300
    while not list((repo / "data").glob(".tmp-processed.*/frames/*.frames")):
        assert proc.poll() is None, "dvc repro ended before it could be interrupted:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "preprocess never started writing"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out = _finish(proc, log, timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert "interrupted" in out
    assert not (repo / "data/processed").exists() and not (repo / "reports/preprocess.json").exists()
    assert "preprocess" not in yaml.safe_load((repo / "dvc.lock").read_text()).get("stages", {})

    log = tmp_path / "rerun.log"
    proc = _start([dvc, "repro", "preprocess"], repo, log)
    out = _finish(proc, log)
    assert proc.returncode == 0, out[-3000:]
    index = pd.read_parquet(repo / "data/processed/index.parquet")
    assert len(index) == 16
    assert not [p for p in (repo / "data").iterdir() if p.name.startswith(".tmp-")]
    status = subprocess.run([dvc, "status", "preprocess"], cwd=repo, env=_env(), capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


# ------------------------------------------------------------------------------ 5e/5f: full and read-only disks

def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point for small tmpfs filesystems, unmounted afterwards (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root); without it a full or read-only "
                    "disk cannot be made for real")
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        _mount_tmpfs(point / "probe", "64k")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"mount -t tmpfs failed ({exc.stderr.decode().strip()}): no filesystem to fill here")
    subprocess.run(["umount", str(point / "probe")], check=True)
    yield point
    for mounted in sorted(point.iterdir(), reverse=True):
        subprocess.run(["umount", "-l", str(mounted)], capture_output=True)


def _error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
    return lines[0]


def test_full_disk_is_one_sentence_naming_the_path_and_a_rerun_with_space_completes(tmp_path, undisturbed, tmpfs):
    root = tmp_path / "run"
    data = tmpfs / "data"
    _mount_tmpfs(data, "96k")  # the processed store needs several times that

    def elsewhere(raw: dict) -> None:  # the videos live outside the full disk
        raw["data"].update(raw_dir=str(undisturbed / "synthetic/UCF-101"),
                           splits_dir=str(undisturbed / "synthetic/ucfTrainTestlist"))

    pfile = _write_params(root, elsewhere)
    (root / "data").symlink_to(data)  # the stage's data/ is the small disk
    log = tmp_path / "full.log"
    proc = _stage("preprocess", pfile, log)
    out = _finish(proc, log)
    assert proc.returncode == 2, out[-3000:]
    line = _error_line(out)
    assert "no space left on the device" in line and f"{root}/data/" in line, line
    leftovers = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    assert leftovers == [], leftovers  # nothing partial, visible or hidden
    assert not (root / "reports/preprocess.json").exists()

    subprocess.run(["mount", "-o", "remount,size=64m", str(data)], check=True)
    log = tmp_path / "rerun.log"
    proc = _stage("preprocess", pfile, log)
    out = _finish(proc, log)
    assert proc.returncode == 0, out[-3000:]
    assert _digest(data / "processed") == _digest(undisturbed / "data/processed")


def test_read_only_output_or_mlflow_store_is_one_sentence_before_any_compute(tmp_path, undisturbed, tmpfs):
    ro = tmpfs / "ro"
    _mount_tmpfs(ro, "1m")

    def elsewhere(raw: dict) -> None:
        raw["data"].update(raw_dir=str(undisturbed / "synthetic/UCF-101"),
                           splits_dir=str(undisturbed / "synthetic/ucfTrainTestlist"))
        raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"

    pfile = _write_params(ro, elsewhere)
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    log = tmp_path / "ro-out.log"
    proc = _stage("preprocess", pfile, log)
    out = _finish(proc, log, timeout=120)
    assert proc.returncode == 2, out[-3000:]
    line = _error_line(out)
    assert f"cannot write {ro}" in line and "read-only filesystem" in line and "nothing was computed" in line, line
    assert not (tmp_path / "mlruns.db").exists() and "preprocess:" not in out  # no MLflow run, no progress bar

    def ro_mlflow(raw: dict) -> None:
        elsewhere(raw)
        raw["mlflow"]["tracking_uri"] = f"sqlite:///{ro / 'mlruns.db'}"

    pfile = _write_params(tmp_path / "writable", ro_mlflow)
    log = tmp_path / "ro-mlflow.log"
    proc = _stage("preprocess", pfile, log)
    out = _finish(proc, log, timeout=120)
    assert proc.returncode == 2, out[-3000:]
    line = _error_line(out)
    assert "the MLflow store" in line and "read-only filesystem" in line, line
    assert not (tmp_path / "writable/data").exists()


# ------------------------------------------------------------------------------ 3: per-item isolation

class _Surprise(Exception):
    """An exception type no project code knows."""


CLIP_FAULTS = {"SlowPan/v_SlowPan_g02_c01.avi": KeyError("fps"), "StaticScene/v_StaticScene_g05_c01.avi":
               _Surprise("a library surprise\nwith a second line")}


def _faulty_write_clip(spec, *args):
    from pipelines.synthesize import write_clip

    if spec.rel_path in CLIP_FAULTS:
        raise CLIP_FAULTS[spec.rel_path]
    return write_clip(spec, *args)


def test_synthesize_skips_a_clip_whose_task_raises_and_leaves_it_out_of_the_lists(tmp_path, ray_local, monkeypatch):
    from pipelines.synthesize import synthesize

    _by_value(monkeypatch, "pipelines.synthesize.write_clip", _faulty_write_clip)
    pfile = _write_params(tmp_path, lambda raw: raw["data"].update(max_bad_fraction=0.2))
    figures = synthesize(load_params(pfile), tmp_path)
    out = tmp_path / "synthetic"
    assert figures["clips"] == 14 and figures["internal_errors"] == 2
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped == [{"path": "SlowPan/v_SlowPan_g02_c01.avi", "reason": "internal error: KeyError: 'fps'"},
                       {"path": "StaticScene/v_StaticScene_g05_c01.avi",
                        "reason": "internal error: _Surprise: a library surprise"}]
    lists = (out / "ucfTrainTestlist/trainlist01.txt").read_text() + (out / "ucfTrainTestlist/testlist01.txt").read_text()
    assert len(lists.splitlines()) == 14 and not any(p in lists for p in CLIP_FAULTS)
    assert not any((out / "UCF-101" / p).exists() for p in CLIP_FAULTS)

    # Past data.max_bad_fraction: one sentence, and the earlier dataset stays.
    pfile = _write_params(tmp_path, lambda raw: raw["data"].update(max_bad_fraction=0.1))
    from components.errors import UserError

    with pytest.raises(UserError, match=r"^synthesize: 2 of 16 clips were skipped \(12.5%, 2 of them internal errors"):
        synthesize(load_params(pfile), tmp_path)
    assert json.loads((out / "skipped.json").read_text()) == skipped


POISON = 7  # a clip of this constant value makes the faulty encoder's batch forward raise


def _faulty_encoder():
    from pipelines.extract_latents import ClipEncoder

    class FaultyEncoder(ClipEncoder):
        """Reading one clip raises; a batch forward that holds another (marked by its content) raises."""

        def _clip(self, frames_path, start, n_valid):
            if "SlowPan_g08" in frames_path:
                raise IndexError("list index out of range")
            clip = super()._clip(frames_path, start, n_valid)
            if "StaticScene_g03" in frames_path:
                clip[:] = POISON
            return clip

        def _encode(self, clips, n_valid):
            if any((c == POISON).all() for c in clips):
                raise ZeroDivisionError("division by zero")
            return super()._encode(clips, n_valid)

    return FaultyEncoder


def test_extract_latents_skips_clips_that_raise_and_stores_the_rest_with_their_stats(tmp_path, undisturbed, ray_local,
                                                                                     monkeypatch):
    from components.generator.store import LatentStore
    from pipelines.extract_latents import extract_latents

    index = pd.read_parquet(undisturbed / "data/processed/index.parquet")
    train = index  # both splits are encoded here
    assert {"v_SlowPan_g08_c01", "v_StaticScene_g03_c01"} <= set(train.video_id)
    _by_value(monkeypatch, "pipelines.extract_latents.ClipEncoder", _faulty_encoder())

    def edit(raw: dict) -> None:
        raw["extract_latents"].update(batch_size=3, num_actors=1, cpus_per_actor=0.5, splits=["train", "test"])
        raw["data"].update(max_bad_fraction=0.5)

    pfile = _stage_root(tmp_path / "run", undisturbed, edit)
    summary = extract_latents(load_params(pfile), pfile.parent)
    reasons = {Path(d["path"].split("@")[0]).stem: d["reason"] for d in summary["skipped"]}
    assert reasons == {"v_SlowPan_g08_c01": "internal error: IndexError: list index out of range",
                       "v_StaticScene_g03_c01": "internal error: ZeroDivisionError: division by zero"}
    assert summary["internal_errors"] == summary["clips_skipped"] == 2
    store = LatentStore(pfile.parent / "latents")
    assert len(store) == summary["clips"] == len(train) - 2
    assert list(store.index.row) == list(range(len(store)))
    assert set(store.index.video_id) == set(train.video_id) - set(reasons)
    for plane in ("xy", "yt", "xt"):  # the stats describe exactly the stored clips
        x = np.asarray(store.arrays[plane], np.float64).transpose(1, 0, 2, 3).reshape(store.stats.channels, -1)
        np.testing.assert_allclose(store.stats.mean(plane), x.mean(1), rtol=1e-10, atol=1e-12)
    # The clips the faulty batch shared with the poisoned one were encoded alone, to the same values.
    reference = tmp_path / "reference"
    monkeypatch.undo()
    pfile = _stage_root(reference, undisturbed, edit)
    extract_latents(load_params(pfile), reference)
    full = LatentStore(reference / "latents")
    keep = full.index.video_id.isin(store.index.video_id).to_numpy()
    np.testing.assert_allclose(np.asarray(full.arrays["xy"])[keep].astype(np.float32),
                               np.asarray(store.arrays["xy"]).astype(np.float32), atol=2e-3, rtol=2e-3)


class _EvalBug(Exception):
    """An exception type no project code knows."""


def _faulty_eval_worker():
    from pipelines.evaluate import EvalWorker

    class FaultyWorker(EvalWorker):
        def reconstruct(self, rows, want_samples):
            if 0 in rows.index:
                raise _EvalBug("state got out of sync")
            return super().reconstruct(rows, want_samples)

    return FaultyWorker


def test_evaluate_fails_with_one_sentence_and_writes_nothing_when_a_batch_raises(tmp_path, undisturbed, ray_local,
                                                                               standin_weights, monkeypatch):
    from test_evaluate import _eval_root

    from components.errors import UserError
    from pipelines.evaluate import evaluate

    pfile = _eval_root(tmp_path / "run", undisturbed, standin_weights)
    _by_value(monkeypatch, "pipelines.evaluate.EvalWorker", _faulty_eval_worker())
    with pytest.raises(UserError, match=r"^evaluate: reconstruct batch 1 of 2 failed \(internal error: _EvalBug: "
                                        r"state got out of sync\); no metrics were written"):
        evaluate(load_params(pfile), pfile.parent)
    root = pfile.parent
    assert not (root / "metrics/evaluate.json").exists() and not (root / "reports/evaluate").exists()
    assert not (root / "plots/evaluate").exists()
