"""Fine-tuning: frame-sampling math first (targets, masks, decode, loss vs a full-decode reference),
then the stage on a tiny real run with stand-in LPIPS weights, then resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.config import load_params
from components.tokenizer.finetuning import FrameSampler, frame_loss, group_frames, valid_frame_mask
from components.tokenizer.model import CoordTok, decode_time_groups, reconstruct
from components.tokenizer.presets import TOKENIZER_PRESETS


def _tiny_model(img=16, frames=8, seed=0) -> CoordTok:
    torch.manual_seed(seed)
    arch = TOKENIZER_PRESETS["CoordTok-tiny"].replace(latent_resolution_t=8)
    return CoordTok(arch, img, frames).eval()


def test_group_frames_and_mask_pick_exactly_the_group_frames():
    video = torch.arange(2 * 8 * 2 * 2 * 3, dtype=torch.float32).view(2, 8, 2, 2, 3)
    starts = torch.tensor([[0, 2], [1, 3]])
    out = group_frames(video, starts, length=1, patch_t=2)  # groups of 1 time step = 2 frames
    assert out.shape == (2, 2, 2, 2, 2, 3)
    torch.testing.assert_close(out[0, 1], video[0, 4:6])
    torch.testing.assert_close(out[1, 0], video[1, 2:4])
    torch.testing.assert_close(out[1, 1], video[1, 6:8])
    mask = valid_frame_mask(starts, torch.tensor([8, 7]), length=1, patch_t=2)
    assert mask[0].all() and mask[1, 0].all() and mask[1, 1].tolist() == [True, False]


@pytest.mark.parametrize("length", [1, 2])
def test_decode_time_groups_equals_the_same_frames_of_a_full_decode(length):
    model = _tiny_model()
    video = torch.rand(2, 8, 16, 16, 3) * 2 - 1
    with torch.no_grad():
        planes = model.encode(video)
        full = reconstruct(model, planes, group_frames=length)
        starts = torch.tensor([[0, 4], [2, 6]]) if length == 2 else torch.tensor([[1, 5], [0, 7]])
        part = decode_time_groups(model, planes, starts, length)
    ref = group_frames(full, starts, length, patch_t=1)
    torch.testing.assert_close(part, ref, atol=1e-5, rtol=1e-5)
    chunked = decode_time_groups(model, planes, starts, length, max_tokens_per_chunk=length * 4)
    torch.testing.assert_close(chunked, part, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        decode_time_groups(model, planes, torch.tensor([[7, 0]]), 2)


def test_frame_sampling_loss_equals_the_loss_on_fully_decoded_frames():
    """The training loss on sampled frames = l2 + w x LPIPS computed on those frames of a full decode."""
    model = _tiny_model()
    video = torch.rand(1, 8, 16, 16, 3) * 2 - 1
    starts = torch.tensor([[2, 5]])

    def perceptual(x, y):  # a differentiable stand-in metric of the LPIPS interface
        return (x - y).abs().mean(dim=(1, 2, 3)) ** 0.5

    planes = model.encode(video)
    pred = decode_time_groups(model, planes, starts, 1)
    target = group_frames(video, starts, 1, 1)
    valid = valid_frame_mask(starts, torch.tensor([6]), 1, 1)  # frame 5 is real, frames >= 6 padding
    total, l2, lp = frame_loss(pred, target, valid, perceptual, 0.7)
    with torch.no_grad():
        full = reconstruct(model, model.encode(video), group_frames=1)[0, [2, 5]]
    real = video[0, [2, 5]]
    ref_l2 = torch.mean((full - real) ** 2)
    ref_lp = perceptual(full.permute(0, 3, 1, 2), real.permute(0, 3, 1, 2)).mean()
    torch.testing.assert_close(l2, ref_l2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(total, ref_l2 + 0.7 * ref_lp, atol=1e-6, rtol=1e-5)
    total.backward()  # differentiable end to end
    assert model.patch_embed.weight.grad is not None and model.patch_embed.weight.grad.abs().sum() > 0
    # Padded frames never count.
    valid_pad = valid_frame_mask(torch.tensor([[2, 6]]), torch.tensor([6]), 1, 1)
    _, l2_pad, _ = frame_loss(pred.detach(), target, valid_pad, None, 0.0)
    torch.testing.assert_close(l2_pad, torch.mean((pred.detach()[0, 0] - target[0, 0]) ** 2))


def test_frame_sampler_is_pure_aligned_and_never_samples_padding(processed):
    index = pd.read_parquet(processed / "data/processed/index.parquet")
    train = index[index.split == "train"]
    s = FrameSampler(processed / "data/processed", train, num_frames=64, patch_t=1, group_steps=2,
                     frames_per_video=4, seed=1)
    a, b = s.batch(6, step=3), s.batch(6, step=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["starts"].shape == (6, 2) and (a["starts"] % 2 == 0).all()
    assert (np.diff(a["starts"], axis=1) >= 0).all()
    assert (a["starts"] < a["n_frames"][:, None]).all()  # every group holds a real frame
    assert not np.array_equal(a["starts"], s.batch(6, step=4)["starts"])
    with pytest.raises(ValueError, match="multiple"):
        FrameSampler(processed / "data/processed", train, 64, 1, 2, 3, 0)


def _finetune_root(root: Path, processed: Path, standins: Path, **finetune) -> Path:
    """A stage root with the shared processed data, a tiny pretrained tokenizer and stand-in weights."""
    from pipelines.common.trainer import save_model_file

    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["finetune"].update({"steps": 4, "batch_size": 2, "eval_every": 2, "eval_videos": 2, "checkpoint_every": 2,
                            "log_every": 1, "warmup_steps": 1, "frames_per_video": 2, "cpus_per_worker": 1.0,
                            "storage_path": str(root / "ray_results"), **finetune})
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    raw["weights"] = {"dir": str(standins), "allow_download": False}
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to(processed / "data")
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    torch.manual_seed(0)
    model = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames)
    pre = root / "models/tokenizer/pretrain.pt"
    save_model_file(pre, {"config": model.config, "model": model.state_dict(), "step": 0})
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/pretrain.json").write_text('{"test_psnr": 10.0}')
    return params_path


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    from components.weights import write_standins

    folder = tmp_path_factory.mktemp("weights")
    write_standins(folder, ["vgg16", "lpips_vgg", "alexnet", "lpips_alex"])
    return folder


@pytest.mark.slow
def test_finetune_stage_runs_on_standins_and_resumes_to_the_same_weights(tmp_path, processed, standins, ray_local,
                                                                          caplog):
    import mlflow

    from pipelines.finetune import finetune

    pfile = _finetune_root(tmp_path / "run", processed, standins)
    root = pfile.parent
    summary = finetune(load_params(pfile), root)
    assert summary["standin_weights"] is True and "STAND-IN" in caplog.text
    assert summary["step"] == 4 and np.isfinite(summary["test_lpips"]) and summary["lpips_backbone"] == "alex"
    assert summary["pretrain_test_psnr"] == 10.0
    saved = torch.load(root / "models/tokenizer/finetune.pt", weights_only=True)
    assert saved["step"] == 4 and saved["standin_weights"] is True
    assert yaml.safe_load((root / "metrics/finetune.json").read_text()) == summary
    loss = pd.read_csv(root / "plots/finetune/loss.csv")
    assert list(loss.columns) == ["step", "loss", "l2", "lpips", "lr"] and list(loss["step"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(loss["loss"], loss["l2"] + loss["lpips"], rtol=1e-5)
    assert list(pd.read_csv(root / "plots/finetune/eval.csv")["step"]) == [2, 4]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    run = mlflow.search_runs(experiment_names=["coordtok"]).iloc[0]
    assert run["tags.stage"] == "finetune" and run["tags.weights.standin"] == "true"
    # Registered as coordtok-tokenizer: the loaded model decodes exactly like the checkpoint's.
    from components.tokenizer.released import load_tokenizer
    from pipelines.common import tracking
    served = tracking.load_registered(tracking.TOKENIZER_MODEL, tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    model = load_tokenizer(root / "models/tokenizer/finetune.pt").eval()
    video, coords = torch.rand(1, 8, 32, 32, 3) * 2 - 1, torch.rand(1, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(served(video, coords), model(video, coords))

    # Resume: drop the final checkpoint (as if killed after step 2) and the outputs, rerun.
    run_dir = next((root / "ray_results").glob("finetune-*"))
    from components.tokenizer.training import checkpoint_step
    ckpts = sorted((c for c in run_dir.glob("checkpoint_*") if c.is_dir()), key=checkpoint_step)
    assert checkpoint_step(ckpts[-1]) == 4
    shutil.rmtree(ckpts[-1])
    for f in run_dir.glob("checkpoint_manager_snapshot*.json"):
        f.unlink()
    (root / "models/tokenizer/finetune.pt").unlink()
    finetune(load_params(pfile), root)
    resumed = torch.load(root / "models/tokenizer/finetune.pt", weights_only=True)
    for k, v in saved["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_finetune_refuses_a_missing_or_mismatched_start(tmp_path, processed, standins):
    from components.errors import UserError
    from pipelines.finetune import finetune

    pfile = _finetune_root(tmp_path / "run", processed, standins)
    params = load_params(pfile)
    (pfile.parent / "models/tokenizer/pretrain.pt").unlink()
    with pytest.raises(UserError, match="does not exist"):
        finetune(params, pfile.parent)
    other = CoordTok(TOKENIZER_PRESETS["CoordTok-tiny"], 64, 8)
    from pipelines.common.trainer import save_model_file
    save_model_file(pfile.parent / "models/tokenizer/pretrain.pt", {"config": other.config, "model": other.state_dict()})
    with pytest.raises(UserError, match="different tokenizer"):
        finetune(params, pfile.parent)


def test_chunked_lpips_backward_gives_the_same_gradients_as_the_plain_loss():
    model = _tiny_model(seed=3)
    video = torch.rand(2, 8, 16, 16, 3) * 2 - 1
    starts = torch.tensor([[1, 6], [0, 3]])
    valid = valid_frame_mask(starts, torch.tensor([8, 7]), 1, 1)

    def perceptual(x, y):  # per-frame, nonlinear, like LPIPS
        return ((x - y) ** 2).mean(dim=(1, 2, 3)).sqrt()

    from components.tokenizer.finetuning import frame_loss_backward

    target = group_frames(video, starts, 1, 1)
    grads = []
    for chunked in (False, True):
        model.zero_grad()
        pred = decode_time_groups(model, model.encode(video), starts, 1)
        if chunked:
            total, l2, lp = frame_loss_backward(pred, target, valid, perceptual, 0.5, chunk=1, scale=0.25)
        else:
            t, l2_t, lp_t = frame_loss(pred, target, valid, perceptual, 0.5)
            (0.25 * t).backward()
            ref = (float(t), float(l2_t), float(lp_t))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert total == pytest.approx(ref[0], rel=1e-5) and l2 == pytest.approx(ref[1], rel=1e-5)
    assert lp == pytest.approx(ref[2], rel=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
