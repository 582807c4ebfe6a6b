"""Video detectors: preprocessing per protocol (exact values), InceptionI3d structure, stand-in loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components import weights as W
from components.metrics import i3d


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i3d_standins")
    W.write_standins(folder, ["i3d_torchscript", "i3d_pretrained_400"])
    return folder


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    torch.set_num_threads(1)


def _videos(n=2, t=4, h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)


def test_preprocess_styleganv_is_a_layout_change_only():
    v = _videos()
    out = i3d.preprocess_styleganv(v)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4, 24, 32)
    assert torch.equal(out, torch.from_numpy(v).permute(0, 4, 1, 2, 3))
    with pytest.raises(ValueError):
        i3d.preprocess_styleganv(v.astype(np.float32))


def test_preprocess_fvd_tf_values():
    v = _videos(t=3, h=224, w=224)
    out = i3d.preprocess_fvd_tf(v)  # already 224: only the value map
    assert out.shape == (2, 3, 3, 224, 224) and out.dtype == torch.float32
    expected = torch.from_numpy(v).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    assert torch.allclose(out, expected, atol=1e-6)
    const = np.full((1, 2, 60, 90, 3), 255, np.uint8)
    assert torch.allclose(i3d.preprocess_fvd_tf(const), torch.ones(1, 3, 2, 224, 224))
    small = _videos(n=1, t=1, h=24, w=32)
    frame = torch.from_numpy(small[0, 0]).permute(2, 0, 1)[None].float()
    ref = F.interpolate(frame, size=(224, 224), mode="bilinear", align_corners=False)[0] / 127.5 - 1
    assert torch.allclose(i3d.preprocess_fvd_tf(small)[0, :, 0], ref, atol=1e-6)


def test_preprocess_videogpt_scale_and_centre_crop():
    v = _videos(n=1, t=2, h=224, w=448)  # shorter side already 224: a pure centre crop of columns 112..335
    out = i3d.preprocess_videogpt(v)
    assert out.shape == (1, 3, 2, 224, 224)
    crop = torch.from_numpy(v[:, :, :, 112:336]).permute(0, 4, 1, 2, 3).float()
    assert torch.allclose(out, (crop / 255 - 0.5) * 2, atol=1e-6)
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    tall = i3d.preprocess_videogpt(_videos(n=1, t=1, h=320, w=240))  # portrait: width -> 224, height cropped
    assert tall.shape == (1, 3, 1, 224, 224)
    grey = np.full((1, 1, 240, 320, 3), 51, np.uint8)  # UCF-101 frame size
    assert torch.allclose(i3d.preprocess_videogpt(grey), torch.full((1, 3, 1, 224, 224), (51 / 255 - 0.5) * 2), atol=1e-6)


def test_same_padding_matches_tensorflow():
    assert i3d._same_pad(224, 7, 2) == (2, 3)
    assert i3d._same_pad(16, 7, 2) == (2, 3)
    assert i3d._same_pad(112, 3, 2) == (0, 1)
    assert i3d._same_pad(7, 3, 1) == (1, 1)
    assert i3d._same_pad(5, 2, 2) == (0, 1)


def test_inception_i3d_state_dict_layout():
    state = i3d.InceptionI3d().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.conv3d.weight"] == (192, 64, 3, 3, 3)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b0.bn.running_var"] == (384,)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(k.startswith(("avg_pool", "dropout")) for k in state)
    assert not any(k.startswith("logits.bn") for k in state)
    n_params = sum(p.numel() for p in i3d.InceptionI3d().parameters())
    assert 12_000_000 < n_params < 13_000_000  # Inception-v1 I3D: ~12.3 M parameters


def test_load_i3d_state_rejects_a_wrong_file():
    model = i3d.InceptionI3d()
    state = model.state_dict()
    i3d.load_i3d_state(model, {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    with pytest.raises(ValueError, match="not an InceptionI3d"):
        i3d.load_i3d_state(model, {k: v for k, v in state.items() if not k.startswith("logits")})


def test_torchscript_standin_through_the_detector(standin_dir):
    det = i3d.load_detector("styleganv", weights_dir=standin_dir, allow_download=False, batch_size=2)
    assert det.standin
    v = _videos(n=3, t=4)
    f = det.features(v)
    assert f.shape == (3, 400) and f.dtype == torch.float64
    assert torch.allclose(f[1:2], det.features(v[1:2]), atol=1e-6)  # batching does not mix videos
    # our own TF-style preprocessing gives what the (stand-in) detector does internally
    ours = i3d.load_detector("styleganv", weights_dir=standin_dir, allow_download=False, internal_preprocess=False)
    assert torch.allclose(ours.features(v), f, atol=1e-4)


def test_videogpt_standin_through_the_detector_and_clip_windows(standin_dir):
    det = i3d.load_detector("videogpt", weights_dir=standin_dir, allow_download=False, batch_size=2)
    assert det.standin and not det.model.training
    v = _videos(n=1, t=24, h=60, w=80)
    f = det.features(v)
    assert f.shape == (1, 400) and f.dtype == torch.float64 and torch.isfinite(f).all()
    windows = i3d.load_detector("videogpt", weights_dir=standin_dir, allow_download=False, clip_len=12)
    fw = windows.features(v)
    assert fw.shape == (2, 400)
    assert torch.allclose(fw[1], det.features(v[:, 12:24])[0], atol=1e-5)
    with pytest.raises(ValueError, match="at least 9 frames"):
        det.features(v[:, :8])


def test_missing_detector_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(W.MissingWeights, match="i3d_torchscript.pt"):
        i3d.load_detector("styleganv", allow_download=False)
