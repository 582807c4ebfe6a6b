"""The Ray Train plumbing every training stage shares (pretrain, finetune, train_sit, sweep trials).

A stage supplies its model-specific loop; this module owns what must behave the same everywhere:
stable run names (rerun = resume), device/precision/seed setup, resuming from the newest intact
checkpoint, per-step MLflow metrics that never kill training, checkpoints through Ray Train, and
the output files (`models/...pt`, `plots/<stage>/*.csv`, `metrics/<stage>.json`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch

from components.config import Params, TrainingParams
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# Keys of a training section that do not change what is trained (so they don't name the run).
# The worker count is one of them: the global sample plan makes N workers train the same model as
# one, so a rerun with another count resumes the same run (components/parallel.py).
VOLATILE_KEYS = ("log_every", "storage_path", "cpus_per_worker", "keep_checkpoints", "eval_videos",
                 "gpus_per_worker", "num_workers", "min_workers", "max_failures")


def run_name(stage: str, params: Params, sections: Iterable[str], extra: dict[str, Any] | None = None) -> str:
    """Stable Ray Train run name from what defines the run: same -> resume; different -> new run."""
    dumped = params.model_dump(mode="json")
    defining: dict[str, Any] = {k: dict(dumped[k]) for k in sections}
    for section in defining.values():
        for volatile in VOLATILE_KEYS:
            section.pop(volatile, None)
    defining["extra"] = extra or {}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    return f"{stage}-{digest}"


def file_digest(path: Path) -> str:
    """sha256 of a file (an input checkpoint is part of what defines a run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_has_fast_bf16() -> bool:
    """bf16 matmul beats fp32 only with AVX512-BF16 or AMX; without them it runs at ~0.2x
    (measured: benchmarks/tokenizer_utilisation.py), so autocast would slow training down."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# bf16 autocast pays on an AVX512-BF16/AMX CPU only when a step's matmuls are big enough: measured
# by benchmarks/training_precision.py (1 torch thread, process CPU-seconds; docs/tokenizer-learning.md)
# at the embedded default's sizes, bf16/fp32 step time was 0.76 for pretrain (8 clips x 512 video
# tokens x width 128 = 524k activations per linear layer), 0.90 for finetune (262k) and 1.31 for
# train_sit (16 x 48 tokens x 128 = 98k). Below this many (rows x width) auto stays in fp32.
CPU_BF16_MIN_ACTIVATION = 400_000


def autocast_dtype(precision: str, device: torch.device, activation: int | None = None) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32.

    `auto` on a CPU picks bf16 only with fast bf16 units (AVX512-BF16/AMX) and a step whose widest
    linear layers see at least CPU_BF16_MIN_ACTIVATION values (`activation`: rows per worker step
    x width, see `step_activation`; unknown counts as small).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    big = activation is not None and activation >= CPU_BF16_MIN_ACTIVATION
    return torch.bfloat16 if big and cpu_has_fast_bf16() else None


def step_activation(samples: int, tokens_per_sample: int, width: int) -> int:
    """Values entering a step's widest linear layers (rows x width): what decides whether bf16 pays on a CPU."""
    return max(1, samples) * tokens_per_sample * width


def precision_name(amp: torch.dtype | None) -> str:
    """"bf16" or "fp32": what a run's metrics file and MLflow params record as the precision used."""
    return "bf16" if amp == torch.bfloat16 else "fp32" if amp is None else str(amp).removeprefix("torch.")


# ------------------------------------------------------------------------------ worker side


def latest_intact_state(run_dir: Path, reported) -> dict[str, Any] | None:
    """The newest checkpoint that passes its checksum; damaged ones are skipped with a warning."""
    from components.tokenizer.training import DamagedCheckpoint, checkpoint_step, load_state

    def warn(exc: Exception) -> None:  # a marked line: the driver shows it on the console
        from pipelines.common.console import worker_note

        worker_note(f"warning: skipping damaged checkpoint: {exc}")

    if reported is not None:
        with reported.as_directory() as d:
            try:
                return load_state(d)
            except DamagedCheckpoint as exc:
                warn(exc)
    # Ray only knows its latest; fall back to the newest intact one on disk.
    for folder in sorted(run_dir.glob("checkpoint_*"), key=checkpoint_step, reverse=True):
        try:
            return load_state(folder)
        except DamagedCheckpoint as exc:
            warn(exc)
    return None


class TrainWorker:
    """Per-worker side of a training stage: call from inside `train_loop_per_worker`.

    Sets threads, determinism and the device; `restore` resumes; `end_step` logs, evaluates-aside
    rows, and checkpoints on schedule; `finish` flushes. Rank 0 alone talks to MLflow.
    """

    def __init__(self, config: dict[str, Any], cfg: TrainingParams, tokens_per_sample: int | None = None,
                 width: int | None = None):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.cfg, self.config = cfg, config
        from pipelines.common.cluster import size_threads

        size_threads(cfg.cpus_per_worker)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = ray.train.torch.get_device()
        # tokens_per_sample x width: the model's widest layers per sample (see autocast_dtype)
        activation = (None if tokens_per_sample is None or width is None else
                      step_activation(cfg.batch_size // (self.world * cfg.grad_accum), tokens_per_sample, width))
        self.amp = autocast_dtype(cfg.precision, self.device, activation)
        self.precision = precision_name(self.amp)
        self.history: list[dict[str, float]] = []
        self.run_id = config.get("mlflow_run_id")
        self.client = self.metrics = None
        if self.rank == 0 and self.run_id:
            from mlflow.tracking import MlflowClient

            from pipelines.common.tracking import MetricsBuffer

            self.client = MlflowClient(config["tracking_uri"])
            # Buffered with backoff: a tracking server that drops out never stalls or kills training.
            self.metrics = MetricsBuffer(self.client, self.run_id, tracking_uri=config["tracking_uri"])
            try:  # what `precision: auto` resolved to on this worker's hardware
                self.client.log_param(self.run_id, "precision_used", self.precision)
            except Exception as exc:
                log.warning("MLflow param precision_used not logged (%s)", exc)
        self._t_last, self._samples = time.perf_counter(), 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Autocast context in the run's precision (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def restore(self, load: Callable[[dict[str, Any]], None]) -> int:
        """Resume from the newest intact checkpoint: `load(state)` restores the caller's objects.
        Returns the step to start from (0 for a fresh run)."""
        import ray.train

        from pipelines.common.console import worker_group_started

        state = latest_intact_state(Path(self.config["run_dir"]), ray.train.get_checkpoint())
        if state is None:
            if self.is_main:  # the driver still counts this group: a later one means a worker was lost
                worker_group_started(0)
            return 0
        load(state)
        self.history = list(state["history"])
        if self.is_main:
            written = state.get("world_size", 1)
            # Same samples per step whatever the count (global sample plan): the run simply continues.
            across = f" (checkpoint written by {written} worker(s), continuing with {self.world})" \
                if written != self.world else ""
            worker_group_started(int(state["step"]), across)  # "resuming from step N" or "a worker was lost"
        return int(state["step"])

    def count(self, samples: int) -> None:
        self._samples += samples

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str) -> None:
        if self.client is None:
            return
        try:
            for p in paths:
                self.client.log_artifact(self.run_id, str(p), artifact_path=artifact_path)
        except Exception as exc:
            log.warning("MLflow artifact upload failed (%s)", exc)

    def is_eval_step(self, done: int) -> bool:
        return done % self.cfg.eval_every == 0 or done == self.cfg.steps

    def end_step(self, done: int, row: dict[str, float], state: Callable[[], dict[str, Any]],
                 on_log: Callable[[dict[str, float]], None] | None = None) -> None:
        """Record `row` for step `done`, log it on schedule, and checkpoint on schedule.

        `state()` returns what a checkpoint holds besides step and history (state dicts, config).
        """
        import ray.train

        cfg = self.cfg
        row = {"step": done, **row}
        is_eval = self.is_eval_step(done)
        if self.is_main:
            self.history.append(row)
            if done % cfg.log_every == 0 or is_eval or done == cfg.steps:
                now = time.perf_counter()
                logged = {**row, "samples_per_second": self._samples * self.world / max(now - self._t_last, 1e-9)}
                self._t_last, self._samples = now, 0
                if self.metrics is not None:
                    self.metrics.add({k: float(v) for k, v in logged.items() if k != "step"}, step=done)
                    self.metrics.flush()
                if on_log is not None:
                    on_log(logged)
                from pipelines.common.console import worker_progress

                worker_progress(done, logged)  # the driver's progress bar
        metrics = dict(row)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            import tempfile

            from components.tokenizer.training import save_state

            with tempfile.TemporaryDirectory() as tmp:
                if self.is_main:
                    save_state(tmp, {**state(), "step": done, "history": self.history, "precision": self.precision,
                                     "world_size": self.world})
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                else:
                    ray.train.report(metrics)
        elif done % cfg.log_every == 0:
            ray.train.report(metrics)

    def finish(self) -> dict[str, Any] | None:
        """Send what is still buffered; returns the delivery report (sent, late, dropped) on rank 0."""
        return self.metrics.close() if self.metrics is not None else None


# ------------------------------------------------------------------------------ driver side


def fit(params: Params, cfg: TrainingParams, loop: Callable[[dict[str, Any]], Any], loop_config: dict[str, Any],
        name: str, storage: Path) -> dict[str, Any]:
    """Run `loop` on a Ray Train TorchTrainer named `name`; return the final checkpoint's state.

    Reusing `name` with the same storage resumes that run from its checkpoints.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from components.tokenizer.training import load_state
    from pipelines.common.cluster import check_fits, ray_cluster

    section = name.rsplit("-", 1)[0]
    with ray_cluster(params.ray) as resources:
        use_gpu = resources.get("GPU", 0) > 0
        per_worker: dict[str, float] = {"CPU": cfg.cpus_per_worker}
        if use_gpu:
            per_worker["GPU"] = cfg.gpus_per_worker or 1.0
        fewest = cfg.min_workers or cfg.num_workers
        check_fits(per_worker, {"CPU": f"{section}.cpus_per_worker", "GPU": f"{section}.gpus_per_worker"},
                   "worker", count=fewest)
        # Losing a node: Ray Train restarts the worker group from the last checkpoint (max_failures
        # times). Fixed size waits until num_workers fit again; with min_workers it continues on
        # what is left (elastic), which trains the same model thanks to the global sample plan.
        workers = (fewest, cfg.num_workers) if fewest < cfg.num_workers else cfg.num_workers
        trainer = TorchTrainer(
            loop,
            train_loop_config={**loop_config, "run_dir": str(storage / name)},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(
                name=name, storage_path=str(storage),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        )
        from pipelines.common.console import training_bar

        with training_bar(cfg.steps, name.rsplit("-", 1)[0]):
            result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        return load_state(d)


def save_model_file(path: Path, payload: dict[str, Any]) -> None:
    """A `torch.load(weights_only=True)`-loadable model file, written atomically."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_curves(plots_dir: Path, history: list[dict[str, float]], train_cols: list[str],
                 eval_cols: list[str]) -> pd.DataFrame:
    """plots/<stage>/loss.csv (every step) and eval.csv (evaluation steps); returns the history frame."""
    frame = pd.DataFrame(history)
    atomic_write_text(plots_dir / "loss.csv", frame.reindex(columns=["step", *train_cols]).to_csv(index=False))
    key = eval_cols[0]
    evals = frame.dropna(subset=[key]) if key in frame else frame.iloc[0:0]
    atomic_write_text(plots_dir / "eval.csv", evals.reindex(columns=["step", *eval_cols]).to_csv(index=False))
    return frame


def write_metrics(path: Path, summary: dict[str, Any], wall_seconds: float) -> None:
    """Write the stage's metrics file and log it to the active MLflow run: each number as
    final_<key>, the stage's wall_seconds, and the file itself as an artifact."""
    import mlflow

    atomic_write_json(path, summary)
    mlflow.log_metrics({"final_" + k: float(v) for k, v in summary.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mlflow.log_metric("wall_seconds", wall_seconds)
    mlflow.log_artifact(str(path))


# ------------------------------------------------------------------ naive baselines beside the model

BASELINE_COLUMNS = tuple(f"baseline_{name}_psnr" for name in ("mean_colour", "same_numbers", "temporal_mean"))


def baseline_fields(last_eval: Any, arch: Any, data: Any) -> dict[str, Any]:
    """The metrics-file fields of the naive baselines at the last evaluation (same test clips as
    test_psnr; components.metrics.baselines), with what each keeps and the model's gain over the
    same-numbers one (the bar: a codec as large as the triplane)."""
    from components.metrics.baselines import triplane_values
    from components.tokenizer.training import baseline_grid

    grid = baseline_grid(arch, (data.num_frames, data.img_size, data.img_size))
    fields: dict[str, Any] = {k: float(last_eval[k]) for k in BASELINE_COLUMNS}
    fields.update({
        "psnr_gain_over_same_numbers": float(last_eval["test_psnr"] - last_eval["baseline_same_numbers_psnr"]),
        "triplane_values": triplane_values(arch.latent_n_features, arch.latent_resolution_xy, arch.latent_resolution_t),
        "baseline_same_numbers_grid": list(grid), "baseline_same_numbers_values": 3 * grid[0] * grid[1] * grid[2],
        "baseline_temporal_mean_values": 3 * data.img_size * data.img_size,
    })
    return fields


def baseline_summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """One summary-table row for the three baselines (one row keeps the console contract's ~15 lines),
    labelled with the numbers each keeps."""
    kept = f"3 / {summary['baseline_same_numbers_values']:,} / {summary['baseline_temporal_mean_values']:,}"
    psnrs = " / ".join(f"{summary[k]:.2f}" for k in ("baseline_mean_colour_psnr", "baseline_same_numbers_psnr",
                                                      "baseline_temporal_mean_psnr"))
    return [(f"baselines PSNR: mean colour / same numbers / temporal mean ({kept} values)", psnrs)]
