"""Data-parallel training is the same experiment as one worker: the global sample plan, its split
by rank, the loss arithmetic under DDP (real gloo process groups) and gradient accumulation."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.data.sampling import SamplePlan
from components.tokenizer.finetuning import FrameSampler
from components.tokenizer.training import ClipSampler

REPO = Path(__file__).resolve().parents[1]


def test_plan_slices_are_disjoint_equal_and_cover_the_global_batch():
    for batch, world, accum in [(8, 1, 1), (8, 2, 1), (8, 2, 2), (12, 3, 2), (16, 4, 4)]:
        plan = SamplePlan(batch, world, accum)
        slices = [plan.items(r, m) for r in range(world) for m in range(accum)]
        assert all(len(s) == batch // (world * accum) for s in slices)
        joined = np.concatenate(slices)
        assert len(set(joined.tolist())) == batch and sorted(joined) == list(range(batch))
        assert plan.share * world * accum == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not split into 3 workers"):
        SamplePlan(8, 3, 1)


def _train_index(processed: Path) -> pd.DataFrame:
    index = pd.read_parquet(processed / "data/processed/index.parquet")
    return index[index.split == "train"]


def test_rank_batches_together_are_the_single_worker_batch(processed):
    """Clips, windows and patch coordinates of rank 0 + rank 1 (2 workers x 2 micro-steps) are exactly
    the single worker's batch, and no item is drawn twice."""
    s = ClipSampler(processed / "data/processed", _train_index(processed), num_frames=8, patch_t=1, patch_xy=8,
                    n_patches=5, seed=3)
    single = s.batch(8, step=7)
    plan = SamplePlan(8, world=2, grad_accum=2)
    parts = [s.batch(plan.items(r, m), step=7) for r in range(2) for m in range(2)]
    for k in single:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), single[k])
    # Distinct items really differ (not one sample repeated): their patch coordinates are not all equal.
    coords = single["coords"].reshape(8, -1)
    assert len({c.tobytes() for c in coords}) == 8

    f = FrameSampler(processed / "data/processed", _train_index(processed), 8, 1, 1, 2, seed=3)
    whole = f.batch(8, step=2)
    halves = [f.batch(SamplePlan(8, 2).items(r), step=2) for r in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
    assert f.valid_frames(2, 8) == 8 * 2  # every sampled frame is real here (clips longer than 8 frames)


def test_sit_rank_items_together_are_the_single_worker_batch():
    """train_sit's items (store rows, times, noise, label drops) of 2 ranks x 2 micro-steps are exactly
    the single worker's, in order, and distinct items differ."""
    from components.generator.transport import Transport
    from pipelines.train_sit import draw_items

    shapes, transport = ((4, 4, 4), (4, 4, 2), (4, 4, 2)), Transport("linear")
    whole = draw_items(5, 11, range(8), 100, shapes, transport, 0.5)
    plan = SamplePlan(8, world=2, grad_accum=2)
    parts = [draw_items(5, 11, plan.items(r, m), 100, shapes, transport, 0.5) for r in range(2) for m in range(2)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole[1], rtol=0, atol=0)
    for k in range(len(shapes)):
        torch.testing.assert_close(torch.cat([p[2][k] for p in parts]), whole[2][k], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p[3] for p in parts]), whole[3], rtol=0, atol=0)
    assert len(set(whole[1].tolist())) == 8 and len({n.numpy().tobytes() for n in whole[2][0]}) == 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Test-size settings of each stage's section for the gloo runs (steps: the schedule's length; the
# runs stop earlier). finetune starts from a fixed tokenizer with stand-in (random-valued) LPIPS
# weights, chunked 3 frames at a time so ranks cut their frames differently from one worker. Its loss
# network is AlexNet: the random VGG16 stand-in is ill-conditioned on 32-px frames (its deepest
# features nearly vanish and LPIPS divides them by their norm), which turned the same fp32 rounding
# (3e-7 relative in the first step's gradients) into 2.8e-5 relative loss differences by step 17,
# against 9e-8 with AlexNet and 1.8e-7 with no LPIPS (measured 1 vs 2 workers, 20 steps). train_sit
# is class-conditional so that label dropout (drawn per item) is part of what must match.
GLOO_SETTINGS = {"pretrain": {"eval_videos": 1},
                 "finetune": {"frames_per_video": 2, "eval_videos": 1, "lpips_backbone": "alex", "lpips_chunk": 3},
                 "train_sit": {"class_conditional": True, "label_dropout": 0.5}}


def _gloo_run(tmp: Path, processed: Path, world: int, steps: int | tuple[int, int], resume: Path | None = None,
              stage: str = "pretrain", data_dir: Path | None = None, weights: Path | None = None,
              **section) -> dict:
    """`world` real processes in a gloo group training `stage`'s runner under DDP (steps: a count, or
    a (start, stop) range continuing from `resume`'s state) on `data_dir` (default: the processed
    store); rank 0's results."""
    start, stop = steps if isinstance(steps, tuple) else (0, steps)
    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw[stage].update({"batch_size": 4, "grad_accum": 1, "precision": "fp32", "steps": 40, "num_workers": world,
                       **GLOO_SETTINGS[stage], **section})
    if weights is not None:
        raw["weights"] = {"dir": str(weights), "allow_download": False}
    tag = f"{stage}-w{world}a{raw[stage]['grad_accum']}s{start}-{stop}"
    pfile = tmp / f"params-{tag}.yaml"
    pfile.write_text(yaml.safe_dump(raw))
    out, port = tmp / f"{tag}.pt", _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    data = data_dir or processed / "data/processed"
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests/ddp_worker.py"), stage, str(pfile), str(data),
                               str(rank), str(world), str(port), str(start), str(stop), str(out),
                               *([str(resume)] if resume else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-3000:]
    return torch.load(out, weights_only=True)


def _assert_same_model(reference: dict, run: dict, atol: float) -> tuple[float, float]:
    """Per-step losses within 1e-5 relative and final weights within `atol` of `reference`'s;
    returns (max relative loss difference, max weight difference)."""
    ref = np.array(reference["losses"])
    rel = np.abs(np.array(run["losses"]) - ref) / np.abs(ref)
    assert rel.max() <= 1e-5, rel
    for k, w in reference["model"].items():
        torch.testing.assert_close(run["model"][k], w, rtol=0, atol=atol, msg=k)
    weight = max(float((run["model"][k] - w).abs().max()) for k, w in reference["model"].items())
    return float(rel.max()), weight


# Final-weight tolerance after 20 AdamW steps (lr 1e-3) in fp32: the runs add the same gradients in a
# different order (per-rank sums, then gloo's), so they differ by float rounding only. The largest
# differences (~1.4e-5 seen) are in attention key biases: softmax ignores them, so their gradient is
# zero up to rounding, and Adam's normalisation turns that rounding into lr-sized steps. Losses agree
# to ~1.4e-7 relative.
WEIGHT_ATOL = 5e-5


@pytest.mark.slow
def test_two_ddp_workers_train_the_single_worker_model(tmp_path, processed):
    """2 workers x b/2 vs 1 worker x b (fp32, same seed and global batch): per-step losses within 1e-5
    relative over 20 steps, final weights within WEIGHT_ATOL; with grad_accum 2 the gradients
    all-reduce once per step (no all-reduce on the accumulation micro-step), same model again; and
    10 steps on 1 worker resumed for 10 on 2 workers end at the same model too."""
    one = _gloo_run(tmp_path, processed, 1, 20)
    two = _gloo_run(tmp_path, processed, 2, 20)
    accum = _gloo_run(tmp_path, processed, 2, 20, grad_accum=2)
    ref = np.array(one["losses"])
    for label, run in (("2 workers", two), ("2 workers x grad_accum 2", accum)):
        rel, weight = _assert_same_model(one, run, WEIGHT_ATOL)
        print(f"pretrain, {label} vs 1 worker: max relative loss difference {rel:.2e}, max weight difference {weight:.2e}")
    assert ref[-1] < ref[0]  # it trained (the comparison is not between two untouched models)
    assert two["allreduce_calls"] > 0 and accum["allreduce_calls"] == two["allreduce_calls"]

    # A checkpoint written by 1 worker continues with 2 (and back): still the same model.
    first = _gloo_run(tmp_path, processed, 1, (0, 10))
    torch.save(first, tmp_path / "after10.pt")
    rest = _gloo_run(tmp_path, processed, 2, (10, 20), resume=tmp_path / "after10.pt")
    rel = np.abs(np.array(first["losses"] + rest["losses"]) - ref) / np.abs(ref)
    assert rel.max() <= 1e-5, rel
    for k, w in one["model"].items():
        torch.testing.assert_close(rest["model"][k], w, rtol=0, atol=WEIGHT_ATOL, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["finetune", "train_sit"])
def test_two_ddp_workers_finetune_and_train_sit_the_single_worker_model(tmp_path, processed, standin_weights,
                                                                         stage):
    """finetune and train_sit, as pretrain: 2 workers x b/2 (and with grad_accum 2) vs 1 worker x b in
    fp32, same seed and global batch: per-step losses within 1e-5 relative over 20 steps, final
    weights within WEIGHT_ATOL, one all-reduce per step whatever the accumulation."""
    from test_train_sit import _structured_store

    data = None
    if stage == "train_sit":
        data = tmp_path / "latents"
        _structured_store(data)
    run = functools.partial(_gloo_run, tmp_path, processed, stage=stage, data_dir=data, weights=standin_weights)
    one, two, accum = run(1, 20), run(2, 20), run(2, 20, grad_accum=2)
    for label, other in (("2 workers", two), ("2 workers x grad_accum 2", accum)):
        rel, weight = _assert_same_model(one, other, WEIGHT_ATOL)
        print(f"{stage}, {label} vs 1 worker: max relative loss difference {rel:.2e}, max weight difference "
              f"{weight:.2e}")
    assert one["losses"][-1] < one["losses"][0]  # it trained
    assert two["allreduce_calls"] > 0 and accum["allreduce_calls"] == two["allreduce_calls"]


# ------------------------------------------------------------------ on a real two-node Ray cluster


def _stage_root(root: Path, processed: Path, **pretrain) -> Path:
    """A stage root beside the session's processed data (symlinked) with test-size pretrain params."""
    raw = yaml.safe_load((processed / "params.yaml").read_text())
    raw["pretrain"].update({"steps": 20, "batch_size": 4, "precision": "fp32", "cpus_per_worker": 1.0,
                            "checkpoint_every": 4, "keep_checkpoints": 10, "eval_every": 20, "eval_videos": 1,
                            "log_every": 1, "warmup_steps": 2, "storage_path": str(root / "ray_results"), **pretrain})
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to(processed / "data")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _start_stage(stage: str, root: Path, cluster) -> subprocess.Popen:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", f"pipelines.{stage}", "--params", str(root / "params.yaml")],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_stage(stage: str, root: Path, cluster, ok: bool = True, timeout: float = 900) -> str:
    proc = _start_stage(stage, root, cluster)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{stage} did not finish within {timeout:.0f} s; its output ends:\n{out[-4000:]}")
    assert (proc.returncode == 0) == ok, out[-4000:]
    return out


def _weights(root: Path) -> dict:
    return torch.load(root / "models/tokenizer/pretrain.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def one_worker_reference(tmp_path_factory, processed, two_node_cluster) -> Path:
    """The 1-worker x batch 4 pretrain run (fp32, 20 steps) every two-node run is compared with."""
    root = _stage_root(tmp_path_factory.mktemp("one-worker"), processed, num_workers=1)
    _run_stage("pretrain", root, two_node_cluster)
    return root


@pytest.mark.slow
def test_two_workers_on_two_nodes_train_the_one_worker_model(tmp_path, processed, two_node_cluster,
                                                           one_worker_reference):
    """pretrain with num_workers 2 (one per node, gloo): same per-step losses (<= 1e-5 relative) and
    final weights (WEIGHT_ATOL) as 1 worker x the same global batch; rank 0 alone logs, evaluates
    and checkpoints."""
    import mlflow

    cluster = two_node_cluster
    before = set(cluster.logs_mentioning(cluster.worker_dir, "RayTrainWorker"))
    root = _stage_root(tmp_path / "two", processed, num_workers=2)
    _run_stage("pretrain", root, cluster)
    # Ray placed a train worker on each node (each node's worker logs name the actor class).
    assert set(cluster.logs_mentioning(cluster.worker_dir, "RayTrainWorker")) - before
    assert cluster.logs_mentioning(cluster.head_dir, "RayTrainWorker")

    one = pd.read_csv(one_worker_reference / "plots/pretrain/loss.csv")
    two = pd.read_csv(root / "plots/pretrain/loss.csv")
    assert list(two["step"]) == list(range(1, 21))
    rel = (two["loss"] - one["loss"]).abs() / one["loss"].abs()
    assert rel.max() <= 1e-5, rel.max()
    a, b = _weights(one_worker_reference), _weights(root)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    print(f"two nodes: max relative loss difference {rel.max():.2e}, max weight difference "
          f"{max(float((a[k] - b[k]).abs().max()) for k in a):.2e}")

    # Rank 0 alone: one MLflow value per step (a second rank logging would double them), one
    # evaluation, and every checkpoint is rank 0's state.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    run_id = mlflow.search_runs(experiment_names=["coordtok"]).iloc[0]["run_id"]
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 21))
    assert [m.step for m in client.get_metric_history(run_id, "test_psnr")] == [20]
    ckpts = sorted(c for c in root.glob("ray_results/pretrain-*/checkpoint_*") if c.is_dir())
    assert len(ckpts) == 5
    for c in ckpts:
        assert sorted(p.name for p in c.iterdir()) == ["manifest.json", "state.pt"]
        assert torch.load(c / "state.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_requests_no_node_can_hold_fail_in_one_sentence(tmp_path, processed, two_node_cluster):
    """2 CPUs per worker / task on nodes of 1 CPU: one sentence naming the param, the request and the
    largest node, before any compute (instead of waiting forever)."""
    root = _stage_root(tmp_path / "big", processed, num_workers=1, cpus_per_worker=2.0)
    out = _run_stage("pretrain", root, two_node_cluster, ok=False)
    assert ("pretrain.cpus_per_worker asks for 2 CPU per worker, but the largest node of the Ray cluster "
            "has 1 CPU") in out
    assert "Traceback" not in out and not list(root.glob("ray_results/pretrain-*/checkpoint_*"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["pretrain"].update(cpus_per_worker=1.0, num_workers=3)
    raw["pretrain"]["batch_size"] = 6
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    out = _run_stage("pretrain", root, two_node_cluster, ok=False)
    assert "3 workers of 1 CPU each do not fit in the Ray cluster (its 2 node(s) hold 2)" in out
    raw["synthesize"]["cpus_per_task"] = 2.0
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    out = _run_stage("synthesize", root, two_node_cluster, ok=False)
    assert "synthesize.cpus_per_task asks for 2 CPU per task, but the largest node" in out


@pytest.mark.slow
def test_losing_a_node_mid_run_continues_on_the_survivor_to_the_same_model(tmp_path, processed, two_node_cluster,
                                                                          one_worker_reference):
    """Kill the worker node (its raylet and workers) in a 2-worker run with min_workers 1: Ray Train
    restores the last checkpoint and finishes on the surviving node with 1 worker, ending with the
    uninterrupted run's weights (the global sample plan makes the worker count irrelevant)."""
    import time

    cluster = two_node_cluster
    root = _stage_root(tmp_path / "lost", processed, num_workers=2, min_workers=1)
    proc = _start_stage("pretrain", root, cluster)
    try:
        deadline = time.time() + 600
        while not list(root.glob("ray_results/pretrain-*/checkpoint_*/manifest.json")):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.1)
        cluster.kill_worker()
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_worker()  # later tests get both nodes back
    assert proc.returncode == 0, out[-4000:]
    assert "(checkpoint written by 2 worker(s), continuing with 1)" in out, out[-4000:]
    a, b = _weights(one_worker_reference), _weights(root)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=WEIGHT_ATOL, msg=k)


@pytest.mark.slow
def test_every_stage_runs_on_the_two_node_cluster(tmp_path, two_node_cluster, standin_weights):
    """A tiny end-to-end run of every Ray stage through RAY_ADDRESS; each node's worker logs show its
    tasks/actors ran there (preprocess tasks, train workers of all three training stages, extraction
    actors, sweep trials, evaluation actors)."""
    from test_e2e_dvc import shrink_all

    cluster = two_node_cluster
    raw = shrink_all(yaml.safe_load((REPO / "params.yaml").read_text()), standin_weights)
    raw["synthesize"].update(out_dir="data/synthetic")
    for section in ("pretrain", "finetune", "train_sit"):
        raw[section].update(num_workers=2, cpus_per_worker=1.0)
    raw["pretrain"].update(batch_size=2)
    raw["extract_latents"].update(num_actors=2, cpus_per_actor=0.5)
    raw["evaluate"].update(num_actors=2, cpus_per_actor=1.0)
    raw["sweep"].update(storage=str(tmp_path / "optuna.journal"))
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    markers = {"synthesize": ":task_name:run_item", "preprocess": ":task_name:run_item",
               "pretrain": "RayTrainWorker", "finetune": "RayTrainWorker", "extract_latents": "ClipEncoder",
               "train_sit": "RayTrainWorker", "sweep": ":task_name:run_trial", "evaluate": "EvalWorker"}
    seconds = {}
    for stage, marker in markers.items():
        seen = {d: set(cluster.logs_mentioning(d, marker)) for d in (cluster.head_dir, cluster.worker_dir)}
        t0 = time.perf_counter()
        _run_stage(stage, tmp_path, cluster)
        seconds[stage] = time.perf_counter() - t0
        print(f"{stage}: {seconds[stage]:.1f} s", flush=True)
        for d, before in seen.items():
            # A worker's log reaches its file asynchronously (seen: the stage had ended before the worker
            # node's marker was on disk), so the evidence gets a minute to arrive.
            deadline = time.time() + 60
            while not set(cluster.logs_mentioning(d, marker)) - before and time.time() < deadline:
                time.sleep(1)
            assert set(cluster.logs_mentioning(d, marker)) - before, f"{stage}: nothing of {marker!r} ran on {d.name}"
    assert (tmp_path / "metrics/evaluate.json").is_file()
    print("per-stage seconds on two 1-CPU nodes: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))

    # An actor pool larger than the nodes hold fails in one sentence instead of waiting forever.
    raw["extract_latents"].update(num_actors=3, cpus_per_actor=1.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = _run_stage("extract_latents", tmp_path, cluster, ok=False, timeout=300)
    assert "3 actors of 1 CPU each do not fit in the Ray cluster (its 2 node(s) hold 2)" in out, out[-3000:]
    assert "Traceback" not in out
