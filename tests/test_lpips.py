"""LPIPS wrapper: same values as the lpips package on the same weights, chunking, freezing, dtype, errors."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
import torchvision

from components import weights as W
from components.metrics.lpips import LPIPS


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standins")
    W.write_standins(folder, ["alexnet", "lpips_alex"], seed=3)
    return folder


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def _pair(n=5, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _plain_lpips(folder, monkeypatch, lin_path=None):
    """lpips.LPIPS built by the package itself (its own lin loading), its torchvision trunk fed the stand-in."""
    import lpips
    import lpips.pretrained_networks as pn

    features = torch.load(folder / "alexnet-owt-7be5be79.pth", weights_only=True)
    build_alexnet = torchvision.models.alexnet  # pn.tv is torchvision.models itself

    def alexnet_with_standin(*args, **kwargs):
        model = build_alexnet(weights=None)
        missing, unexpected = model.load_state_dict(features, strict=False)
        assert not unexpected and all(k.startswith("classifier.") for k in missing)
        return model

    monkeypatch.setattr(pn.tv, "alexnet", alexnet_with_standin)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return lpips.LPIPS(pretrained=True, net="alex", model_path=str(lin_path or folder / "alex.pth")).eval()


def test_matches_plain_lpips_on_same_standin_weights(standin_dir, monkeypatch):
    ours = LPIPS("alex", weights_dir=standin_dir, allow_download=False)
    # the package's real linear layers win over the stand-in ones (a real file always does); the trunk is a stand-in
    assert ours.resolved[1].source == "cache" and not ours.resolved[1].standin and ours.resolved[0].standin
    plain = _plain_lpips(standin_dir, monkeypatch, ours.resolved[1].path)
    x, y = _pair()
    with torch.no_grad():
        expected = plain(x, y).reshape(-1)
        got = ours(x, y)
    assert ours.standin
    assert got.shape == (5,) and torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert float(got.min()) > 0


def test_chunked_equals_unchunked_and_zero_on_identical(standin_dir):
    m = LPIPS("alex", weights_dir=standin_dir, allow_download=False)
    x, y = _pair(n=7)
    with torch.no_grad():
        full = m(x, y)
        assert torch.allclose(m(x, y, chunk=3), full, rtol=0, atol=1e-6)
        assert torch.allclose(LPIPS("alex", weights_dir=standin_dir, chunk=2)(x, y), full, rtol=0, atol=1e-6)
        assert torch.allclose(m(x, x), torch.zeros(7), atol=1e-7)


def test_frozen_eval_and_gradient_reaches_inputs(standin_dir):
    m = LPIPS("alex", weights_dir=standin_dir, allow_download=False)
    m.train()
    assert not m.training and not m.model.training
    assert all(not p.requires_grad for p in m.parameters())
    x, y = _pair(n=2)
    x.requires_grad_(True)
    m(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fp32_inside_outer_bf16_autocast(standin_dir):
    m = LPIPS("alex", weights_dir=standin_dir, allow_download=False)
    x, y = _pair(n=3)
    with torch.no_grad():
        ref = m(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32
    # only the inputs' bf16 rounding differs
    assert torch.allclose(got, m(x.bfloat16().float(), y.bfloat16().float()), rtol=0, atol=1e-6)
    assert torch.allclose(got, ref, atol=5e-3)


def test_missing_backbone_offline_is_a_clear_error():
    with pytest.raises(W.MissingWeights, match="alexnet-owt-7be5be79.pth"):
        LPIPS("alex", allow_download=False)


def test_bad_inputs_and_backbone(standin_dir):
    m = LPIPS("alex", weights_dir=standin_dir, allow_download=False)
    with pytest.raises(ValueError):
        m(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 16))
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        LPIPS("resnet", weights_dir=standin_dir)


@pytest.mark.slow
def test_vgg_standin_loads(tmp_path):
    W.write_standins(tmp_path, ["vgg16", "lpips_vgg"])
    m = LPIPS("vgg", weights_dir=tmp_path, allow_download=False)
    x, y = _pair(n=2, size=32)
    with torch.no_grad():
        d = m(x, y)
    assert m.standin and d.shape == (2,) and torch.isfinite(d).all()
