"""Stage `evaluate`: the numbers of the paper's tables for what this pipeline trained, beside the paper's.

1. Reconstruction on the test split: `evaluate.recon_videos` test videos (spread evenly over the sorted
   test set), their first `data.num_frames` frames: PSNR, SSIM, LPIPS (`evaluate.lpips_backbone`, paper: alex)
   and rFVD (full-length clips), definitions in components/metrics/video_eval.py; batched full decode.
2. Generation: `evaluate.num_videos` videos from the SiT (`evaluate.sit_path`, EMA weights) + tokenizer; video i
   always comes from seed (evaluate.seed, i), whatever the actors and batches. FVD against
   `evaluate.real_videos` real training clips following StyleGAN-V: FVD-`fvd_clip_frames` (first N generated
   frames vs a random N-frame window of each real video) and FVD on full `data.num_frames` videos.
   Cost: per-batch wall time / batch size, and a batch-1 probe (one video, after warm-up) with its peak
   memory (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS growth; see video_eval.measure_peak).
3. Dynamics: per reconstructed test video its dynamics (mean absolute frame difference over its real frames,
   components/metrics/dynamics.py) and its PSNR; Pearson r and a scatter plot (paper: r = 0.617).
All model work runs in Ray actors (`evaluate.num_actors` x `cpus_per_actor` / `gpus_per_actor`), batched.
Outputs: metrics/evaluate.json, plots/evaluate/dynamics.csv, reports/evaluate/{samples.mp4, samples.gif,
contact_sheet.png, dynamics_scatter.png, paper_table.md}; all logged to MLflow (tag weights.standin).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Params, resolve_path
from components.errors import UserError
from pipelines.common import console
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import stage_run
from pipelines.preprocess import INDEX_FILE, processed_store

log = logging.getLogger("evaluate")

METRICS_OUT = "metrics/evaluate.json"
PLOTS_DIR = "plots/evaluate"
REPORTS_DIR = "reports/evaluate"
SHEET_VIDEOS = 4  # generated videos and real/recon pairs shown on the contact sheet


# ------------------------------------------------------------------------------ worker side


class EvalWorker:
    """One Ray actor: holds the tokenizer, SiT, detector and LPIPS on its device and works on batches."""

    def __init__(self, spec: dict[str, Any]):
        import torch

        from components.metrics.i3d import load_detector
        from components.tokenizer.released import load_tokenizer
        from pipelines.common.trainer import autocast_dtype, step_activation

        torch.set_num_threads(spec["threads"])
        self.spec = spec
        self.device = torch.device("cuda" if spec["use_gpu"] and torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(spec["tokenizer_path"]).to(self.device).eval()
        arch = self.tokenizer.arch
        self.amp = autocast_dtype(spec["precision"], self.device, step_activation(
            spec["batch_size"], arch.video_tokens(self.tokenizer.img_size, self.tokenizer.num_frames), arch.width))
        self.detector = load_detector(spec["detector"], self.device, spec["feature_batch_size"], spec["weights_dir"],
                                      allow_download=False)
        self.sit = self.stats = self.lpips = None

    def _features(self, videos: np.ndarray, clip: int | None, full: bool) -> dict[str, np.ndarray]:
        out = {}
        if clip is not None:
            out["clip"] = self.detector.features(np.ascontiguousarray(videos[:, :clip])).numpy()
        if full:
            out["full"] = self.detector.features(videos).numpy()
        return out

    def reconstruct(self, rows: pd.DataFrame, want_samples: int) -> dict[str, Any]:
        """Reconstruct test clips: per-video metrics and dynamics, rFVD features, a few samples."""
        from components.metrics.dynamics import dynamics_score
        from components.metrics.lpips import LPIPS
        from components.metrics.video_eval import mask_padding, per_video_recon_metrics
        from components.tokenizer.training import baseline_grid, eval_clips, reconstruct_clips

        s = self.spec
        if self.lpips is None:
            self.lpips = LPIPS(s["lpips_backbone"], s["weights_dir"], allow_download=False, chunk=32).to(self.device)
        ids, clips, valid = eval_clips(s["processed_dir"], rows, s["num_frames"], len(rows))
        start = time.perf_counter()
        recon = reconstruct_clips(self.tokenizer, clips, valid, s["group_frames"], self.device, self.amp, s["batch_size"])
        decode_s = time.perf_counter() - start
        metrics = per_video_recon_metrics(clips, recon, valid, self.lpips, self.device,
                                          baseline_grid(self.tokenizer.arch, clips.shape[1:4]))
        dyn = np.array([float(dynamics_score(c[None, :n])[0]) for c, n in zip(clips, valid)])
        start = time.perf_counter()
        real_f = self._features(clips, None, True)["full"]
        recon_f = self._features(mask_padding(recon, clips, valid), None, True)["full"]
        feat_s = time.perf_counter() - start
        return {"ids": list(ids), "metrics": metrics, "dynamics": dyn, "real": real_f, "recon": recon_f,
                "samples": (clips[:want_samples], recon[:want_samples]), "decode_s": decode_s, "feature_s": feat_s}

    def _load_sit(self):
        if self.sit is None:
            from components.generator.checkpoint import load_sit

            self.sit, self.stats = load_sit(self.spec["sit_path"], use_ema=self.spec["use_ema"], map_location=self.device)

    def _generate(self, indices: list[int]) -> np.ndarray:
        import torch

        from components.generator.latent_stats import denormalize
        from components.generator.sampling import (
            initial_noise,
            sample_latents,
            video_generators,
        )
        from components.tokenizer.model import reconstruct
        from components.data.pixels import to_uint8

        s, sit = self.spec, self.sit
        gens = video_generators(s["seed"], indices)
        noise = initial_noise(sit, gens, self.device)
        labels = None
        if sit.num_classes > 0:  # as generate_videos: a class per video from its own generator
            labels = torch.tensor([int(torch.randint(sit.num_classes, (1,), generator=g)) for g in gens],
                                  device=self.device)
        with torch.no_grad():
            latents = sample_latents(sit, noise, sampler=s["sampler"], steps=s["steps"], cfg_scale=s["cfg_scale"],
                                     labels=labels, generators=gens, amp_dtype=self.amp)
            planes = denormalize(latents, self.stats)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                video = reconstruct(self.tokenizer, planes, group_frames=s["group_frames"])
        return to_uint8(video)

    def generate(self, indices: list[int], want_samples: int) -> dict[str, Any]:
        """Generate videos `indices` in one batch: FVD features, timing, peak memory, the first samples."""
        from components.metrics.video_eval import measure_peak

        self._load_sit()
        with measure_peak(self.device) as cost:
            videos = self._generate(indices)
        start = time.perf_counter()
        feats = self._features(videos, self.spec["clip_frames"], self.spec["full"])
        feat_s = time.perf_counter() - start
        keep = [i for i, idx in enumerate(indices) if idx < want_samples]
        return {"indices": indices, "features": feats, "gen_s": cost.seconds, "peak_mb": cost.peak_mb,
                "memory_kind": cost.kind, "feature_s": feat_s, "samples": videos[keep], "device": str(self.device)}

    def probe(self) -> dict[str, Any]:
        """Video 0 alone (batch 1) after the models are warm: the per-video time and memory figures."""
        from components.metrics.video_eval import measure_peak

        self._load_sit()
        with measure_peak(self.device) as cost:
            self._generate([0])
        return {"seconds": cost.seconds, "peak_mb": cost.peak_mb, "kind": cost.kind, "device": str(self.device),
                "peak_rss_mb": cost.notes.get("peak_rss_mb")}

    def features(self, videos: np.ndarray) -> dict[str, Any]:
        """Detector features of uint8 videos [N, T, H, W, 3] (benchmarks); with the seconds it took."""
        start = time.perf_counter()
        if not videos.flags.writeable:  # arrays from Ray's object store are read-only; torch warns on those
            videos = videos.copy()
        feats = self.detector.features(videos).numpy()
        return {"features": feats, "seconds": time.perf_counter() - start}

    def noise_features(self, indices: list[int], shape: tuple[int, int, int]) -> dict[str, Any]:
        """Detector features of uniform-noise videos (the FVD yardstick's ceiling); video i from (seed, i)."""
        start = time.perf_counter()
        videos = np.stack([np.random.default_rng([self.spec["seed"], 1, i]).integers(0, 256, (*shape, 3), np.uint8)
                           for i in indices])
        feats = self.detector.features(videos).numpy()
        return {"features": feats, "seconds": time.perf_counter() - start}

    def real_features(self, items: list[tuple[str, int, int]], which: str) -> dict[str, Any]:
        """Detector features of real clips (frames_path, start, length) read from the frame store."""
        from components.data.store import FrameFile

        start = time.perf_counter()
        videos = np.stack([FrameFile(Path(self.spec["processed_dir"]) / p).read(s, n) for p, s, n in items])
        feats = self.detector.features(videos).numpy()
        return {"which": which, "features": feats, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------ driver side


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _finite(v: Any) -> Any:
    """JSON-safe: NaN/inf become None (metrics files are strict JSON)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _baseline_sizes(arch: Any, data: Any) -> dict[str, Any]:
    """What the evaluated tokenizer's triplane and the same-numbers / temporal-mean baselines keep."""
    from components.metrics.baselines import triplane_values
    from components.tokenizer.training import baseline_grid

    grid = baseline_grid(arch, (data.num_frames, data.img_size, data.img_size))
    return {"triplane_values": triplane_values(arch.latent_n_features, arch.latent_resolution_xy,
                                               arch.latent_resolution_t),
            "baseline_same_numbers_grid": list(grid), "baseline_same_numbers_values": 3 * int(np.prod(grid)),
            "baseline_temporal_mean_values": 3 * data.img_size * data.img_size}


def _check_inputs(params: Params, root: Path) -> dict[str, Any]:
    """Every check a user can fail, before any compute: files, geometry, clip lengths."""
    from components.generator.checkpoint import load_sit
    from components.tokenizer.released import decode_group_frames, load_tokenizer

    ev, data = params.evaluate, params.data
    processed = processed_store(root)
    if ev.fvd_clip_frames is not None and ev.fvd_clip_frames > data.num_frames:
        raise UserError(f"evaluate.fvd_clip_frames = {ev.fvd_clip_frames} exceeds data.num_frames ({data.num_frames}); "
                        "lower it or set it to null")
    tok_path, sit_path = resolve_path(root, ev.tokenizer_path), resolve_path(root, ev.sit_path)
    tokenizer = load_tokenizer(tok_path)  # UserError when missing or malformed
    if (tokenizer.num_frames, tokenizer.img_size) != (data.num_frames, data.img_size):
        raise UserError(f"{ev.tokenizer_path} encodes {tokenizer.num_frames} frames at {tokenizer.img_size}px but "
                        f"data is {data.num_frames} at {data.img_size}px; fix data params or evaluate.tokenizer_path")
    group = decode_group_frames(tokenizer, params.tokenizer.decode_group_frames)  # a release: as released
    if tokenizer.grid[0] % group:
        raise UserError(f"tokenizer.decode_group_frames = {group} does not divide the {tokenizer.grid[0]} decoder time "
                        f"steps of {ev.tokenizer_path}; pick a divisor or null (the checkpoint's own)")
    sit, stats = load_sit(sit_path, use_ema=ev.use_ema)
    if stats is None:
        raise UserError(f"{ev.sit_path} carries no latent_stats (needed to un-normalise samples); re-create it "
                        "with the train_sit stage")
    arch = tokenizer.arch
    if (sit.resolution_xy, sit.resolution_t, sit.in_channels) != (arch.latent_resolution_xy, arch.latent_resolution_t,
                                                                   arch.latent_n_features):
        raise UserError(f"the SiT in {ev.sit_path} models planes {sit.plane_shapes}, not this tokenizer's latents; "
                        "train the SiT on this tokenizer's latents (dvc repro extract_latents train_sit)")
    if sit.num_classes == 0 and ev.cfg_scale != 1.0:
        raise UserError(f"evaluate.cfg_scale = {ev.cfg_scale} needs a class-conditional SiT; set it to 1.0")
    index = pd.read_parquet(processed / INDEX_FILE)
    test, train = index[index.split == "test"], index[index.split == "train"]
    if len(test) < 2 or len(train) < 2:
        raise UserError(f"the processed index has {len(train)} train and {len(test)} test videos; evaluation needs at "
                        "least 2 of each (check data.split and the preprocess report)")
    return {"processed": processed, "tokenizer_path": tok_path, "sit_path": sit_path, "test": test, "train": train,
            "tokens": arch.num_tokens, "arch": arch, "group_frames": group, "sit_arch": dict(sit.config["arch"]), "sit_step": None}


def _resolve_weights(params: Params) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Resolve detector and LPIPS assets (one clear error when missing): per metric group, which weights and
    whether they are real (a real file anywhere wins over a stand-in; see components.weights)."""
    from components.metrics.i3d import DETECTOR_ASSETS
    from components.metrics.lpips import BACKBONES
    from components.weights import resolve, weights_dir

    ev = params.evaluate
    wdir = weights_dir(params.weights.dir)
    det = resolve(DETECTOR_ASSETS[ev.fvd_detector], wdir, params.weights.allow_download)
    lp = [resolve(name, wdir, params.weights.allow_download) for name in BACKBONES[ev.lpips_backbone]]
    return {"fvd": {"detector": ev.fvd_detector, "assets": det.label, "real": not det.standin},
            "lpips": {"backbone": ev.lpips_backbone, "assets": ", ".join(r.label for r in lp),
                      "real": not any(r.standin for r in lp)}}, wdir


def _start_actors(params: Params, resources: dict[str, float], spec: dict[str, Any], work: int) -> list:
    import ray

    from pipelines.common.cluster import check_fits, node_capacity

    ev = params.evaluate
    has_gpu = resources.get("GPU", 0) > 0
    gpus = ev.gpus_per_actor or (1.0 if has_gpu else 0.0)
    request = {"CPU": ev.cpus_per_actor, "GPU": gpus}
    names = {"CPU": "evaluate.cpus_per_actor", "GPU": "evaluate.gpus_per_actor"}
    # Node by node: an actor that fits nowhere would never start and its calls would wait forever.
    n = max(1, min(ev.num_actors or max(1, node_capacity(request)), work))
    check_fits(request, names, "actor", count=n)
    spec = {**spec, "use_gpu": gpus > 0, "threads": max(1, int(ev.cpus_per_actor))}
    cls = ray.remote(num_cpus=ev.cpus_per_actor, num_gpus=gpus)(EvalWorker)
    log.info("evaluate: %d actor(s) x %.2g CPU / %.2g GPU", n, ev.cpus_per_actor, gpus)
    return [cls.remote(spec) for _ in range(n)]


def _run_pool(actors: list, calls: list[tuple[str, tuple]], desc: str, bar: Any = None) -> list[Any]:
    """Spread method calls over the actors (each busy actor gets the next call when it finishes).

    A batch that raises an unanticipated exception is not skipped: FVD and the averages over a silently
    smaller set would not compare with other runs. No new batch starts, the running ones finish, and the
    stage ends with one sentence naming the batch and `internal error: <Type>: <message>`, before any output.
    `bar`: the stage's one progress bar (shared by the phases, `desc` shown beside it); else a bar of its own.
    """
    import ray

    from pipelines.common.isolation import ItemError, internal_error_reason

    results: list[Any] = [None] * len(calls)
    idle, pending, nxt = list(actors), {}, 0
    failed: list[ItemError] = []
    own = console.progress_bar(total=len(calls), desc=desc, unit="batch") if bar is None else contextlib.nullcontext()
    with own:
        bar = own if bar is None else bar
        bar.set_postfix_str(desc)
        while nxt < len(calls) or pending:
            while idle and nxt < len(calls):
                actor = idle.pop()
                name, args = calls[nxt]
                pending[getattr(actor, name).remote(*args)] = (nxt, actor)
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # the actor lives on; a dead actor is not caught here
                cause = exc.cause if exc.cause is not None else exc
                if isinstance(cause, UserError):
                    raise cause from None
                failed.append(ItemError(f"{desc} batch {i + 1} of {len(calls)}", internal_error_reason(cause), str(exc)))
                log.error("%s: %s\n%s", failed[-1].item, failed[-1].reason, failed[-1].traceback,
                          extra={"console": False})  # the traceback: the log only
                nxt = len(calls)
            idle.append(actor)
            bar.update(1)
    if failed:
        for a in actors:  # the stage ends here: free their CPUs/GPUs now (a shared cluster lives on)
            ray.kill(a)
        raise UserError(f"evaluate: {failed[0].item} failed ({failed[0].reason}); no metrics were written, because "
                        "leaving videos out would bias FVD and the averages (evaluate skips nothing); this is a bug "
                        "to report with the traceback in the log")
    return results


def fvd_of(features_a: list[np.ndarray], features_b: list[np.ndarray]) -> float:
    """Fréchet distance of two feature sets given as lists of [B, D] batches (streamed in float64)."""
    from components.metrics.frechet import GaussianStats, frechet_distance_stats

    dim = features_a[0].shape[1]
    sa, sb = GaussianStats(dim), GaussianStats(dim)
    for f in features_a:
        sa.update(f)
    for f in features_b:
        sb.update(f)
    return frechet_distance_stats(sa, sb)


def evaluate(params: Params, root: Path) -> dict[str, Any]:
    """Reconstruction metrics, generation FVD and cost, dynamics analysis; returns metrics/evaluate.json's content."""
    quiet_third_party()
    import ray

    from components.io import (
        atomic_write_json,
        atomic_write_text,
        commit_dir,
        remove_stale_staging,
        staging_dir,
    )
    from components.metrics.dynamics import pearson_r
    from components.metrics.video_eval import (
        aggregate_recon,
        contact_sheet,
        paper_table_markdown,
        per_class_table,
        pick_evenly,
        real_clip_plan,
        scatter_png,
        tile_videos,
    )
    from pipelines.common.cluster import ray_cluster

    ev, data = params.evaluate, params.data
    inputs = _check_inputs(params, root)
    used, wdir = _resolve_weights(params)  # before any compute: a missing asset is one clear error
    standin_by = {"detector": not used["fvd"]["real"], "lpips": not used["lpips"]["real"]}
    standin = any(standin_by.values())
    if standin:
        log.warning("evaluate uses STAND-IN weights (%s): those numbers are not meaningful",
                    ", ".join({"detector": "FVD detector: FVD/rFVD", "lpips": "LPIPS backbone: LPIPS"}[k]
                              for k, v in standin_by.items() if v))
    processed = inputs["processed"]
    full = ev.fvd_full_length
    clip = ev.fvd_clip_frames
    spec = {"tokenizer_path": str(inputs["tokenizer_path"]), "sit_path": str(inputs["sit_path"]),
            "use_ema": ev.use_ema, "processed_dir": str(processed.resolve()), "num_frames": data.num_frames,
            "group_frames": inputs["group_frames"], "batch_size": ev.batch_size,
            "feature_batch_size": ev.feature_batch_size, "precision": ev.precision, "detector": ev.fvd_detector,
            "weights_dir": str(wdir) if wdir else None, "lpips_backbone": ev.lpips_backbone, "seed": ev.seed,
            "sampler": ev.sampler, "steps": ev.sampling_steps, "cfg_scale": ev.cfg_scale, "clip_frames": clip,
            "full": full}

    test = inputs["test"].sort_values("video_id").reset_index(drop=True)
    recon_rows = test.iloc[pick_evenly(len(test), ev.recon_videos)].reset_index(drop=True)
    train = inputs["train"].sort_values("video_id").reset_index(drop=True)
    plans = {}
    if clip is not None:
        plans["clip"] = real_clip_plan(train["n_frames"], ev.real_videos, clip, ev.seed)
    if full:
        plans["full"] = real_clip_plan(train["n_frames"], ev.real_videos, data.num_frames, ev.seed)
    for which, plan in plans.items():
        length = clip if which == "clip" else data.num_frames
        if len(plan) == 0:
            raise UserError(f"no training video has {length} frames for the real FVD set; lower "
                            f"{'evaluate.fvd_clip_frames' if which == 'clip' else 'data.num_frames'}")
    gen_batches = _chunks(list(range(ev.num_videos)), ev.batch_size)
    recon_batches = _chunks(list(range(len(recon_rows))), ev.batch_size)
    real_calls = [("real_features", ([(train.loc[i, "frames_path"], s, clip if which == "clip" else data.num_frames)
                                      for i, s in part], which))
                  for which, plan in plans.items() for part in _chunks(plan, ev.batch_size)]

    # The yardstick's ceiling: uniform-noise videos of the generated set's size and shape (full length).
    noise_calls = [("noise_features", (b, (data.num_frames, data.img_size, data.img_size))) for b in gen_batches] \
        if full else []

    suffix = f"{params.tokenizer.preset} n={ev.num_videos} {ev.sampler}{ev.sampling_steps} det={ev.fvd_detector}"
    with stage_run(params, root, "evaluate", suffix, standin=standin):
        import mlflow

        started = time.perf_counter()
        with ray_cluster(params.ray) as resources:
            work = max(len(gen_batches), len(recon_batches), len(real_calls))
            actors = _start_actors(params, resources, spec, work)
            # The stage's one bar over every batch of the four phases (the phase is shown beside it).
            batches = len(recon_batches) + len(gen_batches) + len(real_calls) + len(noise_calls)
            with console.progress_bar(total=batches, desc="evaluate", unit="batch") as bar:
                recon_res = _run_pool(actors, [("reconstruct", (recon_rows.iloc[b], max(0, SHEET_VIDEOS - b[0])))
                                               for b in recon_batches], "reconstruct", bar)
                gen_res = _run_pool(actors, [("generate", (b, max(ev.grid_videos, SHEET_VIDEOS)))
                                             for b in gen_batches], "generate", bar)
                probe = ray.get(actors[0].probe.remote())
                real_res = _run_pool(actors, real_calls, "real features", bar)
                noise_res = _run_pool(actors, noise_calls, "noise features", bar) if noise_calls else []
            n_actors = len(actors)
            for a in actors:
                ray.kill(a)
        wall = time.perf_counter() - started

        # ---- reconstruction + dynamics
        rec = aggregate_recon([r["metrics"] for r in recon_res])
        rec["rfvd"] = fvd_of([r["real"] for r in recon_res], [r["recon"] for r in recon_res])
        rec.update(_baseline_sizes(inputs["arch"], data))
        per_psnr = np.concatenate([r["metrics"]["psnr"] for r in recon_res])
        dyn = np.concatenate([r["dynamics"] for r in recon_res])
        ids = [i for r in recon_res for i in r["ids"]]
        r_value = pearson_r(dyn, per_psnr) if len(dyn) >= 2 else float("nan")
        # ---- generation
        gen_feats = {k: [g["features"][k] for g in gen_res] for k in plans}
        real_feats = {k: [r["features"] for r in real_res if r["which"] == k] for k in plans}
        fvd = {k: fvd_of(gen_feats[k], real_feats[k]) for k in plans}
        gen_s = sum(g["gen_s"] for g in gen_res)
        gen_feat_s = sum(g["feature_s"] for g in gen_res) + sum(r["seconds"] for r in real_res) \
            + sum(r["feature_s"] for r in recon_res) + sum(r["seconds"] for r in noise_res)
        feat_videos = ev.num_videos * len(plans) + sum(len(p) for p in plans.values()) + 2 * rec["videos"] \
            + ev.num_videos * bool(noise_res)
        # ---- yardstick: every set against the same real training clips, same length, same detector
        yardstick = None
        if full:
            train_full = real_feats["full"]
            yardstick = {
                "frames": data.num_frames, "reference": f"{len(plans['full'])} real training clips",
                "fvd_real_test_vs_train": fvd_of([r["real"] for r in recon_res], train_full),
                "fvd_recon_vs_train": fvd_of([r["recon"] for r in recon_res], train_full),
                "fvd_samples_vs_train": fvd.get("full"),
                "fvd_noise_vs_train": fvd_of([r["features"] for r in noise_res], train_full),
                "sizes": {"real_test": rec["videos"], "recon": rec["videos"], "samples": ev.num_videos,
                          "noise": ev.num_videos, "train": len(plans["full"])},
                "detector": ev.fvd_detector, "detector_real": used["fvd"]["real"]}
        per_batch = [g["gen_s"] / len(g["indices"]) for g in gen_res]
        samples = np.concatenate([g["samples"] for g in gen_res])[:max(ev.grid_videos, SHEET_VIDEOS)]
        real_s = np.concatenate([r["samples"][0] for r in recon_res])[:SHEET_VIDEOS]
        recon_s = np.concatenate([r["samples"][1] for r in recon_res])[:SHEET_VIDEOS]

        metrics = {
            "detector": ev.fvd_detector, "standin_weights": standin,
            "standin": {"detector": standin_by["detector"], "lpips": standin_by["lpips"]},
            "weights": used,  # per metric group: which detector / backbone and whether it is real
            "data": {"img_size": data.img_size, "num_frames": data.num_frames},
            "tokenizer": {"preset": params.tokenizer.preset, "tokens": inputs["tokens"]},
            "reconstruction": {**rec, "lpips_backbone": ev.lpips_backbone, "lpips_real": used["lpips"]["real"],
                               "rfvd_detector": ev.fvd_detector, "rfvd_detector_real": used["fvd"]["real"],
                               "rfvd_frames": data.num_frames, "standin_weights": standin},
            "generation": {
                "videos": ev.num_videos, "real_videos": ev.real_videos, "detector": ev.fvd_detector,
                "detector_real": used["fvd"]["real"], "standin_weights": standin_by["detector"], "sampler": ev.sampler, "steps": ev.sampling_steps,
                "cfg_scale": ev.cfg_scale, "use_ema": ev.use_ema,
                "clip_frames": clip, "fvd_clip": fvd.get("clip"), "full_frames": data.num_frames if full else None,
                "fvd_full": fvd.get("full"), "batch_size": ev.batch_size,
                "seconds_per_video_batched": float(np.median(per_batch)),
                "batch_peak_memory_mb": float(max(g["peak_mb"] for g in gen_res)),
                "single_video_seconds": probe["seconds"], "single_video_peak_memory_mb": probe["peak_mb"],
                "memory_kind": probe["kind"], "device": probe["device"],
                "single_video_peak_rss_mb": probe["peak_rss_mb"],  # CPU only: absolute peak RSS of the actor
            },
            "dynamics": {"videos": len(dyn), "pearson_r": r_value, "score": "mean_abs_frame_difference",
                         "dynamics_mean": float(dyn.mean()), "psnr_mean": float(per_psnr.mean())},
            "yardstick": yardstick,
            "throughput": {"actors": n_actors, "sampling_videos_per_s": ev.num_videos / gen_s * n_actors,
                           "feature_videos_per_s": feat_videos / gen_feat_s * n_actors, "wall_seconds": wall},
        }
        metrics = _finite(metrics)

        # ---- outputs
        atomic_write_json(root / METRICS_OUT, metrics)
        atomic_write_text(root / PLOTS_DIR / "dynamics.csv",
                          pd.DataFrame({"video_id": ids, "dynamics": dyn, "psnr": per_psnr}).to_csv(index=False))
        remove_stale_staging(root / "reports", "evaluate")
        staged = staging_dir(root / REPORTS_DIR)
        from components.data.preview import write_gif, write_mp4, write_png

        grid = tile_videos(samples[:ev.grid_videos])
        write_mp4(staged / "samples.mp4", grid)
        write_gif(staged / "samples.gif", grid)
        write_png(staged / "contact_sheet.png", contact_sheet(samples[:SHEET_VIDEOS], real_s, recon_s))
        (staged / "dynamics_scatter.png").write_bytes(scatter_png(
            dyn, per_psnr, f"dynamics vs reconstruction PSNR (r = {r_value:.3f}, n = {len(dyn)})",
            "dynamics (mean |frame difference|, [0, 1])", "PSNR (dB)"))
        (staged / "paper_table.md").write_text(paper_table_markdown(metrics))
        per_video = {k: np.concatenate([r["metrics"][k] for r in recon_res]) for k in recon_res[0]["metrics"]}
        classes = test.set_index("video_id").loc[ids, "class_name"].tolist()
        (staged / "reconstruction_by_class.md").write_text(
            "# Test reconstruction PSNR per class (motion family), beside same-clip baselines\n\n"
            + per_class_table(classes, per_video))
        commit_dir(staged, root / REPORTS_DIR)

        from pipelines.common.tracking import flatten

        mlflow.log_metrics({k: float(v) for k, v in flatten(metrics).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifact(str(root / METRICS_OUT))
        mlflow.log_artifact(str(root / PLOTS_DIR / "dynamics.csv"), "plots")
        mlflow.log_artifacts(str(root / REPORTS_DIR), "reports/evaluate")
        mlflow.set_tags({"evaluate.detector": ev.fvd_detector, "evaluate.detector.weights": used["fvd"]["assets"],
                         "evaluate.detector.real": str(used["fvd"]["real"]).lower(),
                         "evaluate.lpips.weights": used["lpips"]["assets"],
                         "evaluate.lpips.real": str(used["lpips"]["real"]).lower()})
    g, y, dyn_r = metrics["generation"], metrics["yardstick"], metrics["dynamics"]["pearson_r"]

    def figures(*values: Any, fmt: str = ".2f") -> str:
        return " / ".join("-" if v is None else f"{v:{fmt}}" for v in values)

    # Few rows, several figures each, so the stage's console stays within ~15 lines (README "What you will
    # see"); every figure, with its sizes and settings, is in metrics/evaluate.json and the reports.
    yard_rows = [] if y is None else [
        (f"yardstick FVD-{y['frames']} vs train: real test / recon / SiT / noise",
         figures(y["fvd_real_test_vs_train"], y["fvd_recon_vs_train"], y["fvd_samples_vs_train"],
                 y["fvd_noise_vs_train"]))]
    print_summary("evaluate", [
        ("weights: FVD detector; LPIPS",
         f"{ev.fvd_detector}: {used['fvd']['assets']}; {ev.lpips_backbone}: {used['lpips']['assets']}"),
        (f"recon PSNR / SSIM / LPIPS ({rec['videos']} videos), r(dynamics, PSNR)",
         f"{figures(rec['psnr'])} / {figures(rec['ssim'], metrics['reconstruction']['lpips'], fmt='.3f')}, "
         f"{figures(dyn_r, fmt='.3f')}"),
        (f"rFVD / FVD-{clip or '(clip)'} / FVD-{data.num_frames}",
         figures(metrics["reconstruction"]["rfvd"], g["fvd_clip"], g["fvd_full"])),
        *yard_rows,
        (f"s / video (batch 1), peak MB ({g['memory_kind']}); videos/s sampling / features; wall s",
         f"{g['single_video_seconds']:.2f}, {g['single_video_peak_memory_mb']:,.0f}; "
         f"{figures(metrics['throughput']['sampling_videos_per_s'], metrics['throughput']['feature_videos_per_s'])}; "
         f"{wall:,.1f}"),
        ("all figures", f"{METRICS_OUT}, {REPORTS_DIR}/")])
    return metrics


if __name__ == "__main__":
    main_for("evaluate", evaluate)
