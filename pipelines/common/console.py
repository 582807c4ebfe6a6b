"""The console contract of a stage: what the user sees, and where everything else goes.

While a stage runs (`stage_console`, entered by `cli.run_stage`), the terminal gets only: one line
saying what starts, one progress bar, warnings that matter (each once, in the project's words), the
summary table and one-sentence errors. Everything else (Ray, Ray Train and third-party INFO/WARNING
output, Python warnings, child processes such as the raylet, the project's own INFO logging) goes to
`logs/<stage>.log`, which the summary names.

How: file descriptors 1 and 2 (and sys.stdout/sys.stderr) point at the log file for the stage's
duration, so nothing can reach the terminal by accident; the project writes to the terminal only
through `out()` / `err()` (a duplicate of the original descriptors).

Ray workers cannot write to the driver's terminal, so they print marked lines (`worker_note`,
`worker_progress`, `worker_group_started`) that Ray forwards to the driver; `on_worker_output`
(installed by `cluster.ray_cluster`) turns them into a console line or a progress-bar update; a second
rank-0 worker under one training bar means Ray Train lost a worker and restarted from a checkpoint.
The unmarked lines reach only the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, TextIO

NOTE_MARK = "[coordtok] "               # a worker line for the user's console (printed as is)
PROGRESS_MARK = "[coordtok-progress] "  # a worker's training progress (JSON), drawn as the stage's bar
START_MARK = "[coordtok-start] "        # rank 0 of a training worker group starting (JSON: step, across, worker)
PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[2] / d) + os.sep
                     for d in ("components", "pipelines", "dashboards"))
# Figures a training bar shows as "the last eval figure", first present wins.
EVAL_FIGURES = ("test_psnr", "stats_distance")


class _State:
    def __init__(self) -> None:
        self.out: TextIO | None = None
        self.err: TextIO | None = None
        self.log_path: Path | None = None
        self.shown: set[str] = set()
        self.bar: Any = None       # the bar on screen: a console line clears it and redraws it after
        self.training: Any = None  # the training bar that worker progress lines drive
        self.last_eval: str = ""
        self.groups: set[str] = set()  # rank-0 workers started under the current training bar
        self.lock = threading.Lock()


_state = _State()


def out() -> TextIO:
    """The user's terminal (stdout side): start line, summary table."""
    return _state.out or sys.stdout


def err() -> TextIO:
    """The user's terminal (stderr side): progress bars, warnings, errors."""
    return _state.err or sys.stderr


def log_path() -> Path | None:
    """The active stage's log file (None outside a stage run, e.g. in tests calling a stage directly)."""
    return _state.log_path


def say(line: str, stream: TextIO | None = None) -> None:
    """One line on the console (above a running progress bar, which is redrawn after it)."""
    stream = stream or out()
    with _state.lock:
        if _state.bar is not None:
            _state.bar.clear()
        print(line, file=stream, flush=True)
        if _state.bar is not None:
            _state.bar.refresh()


def note_once(message: str) -> None:
    """A line that matters to the user (a warning, a resumed run), printed once per stage run."""
    if message in _state.shown:
        return
    _state.shown.add(message)
    say(message, err())


def progress_bar(**kwargs: Any):
    """A tqdm bar on the console (rate and ETA), whatever sys.stderr points at. While it is open,
    `say` lines (notes, warnings) are printed above it rather than glued to its end."""
    from tqdm import tqdm

    class Bar(tqdm):
        def close(self) -> None:
            with _state.lock:
                if _state.bar is self:
                    _state.bar = None
            super().close()

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    bar = Bar(file=err(), **kwargs)
    with _state.lock:
        if _state.bar is None:
            _state.bar = bar
    return bar


@contextlib.contextmanager
def training_bar(total: int, desc: str) -> Iterator[Any]:
    """The stage's training bar, driven by `worker_progress` lines of rank 0 (loss, last eval figure)."""
    bar = progress_bar(total=total, desc=desc, unit="step")
    _state.bar = _state.training = bar
    _state.last_eval, _state.groups = "", set()
    try:
        yield bar
    finally:
        with _state.lock:
            _state.training = None
        bar.close()


# ------------------------------------------------------------------------------ worker side


def worker_note(message: str) -> None:
    """From a Ray worker: a line for the user's console (the driver prints it once)."""
    print(NOTE_MARK + message, flush=True)


def worker_group_started(step: int, across: str = "") -> None:
    """From rank 0 of a training worker group, once it has restored (step 0 for a fresh run): the driver
    tells a resumed invocation from a worker group that Ray Train restarted after losing a worker (a new
    rank-0 worker process). Ray may forward a line twice (stdout and a log copy): the worker id tells."""
    worker = str(os.getpid())  # outside Ray (tests): the process is the worker
    try:
        import ray

        if ray.is_initialized():
            worker = ray.get_runtime_context().get_worker_id()
    except Exception:  # noqa: BLE001 - the pid is as good on one node
        pass
    print(START_MARK + json.dumps({"step": int(step), "across": across, "worker": worker}), flush=True)


def worker_progress(step: int, row: dict[str, Any]) -> None:
    """From rank 0 of a training run: step and figures for the driver's progress bar."""
    figures = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
    print(PROGRESS_MARK + json.dumps({"step": int(step), **figures}), flush=True)


# ------------------------------------------------------------------------------ driver side


def _on_progress(payload: dict[str, Any]) -> None:
    with _state.lock:
        bar = _state.training
        if bar is None:
            return
        for key in EVAL_FIGURES:
            if key in payload:
                _state.last_eval = f"{key}={payload[key]:.3g}"
                break
        post = [f"loss={payload['loss']:.4g}"] if "loss" in payload else []
        if _state.last_eval:
            post.append(_state.last_eval)
        step = int(payload.get("step", bar.n))
        if step < bar.n:  # a restarted worker resumes from an earlier checkpoint
            bar.reset(total=bar.total)
        bar.set_postfix_str(" ".join(post), refresh=False)
        bar.update(step - bar.n)


def _on_group_start(payload: dict[str, Any]) -> None:
    step, across, worker = int(payload.get("step", 0)), str(payload.get("across", "")), str(payload.get("worker"))
    with _state.lock:
        if worker in _state.groups:  # the same line forwarded again
            return
        _state.groups.add(worker)
        restarted = len(_state.groups) > 1  # this invocation already had a worker group: one was lost
        bar = _state.training
        if bar is not None and step != bar.n:  # the bar continues from the checkpoint, rate counted from here
            bar.reset(total=bar.total)
            bar.n = bar.last_print_n = bar.initial = step
    if restarted:
        note_once(f"warning: a training worker was lost; the run continues from checkpoint step {step}{across}"
                  if step else "warning: a training worker was lost before the first checkpoint; the run restarts "
                  f"from step 0{across}")
    elif step:
        note_once(f"resuming from step {step}{across}")


def on_worker_output(data: dict[str, Any]) -> None:
    """Ray's worker-output hook (every forwarded batch of lines): act on the marked lines only."""
    for line in data.get("lines", ()):
        try:
            if line.startswith(PROGRESS_MARK):
                _on_progress(json.loads(line[len(PROGRESS_MARK):]))
            elif line.startswith(START_MARK):
                _on_group_start(json.loads(line[len(START_MARK):]))
            elif line.startswith(NOTE_MARK):
                note_once(line[len(NOTE_MARK):])
        except Exception:  # a malformed line must never break Ray's log thread
            continue


class _ProjectWarnings(logging.Filter):
    """WARNING and above from the project's own code, each distinct message once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.pathname.startswith(PROJECT_DIRS) \
                or not getattr(record, "console", True):  # extra={"console": False}: the log only
            return False
        message = record.getMessage()
        if message in _state.shown:
            return False
        _state.shown.add(message)
        return True


class _ConsoleHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:  # filtered by handle() already
        say(self.format(record), self.stream)


def _console_stream(stream: TextIO, fd: int) -> TextIO:
    """The terminal for the stage's duration: a duplicate of descriptor `fd` when `stream` writes to
    it (fd is about to point at the log); otherwise `stream` itself (e.g. pytest's capture)."""
    try:
        real = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        return stream
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace")


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers]


@contextlib.contextmanager
def stage_console(stage: str, path: Path) -> Iterator[Path]:
    """Route everything but the project's console output to `path` (overwritten) while the stage runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(path, "w", buffering=1, encoding="utf-8", errors="replace")
    console_out, console_err = _console_stream(sys.stdout, 1), _console_stream(sys.stderr, 2)
    saved_std = sys.stdout, sys.stderr
    for s in saved_std:
        s.flush()
    saved_fds = os.dup(1), os.dup(2)
    os.dup2(log_file.fileno(), 1)  # C-level output and child processes (raylet, GCS) land in the log
    os.dup2(log_file.fileno(), 2)
    sys.stdout = sys.stderr = log_file
    root = logging.getLogger()
    saved_level = root.level
    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = _ConsoleHandler(console_err)
    to_console.addFilter(_ProjectWarnings())
    to_console.setFormatter(logging.Formatter("warning: %(message)s"))
    # Handlers that libraries (Ray) attached to the terminal streams at import: into the log too.
    terminal = {id(s) for s in (*saved_std, sys.__stdout__, sys.__stderr__) if s is not None}
    moved = [(h, h.stream) for h in _all_handlers() if isinstance(h, logging.StreamHandler)
             and not isinstance(h, logging.FileHandler) and id(getattr(h, "stream", None)) in terminal]
    for handler, _ in moved:
        handler.setStream(log_file)
    root.addHandler(to_file)
    root.addHandler(to_console)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # Python warnings: into the log, with the module that raised them
    _state.out, _state.err, _state.log_path, _state.shown = console_out, console_err, path, set()
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        root.removeHandler(to_file)
        root.removeHandler(to_console)
        for handler, stream in moved:
            handler.setStream(stream)
        root.setLevel(saved_level)
        for s in (sys.stdout, sys.stderr):
            s.flush()
        sys.stdout, sys.stderr = saved_std
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        for s in (console_out, console_err):
            if s not in saved_std:
                s.close()
            else:
                s.flush()
        _state.out = _state.err = _state.log_path = _state.bar = _state.training = None
        log_file.close()
