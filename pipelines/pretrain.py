"""Stage `pretrain`: coordinate-sampling training of the CoordTok tokenizer on Ray Train.

Each step samples clip windows and `pretrain.sampling_ratio` of their patches on the workers and
minimises the l2 loss on those patches only. The Ray Train run is named from the params that
define it, so rerunning the stage after a kill resumes from its latest intact checkpoint.
Outputs: models/tokenizer/pretrain.pt, metrics/pretrain.json, plots/pretrain/{loss,eval}.csv.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from components.config import Params, resolve_path, validate_params
from components.errors import UserError
from components.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import resolve_tracking_uri, stage_run
from pipelines.preprocess import INDEX_FILE, PROCESSED_DIR

log = logging.getLogger("pretrain")

MODEL_OUT = "models/tokenizer/pretrain.pt"
METRICS_OUT = "metrics/pretrain.json"
PLOTS_DIR = "plots/pretrain"


def run_name(params: Params) -> str:
    """Stable Ray Train run name: same defining params -> same run (resume); different -> new run."""
    defining = {k: params.model_dump(mode="json")[k] for k in ("data", "tokenizer", "pretrain")}
    for volatile in ("log_every", "storage_path", "cpus_per_worker", "keep_checkpoints", "eval_videos"):
        defining["pretrain"].pop(volatile, None)
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    return f"pretrain-{digest}"


def cpu_has_fast_bf16() -> bool:
    """bf16 matmul beats fp32 only with AVX512-BF16 or AMX; without them it runs at ~0.2x
    (measured: benchmarks/tokenizer_utilisation.py), so autocast would slow training down."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


# ------------------------------------------------------------------------------ worker side


def _latest_intact_state(run_dir: Path, reported) -> dict[str, Any] | None:
    """The newest checkpoint that passes its checksum; damaged ones are skipped with a warning."""
    from components.tokenizer.training import DamagedCheckpoint, checkpoint_step, load_state

    def warn(exc: Exception) -> None:  # print: worker stdout reaches the driver's console
        print(f"warning: skipping damaged checkpoint: {exc}", flush=True)

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


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in every Ray Train worker; rank 0 also evaluates, checkpoints and logs to MLflow."""
    import ray.train
    import ray.train.torch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from components.data.preview import write_previews
    from components.tokenizer.model import CoordTok
    from components.tokenizer.training import (
        ClipSampler, eval_clips, evaluate_reconstruction, lr_factor, save_state, to_unit,
    )

    params = validate_params(config["params"])
    data, tok, cfg = params.data, params.tokenizer, params.pretrain
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = ray.train.torch.get_device()
    amp = autocast_dtype(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    core = CoordTok(tok.arch, data.img_size, data.num_frames)
    opt = torch.optim.AdamW(core.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    history: list[dict[str, float]] = []
    start = 0
    state = _latest_intact_state(Path(config["run_dir"]), ray.train.get_checkpoint())
    if state is not None:
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["step"])
        if rank == 0:
            print(f"resuming from step {start}", flush=True)
    model = ray.train.torch.prepare_model(core)
    core_ref = model.module if hasattr(model, "module") else model

    processed = Path(config["processed_dir"])
    index = pd.read_parquet(processed / INDEX_FILE)
    arch = tok.arch
    n_total = (data.num_frames // arch.dec_patch_size_t) * (data.img_size // arch.dec_patch_size_xy) ** 2
    n_sample = max(1, round(cfg.sampling_ratio * n_total))
    sampler = ClipSampler(processed, index[index.split == "train"], data.num_frames, arch.dec_patch_size_t,
                          arch.dec_patch_size_xy, n_sample, cfg.seed)
    per_worker = cfg.batch_size // (world * cfg.grad_accum)

    client = MlflowClient(config["tracking_uri"]) if rank == 0 else None
    eval_ids, eval_x, eval_n = eval_clips(processed, index[index.split == "test"], data.num_frames, cfg.eval_videos)
    pending: list[Metric] = []

    def flush() -> None:
        if client is not None and pending:
            try:
                client.log_batch(config["mlflow_run_id"], metrics=list(pending))
            except Exception as exc:  # a tracking hiccup must not kill training
                log.warning("MLflow logging failed (%s); metrics kept in the checkpoint history", exc)
            pending.clear()

    model.train()
    t_last, samples = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            b = sampler.batch(per_worker, step, micro, rank)
            video = to_unit(torch.from_numpy(b["video"]).to(device))
            coords = torch.from_numpy(b["coords"]).to(device)
            target = to_unit(torch.from_numpy(b["targets"]).to(device))
            n_frames = torch.from_numpy(b["n_frames"]).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                pred = model(video, coords, n_frames)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
            samples += len(video)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        row: dict[str, float] = {"step": done, "loss": loss_sum, "lr": sched.get_last_lr()[0]}
        is_eval = done % cfg.eval_every == 0 or done == cfg.steps
        is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
        if rank == 0 and is_eval:
            res = evaluate_reconstruction(core_ref, eval_x, eval_n, tok.decode_group_frames, device, amp)
            row.update(test_psnr=res.psnr, test_ssim=res.ssim, baseline_psnr=res.baseline_psnr)
            with tempfile.TemporaryDirectory() as tmp:
                n = int(eval_n[0])
                paths = write_previews(tmp, f"{eval_ids[0]}_step{done:06d}", eval_x[0][:n], res.recon[0][:n])
                try:
                    for p in paths:
                        client.log_artifact(config["mlflow_run_id"], str(p), artifact_path=f"previews/step_{done:06d}")
                except Exception as exc:
                    log.warning("MLflow artifact upload failed (%s)", exc)
        if rank == 0:
            history.append(row)
            if done % cfg.log_every == 0 or is_eval or done == cfg.steps:
                now = time.perf_counter()
                row_t = {**row, "samples_per_second": samples * world / max(now - t_last, 1e-9)}
                t_last, samples = now, 0
                ts = int(time.time() * 1000)
                pending.extend(Metric(k, float(v), ts, done) for k, v in row_t.items() if k != "step")
                flush()
        metrics = {k: v for k, v in row.items()}
        if is_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    save_state(tmp, {"model": core_ref.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "step": done, "history": history,
                                     "config": core_ref.config})
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                else:
                    ray.train.report(metrics)
        elif done % cfg.log_every == 0:
            ray.train.report(metrics)
    flush()
    if rank == 0:
        return {"history": history, "num_tokens": core_ref.num_tokens,
                "num_params": sum(p.numel() for p in core_ref.parameters())}
    return None


# ------------------------------------------------------------------------------ driver side


def _write_outputs(root: Path, state: dict[str, Any], summary: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"config": state["config"], "model": state["model"], "step": state["step"]}, buf)
    atomic_write_bytes(root / MODEL_OUT, buf.getvalue())
    history = pd.DataFrame(state["history"])
    loss = history[["step", "loss", "lr"]]
    atomic_write_text(root / PLOTS_DIR / "loss.csv", loss.to_csv(index=False))
    evals = history.dropna(subset=["test_psnr"]) if "test_psnr" in history else history.iloc[0:0]
    cols = ["step", "test_psnr", "test_ssim", "baseline_psnr"]
    atomic_write_text(root / PLOTS_DIR / "eval.csv", evals.reindex(columns=cols).to_csv(index=False))
    atomic_write_json(root / METRICS_OUT, summary)


def pretrain(params: Params, root: Path) -> dict[str, Any]:
    """Train the tokenizer with coordinate sampling; returns the metrics written to metrics/pretrain.json."""
    quiet_third_party()
    import ray.train
    from ray.train.torch import TorchTrainer

    from components.tokenizer.training import load_state
    from pipelines.common.cluster import ray_cluster

    cfg, tok = params.pretrain, params.tokenizer
    processed = resolve_path(root, PROCESSED_DIR)
    if not (processed / INDEX_FILE).is_file():
        raise UserError(f"{PROCESSED_DIR}/{INDEX_FILE} is missing; run the preprocess stage first (dvc repro preprocess)")
    index = pd.read_parquet(processed / INDEX_FILE)
    if not (index.split == "train").any() or not (index.split == "test").any():
        raise UserError(f"{PROCESSED_DIR}/{INDEX_FILE} needs both train and test videos")
    storage = resolve_path(root, cfg.storage_path).resolve()
    name = run_name(params)
    arch = tok.arch
    suffix = f"{tok.preset} xy={arch.latent_resolution_xy} t={arch.latent_resolution_t} ratio={cfg.sampling_ratio:g}"
    with stage_run(params, root, "pretrain", suffix, extra_tags={"ray.run_name": name}, system_metrics=True) as run:
        import mlflow

        started = time.perf_counter()
        with ray_cluster(params.ray) as resources:
            use_gpu = resources.get("GPU", 0) > 0
            per_worker: dict[str, float] = {"CPU": cfg.cpus_per_worker}
            if use_gpu:
                per_worker["GPU"] = cfg.gpus_per_worker or 1.0
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"params": params.model_dump(mode="json"), "processed_dir": str(processed),
                                   "run_dir": str(storage / name), "mlflow_run_id": run.info.run_id,
                                   "tracking_uri": resolve_tracking_uri(params, root)},
                scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                                       resources_per_worker=per_worker),
                run_config=ray.train.RunConfig(
                    name=name, storage_path=str(storage),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                    failure_config=ray.train.FailureConfig(max_failures=2)),
            )
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        with result.checkpoint.as_directory() as d:
            state = load_state(d)
        wall = time.perf_counter() - started
        history = pd.DataFrame(state["history"])
        last_eval = history.dropna(subset=["test_psnr"]).iloc[-1]
        summary = {
            "step": int(state["step"]), "train_loss": float(history["loss"].iloc[-1]),
            "test_psnr": float(last_eval["test_psnr"]), "test_ssim": float(last_eval["test_ssim"]),
            "baseline_temporal_mean_psnr": float(last_eval["baseline_psnr"]),
            "psnr_gain_over_baseline": float(last_eval["test_psnr"] - last_eval["baseline_psnr"]),
            "num_tokens": arch.num_tokens, "preset": tok.preset,
        }
        _write_outputs(root, state, summary)
        mlflow.log_metrics({"final_" + k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_metric("wall_seconds", wall)
        mlflow.log_artifact(str(root / METRICS_OUT))
    print_summary("pretrain", [("preset", tok.preset), ("tokens", arch.num_tokens), ("steps", summary["step"]),
                               ("final train loss", summary["train_loss"]), ("test PSNR (dB)", summary["test_psnr"]),
                               ("test SSIM", summary["test_ssim"]),
                               ("temporal-mean baseline PSNR", summary["baseline_temporal_mean_psnr"]),
                               ("wall seconds", wall), ("model", MODEL_OUT)])
    return summary


if __name__ == "__main__":
    main_for("pretrain", pretrain)
