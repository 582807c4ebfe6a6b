"""Stage `finetune`: the paper's phase 2 — frame sampling with l2 + LPIPS, on Ray Train.

Starts from `finetune.init_from` (default models/tokenizer/pretrain.pt). Each step decodes every
patch of `finetune.frames_per_video` whole frames per video (as attention groups aligned like
evaluation's) and minimises l2 + `finetune.lpips_weight` x LPIPS on them; the LPIPS network is
frozen, in eval mode and run in fp32, and backpropagated `finetune.lpips_chunk` frames at a time. Evaluation adds LPIPS (`finetune.eval_lpips_backbone`).
Checkpoints, resume, outputs and MLflow follow pretrain (pipelines/common/trainer.py).
Outputs: models/tokenizer/finetune.pt, metrics/finetune.json, plots/finetune/{loss,eval}.csv.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from components.config import Params, resolve_path, validate_params
from components.errors import UserError
from pipelines.common import trainer
from pipelines.common.trainer import BASELINE_COLUMNS, baseline_fields, baseline_summary_rows
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import resolve_tracking_uri, stage_run
from pipelines.preprocess import INDEX_FILE, processed_store

log = logging.getLogger("finetune")

MODEL_OUT = "models/tokenizer/finetune.pt"
METRICS_OUT = "metrics/finetune.json"
PLOTS_DIR = "plots/finetune"


def load_tokenizer_file(path: Path):
    """A tokenizer from a model file of this project's schema (trained here or imported)."""
    from components.tokenizer.released import load_tokenizer

    model = load_tokenizer(path)
    return model, {"config": model.config}


def _check_init_matches(params: Params, config: dict[str, Any], path: Path) -> None:
    """The starting checkpoint must be the tokenizer the params describe (same geometry)."""
    from components.tokenizer.model import CoordTok

    expected = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames).config
    config = {k: v for k, v in config.items() if k != "variant"}  # an imported release is the same geometry
    if config != expected:
        diff = sorted(k for k in set(config) | set(expected) if config.get(k) != expected.get(k))
        raise UserError(f"{path} was trained with a different tokenizer/data geometry ({', '.join(map(str, diff))} "
                        "differ from params.yaml); fix tokenizer/data params or finetune.init_from")


# ------------------------------------------------------------------------------ worker side


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker; rank 0 also evaluates, checkpoints and logs to MLflow."""
    import ray.train.torch

    from components.data.preview import write_previews
    from components.metrics.lpips import LPIPS
    from components.tokenizer.finetuning import FinetuneRunner
    from components.tokenizer.training import eval_clips, evaluate_reconstruction

    params = validate_params(config["params"])
    data, tok, cfg = params.data, params.tokenizer, params.finetune
    decoded = cfg.frames_per_video * (data.img_size // tok.arch.dec_patch_size_xy) ** 2
    worker = trainer.TrainWorker(config, cfg, max(tok.arch.video_tokens(data.img_size, data.num_frames), decoded),
                                 tok.arch.width)
    device = worker.device

    core, _ = load_tokenizer_file(Path(config["init_from"]))
    core.to(device)
    weights_dir = config["weights_dir"]
    loss_lpips = LPIPS(cfg.lpips_backbone, weights_dir, allow_download=False, chunk=cfg.lpips_chunk).to(device)
    eval_lpips = LPIPS(cfg.eval_lpips_backbone, weights_dir, allow_download=False, chunk=cfg.lpips_chunk).to(device)
    processed = Path(config["processed_dir"])
    index = pd.read_parquet(processed / INDEX_FILE)
    # The step (sample plan split by rank, loss arithmetic, DDP) lives in the runner: tests/ddp_worker.py
    # trains the same runner in a plain gloo group to show 2 workers train the 1-worker model.
    runner = FinetuneRunner(params, processed, index, core, loss_lpips, device, worker.amp, worker.rank, worker.world)
    start = worker.restore(runner.load_state_dict)
    runner.model = ray.train.torch.prepare_model(runner.model)
    eval_ids, eval_x, eval_n = eval_clips(processed, index[index.split == "test"], data.num_frames, cfg.eval_videos)

    runner.model.train()
    for step in range(start, cfg.steps):
        sums, seen = runner.train_step(step)
        worker.count(seen)
        done = step + 1
        row: dict[str, float] = {**sums, "lr": runner.lr}
        if worker.is_main and worker.is_eval_step(done):
            res = evaluate_reconstruction(core, eval_x, eval_n, tok.group_frames, device, worker.amp,
                                          perceptual=eval_lpips)
            row.update(test_psnr=res.psnr, test_ssim=res.ssim, test_lpips=res.lpips, **res.baseline_row())
            with tempfile.TemporaryDirectory() as tmp:
                n = int(eval_n[0])
                paths = write_previews(tmp, f"{eval_ids[0]}_step{done:06d}", eval_x[0][:n], res.recon[0][:n])
                worker.log_artifacts(paths, f"previews/step_{done:06d}")
        worker.end_step(done, row, runner.state_dict)
    worker.finish()


# ------------------------------------------------------------------------------ driver side


def _register(params: Params, root: Path, run_id: str, config: dict[str, Any]) -> None:
    """Register the fine-tuned tokenizer as `coordtok-tokenizer` with an input example (when small)."""
    import numpy as np

    from pipelines.common.tracking import TOKENIZER_MODEL, register_model

    t, s = params.data.num_frames, params.data.img_size
    example = None
    if t * s * s * 3 <= 1 << 20:  # the JSON example of a paper-size video would be ~60 MB
        rng = np.random.default_rng(0)
        example = {"video": rng.uniform(-1, 1, (1, t, s, s, 3)).astype(np.float32),
                   "coords": rng.uniform(0, 1, (1, 4, 3)).astype(np.float32)}
    register_model(run_id, root / MODEL_OUT, TOKENIZER_MODEL, "components.tokenizer.released:tokenizer_from_config",
                   config=config, input_example=example, tags={"checkpoint": MODEL_OUT})


def finetune(params: Params, root: Path) -> dict[str, Any]:
    """Fine-tune the tokenizer with frame sampling + LPIPS; returns the metrics written to metrics/finetune.json."""
    quiet_third_party()
    from components.metrics.lpips import BACKBONES
    from components.weights import resolve, weights_dir

    cfg, tok = params.finetune, params.tokenizer
    processed = processed_store(root)
    init = resolve_path(root, cfg.init_from)
    if not init.is_file():
        raise UserError(f"finetune.init_from = {cfg.init_from!r} does not exist; run the pretrain stage first "
                        "(dvc repro pretrain) or point it at a converted checkpoint")
    _, payload = load_tokenizer_file(init)
    _check_init_matches(params, payload["config"], init)
    # Resolve every pretrained asset before any compute: a missing file is one clear error here.
    wdir = weights_dir(params.weights.dir)
    resolved = [resolve(name, wdir, params.weights.allow_download)
                for net in {cfg.lpips_backbone, cfg.eval_lpips_backbone} for name in BACKBONES[net]]
    standin = any(r.standin for r in resolved)
    if standin:
        log.warning("finetune uses STAND-IN LPIPS weights (random values, in %s): its LPIPS numbers are not meaningful",
                    next(r.path.parent for r in resolved if r.standin))
    storage = resolve_path(root, cfg.storage_path).resolve()
    name = trainer.run_name("finetune", params, ("data", "tokenizer", "finetune"),
                            {"init_sha256": trainer.file_digest(init), "standin": standin})
    suffix = f"{tok.preset} lpips={cfg.lpips_backbone}x{cfg.lpips_weight:g} frames={cfg.frames_per_video}"
    tags = {"ray.run_name": name, "weights.standin": str(standin).lower()}
    with stage_run(params, root, "finetune", suffix, extra_tags=tags, system_metrics=True) as run:
        started = time.perf_counter()
        state = trainer.fit(params, cfg, train_loop_per_worker,
                            {"params": params.model_dump(mode="json"), "processed_dir": str(processed),
                             "init_from": str(init), "weights_dir": str(wdir) if wdir else None,
                             "mlflow_run_id": run.info.run_id, "tracking_uri": resolve_tracking_uri(params, root)},
                            name, storage)
        wall = time.perf_counter() - started
        history = pd.DataFrame(state["history"])
        last_eval = history.dropna(subset=["test_psnr"]).iloc[-1]
        pretrain_metrics = root / "metrics" / "pretrain.json"
        summary = {
            "step": int(state["step"]), "train_loss_first": float(history["loss"].iloc[0]),
            "train_loss": float(history["loss"].iloc[-1]), "train_l2": float(history["l2"].iloc[-1]),
            "train_lpips": float(history["lpips"].iloc[-1]),
            "test_psnr": float(last_eval["test_psnr"]), "test_ssim": float(last_eval["test_ssim"]),
            "test_lpips": float(last_eval["test_lpips"]), "lpips_backbone": cfg.eval_lpips_backbone,
            **baseline_fields(last_eval, tok.arch, params.data),
            "num_tokens": tok.arch.num_tokens, "preset": tok.preset, "standin_weights": standin,
            "precision": state.get("precision", "fp32"),
        }
        if pretrain_metrics.is_file():
            import json

            summary["pretrain_test_psnr"] = float(json.loads(pretrain_metrics.read_text())["test_psnr"])
            summary["psnr_change_vs_pretrain"] = summary["test_psnr"] - summary["pretrain_test_psnr"]
        trainer.save_model_file(root / MODEL_OUT, {"config": state["config"], "model": state["model"],
                                                   "step": state["step"], "standin_weights": standin})
        trainer.write_curves(root / PLOTS_DIR, state["history"], ["loss", "l2", "lpips", "lr"],
                             ["test_psnr", "test_ssim", "test_lpips", *BASELINE_COLUMNS])
        trainer.write_metrics(root / METRICS_OUT, summary, wall)
        if params.mlflow.register_models:
            _register(params, root, run.info.run_id, state["config"])
    print_summary("finetune", [("preset, steps, wall seconds", f"{tok.preset}, {summary['step']:,}, {wall:,.2f}"),
                               ("train loss first -> last", f"{summary['train_loss_first']:.4f} -> {summary['train_loss']:.4f}"),
                               (f"test PSNR (dB) / SSIM / LPIPS ({cfg.eval_lpips_backbone})",
                                f"{summary['test_psnr']:.2f} / {summary['test_ssim']:.3f} / {summary['test_lpips']:.3f}"),
                               *baseline_summary_rows(summary),
                               ("stand-in weights", standin), ("model", MODEL_OUT)])
    return summary


if __name__ == "__main__":
    main_for("finetune", finetune)
