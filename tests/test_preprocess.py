"""The preprocess stage on a hand-made UCF-101 layout full of real-world and broken files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import media_factory as mf
from components.config import load_params
from components.data.store import FrameFile
from components.data.video import decode_video
from components.errors import UserError
from pipelines.preprocess import INDEX_COLUMNS, preprocess

GOOD = {  # rel path -> factory
    "Alpha/v_Alpha_g08_c01.avi": lambda p: mf.ucf_like_avi(p, n_frames=12),
    "Alpha/v_Alpha_g09_c01.avi": lambda p: mf.h264_mp4(p, n_frames=12),            # MP4 named .avi
    "Alpha/v_Alpha_g01_c01.mkv": lambda p: mf.mkv_file(p, n_frames=12),
    "Alpha/v_Alpha_g02_c01.webm": lambda p: mf.webm_vp8(p, n_frames=12),
    "Alpha/v_Alpha_g03_c01.mp4": lambda p: mf.rotated_mp4(p, n_frames=12),
    "Alpha/v_Alpha_g04_c01.mp4": lambda p: mf.vfr_mp4(p, n_frames=12),
    "Beta/v_Beta_g08_c01.mkv": lambda p: mf.no_duration_stream(p, n_frames=12),
    "Beta/v_Beta_g09_c01.mp4": lambda p: mf.with_audio(p, n_frames=12),
    "Beta/v_Beta_g10_c01.mkv": lambda p: mf.two_video_streams(p, n_frames=12),
    "Beta/v_Beta_g01_c01.avi": lambda p: mf.qcif(p, n_frames=12),
    "Beta/v_Beta_g02_c01.avi": lambda p: mf.portrait(p, n_frames=12),
    "Beta/v_Beta_g03_c01.avi": lambda p: mf.tiny_16(p, n_frames=12),
    "Beta/v_Beta_g04_c01.avi": lambda p: mf.large_4k(p, n_frames=9),
    "Beta/v_Beta_g05_c01.mp4": lambda p: mf.non25_fps(p, fps=30, n_frames=12),
    "Beta/v_Beta_g06_c01.avi": lambda p: mf.corrupt_middle(p),
    # One packet the decoder rejects (packet.decode() raises): stored with the other frames and a warning.
    "Beta/v_Beta_g11_c01.mp4": mf.h264_damaged_nal,
    "Beta/v_Beta_g12_c01.webm": mf.vp9_webm_damaged_frame,
    "Beta/v_Beta_g13_c01.ogv": mf.vp8_ogg_damaged_frame,
    "Beta/v_Beta_g07_c01.avi": mf.mpeg4_avi_damaged_frame,
}
DAMAGED_PACKETS = ["Beta/v_Beta_g11_c01.mp4", "Beta/v_Beta_g12_c01.webm", "Beta/v_Beta_g13_c01.ogv",
                   "Beta/v_Beta_g07_c01.avi"]
BAD = {  # rel path -> (factory or None, expected reason fragment)
    "Alpha/v_Alpha_g10_c01.avi": (mf.zero_byte, "empty file"),
    "Alpha/v_Alpha_g11_c01.avi": (mf.random_bytes, "not a readable media file"),
    "Alpha/v_Alpha_g12_c01.avi": (mf.audio_only, "no video stream"),
    "Alpha/v_Alpha_g13_c01.avi": (mf.zero_frames, "no frames"),
    "Alpha/v_Alpha_g14_c01.avi": (mf.one_frame, "only 1 decodable frames"),
    "Alpha/v_Alpha_g15_c01.avi": (lambda p: mf.truncated(p, keep_fraction=0.1), "not a readable media file"),
    "Alpha/v_Alpha_g16_c01.avi": (None, "missing from data.raw_dir"),
    "Alpha/v_Alpha_g17_c01.avi": ("symlink", "resolves outside data.raw_dir"),
    "Alpha/v_Alpha_g18_c01.avi": ("dir", "not a regular file"),
    "Beta/v_Beta_g14_c01.ogv": (mf.ogg_damaged_page, "no decodable frames"),  # its keyframe's page is damaged
}


def _build_dataset(tmp: Path) -> tuple[Path, Path]:
    raw, splits = tmp / "raw", tmp / "lists"
    for rel, factory in GOOD.items():
        factory(raw / rel)
    outside = mf.ucf_like_avi(tmp / "outside" / "secret.avi", n_frames=12)
    for rel, (factory, _) in BAD.items():
        if factory == "symlink":
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(outside, raw / rel)
        elif factory == "dir":
            (raw / rel).mkdir(parents=True)
        elif factory is not None:
            factory(raw / rel)
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 Alpha\r\n2 Beta\r\ngarbage line here\r\n")
    train, test = [], []
    for rel in [*GOOD, *BAD]:
        group = int(rel.split("_g")[1][:2])
        label = 1 if rel.startswith("Alpha") else 2
        (test.append(rel) if group <= 7 else train.append(f"{rel} {label}"))
    train += ["Alpha/v_Alpha_g08_c01.avi 1",          # duplicate line
              "../outside/secret.avi 1",               # escapes the root
              "Gamma/v_Gamma_g08_c01.avi 3",           # class not in classInd
              "this line does not parse at all"]
    (splits / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (splits / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return raw, splits


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return _build_dataset(tmp_path_factory.mktemp("ucf"))


def _params_file(root: Path, raw: Path, splits: Path, raw_params: dict, **data) -> Path:
    raw_params = {k: dict(v) for k, v in raw_params.items()}
    raw_params["data"].update({"raw_dir": str(raw), "splits_dir": str(splits), "img_size": 32, "num_frames": 8,
                               "min_frames": 4, "max_bad_fraction": 1.0, **data})
    raw_params["mlflow"]["tracking_uri"] = "sqlite:///mlruns.db"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw_params))
    return path


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs_are_skipped_with_reasons_and_good_ones_stored(tmp_path, dataset, raw_params, ray_local, capsys):
    raw, splits = dataset
    pfile = _params_file(tmp_path / "run", raw, splits, raw_params)
    report = preprocess(load_params(pfile), pfile.parent)
    root = pfile.parent
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: {report['skipped_count']} of {report['listed']} listed videos were skipped; "
                      "the reasons are in reports/preprocess.json"]

    on_disk = json.loads((root / "reports/preprocess.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    reasons = {d["path"]: d["reason"] for d in on_disk["skipped"]}
    for rel, (_, fragment) in BAD.items():
        assert fragment in reasons[rel], (rel, reasons.get(rel))
    assert "duplicate" in reasons["Alpha/v_Alpha_g08_c01.avi"]
    assert "escapes the dataset root" in reasons["../outside/secret.avi"]
    assert "not in classInd.txt" in reasons["Gamma/v_Gamma_g08_c01.avi"]
    assert any(p.startswith("trainlist01.txt:") for p in reasons)
    assert any(p.startswith("classInd.txt:") for p in reasons)
    assert on_disk["listed"] == len(GOOD) + len(BAD) + 4
    assert on_disk["stored"] == len(GOOD)
    assert on_disk["internal_error_count"] == 0 and on_disk["internal_errors"] == []
    notes = {d["path"]: d["note"] for d in on_disk["warnings"]}
    for rel in DAMAGED_PACKETS:
        assert "damaged packets skipped" in notes[rel], (rel, notes.get(rel))

    index = pd.read_parquet(root / "data/processed/index.parquet")
    assert list(index.columns[:len(INDEX_COLUMNS)]) == INDEX_COLUMNS
    assert set(index["source"]) == set(GOOD)
    assert set(index["split"]) == {"train", "test"}
    assert index.loc[index.source == "Alpha/v_Alpha_g03_c01.mp4", "rotation"].item() == 90
    assert index.loc[index.source == "Beta/v_Beta_g05_c01.mp4", "fps"].item() == pytest.approx(30.0)
    assert set(index["label"]) == {0, 1}
    # Every stored video reads back exactly as a direct decode of its source.
    for row in index.itertuples():
        f = FrameFile(root / "data/processed" / row.frames_path)
        assert f.n_frames == row.n_frames and f.header.height == 32
        direct = decode_video(raw / row.source, 32).frames
        window = min(8, row.n_frames)
        start = row.n_frames - window
        np.testing.assert_array_equal(f.read(start, window), direct[start:start + window])
    # Nothing half-written is left beside the outputs.
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".tmp-")]

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["coordtok"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.stage"] == "preprocess" and run["params.data.img_size"] == "32"
    assert run["metrics.videos_stored"] == len(GOOD) and run["metrics.frames_per_second"] > 0
    assert len(run["tags.params.hash"]) == 12
    arts = mlflow.artifacts.list_artifacts(run_id=run["run_id"])
    assert [a.path for a in arts] == ["preprocess.json"]


def test_same_inputs_give_identical_bytes(tmp_path, dataset, raw_params, ray_local):
    raw, splits = dataset
    digests = []
    for name in ("a", "b"):
        pfile = _params_file(tmp_path / name, raw, splits, raw_params, fps=20.0)
        preprocess(load_params(pfile), pfile.parent)
        digests.append((_tree_digest(pfile.parent / "data/processed"),
                        (pfile.parent / "reports/preprocess.json").read_bytes()))
    assert digests[0] == digests[1]
    assert len(digests[0][0]) == len(GOOD) + 1


def test_too_many_bad_files_fail_without_replacing_outputs(tmp_path, dataset, raw_params, ray_local):
    raw, splits = dataset
    pfile = _params_file(tmp_path / "run", raw, splits, raw_params, max_bad_fraction=0.1)
    previous = pfile.parent / "data/processed"
    previous.mkdir(parents=True)
    (previous / "index.parquet").write_bytes(b"earlier complete output")
    with pytest.raises(UserError, match=r"listed videos were skipped .* more than data.max_bad_fraction = 10.0%"):
        preprocess(load_params(pfile), pfile.parent)
    assert (previous / "index.parquet").read_bytes() == b"earlier complete output"
    assert sorted(p.name for p in (pfile.parent / "data").iterdir()) == ["processed"]
    assert json.loads((pfile.parent / "reports/preprocess.json").read_text())["skipped_count"] > 0


def test_missing_folders_are_one_sentence_errors(tmp_path, dataset, raw_params):
    raw, splits = dataset
    pfile = _params_file(tmp_path / "run", tmp_path / "nope", splits, raw_params)
    with pytest.raises(UserError, match="data.raw_dir = .* is not a folder"):
        preprocess(load_params(pfile), pfile.parent)
    pfile = _params_file(tmp_path / "run", raw, splits, raw_params, split=2)
    with pytest.raises(UserError, match="lacks trainlist02.txt"):
        preprocess(load_params(pfile), pfile.parent)


def test_killed_run_leaves_nothing_that_looks_complete(tmp_path, raw_params):
    """SIGKILL the stage while it writes frames: no data/processed; the rerun completes and tidies up."""
    import signal
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    splits = tmp_path / "lists"
    splits.mkdir()
    rels = [f"Alpha/v_Alpha_g{8 + i % 17:02d}_c{1 + i // 17:02d}.avi" for i in range(40)]
    for rel in rels:
        mf.ucf_like_avi(raw / rel, n_frames=60)
    (splits / "classInd.txt").write_text("1 Alpha\n")
    (splits / "trainlist01.txt").write_text("".join(f"{r} 1\n" for r in rels))
    (splits / "testlist01.txt").write_text("")
    pfile = _params_file(tmp_path / "run", raw, splits, raw_params)
    cfg = yaml.safe_load(pfile.read_text())
    cfg["preprocess"]["max_in_flight"] = 1  # slow enough to be caught mid-way
    cfg["ray"]["num_cpus"] = 1
    pfile.write_text(yaml.safe_dump(cfg))
    data_dir = pfile.parent / "data"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.preprocess", "--params", str(pfile)],
                            cwd=pfile.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        staged = list(data_dir.glob(".tmp-processed.*/frames/*.frames")) if data_dir.exists() else []
        if staged:
            break
        assert proc.poll() is None, "the stage finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (data_dir / "processed").exists()
    assert not (pfile.parent / "reports" / "preprocess.json").exists()

    cfg["preprocess"]["max_in_flight"] = None
    cfg["ray"]["num_cpus"] = 2
    pfile.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "pipelines.preprocess", "--params", str(pfile)], cwd=pfile.parent,
                   check=True, capture_output=True, timeout=300)
    assert len(pd.read_parquet(data_dir / "processed" / "index.parquet")) == 40
    assert [p.name for p in data_dir.iterdir()] == ["processed"]


# ------------------------------------------------------------------------------ per-item isolation

class _LibrarySurprise(Exception):
    """An exception type no code of the project knows."""


INJECTED = {  # video -> the exception its store writer raises after 3 frames
    "Alpha/v_Alpha_g08_c01.avi": KeyError("frame_rate"),
    "Alpha/v_Alpha_g01_c01.mkv": ZeroDivisionError("division by zero"),
    "Beta/v_Beta_g01_c01.avi": AssertionError("shapes differ\nsecond line of the message"),
    "Beta/v_Beta_g02_c01.avi": _LibrarySurprise("a library surprise"),
    "Beta/v_Beta_g05_c01.mp4": IndexError("list index out of range"),
}


def _faulty_process_video(entry, *args):
    """Runs in the Ray task: for the INJECTED videos, the store writer raises mid-file."""
    import components.data.store as store
    from pipelines.preprocess import process_video

    exc = INJECTED.get(entry.rel_path)
    if exc is None:
        return process_video(entry, *args)
    original = store.FrameWriter.append

    def append(self, frame):
        if self.n_frames == 3:
            raise exc
        return original(self, frame)

    store.FrameWriter.append = append
    try:
        return process_video(entry, *args)
    finally:
        store.FrameWriter.append = original


def test_an_unanticipated_exception_skips_one_video_as_an_internal_error(tmp_path, dataset, raw_params, ray_local,
                                                                        monkeypatch, capsys):
    import sys

    from ray import cloudpickle

    import pipelines.preprocess as stage

    raw, splits = dataset
    # Ray ships the patched function by value (test modules are not importable in its workers).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(stage, "process_video", _faulty_process_video)
    try:
        pfile = _params_file(tmp_path / "run", raw, splits, raw_params)
        report = preprocess(load_params(pfile), pfile.parent)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    reasons = {d["path"]: d["reason"] for d in report["skipped"]}
    for rel, exc in INJECTED.items():
        first_line = str(exc).splitlines()[0]
        assert reasons[rel] == f"internal error: {type(exc).__name__}: {first_line}", reasons[rel]
    assert report["stored"] == len(GOOD) - len(INJECTED)
    assert report["internal_error_count"] == len(INJECTED)
    assert [e["path"] for e in report["internal_errors"]] == sorted(INJECTED)
    assert all("Traceback" in e["traceback"] and "append" in e["traceback"] for e in report["internal_errors"])
    # the summary counts internal errors apart from the other skips: "skipped (internal errors) | a/b, N (k)"
    row = next(line for line in capsys.readouterr().out.splitlines() if "skipped (internal errors)" in line)
    assert row.rstrip(" |").endswith(f", {len(report['skipped'])} ({len(INJECTED)})"), row
    stored = pd.read_parquet(pfile.parent / "data/processed/index.parquet")
    assert not set(stored["source"]) & set(INJECTED)
    # The store writer's spool files of the failed videos were removed, nothing unfinished remains.
    assert sorted(p.name for p in (pfile.parent / "data/processed/frames").iterdir()) == \
        sorted(f"{Path(r).stem}.frames" for r in stored["source"])


def test_bad_fraction_sentence_counts_internal_errors_apart():
    from pipelines.common.isolation import check_bad_fraction, internal_error_reason

    assert internal_error_reason(KeyError("x")) == "internal error: KeyError: 'x'"
    assert internal_error_reason(RuntimeError("")) == "internal error: RuntimeError: (no message)"
    check_bad_fraction("preprocess", 1, 20, 0.05, "data.max_bad_fraction", 1, "r.json")
    with pytest.raises(UserError, match=r"^preprocess: 2 of 20 videos were skipped \(10.0%, 1 of them internal "
                                        r"errors \(bugs: please report them\)\), more than data.max_bad_fraction"):
        check_bad_fraction("preprocess", 2, 20, 0.05, "data.max_bad_fraction", 1, "r.json", "videos")


# ------------------------------------------------------------------------------ bounded memory

@pytest.mark.slow
def test_memory_of_preprocessing_a_video_does_not_grow_with_its_length(tmp_path):
    """Frames stream into the store chunk by chunk: the peak RSS growth of process_video is the same for a
    20-second and a 160-second video (benchmarks/preprocess_memory.py measures 20 minutes)."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import preprocess_memory

    warmup = mf.long_video(tmp_path / "warmup.avi", 50, size=(180, 320))
    short = mf.long_video(tmp_path / "short.avi", 500, size=(180, 320))
    long = mf.long_video(tmp_path / "long.avi", 4000, size=(180, 320))
    a = preprocess_memory.measure("streaming", short, warmup, 128)
    b = preprocess_memory.measure("streaming", long, warmup, 128)
    assert (a["frames"], b["frames"]) == (500, 4000)
    frames_mb = 4000 * 128 * 128 * 3 / 2**20  # what holding the long video's frames would take (188 MB)
    assert b["growth_mb"] < a["growth_mb"] + 8, (a, b)
    assert b["growth_mb"] < frames_mb / 10, (a, b)
    # The naive path on the short video already grows by about its frames' size: the measurement sees it.
    naive = preprocess_memory.measure("naive", short, warmup, 128)
    assert naive["growth_mb"] > 500 * 128 * 128 * 3 / 2**20 * 0.8, naive
