"""The one place that resolves pretrained assets (LPIPS backbones and linear layers, I3D detectors).

Resolution order for an asset:
  1. the explicit folder: env COORDTOK_WEIGHTS_DIR, else params `weights.dir`;
  2. the cache: torchvision's own layout `torch.hub.get_dir()/checkpoints` (i.e. $TORCH_HOME/hub/checkpoints),
     used for every downloadable asset; the LPIPS linear layers resolve to the files inside the lpips package;
  3. download (when allowed) into the explicit folder if one is set, else into the cache: streamed to a
     temporary name in the same folder, sha256-checked, fsynced and renamed, so an interrupted download never
     leaves a file under the final name.
A file found in steps 1-2 is checked against the asset's sha256 (full digest or the 8-hex-digit prefix that
torchvision file names carry) before use; a mismatch is an error, never a silent fallback. Nothing here ever
falls back to random weights.

Stand-ins: `write_standins(folder)` writes structurally valid files (right architecture, seeded random values)
and a marker manifest STANDIN.json; the resolver recognises them through the manifest, skips the real checksum
and logs a warning every time one is used. Results carry `standin: bool` so runs can say so.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from components.errors import UserError
from components.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

ENV_DIR = "COORDTOK_WEIGHTS_DIR"
STANDIN_MANIFEST = "STANDIN.json"
_CHUNK = 1 << 20


class WeightsError(UserError):
    """A pretrained asset problem a user can fix."""


class MissingWeights(WeightsError):
    """The asset is not on disk and could not be downloaded."""


class WeightsChecksumError(WeightsError):
    """A file under an asset's name does not have the asset's sha256."""


@dataclass(frozen=True)
class Asset:
    """One pretrained file: where it comes from, how to check it, what it is for."""

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None  # full hex digest, or a hex prefix (torchvision names carry the first 8 digits); None = unpublished
    description: str
    cache: str = "hub"  # "hub": torch.hub.get_dir()/checkpoints; "lpips": inside the installed lpips package

    @property
    def checksum_text(self) -> str:
        if self.sha256 is None:
            return "no published sha256"
        if len(self.sha256) < 64:
            return f"sha256 starting {self.sha256}"
        return f"sha256 {self.sha256}"


_LPIPS_LIN = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{}.pth"

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("alexnet", "alexnet-owt-7be5be79.pth", ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
          "7be5be79", "torchvision AlexNet ImageNet weights (LPIPS 'alex' backbone)"),
    Asset("vgg16", "vgg16-397923af.pth", ("https://download.pytorch.org/models/vgg16-397923af.pth",),
          "397923af", "torchvision VGG16 ImageNet weights (LPIPS 'vgg' backbone)"),
    Asset("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
          ("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",),
          "b8a52dc0", "torchvision SqueezeNet 1.1 ImageNet weights (LPIPS 'squeeze' backbone)"),
    # Digests of the files shipped in lpips 0.1.4 (identical to the repository's v0.1 files).
    Asset("lpips_alex", "alex.pth", (_LPIPS_LIN.format("alex"),),
          "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
          "LPIPS v0.1 linear layers for the alex backbone (ship inside the lpips package)", cache="lpips"),
    Asset("lpips_vgg", "vgg.pth", (_LPIPS_LIN.format("vgg"),),
          "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
          "LPIPS v0.1 linear layers for the vgg backbone (ship inside the lpips package)", cache="lpips"),
    Asset("lpips_squeeze", "squeeze.pth", (_LPIPS_LIN.format("squeeze"),),
          "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
          "LPIPS v0.1 linear layers for the squeeze backbone (ship inside the lpips package)", cache="lpips"),
    # StyleGAN-V's FVD detector (src/metrics/frechet_video_distance.py); no sha256 is published for it.
    Asset("i3d_torchscript", "i3d_torchscript.pt",
          ("https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",),
          None, "StyleGAN-V TorchScript I3D (Kinetics-400, the tf.hub FVD model) for FVD"),
    # InceptionI3d state dict of VideoGPT/TATS/PVDM/CoordTok evals (CoordTok's evals/fvd/download.py uses the first
    # Google Drive id, VideoGPT the second); no sha256 is published for it.
    Asset("i3d_pretrained_400", "i3d_pretrained_400.pt",
          ("https://drive.usercontent.google.com/download?id=1fBNl3TS0LA5FEhZv5nMGJs2_7qQmvTmh&export=download&confirm=t",
           "https://drive.usercontent.google.com/download?id=1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT&export=download&confirm=t"),
          None, "PyTorch InceptionI3d Kinetics-400 state dict (VideoGPT/TATS/CoordTok FVD)"),
)}


@dataclass(frozen=True)
class Resolved:
    """Where an asset was found and whether it is a stand-in (runs on stand-ins must say so)."""

    asset: Asset
    path: Path
    source: str  # "dir", "cache", "download"
    standin: bool


# ---------------------------------------------------------------- locations

def weights_dir(configured: str | os.PathLike | None = None) -> Path | None:
    """The explicit assets folder: COORDTOK_WEIGHTS_DIR when set, else `configured` (params weights.dir)."""
    value = os.environ.get(ENV_DIR) or (str(configured) if configured else None)
    return Path(os.path.expanduser(value)) if value else None


def cache_dir() -> Path:
    """torchvision's checkpoint cache ($TORCH_HOME/hub/checkpoints)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _cache_path(asset: Asset) -> Path:
    if asset.cache == "lpips":
        import lpips

        return Path(lpips.__file__).parent / "weights" / "v0.1" / asset.filename
    return cache_dir() / asset.filename


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise WeightsError(f"unknown pretrained asset {name!r}; choose one of {', '.join(ASSETS)}.") from None


# ---------------------------------------------------------------- checksums and stand-ins

def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _matches(asset: Asset, digest: str) -> bool:
    return asset.sha256 is None or digest.startswith(asset.sha256.lower())


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / STANDIN_MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}


def is_standin(path: str | os.PathLike) -> bool:
    """True when `path` is listed in the STANDIN.json manifest of its folder."""
    path = Path(path)
    return path.name in _read_manifest(path.parent).get("files", {})


# Paths already verified in this process: (path, size, mtime_ns) -> digest; avoids rehashing 500 MB per call.
_verified: dict[tuple[str, int, int], str] = {}


def _verify(asset: Asset, path: Path) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_file(path)
    if not _matches(asset, digest):
        raise WeightsChecksumError(
            f"{path} has sha256 {digest} but {asset.name} ({asset.filename}) needs {asset.checksum_text}; "
            f"delete the file and run `python -m pipelines.weights fetch --assets {asset.name}` "
            f"or download it from {asset.urls[0]}.")
    if asset.sha256 is None:
        log.warning("%s (%s) has no published sha256; using %s with sha256 %s.", asset.name, asset.filename, path, digest)
    _verified[key] = digest


def _use(asset: Asset, path: Path, source: str) -> Resolved:
    if is_standin(path):
        log.warning("using STAND-IN weights for %s at %s (random values: metrics from them are not real).",
                    asset.name, path)
        return Resolved(asset, path, source, True)
    _verify(asset, path)
    return Resolved(asset, path, source, False)


# ---------------------------------------------------------------- download

def _download(asset: Asset, url: str, dest: Path, timeout: float) -> None:
    """Stream `url` into `dest` atomically (components.io.atomic_open): the length and sha256 are
    checked before the rename, so a failed or interrupted download leaves nothing under `dest`."""
    h = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "coordtok-pipeline"})
    with urllib.request.urlopen(request, timeout=timeout) as resp, atomic_open(dest, "wb") as out:
        if "text/html" in (resp.headers.get("Content-Type") or ""):
            raise OSError("the server answered with a web page instead of the file")
        expected = resp.headers.get("Content-Length")
        for block in iter(lambda: resp.read(_CHUNK), b""):
            out.write(block)
            h.update(block)
            received += len(block)
        if expected is not None and received != int(expected):
            raise OSError(f"connection ended after {received} of {expected} bytes")
        digest = h.hexdigest()
        if not _matches(asset, digest):
            raise WeightsChecksumError(
                f"the download of {asset.filename} from {url} has sha256 {digest}, not the expected "
                f"{asset.checksum_text}; it was discarded (retry later, or download it yourself into {dest.parent}).")
        if asset.sha256 is None:
            log.warning("%s has no published sha256; downloaded file has sha256 %s.", asset.filename, digest)


def resolve(name: str, configured_dir: str | os.PathLike | None = None, allow_download: bool = True,
            timeout: float = 60.0) -> Resolved:
    """Find asset `name` (explicit folder > cache > verified download) or raise MissingWeights."""
    asset = get_asset(name)
    explicit = weights_dir(configured_dir)
    if explicit is not None and (explicit / asset.filename).is_file():
        return _use(asset, explicit / asset.filename, "dir")
    cached = _cache_path(asset)
    if cached.is_file():
        return _use(asset, cached, "cache")
    target_dir = explicit if explicit is not None else cache_dir()
    dest = target_dir / asset.filename
    where = f"put it in {target_dir}" + ("" if explicit is not None else f" (or in the folder named by {ENV_DIR})")
    if not allow_download:
        raise MissingWeights(
            f"{asset.name} ({asset.filename}, {asset.checksum_text}) is missing and downloads are off "
            f"(weights.allow_download); download it from {asset.urls[0]} and {where}.")
    failures = []
    for url in asset.urls:
        try:
            log.info("downloading %s from %s to %s", asset.filename, url, dest)
            _download(asset, url, dest, timeout)
            return Resolved(asset, dest, "download", False)
        except WeightsChecksumError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    raise MissingWeights(
        f"{asset.name} ({asset.filename}, {asset.checksum_text}) could not be downloaded "
        f"({'; '.join(failures)}); download it from {asset.urls[0]} and {where}.")


def status(name: str, configured_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """('found' | 'stand-in' | 'missing', path) without downloading or hashing."""
    asset = get_asset(name)
    explicit = weights_dir(configured_dir)
    for path in ([explicit / asset.filename] if explicit is not None else []) + [_cache_path(asset)]:
        if path.is_file():
            return ("stand-in" if is_standin(path) else "found"), path
    return "missing", None


# ---------------------------------------------------------------- stand-ins

def _standin_torchvision(arch: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import torch
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        # Only the convolutional trunk (`features.*`): it is all LPIPS uses, and it keeps stand-ins small
        # (the classifier would add 220-500 MB of random numbers).
        state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    return write


def _standin_lpips_lin(net: str) -> Callable[[Path], None]:
    channels = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512],
                "squeeze": [64, 128, 256, 384, 384, 512, 512]}[net]

    def write(path: Path) -> None:
        import torch

        # Same keys/shapes as lpips' own files; non-negative like the real calibrated weights.
        state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.2 for i, c in enumerate(channels)}
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    return write


def _standin_i3d_torchscript(path: Path) -> None:
    import torch

    from components.metrics.i3d import TinyTorchscriptI3D

    module = torch.jit.script(TinyTorchscriptI3D().eval())
    with atomic_open(path, "wb") as f:
        torch.jit.save(module, f)


def _standin_i3d_state(path: Path) -> None:
    import torch

    from components.metrics.i3d import InceptionI3d

    model = InceptionI3d(num_classes=400)
    with atomic_open(path, "wb") as f:
        torch.save(model.state_dict(), f)


_STANDIN_WRITERS: dict[str, Callable[[Path], None]] = {
    "alexnet": _standin_torchvision("alexnet"),
    "vgg16": _standin_torchvision("vgg16"),
    "squeezenet1_1": _standin_torchvision("squeezenet1_1"),
    "lpips_alex": _standin_lpips_lin("alex"),
    "lpips_vgg": _standin_lpips_lin("vgg"),
    "lpips_squeeze": _standin_lpips_lin("squeeze"),
    "i3d_torchscript": _standin_i3d_torchscript,
    "i3d_pretrained_400": _standin_i3d_state,
}


def write_standins(folder: str | os.PathLike, assets: Iterable[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write seeded, structurally valid stand-ins for `assets` (default all) and list them in STANDIN.json."""
    import torch

    folder = Path(folder)
    names = list(assets) if assets is not None else list(ASSETS)
    for name in names:
        get_asset(name)
    manifest = _read_manifest(folder) or {"note": "STAND-IN weights: random values, not the real assets.", "files": {}}
    written = {}
    for i, name in enumerate(names):
        asset = ASSETS[name]
        path = folder / asset.filename
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            _STANDIN_WRITERS[name](path)
        manifest["files"][asset.filename] = {"asset": name, "sha256": sha256_file(path)}
        written[name] = path
        # Rewrite after each file so a stand-in on disk is always listed (never mistaken for a real one).
        atomic_write_json(folder / STANDIN_MANIFEST, manifest)
    return written
