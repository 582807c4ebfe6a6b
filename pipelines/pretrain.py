"""Stage `pretrain`: coordinate-sampling training of the CoordTok tokenizer on Ray Train.

Each step samples clip windows and `pretrain.sampling_ratio` of their patches on the workers and
minimises the l2 loss on those patches only. The Ray Train run is named from the params that
define it, so rerunning the stage after a kill resumes from its latest intact checkpoint.
Outputs: models/tokenizer/pretrain.pt, metrics/pretrain.json, plots/pretrain/{loss,eval}.csv.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Params, resolve_path, validate_params
from components.errors import UserError
from pipelines.common import trainer
from pipelines.common.trainer import BASELINE_COLUMNS, baseline_fields, baseline_summary_rows
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import resolve_tracking_uri, stage_run
from pipelines.preprocess import INDEX_FILE, PROCESSED_DIR, processed_store

log = logging.getLogger("pretrain")

MODEL_OUT = "models/tokenizer/pretrain.pt"
METRICS_OUT = "metrics/pretrain.json"
PLOTS_DIR = "plots/pretrain"


def run_name(params: Params) -> str:
    """Stable Ray Train run name: same defining params -> same run (resume); different -> new run."""
    return trainer.run_name("pretrain", params, ("data", "tokenizer", "pretrain"))


# ------------------------------------------------------------------------------ worker side


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in every Ray Train worker; rank 0 also evaluates, checkpoints and logs to MLflow."""
    import ray.train.torch

    from components.data.preview import write_previews
    from components.tokenizer.training import PretrainRunner, pretrain_tokens_per_clip

    params = validate_params(config["params"])
    cfg = params.pretrain
    arch = params.tokenizer.arch
    worker = trainer.TrainWorker(config, cfg, pretrain_tokens_per_clip(params.data, arch, cfg.sampling_ratio), arch.width)
    processed = Path(config["processed_dir"])
    runner = PretrainRunner(params, processed, pd.read_parquet(processed / INDEX_FILE), worker.device,
                            worker.amp, worker.rank, worker.world)
    start = worker.restore(runner.load_state_dict)
    runner.model = ray.train.torch.prepare_model(runner.core)

    runner.model.train()
    # Learning curves against cost: this worker's process CPU-seconds (all its threads; fair on a
    # shared machine) and wall seconds since this (possibly resumed) attempt started.
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(start, cfg.steps):
        loss, seen = runner.train_step(step)
        worker.count(seen)
        done = step + 1
        row: dict[str, float] = {"loss": loss, "lr": runner.lr}
        if worker.is_main and worker.is_eval_step(done):
            res = runner.evaluate()
            row.update(test_psnr=res.psnr, test_ssim=res.ssim, **res.baseline_row(),
                       cpu_seconds=time.process_time() - cpu0, wall_seconds=time.perf_counter() - wall0)
            with tempfile.TemporaryDirectory() as tmp:
                n = int(runner.eval_n[0])
                paths = write_previews(tmp, f"{runner.eval_ids[0]}_step{done:06d}", runner.eval_x[0][:n],
                                       res.recon[0][:n])
                worker.log_artifacts(paths, f"previews/step_{done:06d}")
        worker.end_step(done, row, runner.state_dict)
    worker.finish()
    return None


# ------------------------------------------------------------------------------ driver side


def pretrain(params: Params, root: Path) -> dict[str, Any]:
    """Train the tokenizer with coordinate sampling; returns the metrics written to metrics/pretrain.json."""
    quiet_third_party()
    cfg, tok = params.pretrain, params.tokenizer
    processed = processed_store(root)
    index = pd.read_parquet(processed / INDEX_FILE)
    if not (index.split == "train").any() or not (index.split == "test").any():
        raise UserError(f"{PROCESSED_DIR}/{INDEX_FILE} needs both train and test videos")
    storage = resolve_path(root, cfg.storage_path).resolve()
    name = run_name(params)
    arch = tok.arch
    suffix = f"{tok.preset} xy={arch.latent_resolution_xy} t={arch.latent_resolution_t} ratio={cfg.sampling_ratio:g}"
    with stage_run(params, root, "pretrain", suffix, extra_tags={"ray.run_name": name}, system_metrics=True) as run:
        started = time.perf_counter()
        state = trainer.fit(params, cfg, train_loop_per_worker,
                            {"params": params.model_dump(mode="json"), "processed_dir": str(processed),
                             "mlflow_run_id": run.info.run_id, "tracking_uri": resolve_tracking_uri(params, root)},
                            name, storage)
        wall = time.perf_counter() - started
        history = pd.DataFrame(state["history"])
        last_eval = history.dropna(subset=["test_psnr"]).iloc[-1]
        summary = {
            "step": int(state["step"]), "train_loss": float(history["loss"].iloc[-1]),
            "test_psnr": float(last_eval["test_psnr"]), "test_ssim": float(last_eval["test_ssim"]),
            **baseline_fields(last_eval, arch, params.data),
            "num_tokens": arch.num_tokens, "preset": tok.preset, "precision": state.get("precision", "fp32"),
        }
        trainer.save_model_file(root / MODEL_OUT, {"config": state["config"], "model": state["model"],
                                                   "step": state["step"]})
        trainer.write_curves(root / PLOTS_DIR, state["history"], ["loss", "lr"],
                             ["test_psnr", "test_ssim", *BASELINE_COLUMNS, "cpu_seconds", "wall_seconds"])
        trainer.write_metrics(root / METRICS_OUT, summary, wall)
    print_summary("pretrain", [("preset, tokens, steps", f"{tok.preset}, {arch.num_tokens:,}, {summary['step']:,}"),
                               ("final train loss", summary["train_loss"]),
                               ("test PSNR (dB) / SSIM", f"{summary['test_psnr']:.2f} / {summary['test_ssim']:.3f}"),
                               *baseline_summary_rows(summary),
                               ("wall seconds", wall), ("model", MODEL_OUT)])
    return summary


if __name__ == "__main__":
    main_for("pretrain", pretrain)
