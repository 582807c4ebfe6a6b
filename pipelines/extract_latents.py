"""Stage `extract_latents`: encode the training clips once with the fine-tuned tokenizer (Ray Data).

Batch inference: the clip list (video, start, valid frames; `extract_latents.clip_policy`) becomes a
Ray Dataset; `map_batches` runs an actor pool (one tokenizer per actor, CPUs/GPUs per actor and
batch size from params) that reads each clip from the frame store, encodes it, casts the triplanes
to the store dtype and adds the batch's exact per-plane, per-channel moments of the stored values.
The driver writes every row into latents/ (components/generator/store.py) by position and merges
the batch moments (Chan), so latents/stats.json describes exactly what train_sit reads.
latents/ is built in a staging folder and swapped in whole. Outputs: latents/, metrics/extract_latents.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Params, resolve_path
from components.errors import UserError
from components.io import (
    atomic_write_json,
    commit_dir,
    remove_stale_staging,
    staging_dir,
)
from pipelines.common import console
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.isolation import check_bad_fraction, is_internal
from pipelines.common.report import print_summary
from pipelines.preprocess import INDEX_FILE, processed_store

log = logging.getLogger("extract_latents")

LATENTS_DIR = "latents"
METRICS_OUT = "metrics/extract_latents.json"


class ClipEncoder:
    """Ray Data callable class: one tokenizer per actor; a batch of clip rows -> triplanes + moments."""

    def __init__(self, tokenizer_path: str, processed_dir: str, num_frames: int, dtype: str, use_gpu: bool,
                 threads: int, plane_shapes: list[list[int]]):
        import torch

        from components.tokenizer.released import load_tokenizer

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_tokenizer(tokenizer_path).to(self.device).eval()
        self.processed, self.num_frames, self.dtype = Path(processed_dir), num_frames, np.dtype(dtype)
        self.plane_shapes = [tuple(shape) for shape in plane_shapes]
        self._files: dict[str, Any] = {}

    def _clip(self, frames_path: str, start: int, n_valid: int) -> np.ndarray:
        from components.data.store import FrameFile

        f = self._files.get(frames_path)
        if f is None:
            f = self._files[frames_path] = FrameFile(self.processed / frames_path)
        h = f.header
        clip = np.zeros((self.num_frames, h.height, h.width, h.channels), np.uint8)
        clip[:n_valid] = f.read(start, n_valid)
        return clip

    def _encode(self, clips: np.ndarray, n_valid: np.ndarray) -> list[np.ndarray]:
        """Triplanes of a batch of clips, cast to the store dtype."""
        import torch

        from components.data.pixels import to_unit

        video = to_unit(torch.from_numpy(clips).to(self.device))
        valid = torch.as_tensor(np.asarray(n_valid, np.int64), device=self.device)
        with torch.no_grad():
            planes = self.model.encode(video, valid)
        return [p.float().cpu().numpy().astype(self.dtype) for p in (planes.xy, planes.yt, planes.xt)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from components.generator.latent_stats import LatentStats
        from pipelines.common.isolation import ItemError, run_item

        rows = np.asarray(batch["row"], np.int64)
        reasons = [""] * len(rows)  # per clip: "" = encoded, else why it was skipped
        clips: dict[int, np.ndarray] = {}
        for i, (p, s, n) in enumerate(zip(batch["frames_path"], batch["start"], batch["n_valid"])):
            got = run_item(self._clip, f"{p}@{s}", str(p), int(s), int(n))
            if isinstance(got, ItemError):
                reasons[i] = got.reason
            else:
                clips[i] = got
        ok = sorted(clips)
        n_valid = np.asarray(batch["n_valid"], np.int64)
        stored: list[np.ndarray] = []
        if ok:
            encoded = run_item(self._encode, "batch", np.stack([clips[i] for i in ok]), n_valid[ok])
            if isinstance(encoded, ItemError):  # find the clip(s) to blame: encode each alone
                parts: dict[int, list[np.ndarray]] = {}
                for i in ok:
                    one = run_item(self._encode, str(batch["frames_path"][i]), clips[i][None], n_valid[[i]])
                    if isinstance(one, ItemError):
                        reasons[i] = one.reason
                    else:
                        parts[i] = one
                ok = sorted(parts)
                encoded = [np.concatenate([parts[i][k] for i in ok]) for k in range(3)] if ok else []
            stored = encoded
        # Skipped rows carry zeros (the driver never writes them); every batch has the same columns.
        out = {"row": rows, "reason": np.array(reasons, dtype=object)}
        for k, (name, shape) in enumerate(zip(("xy", "yt", "xt"), self.plane_shapes)):
            full = np.zeros((len(rows), *shape), self.dtype)
            if ok:
                full[ok] = stored[k]
            out[name] = full
        # Moments of the values as stored (after the dtype cast): exactly what train_sit normalises.
        # One entry per batch carries the batch's moments; rows may be re-blocked downstream, entries are not lost.
        moments = np.array([""] * len(rows), dtype=object)
        if ok:
            stats = LatentStats(stored[0].shape[1]).update([torch.from_numpy(x.astype(np.float32)) for x in stored])
            moments[ok[0]] = json.dumps(stats.to_dict())
        out["moments"] = moments
        return out


def encode_to_store(rows: pd.DataFrame, folder: Path, params: Params, tokenizer_path: Path, processed: Path,
                    plane_shapes, meta: dict[str, Any], num_actors: int | None = None,
                    use_gpu: bool = False) -> dict[str, Any]:
    """Run the Ray Data pipeline over `rows` into a store at `folder` (already connected to Ray).

    Returns {"clips", "seconds", "clips_per_second" (start-up included), "first_batch_seconds", "stats"}.
    """
    import ray.data

    from components.generator.latent_stats import LatentStats
    from components.generator.store import LatentWriter

    cfg = params.extract_latents
    actors = num_actors or cfg.num_actors
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # Actor placement is left to Ray Data (its default spreads actors over nodes); both ways of naming a
    # strategy (map_batches' ray_remote_args, DataContext.scheduling_strategy) are deprecated in Ray 2.60.
    writer = LatentWriter(folder, len(rows), plane_shapes, cfg.dtype)
    stats = LatentStats(plane_shapes[0][0])
    started = time.perf_counter()
    # One block per batch: the actors are fed (and results streamed back) batch by batch, not one big block.
    items = rows[["row", "frames_path", "start", "n_valid"]].reset_index(drop=True)
    ds = ray.data.from_pandas([items.iloc[i:i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)])
    encoded = ds.map_batches(
        ClipEncoder,
        fn_constructor_kwargs={"tokenizer_path": str(tokenizer_path), "processed_dir": str(processed),
                               "num_frames": params.data.num_frames, "dtype": cfg.dtype, "use_gpu": use_gpu,
                               "threads": int(max(1, round(cfg.cpus_per_actor))),
                               "plane_shapes": [list(shape) for shape in plane_shapes]},
        batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor if use_gpu else 0)
    done, first_at = 0, None
    batch_moments: dict[int, LatentStats] = {}  # keyed by the batch's first stored row
    skipped: dict[int, str] = {}
    # The stage's one bar counts clips as the driver writes them (Ray Data's own bars are off, above).
    with console.progress_bar(total=len(rows), desc="extract_latents", unit="clip") as bar:
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            if first_at is None:  # actor start-up + model load + one batch
                first_at = time.perf_counter() - started
            good = np.array([not r for r in batch["reason"]], bool)
            writer.write(batch["row"][good], [batch["xy"][good], batch["yt"][good], batch["xt"][good]])
            skipped.update({int(r): str(why) for r, why in zip(batch["row"][~good], batch["reason"][~good])})
            for r, m in zip(batch["row"], batch["moments"]):
                if m:
                    batch_moments[int(r)] = LatentStats.from_dict(json.loads(m))
            done += int(good.sum())
            bar.update(len(batch["row"]))
    # Merged in row order, not arrival order: a retried batch (a killed actor) gives the same bytes.
    for r in sorted(batch_moments):
        stats.merge(batch_moments[r])
    seconds = time.perf_counter() - started
    if stats.planes["xy"].count != done * plane_shapes[0][1] * plane_shapes[0][2]:
        raise RuntimeError(f"latent moments cover {stats.planes['xy'].count} values, expected {done} clips' worth")
    check_bad_fraction("extract_latents", len(skipped), len(rows), params.data.max_bad_fraction,
                       "data.max_bad_fraction", sum(is_internal(w) for w in skipped.values()),
                       "the warnings above (one line per clip)", "clips")
    by_row = rows.set_index("row")
    skipped_list = [{"path": f"{by_row.loc[r, 'frames_path']}@{by_row.loc[r, 'start']}", "reason": why}
                    for r, why in sorted(skipped.items())]
    writer.close(rows, stats, meta, skipped=list(skipped))
    return {"clips": done, "seconds": seconds, "clips_per_second": done / max(seconds, 1e-9),
            "first_batch_seconds": first_at, "stats": stats, "skipped": skipped_list}


def extract_latents(params: Params, root: Path) -> dict[str, Any]:
    """Encode the clips of `extract_latents.splits` into latents/; returns metrics/extract_latents.json."""
    quiet_third_party()
    from components.generator.store import clip_rows
    from components.tokenizer.released import load_tokenizer
    from pipelines.common.cluster import check_fits, ray_cluster
    from pipelines.common.tracking import stage_run
    from pipelines.common.trainer import file_digest

    cfg, data = params.extract_latents, params.data
    processed = processed_store(root)
    tok_path = resolve_path(root, cfg.tokenizer_path)
    tokenizer = load_tokenizer(tok_path)  # a missing/bad file is one clear error before Ray starts
    if tokenizer.num_frames != data.num_frames:
        raise UserError(f"{cfg.tokenizer_path} encodes {tokenizer.num_frames}-frame clips but data.num_frames is "
                        f"{data.num_frames}; point extract_latents.tokenizer_path at a tokenizer trained on these params")
    a = tokenizer.arch
    plane_shapes = ((a.latent_n_features, a.latent_resolution_xy, a.latent_resolution_xy),
                    (a.latent_n_features, a.latent_resolution_t, a.latent_resolution_xy),
                    (a.latent_n_features, a.latent_resolution_t, a.latent_resolution_xy))
    del tokenizer
    index = pd.read_parquet(processed / INDEX_FILE)
    index = index[index.split.isin(cfg.splits)]
    if index.empty:
        raise UserError(f"the processed index has no videos in splits {cfg.splits}; check extract_latents.splits")
    rows = clip_rows(index, data.num_frames, cfg.clip_policy)
    meta = {"clip_policy": cfg.clip_policy, "num_frames": data.num_frames, "splits": list(cfg.splits),
            "plane_shapes": [list(s) for s in plane_shapes], "tokenizer_path": cfg.tokenizer_path,
            "tokenizer_sha256": file_digest(tok_path), "num_classes": int(index.label.max()) + 1}

    out = resolve_path(root, LATENTS_DIR)
    remove_stale_staging(out.parent, out.name)
    suffix = f"{cfg.clip_policy} actors={cfg.num_actors} batch={cfg.batch_size} {cfg.dtype}"
    with stage_run(params, root, "extract_latents", suffix) as run, ray_cluster(params.ray) as resources:
        import mlflow

        use_gpu = resources.get("GPU", 0) > 0 and cfg.gpus_per_actor > 0
        # The whole pool at once: Ray Data would otherwise wait forever for an actor no node can hold.
        check_fits({"CPU": cfg.cpus_per_actor, "GPU": cfg.gpus_per_actor if use_gpu else 0},
                   {"CPU": "extract_latents.cpus_per_actor", "GPU": "extract_latents.gpus_per_actor"}, "actor",
                   count=cfg.num_actors)
        staged = staging_dir(out)
        try:
            res = encode_to_store(rows, staged, params, tok_path, processed, plane_shapes, meta, use_gpu=use_gpu)
            commit_dir(staged, out)
        except BaseException:
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
            raise
        stats = res["stats"]
        summary = {
            "clips": res["clips"], "videos": int(index.video_id.nunique()), "clip_policy": cfg.clip_policy,
            "splits": list(cfg.splits), "num_actors": cfg.num_actors, "batch_size": cfg.batch_size,
            "dtype": cfg.dtype, "seconds": res["seconds"], "clips_per_second": res["clips_per_second"],
            "first_batch_seconds": res["first_batch_seconds"],
            "plane_shapes": [list(s) for s in plane_shapes],
            "bytes": int(sum(f.stat().st_size for f in out.iterdir())), "use_gpu": use_gpu,
            **{f"mean_std_{p}": float(np.mean(stats.std(p))) for p in ("xy", "yt", "xt")},
            # Clips skipped with a reason (not in latents/), those from unanticipated exceptions counted apart.
            "clips_skipped": len(res["skipped"]),
            "internal_errors": sum(is_internal(d["reason"]) for d in res["skipped"]), "skipped": res["skipped"],
        }
        atomic_write_json(root / METRICS_OUT, summary)
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifact(str(out / "stats.json"))
        mlflow.log_artifact(str(root / METRICS_OUT))
        log.info("mlflow run %s", run.info.run_id)
    print_summary("extract_latents", [("clips, videos", f"{summary['clips']:,}, {summary['videos']:,}"),
                                      ("clips skipped (internal errors)",
                                       f"{summary['clips_skipped']:,} ({summary['internal_errors']:,})"),
                                      ("clips/s", summary["clips_per_second"]), ("dtype", cfg.dtype),
                                      ("store", LATENTS_DIR)])
    return summary


if __name__ == "__main__":
    main_for("extract_latents", extract_latents)
