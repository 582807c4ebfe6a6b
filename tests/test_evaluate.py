"""Evaluate stage: metric aggregation against the training-time reference, clip plans, memory measurement,
report pieces, FVD behaviour through a detector, missing weights, and the stage end to end on stand-ins."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from components.config import load_params
from components.metrics.video_eval import (
    aggregate_recon,
    contact_sheet,
    mask_padding,
    measure_peak,
    paper_table_markdown,
    per_class_table,
    per_video_recon_metrics,
    pick_evenly,
    real_clip_plan,
    scatter_png,
    tile_videos,
)
from components.tokenizer.model import CoordTok
from components.tokenizer.presets import TOKENIZER_PRESETS
from components.tokenizer.training import baseline_grid, reconstruct_clips


def _perceptual(x, y):  # a deterministic metric of the LPIPS interface: [N,3,H,W] pairs -> [N]
    return (x - y).abs().mean(dim=(1, 2, 3))


def test_recon_aggregation_matches_evaluate_reconstruction_on_padded_clips():
    from components.tokenizer.training import evaluate_reconstruction

    torch.manual_seed(0)
    model = CoordTok(TOKENIZER_PRESETS["CoordTok-tiny"].replace(latent_resolution_t=4), 16, 8).eval()
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(3, 8, 16, 16, 3), dtype=np.uint8)
    valid = np.array([8, 5, 3])
    for i, n in enumerate(valid):
        clips[i, n:] = 0  # padding as eval_clips leaves it
    ref = evaluate_reconstruction(model, clips, valid, 1, torch.device("cpu"), batch_size=2, perceptual=_perceptual)
    recon = reconstruct_clips(model, clips, valid, 1, torch.device("cpu"), batch_size=2)
    np.testing.assert_array_equal(recon, ref.recon)
    # Two shards merge to the numbers of the whole set.
    grid = baseline_grid(model.arch, clips.shape[1:4])
    assert grid == (4, 8, 8)  # 8 channels x (8x8 + 2 x 8x4) = 1,024 values; T' : H' : W' = 4 : 8 : 8
    parts = [per_video_recon_metrics(clips[:1], recon[:1], valid[:1], _perceptual, baseline_grid=grid),
             per_video_recon_metrics(clips[1:], recon[1:], valid[1:], _perceptual, baseline_grid=grid)]
    agg = aggregate_recon(parts)
    assert agg["videos"] == 3 and agg["frames"] == 16
    assert agg["psnr"] == pytest.approx(ref.psnr, abs=1e-5)
    assert agg["ssim"] == pytest.approx(ref.ssim, abs=1e-5)
    assert agg["lpips"] == pytest.approx(ref.lpips, abs=1e-6)  # mean over real frames, not over videos
    # The evaluate stage's baselines are the training stages' ones on the same clips.
    for name in ("mean_colour", "same_numbers", "temporal_mean"):
        key = f"baseline_{name}_psnr"
        assert agg[key] == pytest.approx(ref.baselines[key], abs=1e-5)
    assert ref.baselines["baseline_same_numbers_values"] == 3 * 4 * 8 * 8 <= 1024
    table = per_class_table(["B", "A", "B"], {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == {"A", "B", "all (mean over videos)"} and "same numbers PSNR (dB)" in table
    assert f"| A | 1 | {parts[1]['psnr'][0]:.2f} |" in rows["A"]
    masked = mask_padding(recon, clips, valid)
    assert (masked[1, 5:] == 0).all() and np.array_equal(masked[1, :5], recon[1, :5])


def test_pick_evenly_and_real_clip_plan():
    assert pick_evenly(10, 3).tolist() == [0, 4, 9] and pick_evenly(3, 10).tolist() == [0, 1, 2]
    lengths = [20, 5, 16, 30]
    plan = real_clip_plan(lengths, 3, 16, seed=1)
    assert plan == real_clip_plan(lengths, 3, 16, seed=1)  # deterministic
    assert len({i for i, _ in plan}) == 3 and all(i != 1 for i, _ in plan)  # no replacement; too short skipped
    assert all(0 <= s <= lengths[i] - 16 for i, s in plan)
    many = real_clip_plan(lengths, 50, 16, seed=2)  # more clips than videos: drawn with replacement
    assert len(many) == 50 and {i for i, _ in many} == {0, 2, 3}
    assert len({s for i, s in many if i == 3}) > 1  # random windows differ
    assert real_clip_plan(lengths, 4, 40, seed=0) == []


def test_measure_peak_on_cpu_sees_a_temporary_allocation():
    with measure_peak("cpu") as cost:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert cost.kind in ("cpu_peak_rss_delta", "cpu_maxrss_growth") and cost.seconds >= 0
    if cost.kind == "cpu_peak_rss_delta":
        assert 60 <= cost.peak_mb <= 200 and cost.notes["peak_rss_mb"] >= cost.peak_mb
    with measure_peak("cpu") as small:
        _ = np.ones(16)
    if small.kind == "cpu_peak_rss_delta":
        assert small.peak_mb < 20


def test_report_pieces_place_frames_and_write_a_png():
    v = np.zeros((5, 4, 8, 8, 3), np.uint8)
    for i in range(5):
        v[i] = 10 * (i + 1)
    grid = tile_videos(v, cols=3, gap=2)
    assert grid.shape == (4, 2 * 8 + 2, 3 * 8 + 4, 3)
    assert (grid[:, 10:18, 10:18] == 50).all() and (grid[:, 10:18, 20:28] == 255).all()  # 5th tile; empty 6th
    sheet = contact_sheet(v[:2], v[2:3], v[3:4], frames=3, gap=2, band=6)
    assert sheet.shape == (4 * 8 + 3 * 2 + 6, 3 * 8 + 4, 3)
    assert (sheet[:8, :8] == 10).all() and (sheet[10:18, :8] == 20).all() and (sheet[20:24] == 160).all()
    assert (sheet[26:34, :8] == 30).all() and (sheet[36:44, :8] == 40).all()  # real, then its reconstruction
    png = scatter_png([0.1, 0.2, 0.3], [30, 28, 25], "t", "x", "y", size=(320, 240))
    assert Image.open(io.BytesIO(png)).size == (320, 240)


def test_paper_table_lists_paper_rows_and_this_run():
    m = {"standin_weights": True, "detector": "styleganv", "data": {"num_frames": 16, "img_size": 32},
         "tokenizer": {"preset": "CoordTok-tiny", "tokens": 192},
         "reconstruction": {"videos": 3, "psnr": 21.234, "ssim": 0.5, "lpips": 0.3, "rfvd": 12.0},
         "generation": {"videos": 4, "real_videos": 4, "sampler": "sde", "steps": 2, "clip_frames": 9, "full_frames": 16,
                        "fvd_clip": 100.0, "fvd_full": None, "single_video_seconds": 0.5,
                        "single_video_peak_memory_mb": 2048.0, "memory_kind": "cpu_peak_rss_delta"},
         "dynamics": {"pearson_r": 0.5, "videos": 3}}
    text = paper_table_markdown(m)
    assert "| CoordTok (paper) | 1280 | 128 | 28.6 | – | 0.066 | 102.9 |" in text
    assert "| PVDM-AE | 6144 | 16 | 26.5 | – | 0.120 | 66.5 |" in text
    assert "| **this run** | 192 | 16 | 21.2 | 0.500 | 0.300 | 12.0 |" in text
    assert "stand-in weights" in text and "FVD-9" in text and "| **this run** | – | 100.0 | 0.50 | 2.00 GB (cpu_peak_rss_delta) |" in text
    m["weights"] = {"fvd": {"detector": "kinetics400", "assets": "i3d_kinetics400 (real)", "real": True},
                    "lpips": {"backbone": "alex", "assets": "alexnet (STAND-IN), lpips_alex (real)", "real": False}}
    m["yardstick"] = {"frames": 16, "reference": "4 real training clips", "fvd_real_test_vs_train": 50.0,
                      "fvd_recon_vs_train": 80.25, "fvd_samples_vs_train": None, "fvd_noise_vs_train": 900.0,
                      "sizes": {"real_test": 3, "recon": 3, "samples": 4, "noise": 4, "train": 4},
                      "detector": "kinetics400", "detector_real": True}
    text = paper_table_markdown(m)
    assert "FVD from i3d_kinetics400 (real); LPIPS from alexnet (STAND-IN), lpips_alex (real)" in text
    assert "| real test clips (floor) | 3 | 50.0 |" in text and "| uniform noise (ceiling) | 4 | 900.0 |" in text
    assert "| tokenizer reconstructions of them | 3 | 80.2 |" in text and "| SiT samples | 4 | – |" in text


def test_fvd_through_a_detector_is_zero_for_a_set_and_grows_with_a_shift(tmp_path):
    from components.metrics.i3d import load_detector
    from components.weights import write_standins
    from pipelines.evaluate import fvd_of

    write_standins(tmp_path, ["i3d_torchscript"])
    det = load_detector("styleganv", "cpu", 8, tmp_path, allow_download=False)
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 200, size=(12, 2, 32, 32, 3), dtype=np.uint8)
    base = det.features(videos).numpy()
    assert fvd_of([base[:5], base[5:]], [base]) == pytest.approx(0.0, abs=1e-6)  # batching does not matter
    dists = [fvd_of([base], [det.features((videos.astype(np.int64) + s).clip(0, 255).astype(np.uint8)).numpy()])
             for s in (10, 30, 55)]
    assert 0 < dists[0] < dists[1] < dists[2]


# ------------------------------------------------------------------------------ stage


@pytest.fixture(scope="module")
def processed(tmp_path_factory, ray_local) -> Path:
    """16 frames: the FVD detector needs clips of at least 9."""
    from conftest import build_processed

    return build_processed(tmp_path_factory.mktemp("ev"), num_frames=16)


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    from components.weights import write_standins

    folder = tmp_path_factory.mktemp("weights")
    write_standins(folder, ["alexnet", "lpips_alex", "i3d_torchscript", "i3d_kinetics400"])
    return folder


def _eval_root(root: Path, processed: Path, weights: Path, **evaluate) -> Path:
    """A stage root: shared processed data, a tiny tokenizer at finetune.pt, a SiT-tiny/2 at sit.pt."""
    from components.generator.checkpoint import save_sit_payload
    from components.generator.latent_stats import PLANES, LatentStats
    from components.generator.presets import sit_preset
    from components.generator.sit import SiT
    from pipelines.common.trainer import save_model_file

    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["evaluate"] = {**raw.get("evaluate", {}), "recon_videos": 3, "num_videos": 4, "real_videos": 4,
                       "fvd_clip_frames": 9, "sampling_steps": 2, "batch_size": 2, "feature_batch_size": 2,
                       "num_actors": 2, "cpus_per_actor": 0.5, "grid_videos": 4, **evaluate}
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    raw["weights"] = {"dir": str(weights), "allow_download": False}
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to(processed / "data")
    pfile = root / "params.yaml"
    pfile.write_text(yaml.safe_dump(raw))
    params = load_params(pfile)
    torch.manual_seed(0)
    arch = params.tokenizer.arch
    tok = CoordTok(arch, params.data.img_size, params.data.num_frames)
    save_model_file(root / "models/tokenizer/finetune.pt", {"config": tok.config, "model": tok.state_dict(), "step": 0})
    sit = SiT(sit_preset("SiT-tiny/2"), arch.latent_n_features, arch.latent_resolution_xy, arch.latent_resolution_t)
    for p in sit.parameters():  # adaLN-Zero init outputs zeros; random weights give non-trivial samples
        torch.nn.init.normal_(p, std=0.02)
    c = arch.latent_n_features
    stats = LatentStats.from_mean_std({k: [0.1] * c for k in PLANES}, {k: [0.5] * c for k in PLANES})
    (root / "models/sit").mkdir(parents=True)
    save_sit_payload(root / "models/sit/sit.pt", sit, None, stats, step=3)
    return pfile


def test_missing_weights_fail_with_one_clear_error_before_compute(tmp_path, processed, monkeypatch):
    from components.weights import MissingWeights
    from pipelines.evaluate import evaluate

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("COORDTOK_WEIGHTS_DIR", raising=False)
    (tmp_path / "w").mkdir()
    pfile = _eval_root(tmp_path / "run", processed, tmp_path / "w")
    with pytest.raises(MissingWeights, match="i3d_kinetics400.*downloads are off"):
        evaluate(load_params(pfile), pfile.parent)
    assert not (pfile.parent / "metrics").exists() and not (pfile.parent / "mlruns.db").exists()


def test_stage_refuses_clip_longer_than_the_data_and_a_sit_without_stats(tmp_path, processed, standins):
    from components.errors import UserError
    from pipelines.evaluate import evaluate

    pfile = _eval_root(tmp_path / "run", processed, standins, fvd_clip_frames=32)
    with pytest.raises(UserError, match="exceeds data.num_frames"):
        evaluate(load_params(pfile), pfile.parent)
    ckpt = torch.load(pfile.parent / "models/sit/sit.pt", weights_only=True)
    ckpt.pop("latent_stats")
    torch.save(ckpt, pfile.parent / "models/sit/sit.pt")
    params = load_params(pfile).model_copy(update={"evaluate": load_params(pfile).evaluate.model_copy(
        update={"fvd_clip_frames": 9})})
    with pytest.raises(UserError, match="latent_stats"):
        evaluate(params, pfile.parent)


@pytest.mark.slow
def test_evaluate_stage_end_to_end_on_standins(tmp_path, processed, standins, ray_local, caplog):
    import mlflow

    from pipelines.evaluate import EvalWorker, evaluate

    pfile = _eval_root(tmp_path / "run", processed, standins)
    root = pfile.parent
    m = evaluate(load_params(pfile), root)
    assert "STAND-IN" in caplog.text and m["standin_weights"] is True
    assert m["standin"] == {"detector": True, "lpips": True}
    assert json.loads((root / "metrics/evaluate.json").read_text()) == m
    rec, gen, dyn = m["reconstruction"], m["generation"], m["dynamics"]
    assert rec["videos"] == 3 and rec["rfvd_detector"] == "kinetics400" and rec["lpips_backbone"] == "alex"
    assert rec["rfvd_detector_real"] is False and rec["lpips_real"] is False and gen["detector_real"] is False
    assert m["weights"]["fvd"] == {"detector": "kinetics400", "assets": "i3d_kinetics400 (STAND-IN)", "real": False}
    assert m["weights"]["lpips"]["assets"] == "alexnet (STAND-IN), lpips_alex (real)"  # the package's own file wins
    assert 0 < rec["psnr"] < 60 and -1 <= rec["ssim"] <= 1 and rec["lpips"] > 0 and rec["rfvd"] >= 0
    # the naive baselines of the same clips, and what each keeps next to the triplane
    assert rec["baseline_mean_colour_psnr"] < rec["baseline_same_numbers_psnr"] < 60
    assert rec["baseline_same_numbers_values"] <= rec["triplane_values"] < rec["baseline_temporal_mean_values"]
    assert gen["detector"] == "kinetics400" and gen["clip_frames"] == 9 and gen["full_frames"] == 16
    y = m["yardstick"]
    assert y["frames"] == 16 and y["sizes"] == {"real_test": 3, "recon": 3, "samples": 4, "noise": 4, "train": 4}
    assert y["fvd_samples_vs_train"] == gen["fvd_full"] and 0 < y["fvd_real_test_vs_train"] < y["fvd_noise_vs_train"]
    assert gen["fvd_clip"] > 0 and gen["fvd_full"] > 0
    assert gen["single_video_seconds"] > 0 and gen["memory_kind"].startswith("cpu") and gen["device"] == "cpu"
    table = pd.read_csv(root / "plots/evaluate/dynamics.csv")
    assert list(table.columns) == ["video_id", "dynamics", "psnr"] and len(table) == 3
    assert table["psnr"].mean() == pytest.approx(rec["psnr"], abs=1e-9)
    assert dyn["pearson_r"] == pytest.approx(np.corrcoef(table["dynamics"], table["psnr"])[0, 1], abs=1e-9)
    assert m["throughput"]["actors"] == 2 and m["throughput"]["sampling_videos_per_s"] > 0
    reports = root / "reports/evaluate"
    for name in ("samples.mp4", "samples.gif", "contact_sheet.png", "dynamics_scatter.png", "paper_table.md"):
        assert (reports / name).stat().st_size > 0, name
    sheet = np.asarray(Image.open(reports / "contact_sheet.png"))
    assert sheet.shape[0] == (4 + 2 * 3) * 32 + 9 * 2 + 6  # 4 generated rows + 3 real/recon pairs
    assert "**this run**" in (reports / "paper_table.md").read_text()
    by_class = (reports / "reconstruction_by_class.md").read_text()
    assert "same numbers PSNR (dB)" in by_class and "| all (mean over videos) | 3 |" in by_class
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    run = mlflow.search_runs(experiment_names=["coordtok"]).iloc[0]
    assert run["tags.stage"] == "evaluate" and run["tags.weights.standin"] == "true"
    assert run["tags.evaluate.detector"] == "kinetics400" and run["tags.evaluate.detector.real"] == "false"
    assert "FVD yardstick" in (reports / "paper_table.md").read_text()
    assert run["metrics.generation.fvd_full"] == pytest.approx(gen["fvd_full"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "reports/evaluate")}
    assert "reports/evaluate/dynamics_scatter.png" in artifacts

    # Video i depends only on (seed, i): the same video from a batch of two and alone.
    params = load_params(pfile)
    spec = {"tokenizer_path": str(root / "models/tokenizer/finetune.pt"), "sit_path": str(root / "models/sit/sit.pt"),
            "use_ema": True, "processed_dir": str(root / "data/processed"), "num_frames": 16, "group_frames": 1,
            "batch_size": 2, "feature_batch_size": 2, "precision": "fp32", "detector": "styleganv",
            "weights_dir": str(standins), "lpips_backbone": "alex", "seed": 0, "sampler": "sde", "steps": 2,
            "cfg_scale": 1.0, "clip_frames": 9, "full": True, "use_gpu": False, "threads": 1}
    worker = EvalWorker(spec)
    worker._load_sit()
    pair, alone = worker._generate([0, 1]), worker._generate([1])
    assert np.abs(pair[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert params.evaluate.seed == 0
