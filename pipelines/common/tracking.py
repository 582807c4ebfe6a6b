"""The one MLflow layer every stage uses: tracking URI, experiment, run naming, standard tags.

Precedence for the store: MLFLOW_TRACKING_URI (when set) > params `mlflow.tracking_uri`.
A relative sqlite path is resolved against the repository root, so every stage and every
DVC experiment workspace of one checkout can be pointed at the same file explicitly.

Conventions (relied on by dashboards/): run name `<stage> <distinguishing params>`; tags `stage`,
`params.hash`, `dvc.exp_name`, `git.commit`, `git.dirty`, `weights.standin` (when a stage knows);
sweep trials carry `mlflow.parentRunId` set explicitly (Ray trial processes do not inherit runs).
Registered models: `coordtok-tokenizer`, `coordtok-sit` (see register_model / load_registered).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from components.config import Params, shared_root
from components.errors import UserError

log = logging.getLogger("tracking")

STANDIN_TAG = "weights.standin"
PARENT_TAG = "mlflow.parentRunId"
TOKENIZER_MODEL = "coordtok-tokenizer"
SIT_MODEL = "coordtok-sit"
# Tags copied from the producing run onto a registered model version (its lineage).
LINEAGE_TAGS = ("stage", "params.hash", "dvc.exp_name", "git.commit", "git.dirty", STANDIN_TAG)


# mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ; remember what the user set
# before any of that, so one process can run several stages against different stores.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def resolve_tracking_uri(params: Params, root: Path) -> str:
    """The tracking URI; relative local stores resolve against the checkout, so queued DVC
    experiments (which run in temporary workspaces) log into the same store as the workspace."""
    uri = _USER_TRACKING_URI or params.mlflow.tracking_uri
    root = shared_root(root)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:  # a plain folder path: file store
        uri = str((root / uri).resolve())
    return uri


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise one UserError when an HTTP tracking server does not answer /health (before any compute)."""
    if not uri.startswith(("http://", "https://")):
        return
    fix = ("start it (mlflow server ...), fix mlflow.tracking_uri / MLFLOW_TRACKING_URI, "
           "or unset both to use the local sqlite store")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"the MLflow tracking server at {uri} is unreachable ({reason}); {fix}") from None
    raise UserError(f"the MLflow tracking server at {uri} answered its health check with HTTP {status}; {fix}")


def server_is_up(uri: str, timeout: float = 2.0) -> bool:
    """True for non-HTTP stores and for an HTTP server answering /health."""
    try:
        _check_reachable(uri, timeout)
    except UserError:
        return False
    return True


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the checkout at `root` ("unknown" outside a git repository)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip())
        return done.stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _use_tracking_uri(uri: str) -> None:
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if previous is None:  # undo the side effect on the environment (see _USER_TRACKING_URI)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def standard_tags(params: Params, root: Path, stage: str, standin: bool | None = None) -> dict[str, str]:
    """The tags every stage run carries (see the module docstring)."""
    tags = {
        "stage": stage,
        "params.hash": params.digest(),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        **git_state(root),
    }
    if standin is not None:
        tags[STANDIN_TAG] = str(bool(standin)).lower()
    return tags


@contextlib.contextmanager
def stage_run(params: Params, root: Path, stage: str, name_suffix: str = "",
              extra_tags: dict[str, str] | None = None, system_metrics: bool = False,
              standin: bool | None = None, parent_run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run for one stage execution, with the validated params and the standard tags.

    `name_suffix`: the distinguishing params (e.g. "xy=16 t=32 ratio=0.03"); the run is named
    "<stage> <suffix>". `standin`: whether the run uses stand-in pretrained weights (tag
    `weights.standin`; None = not known yet, call log_standin later). `parent_run_id`: makes this
    a nested run under that run, also from another process (sweep trials on Ray workers).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # imported here: it is slow to import and not every code path tracks

    uri = resolve_tracking_uri(params, root)
    _check_reachable(uri)
    _use_tracking_uri(uri)
    name = params.mlflow.experiment
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            artifact_location = (shared_root(root) / "mlartifacts").resolve().as_uri()
        with contextlib.suppress(Exception):  # another process may create it at the same moment
            mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)
    tags = {**standard_tags(params, root, stage, standin), **(extra_tags or {})}
    run_name = stage + (f" {name_suffix}" if name_suffix else "")
    active = mlflow.active_run()
    nested = active is not None and (parent_run_id is None or parent_run_id == active.info.run_id)
    if parent_run_id is not None and not nested:
        tags[PARENT_TAG] = parent_run_id  # set explicitly: works without an active parent in this process
    # System metrics (CPU, memory, GPU where present) are sampled by a thread of this process.
    with mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=system_metrics, nested=nested) as run:
        flat = {k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v
                for k, v in flatten(params.model_dump(mode="json")).items()}
        mlflow.log_params(flat)
        yield run


def child_run(params: Params, root: Path, stage: str, parent_run_id: str, name_suffix: str = "",
              **kwargs: Any):
    """A run nested under `parent_run_id` (e.g. one sweep trial); usable from any process."""
    return stage_run(params, root, stage, name_suffix, parent_run_id=parent_run_id, **kwargs)


def log_standin(flag: bool, run_id: str | None = None, client: Any = None) -> None:
    """Record whether a run used stand-in pretrained weights (the active run unless run_id is given)."""
    import mlflow

    value = str(bool(flag)).lower()
    if run_id is None:
        mlflow.set_tag(STANDIN_TAG, value)
    else:
        (client or mlflow.MlflowClient()).set_tag(run_id, STANDIN_TAG, value)


# ------------------------------------------------------------------------------ buffered metrics


class MetricsBuffer:
    """Metrics for one run, sent in batches; a tracking server that drops out does not stop training.

    `add()` only appends to memory. `flush()` sends what is pending in one try (chunks of
    1000, the MLflow batch limit); when the server is down the metrics stay in memory and the next
    try waits an exponentially growing back-off (no sleeping in the training loop; an HTTP server
    is probed with a 2 s health check first, so MLflow's own long retry loop is not entered).
    `close()` makes a last few blocking tries and returns a report: sent, late (held back by an
    outage, sent later), dropped (still unsent at the end, or over `max_pending`), and logs a warning when any
    were late or dropped.

        buf = MetricsBuffer(MlflowClient(uri), run_id)
        buf.add({"loss": 0.3, "lr": 1e-3}, step=10)
        buf.flush()            # e.g. every log_every steps
        report = buf.close()   # at the end of training
    """

    MAX_BATCH = 1000

    def __init__(self, client: Any, run_id: str, *, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 max_pending: int = 1_000_000, final_tries: int = 3,
                 clock: Callable[[], float] = time.monotonic, tracking_uri: str | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_pending, self.final_tries, self.clock = max_pending, final_tries, clock
        self.pending: list[Any] = []           # mlflow.entities.Metric, oldest first
        self.sent = self.late = self.dropped = 0
        self.failures = 0                      # failed tries so far (all flushes)
        self.last_error: str | None = None
        self._late_from = 0                    # pending[:_late_from] have seen a failed try
        self._streak = 0                       # consecutive failed tries
        self._next_try = 0.0
        if tracking_uri is None:  # MlflowClient keeps it on its tracking client
            tracking_uri = getattr(getattr(client, "_tracking_client", None), "tracking_uri", "")
        self.uri = tracking_uri if isinstance(tracking_uri, str) else ""

    def add(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue metrics of one step (non-finite values are kept: MLflow stores NaN/inf)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        self.pending.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items())
        overflow = len(self.pending) - self.max_pending
        if overflow > 0:  # keep the newest; count the loss
            del self.pending[:overflow]
            self.dropped += overflow
            self._late_from = max(0, self._late_from - overflow)

    def _try_send(self) -> bool:
        if self.uri.startswith(("http://", "https://")) and not server_is_up(self.uri):
            self.last_error = f"tracking server {self.uri} not answering /health"
            return False
        while self.pending:
            chunk = self.pending[:self.MAX_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as exc:  # any tracking failure: keep the metrics, try later
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                return False
            late = min(len(chunk), self._late_from)
            self.late += late
            self._late_from -= late
            self.sent += len(chunk)
            del self.pending[:len(chunk)]
        return True

    def flush(self, force: bool = False) -> bool:
        """One try to send everything pending (skipped while backing off unless force); True when empty."""
        if not self.pending:
            return True
        if not force and self.clock() < self._next_try:
            self._late_from = len(self.pending)  # held back by the outage: these arrive late
            return False
        if self._try_send():
            if self._streak:
                log.info("MLflow logging recovered; %d delayed metric values sent", self.late)
            self._streak = 0
            return True
        self.failures += 1
        self._streak += 1
        self._late_from = len(self.pending)
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._streak - 1))
        self._next_try = self.clock() + delay
        if self._streak == 1:
            log.warning("MLflow logging failed (%s); keeping %d metric values in memory and retrying",
                        self.last_error, len(self.pending))
        return False

    def close(self) -> dict[str, Any]:
        """Last blocking tries with back-off, then a report; unsent metrics count as dropped."""
        for attempt in range(self.final_tries):
            if self.flush(force=True):
                break
            if attempt + 1 < self.final_tries:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        if self.pending:
            self.dropped += len(self.pending)
            self.pending.clear()
        report = self.report()
        if report["late"] or report["dropped"]:
            log.warning("MLflow metrics for run %s: %d sent (%d late), %d dropped after %d failed tries (%s)",
                        self.run_id, report["sent"], report["late"], report["dropped"], report["failures"],
                        self.last_error)
        return report

    def report(self) -> dict[str, Any]:
        return {"sent": self.sent, "late": self.late, "dropped": self.dropped, "pending": len(self.pending),
                "failures": self.failures, "last_error": self.last_error}


# ------------------------------------------------------------------------------ model registry


# Models-from-code: the registered pyfunc is this project file (logged by path), never a pickled object.
REGISTRY_MODEL_CODE = Path(__file__).with_name("registry_model.py")


def register_model(run_id: str, checkpoint: str | os.PathLike, name: str, builder: str,
                   config: dict[str, Any] | None = None, input_example: dict[str, Any] | None = None,
                   tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> Any:
    """Log `checkpoint` (a torch .pt file: {"config", "model", ...}) as an MLflow pyfunc model of
    run `run_id` and register it as `name` (coordtok-tokenizer / coordtok-sit).

    Models-from-code: the pyfunc is `pipelines/common/registry_model.py` (copied into the model as
    source) with `builder` in its model_config and the checkpoint as an artifact, so loading runs
    only project code and `torch.load(weights_only=True)`; nothing is pickled.

    The model version gets the run's lineage tags (git commit/dirty, DVC experiment, params hash,
    stage, stand-in flag), `source.run_id`, `builder`, and `tags`; `config` is stored as model
    metadata (default: the checkpoint's own config). Returns the ModelVersion.
    """
    import mlflow
    import torch

    if tracking_uri:
        _use_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist; run the stage that writes it first")
    if config is None:
        config = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
    run = client.get_run(run_id)
    lineage = {k: run.data.tags[k] for k in LINEAGE_TAGS if k in run.data.tags}
    version_tags = {**lineage, "source.run_id": run_id, "builder": builder, **(tags or {})}
    active = mlflow.active_run()
    ctx = contextlib.nullcontext() if active is not None and active.info.run_id == run_id else \
        mlflow.start_run(run_id=run_id, nested=active is not None)
    with ctx:
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(REGISTRY_MODEL_CODE), model_config={"builder": builder},
            artifacts={"checkpoint": str(checkpoint)},
            input_example=input_example, metadata={"config": json.loads(json.dumps(config))},
            pip_requirements=["torch", "numpy"])  # no pip env inference: the project is the environment
    version = mlflow.register_model(info.model_uri, name, tags=version_tags)
    client.set_registered_model_tag(name, "project", "coordtok")
    return version


def load_registered(name: str, version: str | int = "latest", tracking_uri: str | None = None) -> Any:
    """The torch module of a registered model version (eval mode, on CPU)."""
    import mlflow

    if tracking_uri:
        _use_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"registered model {name} version {version} could not be loaded "
                        f"({str(exc).splitlines()[0]}); check the name/version with `mlflow ui`") from None
    return model.unwrap_python_model().module
