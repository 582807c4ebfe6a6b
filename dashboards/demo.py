"""A small but real tracking store for tests and the README screenshot.

`write_demo_store(folder)` logs MLflow runs through the same client calls the stages use (tags of
pipelines.common.tracking, per-step metric histories, preview mp4/gif/png artifacts written by
components.data.preview) and an Optuna study with two objectives, and returns their URIs.
The numbers come from closed forms with noise, not from training: they exercise the dashboard.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENT = "coordtok"


def _video(seed: int, t: int = 8, size: int = 32) -> np.ndarray:
    """A moving gradient, uint8 [T, H, W, 3]."""
    yy, xx = np.mgrid[0:size, 0:size]
    frames = [np.stack([(xx * 8 + k * 12 + seed * 40) % 256, (yy * 8) % 256, np.full_like(xx, 128 + seed * 20)], -1)
              for k in range(t)]
    return np.asarray(frames, np.uint8)


def write_demo_store(folder: str | os.PathLike, with_sweep: bool = True, with_media: bool = True) -> dict[str, Any]:
    """Create <folder>/mlruns.db (+ artifacts) and <folder>/sweep.db; returns their URIs and run ids."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(folder / "mlartifacts").as_uri())
    rng = np.random.default_rng(0)
    ids: dict[str, str] = {}

    def run(stage: str, suffix: str, metrics: dict[str, float], params: dict[str, str], histories=None,
            standin: bool | None = None, parent: str | None = None) -> str:
        tags = {"stage": stage, "params.hash": f"{abs(hash((stage, suffix))) % 16**12:012x}",
                "dvc.exp_name": "demo-exp", "git.commit": "0" * 40, "git.dirty": "false",
                "mlflow.runName": f"{stage} {suffix}".strip()}
        if standin is not None:
            tags["weights.standin"] = str(standin).lower()
        if parent:
            tags["mlflow.parentRunId"] = parent
        r = client.create_run(exp_id, run_name=tags["mlflow.runName"], tags=tags)
        ms = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
        for key, points in (histories or {}).items():
            ms += [Metric(key, float(v), 1000 * s, s) for s, v in points]
        client.log_batch(r.info.run_id, metrics=ms, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items() if k == "mlflow.runName"])
        client.set_terminated(r.info.run_id)
        return r.info.run_id

    run("synthesize", "classes=6 clips=72", {"clips": 72, "frames": 6900}, {"synthesize.num_classes": "6"})
    run("preprocess", "videos=72", {"videos": 72, "skipped": 0}, {})
    for xy, t in ((4, 8), (8, 8), (8, 16)):
        tokens = xy * xy + 2 * xy * t
        steps = list(range(10, 210, 10))
        loss = [(s, 0.02 + 0.2 * math.exp(-s / (40 + tokens / 8)) + 0.002 * rng.standard_normal()) for s in steps]
        psnr_final = 18 + 3.2 * math.log2(tokens / 48)
        psnr = [(s, psnr_final - 6 * math.exp(-s / 60)) for s in (50, 100, 150, 200)]
        # naive baselines of the same test clips, logged at every evaluation (flat)
        baselines = {"baseline_mean_colour_psnr": 14.3, "baseline_same_numbers_psnr": 17 + tokens / 64,
                     "baseline_temporal_mean_psnr": 23.5}
        rid = run("pretrain", f"CoordTok-tiny xy={xy} t={t} ratio=0.125",
                  {"final_test_psnr": psnr_final, "final_num_tokens": tokens, "final_train_loss": loss[-1][1],
                   "final_triplane_values": 8 * tokens, "final_baseline_temporal_mean_values": 12288},
                  {"tokenizer.preset": "CoordTok-tiny", "tokenizer.latent_resolution_xy": str(xy),
                   "tokenizer.latent_resolution_t": str(t), "pretrain.sampling_ratio": "0.125"},
                  histories={"loss": loss, "test_psnr": psnr,
                             **{k: [(st, v) for st, _ in psnr] for k, v in baselines.items()}})
        ids[f"pretrain_{tokens}"] = rid
    ft = run("finetune", "CoordTok-tiny lpips=1.0", {"final_test_psnr": 24.5, "final_test_lpips": 0.21, "num_tokens": 192},
             {"tokenizer.preset": "CoordTok-tiny"}, histories={"loss": [(s, 0.05 / (1 + s / 50)) for s in range(5, 105, 5)]},
             standin=True)
    ids["finetune"] = ft
    # key names as pipelines/evaluate.py logs them (its metrics.json, flattened)
    run("evaluate", "CoordTok-tiny", {"reconstruction.psnr": 24.1, "reconstruction.lpips": 0.23,
                                      "reconstruction.rfvd": 410.0, "tokenizer.tokens": 192,
                                      "generation.fvd_full": 1650.0, "generation.single_video_seconds": 0.8,
                                      "generation.single_video_peak_memory_mb": 307.2},
        {"tokenizer.preset": "CoordTok-tiny"}, standin=True)
    run("train_sit", "SiT-tiny/2", {"final_loss": 0.4}, {},
        histories={"loss": [(s, 1.0 / (1 + s / 100) + 0.01 * rng.standard_normal()) for s in range(10, 310, 10)]})
    if with_media:
        from components.data.preview import write_previews

        with tempfile.TemporaryDirectory() as tmp:
            for step in (100, 200):
                real, recon = _video(0), _video(1)
                for p in write_previews(tmp, f"v_demo_step{step:06d}", real, recon):
                    client.log_artifact(ids["pretrain_192"], str(p), artifact_path=f"previews/step_{step:06d}")
    sweep_uri = None
    if with_sweep:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sweep_uri = f"sqlite:///{folder / 'sweep.db'}"
        parent = run("sweep", "trials=8", {}, {"sweep.n_trials": "8"})
        study = optuna.create_study(study_name="coordtok-sweep", storage=sweep_uri,
                                    directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
        with warnings.catch_warnings():  # a deliberate use of an experimental Optuna API (as the sweep stage)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["test_psnr", "seconds_per_step"])
        for _ in range(8):
            trial = study.ask()
            ratio = trial.suggest_float("sampling_ratio", 0.03, 0.5, log=True)
            lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
            psnr = 20 + 3 * math.log10(ratio / 0.03) - 2 * abs(math.log10(lr / 1e-3))
            cost = 0.05 + 0.6 * ratio
            study.tell(trial, [psnr, cost])
            run("sweep", f"trial {trial.number} ratio={ratio:.3f}", {"test_psnr": psnr, "seconds_per_step": cost},
                {"pretrain.sampling_ratio": f"{ratio:.4f}", "pretrain.lr": f"{lr:.5f}"}, parent=parent)
    return {"tracking_uri": uri, "sweep_storage": sweep_uri, "experiment": EXPERIMENT, "run_ids": ids}
