"""train_sit: checkpoint schema (EMA + stats), sampling-distance metric, and a tiny stage run with resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import shrink

from components.config import load_params
from components.errors import UserError
from components.generator.latent_stats import LatentStats
from components.generator.presets import sit_preset
from components.generator.sit import SiT, ema_update
from components.generator.store import LatentWriter

SHAPES = ((4, 4, 4), (4, 4, 4), (4, 4, 4))


def _structured_store(folder: Path, n: int = 48, seed: int = 0) -> None:
    """Latents whose per-position means differ (a pattern) with a small spread: learnable, unlike noise."""
    rng = np.random.default_rng(seed)
    planes = []
    for k, shape in enumerate(SHAPES):
        pattern = np.sin(np.arange(np.prod(shape)).reshape(shape) * (0.7 + k)) * 2.0 + 3.0
        planes.append((pattern[None] + 0.2 * rng.standard_normal((n, *shape))).astype(np.float16))
    w = LatentWriter(folder, n, SHAPES, "float16")
    w.write(np.arange(n), planes)
    stats = LatentStats(4).update([torch.from_numpy(p.astype(np.float32)) for p in planes])
    index = pd.DataFrame({"row": np.arange(n), "video_id": [f"v{i}" for i in range(n)], "label": np.arange(n) % 3,
                          "split": "train", "start": 0, "n_valid": 8})
    w.close(index, stats, {"num_frames": 8, "num_classes": 3})


def test_checkpoint_roundtrip_keeps_ema_raw_and_stats(tmp_path):
    from components.errors import UserError
    from components.generator.checkpoint import load_sit, save_sit_payload

    torch.manual_seed(0)
    model = SiT(sit_preset("SiT-tiny/2"), 4, 4, 4)
    ema = SiT(sit_preset("SiT-tiny/2"), 4, 4, 4)
    ema_update(ema, model, 0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema_update(ema, model, 0.9)  # ema = 0.9 * init + 0.1 * (init + 0.5)
    stats = LatentStats.from_mean_std({p: [1.0] * 4 for p in ("xy", "yt", "xt")}, {p: [2.0] * 4 for p in ("xy", "yt", "xt")})
    save_sit_payload(tmp_path / "sit.pt", model, ema, stats, step=7)
    raw = torch.load(tmp_path / "sit.pt", weights_only=True)
    assert set(raw) >= {"config", "model", "ema", "latent_stats", "step"} and raw["step"] == 7
    loaded, got_stats = load_sit(tmp_path / "sit.pt")
    name = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(loaded.state_dict()[name], ema.state_dict()[name])
    torch.testing.assert_close(loaded.state_dict()[name], model.state_dict()[name] - 0.45)
    assert not loaded.training and np.allclose(got_stats.std("xt"), 2.0)
    loaded_raw, _ = load_sit(tmp_path / "sit.pt", use_ema=False)
    torch.testing.assert_close(loaded_raw.state_dict()[name], model.state_dict()[name])
    with pytest.raises(UserError, match="does not exist"):
        load_sit(tmp_path / "missing.pt")


def test_sample_distances_are_zero_for_matching_statistics_and_grow_with_a_shift():
    from pipelines.train_sit import sample_distances

    torch.manual_seed(0)
    sit = SiT(sit_preset("SiT-tiny/2"), 4, 4, 4)  # untrained: zero velocity, samples = the noise
    ref = {p: (np.zeros(s), np.ones(s)) for p, s in zip(("xy", "yt", "xt"), SHAPES)}
    near = sample_distances(sit, ref, 512, "euler", 2, seed=3, device="cpu")
    assert near["stats_distance"] < 0.03 and near["position_distance"] < 0.06
    shifted = {p: (m + 0.5, s) for p, (m, s) in ref.items()}
    far = sample_distances(sit, shifted, 512, "euler", 2, seed=3, device="cpu")
    assert far["stats_distance"] == near["stats_distance"]
    assert abs(far["position_distance"] - np.sqrt(0.5 * 0.25 + 0.5 * near["position_distance"] ** 2)) < 0.02


def _sit_root(tmp: Path, **train) -> Path:
    root = tmp
    root.mkdir(parents=True, exist_ok=True)
    raw = shrink(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text()), root)
    raw["tokenizer"].update(latent_resolution_xy=4, latent_resolution_t=4)
    raw["train_sit"] = {**raw.get("train_sit", {}), "steps": 60, "batch_size": 8, "lr": 2e-3, "warmup_steps": 5,
                        "eval_every": 30, "checkpoint_every": 30, "log_every": 10, "eval_samples": 64,
                        "eval_steps": 10, "cpus_per_worker": 1.0, "ema_decay": 0.9,
                        "storage_path": str(root / "ray_results"), **train}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    _structured_store(root / "latents")
    return root / "params.yaml"


@pytest.mark.slow
def test_train_sit_learns_writes_outputs_and_resumes_to_the_same_weights(tmp_path, ray_local):
    from components.generator.checkpoint import load_sit
    from components.tokenizer.training import checkpoint_step
    from pipelines.train_sit import train_sit

    pfile = _sit_root(tmp_path / "run")
    root = pfile.parent
    summary = train_sit(load_params(pfile), root)
    assert summary["step"] == 60
    assert summary["train_loss"] < 0.7 * summary["train_loss_first"]
    # Learnt per-position structure that noise (the untrained model's samples) does not have.
    assert summary["position_distance_trained"] < 0.7 * summary["position_distance_untrained"]
    saved = torch.load(root / "models/sit/sit.pt", weights_only=True)
    assert saved["step"] == 60 and set(saved) >= {"config", "model", "ema", "latent_stats"}
    assert not torch.equal(saved["ema"]["blocks.0.attn.qkv.weight"], saved["model"]["blocks.0.attn.qkv.weight"])
    sit, stats = load_sit(root / "models/sit/sit.pt")
    assert torch.equal(sit.state_dict()["blocks.0.attn.qkv.weight"], saved["ema"]["blocks.0.attn.qkv.weight"])
    assert stats is not None and np.allclose(stats.mean("xy"), LatentStats.from_dict(saved["latent_stats"]).mean("xy"))
    loss = pd.read_csv(root / "plots/train_sit/loss.csv")
    assert list(loss.columns) == ["step", "loss", "grad_norm", "lr"] and len(loss) == 60
    assert list(pd.read_csv(root / "plots/train_sit/eval.csv")["step"]) == [30, 60]
    assert yaml.safe_load((root / "metrics/train_sit.json").read_text()) == summary

    # Registered as coordtok-sit (EMA weights), with lineage tags; loading it back gives the same velocity.
    from pipelines.common import tracking
    uri = f"sqlite:///{root / 'mlruns.db'}"
    served = tracking.load_registered(tracking.SIT_MODEL, tracking_uri=uri)
    planes = tuple(torch.randn(1, *shape) for shape in sit.plane_shapes)
    t = torch.tensor([0.3])
    with torch.no_grad():
        expected = torch.cat([p.flatten(1) for p in sit.eval()(planes, t)], dim=1)
        torch.testing.assert_close(served(*planes, t), expected)
    import mlflow
    version = mlflow.MlflowClient(uri).search_model_versions(f"name='{tracking.SIT_MODEL}'")[0]
    assert version.tags["stage"] == "train_sit" and version.tags["weights"] == "ema" and "git.commit" in version.tags

    # Resume: drop the final checkpoint (as if killed after step 30) and the model file, rerun.
    run_dir = next((root / "ray_results").glob("train_sit-*"))
    ckpts = sorted((c for c in run_dir.glob("checkpoint_*") if c.is_dir()), key=checkpoint_step)
    assert checkpoint_step(ckpts[-1]) == 60
    shutil.rmtree(ckpts[-1])
    for f in run_dir.glob("checkpoint_manager_snapshot*.json"):
        f.unlink()
    (root / "models/sit/sit.pt").unlink()
    again = train_sit(load_params(pfile), root)
    resumed = torch.load(root / "models/sit/sit.pt", weights_only=True)
    for key in ("model", "ema"):
        for k, v in saved[key].items():
            assert torch.equal(v, resumed[key][k]), (key, k)
    assert again["stats_distance_untrained"] == summary["stats_distance_untrained"]

    # Start from a checkpoint (as from a converted release): training continues from its weights.
    shutil.copy(root / "models/sit/sit.pt", root / "start.pt")
    raw = yaml.safe_load(pfile.read_text())
    raw["train_sit"].update(init_from="start.pt", steps=10, warmup_steps=0, eval_every=10, checkpoint_every=10)
    pfile.write_text(yaml.safe_dump(raw))
    # Same seed -> the same batches (rows, times, noise) at steps 0-9 in both runs: a paired comparison.
    fresh_first = pd.read_csv(root / "plots/train_sit/loss.csv")["loss"][:10].mean()
    train_sit(load_params(pfile), root)
    cont_first = pd.read_csv(root / "plots/train_sit/loss.csv")["loss"][:10].mean()
    assert cont_first < 0.8 * fresh_first
    raw["train_sit"]["init_from"] = "missing.pt"
    pfile.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="does not exist"):
        train_sit(load_params(pfile), root)


def test_train_sit_refuses_missing_latents(tmp_path):
    from components.errors import UserError
    from pipelines.train_sit import train_sit

    pfile = _sit_root(tmp_path / "run")
    shutil.rmtree(pfile.parent / "latents")
    with pytest.raises(UserError, match="extract_latents"):
        train_sit(load_params(pfile), pfile.parent)
