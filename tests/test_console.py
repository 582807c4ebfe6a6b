"""The console contract of a stage (pipelines/common/console.py): the terminal gets the start line, one
progress bar, the warnings that matter (once), the summary and one-sentence errors; Ray's, third-party
and child-process output goes to logs/<stage>.log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from components.errors import UserError
from pipelines.common import console
from pipelines.common.cli import run_stage
from pipelines.common.report import print_summary

# A Python warning raised from the project's own code, as Python prints it (path:line: Category: ...).
PROJECT_WARNING = re.compile(r"/(components|pipelines|dashboards)/[\w/]+\.py:\d+: \w*Warning")


BAR = re.compile(r"^(?P<desc>.*?):\s+\d+%\|")


def console_lines(text: str) -> list[str]:
    """The lines a terminal is left showing: a progress bar's redraws (after \\r, or split into lines
    by a text-mode pipe, which turns \\r into \\n) collapse to its last state; blank lines are dropped."""
    lines: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            if line and lines and BAR.match(lines[-1]):  # spaces over a bar: tqdm clearing it (leave=False)
                lines.pop()
            continue
        bar = BAR.match(line)
        if bar and lines and (prev := BAR.match(lines[-1])) and prev["desc"] == bar["desc"]:
            lines[-1] = line
        else:
            lines.append(line)
    return lines


# Issue 18's budget: what one stage of `dvc repro` leaves on the terminal, apart from its progress bar(s):
# DVC's own lines, the start line, warnings/notes and the summary table.
STAGE_LINE_BUDGET = 15


def stage_sections(console: str) -> dict[str, list[str]]:
    """Per stage of a `dvc repro` console (stdout and stderr in one stream, as a terminal shows them):
    the lines it leaves on screen apart from progress bars, DVC's "Running stage" and lock-file lines
    included (DVC's closing advice after the last stage is not the stage's)."""
    sections = {}
    for part in console.split("Running stage '")[1:]:
        head, lock, _ = part.partition("Updating lock file")
        text = "Running stage '" + head + lock + _.partition("\n")[0]
        sections[part.split("'", 1)[0]] = [line for line in console_lines(text) if not BAR.match(line)]
    return sections


def assert_within_budget(lines: list[str], what: str) -> None:
    assert len(lines) <= STAGE_LINE_BUDGET, f"{what}: {len(lines)} lines > {STAGE_LINE_BUDGET}:\n" + "\n".join(lines)


def _chatty_stage(params, root):
    """Everything a stage's dependencies do behind its back, and one warning of the project's own."""
    from mlflow.tracking import MlflowClient

    from pipelines.common.tracking import MetricsBuffer

    # (Ray's own logger writes through a handler Ray attached to the terminal stream at import; which
    # stream that is under pytest depends on import order, so the CLI tests below cover it.)
    logging.getLogger("somelib.train").warning("PlacementGroupCleaner: Failed to query Ray Train Controller state")
    logging.getLogger("somelib.train").info("Reporting training result 1: TrainingReport(...)")
    print("a third-party print")
    os.write(2, b"a C-level write to stderr\n")
    subprocess.run([sys.executable, "-c", "import sys; print('a child process'); print('child err', file=sys.stderr)"],
                   check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("a library's warning", UserWarning, "somelib.py", 1, module="somelib")
    # A real MLflow failure: logging to a run that does not exist warns from pipelines/common/tracking.py.
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    for _ in range(2):  # the same warning twice: shown once
        buf = MetricsBuffer(client, "0" * 32, backoff_s=0.0)
        buf.add({"loss": 1.0}, step=1)
        buf.flush()
    print_summary("chatty", [("answer", 42), ("model", "models/x.pt")])


def test_stage_console_shows_only_the_contract(tiny_params_file, capfd):
    assert run_stage("synthesize", _chatty_stage, ["--params", str(tiny_params_file)]) == 0
    cap = capfd.readouterr()
    out, err = console_lines(cap.out), console_lines(cap.err)
    assert out[0].startswith("synthesize: num_classes=2 groups=8 seed=0 on local Ray cluster (2 CPUs); log: ")
    assert out[0].endswith("logs/synthesize.log")
    assert "| answer" in cap.out and re.search(r"\| log +\| +\S*logs/synthesize.log \|", cap.out)
    assert [line for line in err if line.startswith("warning: MLflow logging failed")] and len(err) == 1, err
    for chatter in ("PlacementGroupCleaner", "Reporting training result", "third-party print", "C-level",
                    "child process", "child err", "library's warning"):
        assert chatter not in cap.out + cap.err
    log = (tiny_params_file.parent / "logs" / "synthesize.log").read_text()
    for chatter in ("PlacementGroupCleaner", "Reporting training result", "third-party print", "C-level",
                    "child process", "child err", "library's warning", "MLflow logging failed"):
        assert chatter in log, chatter
    # the descriptors are back: output after the stage reaches the caller again
    os.write(1, b"after the stage\n")
    assert "after the stage" in capfd.readouterr().out


def test_user_error_is_one_sentence_naming_the_log(tiny_params_file, capfd):
    def bad(params, root):
        logging.getLogger("ray").warning("noise before the error")
        raise UserError("data.raw_dir does not exist")

    assert run_stage("preprocess", bad, ["--params", str(tiny_params_file)]) == 2
    err = console_lines(capfd.readouterr().err)
    assert err == ["error: data.raw_dir does not exist (log: " + err[0].split("(log: ")[1]]
    assert err[0].endswith("logs/preprocess.log)")


def test_a_bug_is_one_sentence_and_the_traceback_is_in_the_log(tiny_params_file, capfd):
    def buggy(params, root):
        raise ValueError("boom\nsecond line")

    assert run_stage("dashboard", buggy, ["--params", str(tiny_params_file)]) == 1
    cap = capfd.readouterr()
    err = console_lines(cap.err)
    assert len(err) == 1 and err[0].startswith("error: dashboard failed (ValueError: boom); the traceback is in ")
    assert "Traceback" not in cap.out + cap.err
    log = (tiny_params_file.parent / "logs" / "dashboard.log").read_text()
    assert "Traceback (most recent call last)" in log and "ValueError: boom" in log


def test_marked_worker_lines_drive_the_bar_and_notes(tmp_path, capfd):
    """The lines Ray forwards from workers (the dict Ray's log thread hands its handlers)."""
    with console.stage_console("pretrain", tmp_path / "logs" / "pretrain.log"):
        with console.training_bar(10, "pretrain") as bar:
            lines = [console.START_MARK + '{"step": 3, "across": "", "worker": "w1"}',  # resumes a run
                     console.START_MARK + '{"step": 3, "across": "", "worker": "w1"}',  # forwarded twice
                     console.PROGRESS_MARK + '{"step": 4, "loss": 0.5, "lr": 0.001}',
                     "Reporting training result 1: TrainingReport(...)",
                     console.PROGRESS_MARK + '{"step": 5, "loss": 0.25, "test_psnr": 21.5}',
                     console.NOTE_MARK + "warning: skipping damaged checkpoint: x",
                     console.NOTE_MARK + "warning: skipping damaged checkpoint: x",
                     console.PROGRESS_MARK + "{not json"]
            console.on_worker_output({"lines": lines, "pid": 1, "is_err": False})
            assert bar.n == 5 and bar.postfix == "loss=0.25 test_psnr=21.5"
            console.on_worker_output({"lines": [console.PROGRESS_MARK + '{"step": 6, "loss": 0.2}']})
            assert bar.n == 6 and bar.postfix == "loss=0.2 test_psnr=21.5"  # the last eval figure stays
            # Ray Train restarts the worker group after losing a worker: the new group starts at its checkpoint.
            console.on_worker_output({"lines": [console.START_MARK + '{"step": 4, "across": "", "worker": "w2"}']})
            assert bar.n == 4
    err = console_lines(capfd.readouterr().err)
    assert [line for line in err if not BAR.match(line)] == [
        "resuming from step 3", "warning: skipping damaged checkpoint: x",
        "warning: a training worker was lost; the run continues from checkpoint step 4"]


def test_a_fresh_training_run_says_nothing_until_a_worker_is_lost(tmp_path, capfd):
    with console.stage_console("finetune", tmp_path / "logs" / "finetune.log"):
        with console.training_bar(4, "finetune"):
            for worker in ("w1", "w1", "w2"):  # Ray may forward a line twice; w2: a new rank-0 worker
                console.on_worker_output({"lines": [console.START_MARK + json.dumps(
                    {"step": 0, "across": " (on 1)" if worker == "w2" else "", "worker": worker})]})
    err = [line for line in console_lines(capfd.readouterr().err) if not BAR.match(line)]
    assert err == ["warning: a training worker was lost before the first checkpoint; the run restarts from step 0 (on 1)"]


@pytest.mark.slow
def test_pretrain_cli_console_is_short_and_ray_output_is_in_the_log(tmp_path, processed):
    """A real pretrain run (Ray Train, MLflow) as `python -m pipelines.pretrain`: at most ~15 console
    lines, no Ray Train chatter or project warnings on the console; the log holds Ray's output."""
    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["pretrain"].update(steps=4, batch_size=2, eval_every=4, eval_videos=2, checkpoint_every=2, log_every=1,
                           warmup_steps=1, cpus_per_worker=1.0, storage_path=str(tmp_path / "ray_results"))
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "data").symlink_to(processed / "data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # A busy machine (one core taken) is when Ray Train's controller chatter used to flood the console.
    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain", "--params", "params.yaml"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=900)
    finally:
        hog.kill()
        hog.wait()
    log = (tmp_path / "logs" / "pretrain.log").read_text()
    assert proc.returncode == 0, proc.stderr[-2000:] + log[-3000:]
    shown = console_lines(proc.stdout) + console_lines(proc.stderr)
    assert_within_budget([line for line in shown if not BAR.match(line)], "pretrain under load")
    assert shown[0].startswith("pretrain: preset=CoordTok-tiny steps=4") and "log: logs/pretrain.log" in shown[0]
    bar = [line for line in shown if line.startswith("pretrain: 100%")]
    assert bar and "loss=" in bar[-1] and "test_psnr=" in bar[-1] and re.search(r"step/s|s/step", bar[-1])
    console_text = proc.stdout + proc.stderr
    for chatter in ("Reporting training result", "PlacementGroupCleaner", "RayTrainWorker", "TrainController"):
        assert chatter not in console_text
    assert not PROJECT_WARNING.search(console_text) and not PROJECT_WARNING.search(log)
    assert "RayTrainWorker" in log and "Reporting training result" in log  # Ray's output, in full, here
    assert "| log" in proc.stdout and "logs/pretrain.log" in proc.stdout
