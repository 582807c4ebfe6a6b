"""Shared fixtures: the real params.yaml shrunk to test size, a Ray cluster shared by in-process stages."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from ray_nodes import TwoNodeCluster

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# An empty torch cache: a real asset there (e.g. after `make weights`) would win over the tests' stand-ins.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="coordtok-tests-torch-")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shrink(raw: dict, tmp: Path) -> dict:
    """The committed params.yaml, shrunk: tiny synthetic set, paths and stores inside `tmp`."""
    raw = {k: dict(v) for k, v in raw.items()}
    raw["synthesize"].update(out_dir=str(tmp / "synthetic"), num_classes=2, groups=8, clips_per_group=1,
                             min_seconds=0.6, max_seconds=1.0, width=96, height=64)
    raw["data"].update(raw_dir=str(tmp / "synthetic" / "UCF-101"),
                       splits_dir=str(tmp / "synthetic" / "ucfTrainTestlist"), img_size=32, num_frames=8)
    raw["mlflow"].update(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")
    raw["ray"].update(num_cpus=2)
    raw["pretrain"].update(steps=4, batch_size=2, eval_every=4, eval_videos=2, checkpoint_every=4,
                           log_every=2, warmup_steps=1, storage_path=str(tmp / "ray_results"))
    if "finetune" in raw:
        raw["finetune"].update(steps=2, batch_size=2, eval_every=2, eval_videos=2, checkpoint_every=2, log_every=1,
                               warmup_steps=1, frames_per_video=2, storage_path=str(tmp / "ray_results"))
    return raw


def build_processed(root: Path, **data) -> Path:
    """synthesize + preprocess the shrunk default into `root` (with `data.*` overrides); returns root."""
    from components.config import load_params
    from pipelines.preprocess import preprocess
    from pipelines.synthesize import synthesize

    raw = shrink(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["data"].update(data)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    synthesize(params, root)
    preprocess(params, root)
    return root


@pytest.fixture(scope="session")
def processed(tmp_path_factory, ray_local) -> Path:
    """The shrunk default synthesized and preprocessed once per session; tests build their own stage
    roots beside it (symlinking its data/) and never write into it."""
    return build_processed(tmp_path_factory.mktemp("processed"))


@pytest.fixture
def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def tiny_params_file(tmp_path: Path, raw_params: dict) -> Path:
    """A params.yaml in tmp_path (the stage root) with the tiny settings."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(shrink(raw_params, tmp_path), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory) -> Path:
    """Stand-in pretrained weights (right architectures, random values) for every asset."""
    from components.weights import write_standins

    folder = tmp_path_factory.mktemp("standin-weights")
    write_standins(folder)
    return folder


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for in-process stage runs (stages reuse an initialised Ray)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_node_cluster():
    """A real two-node Ray cluster on loopback for one test module (see TwoNodeCluster)."""
    cluster = TwoNodeCluster()
    try:
        yield cluster
    finally:
        cluster.stop()
