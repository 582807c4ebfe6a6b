"""Stage `preprocess`: UCF-101 layout -> random-access frame store + index, in Ray tasks.

Reads fold `data.split` of `data.splits_dir`, decodes every listed video with PyAV (any container
or codec FFmpeg reads), resizes the shorter side to `data.img_size` (area averaging) and
centre-crops, and writes one chunked, compressed frame file per video. Outputs:
  data/processed/index.parquet        one row per stored video (contract columns first)
  data/processed/frames/<id>.frames   the frames (components.data.store)
  reports/preprocess.json             counts + every skipped file with its reason
Bad files are skipped with a reason; the stage fails only when their fraction exceeds
`data.max_bad_fraction`. data/processed appears only when complete.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray

from components.config import DataParams, Params, PreprocessParams, resolve_path
from components.data.store import FrameWriter, store_path
from components.data.ucf101 import Problem, SplitEntry, parse_split, split_file_names
from components.data.video import VideoDecodeError, VideoStream
from components.errors import UserError
from components.io import TMP_PREFIX, atomic_write_json, commit_dir, remove_stale_staging, staging_dir
from pipelines.common import console
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.cluster import check_fits, default_parallelism, ray_cluster, run_tasks
from pipelines.common.isolation import ItemError, check_bad_fraction, is_internal, run_item
from pipelines.common.report import print_summary
from pipelines.common.tracking import stage_run

PROCESSED_DIR = "data/processed"
FRAMES_SUBDIR = "frames"
INDEX_FILE = "index.parquet"
REPORT_FILE = "reports/preprocess.json"
INDEX_COLUMNS = ["video_id", "class_name", "label", "split", "n_frames", "source"]


def processed_store(root: Path) -> Path:
    """The processed store a later stage reads; one UserError when the preprocess stage has not run."""
    processed = resolve_path(root, PROCESSED_DIR)
    if not (processed / INDEX_FILE).is_file():
        raise UserError(f"{PROCESSED_DIR}/{INDEX_FILE} is missing; run the preprocess stage first (dvc repro preprocess)")
    return processed


def _resolve_source(raw_root: str, rel: str) -> tuple[Path | None, str | None]:
    """Real path of a listed file inside the root, or (None, reason)."""
    root = Path(raw_root).resolve()
    path = root / rel
    if not os.path.lexists(path):
        return None, "listed in the split but missing from data.raw_dir"
    real = path.resolve()
    if real != root and root not in real.parents:
        return None, f"resolves outside data.raw_dir (symlink to {real})"
    if not real.is_file():
        return None, "not a regular file"
    return real, None


def process_video(entry: SplitEntry, raw_root: str, frames_dir: str, data: DataParams,
                  cfg: PreprocessParams) -> dict[str, Any]:
    """Decode, resize/crop and store one video, streaming frames into the store chunk by chunk (memory
    does not grow with the video's length); never raises for a bad file (returns a reason)."""
    base = {"video_id": entry.video_id, "source": entry.rel_path}
    path, reason = _resolve_source(raw_root, entry.rel_path)
    if path is None:
        return {**base, "ok": False, "reason": reason}
    started = time.perf_counter()
    try:
        with VideoStream(path, data.img_size, fps=data.fps, threads=cfg.decoder_threads) as video, \
                FrameWriter(store_path(frames_dir, entry.video_id), video.fps, chunk_frames=cfg.chunk_frames,
                            codec=cfg.compression, level=cfg.compression_level,
                            temporal_delta=cfg.temporal_delta) as writer:
            for frame in video:
                writer.append(frame)
            n = writer.n_frames
            if n < data.min_frames:
                writer.abort()
                return {**base, "ok": False,
                        "reason": f"only {n} decodable frames (data.min_frames = {data.min_frames})"}
            nbytes = writer.close()
    except VideoDecodeError as exc:
        return {**base, "ok": False, "reason": str(exc)}
    except MemoryError:
        return {**base, "ok": False, "reason": "too large to decode in memory"}
    return {**base, "ok": True, "n_frames": n, "fps": video.fps, "bytes": nbytes,
            "source_width": video.source_width, "source_height": video.source_height,
            "rotation": video.rotation, "codec": video.codec, "container": video.container_format,
            "notes": video.notes, "seconds": time.perf_counter() - started}


def _as_result(entry: SplitEntry, result: dict[str, Any] | ItemError) -> dict[str, Any]:
    """An ItemError (a bug met on this file) as a skip whose reason says so."""
    if isinstance(result, ItemError):
        return {"video_id": entry.video_id, "source": entry.rel_path, "ok": False, "reason": result.reason,
                "traceback": result.traceback}
    return result


def build_index(entries: list[SplitEntry], results: list[dict[str, Any]], img_size: int) -> pd.DataFrame:
    rows = []
    for e, r in zip(entries, results):
        if not r["ok"]:
            continue
        rows.append({
            "video_id": e.video_id, "class_name": e.class_name, "label": e.label, "split": e.split,
            "n_frames": r["n_frames"], "source": e.rel_path, "fps": float(r["fps"]),
            "height": img_size, "width": img_size, "source_width": r["source_width"],
            "source_height": r["source_height"], "rotation": r["rotation"], "codec": r["codec"],
            "frames_path": f"{FRAMES_SUBDIR}/{e.video_id}.frames", "bytes": r["bytes"],
        })
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS + ["fps", "height", "width", "source_width", "source_height",
                                                     "rotation", "codec", "frames_path", "bytes"])
    df = df.astype({"label": "int64", "n_frames": "int64", "bytes": "int64", "rotation": "int64",
                    "height": "int64", "width": "int64", "source_width": "int64", "source_height": "int64"})
    order = {"train": 0, "test": 1}
    return (df.assign(_o=df["split"].map(order)).sort_values(["_o", "video_id"], kind="stable")
              .drop(columns="_o").reset_index(drop=True))


def preprocess(params: Params, root: Path) -> dict[str, Any]:
    """Decode the listed videos into the frame store; returns the report."""
    quiet_third_party()
    data, cfg = params.data, params.preprocess
    raw_root = resolve_path(root, data.raw_dir)
    splits_dir = resolve_path(root, data.splits_dir)
    if not raw_root.is_dir():
        raise UserError(f"data.raw_dir = {data.raw_dir!r} is not a folder ({raw_root}); run the synthesize "
                        "stage or point it at your UCF-101 copy")
    try:
        entries, problems = parse_split(splits_dir, data.split)
    except FileNotFoundError as exc:
        wanted = ", ".join(["classInd.txt", *split_file_names(data.split).values()])
        raise UserError(f"data.splits_dir = {data.splits_dir!r} lacks {Path(exc.filename).name} "
                        f"(needs {wanted} for data.split = {data.split})") from None
    out_dir = resolve_path(root, PROCESSED_DIR)
    report_path = resolve_path(root, REPORT_FILE)
    remove_stale_staging(out_dir.parent, out_dir.name)
    staged = staging_dir(out_dir)
    frames_dir = staged / FRAMES_SUBDIR
    frames_dir.mkdir()
    try:
        with stage_run(params, root, "preprocess", f"size={data.img_size} split={data.split}") as _run:
            import mlflow

            started = time.perf_counter()
            with ray_cluster(params.ray) as resources:
                check_fits({"CPU": cfg.cpus_per_task}, {"CPU": "preprocess.cpus_per_task"}, "task")
                task = ray.remote(num_cpus=cfg.cpus_per_task)(run_item)
                in_flight = default_parallelism(resources, cfg.cpus_per_task, cfg.max_in_flight)
                results = run_tasks(task, [(process_video, e.rel_path, e, str(raw_root), str(frames_dir), data, cfg)
                                           for e in entries], in_flight, desc="preprocess", unit="video")
            results = [_as_result(e, r) for e, r in zip(entries, results)]
            # A worker killed mid-file (Ray retried its task) leaves its unfinished temporary files behind.
            for leftover in frames_dir.glob(TMP_PREFIX + "*"):
                leftover.unlink()
            wall = time.perf_counter() - started
            skipped = problems + [Problem(r["source"], r["reason"]) for r in results if not r["ok"]]
            # Every problem except a bad classInd line stands for one listed line (file) that was not stored.
            class_problems = sum(1 for p in problems if p.path.startswith("classInd.txt"))
            listed = len(entries) + len(problems) - class_problems
            index = build_index(entries, results, data.img_size)
            n_frames = int(index["n_frames"].sum()) if len(index) else 0
            total_bytes = int(index["bytes"].sum()) if len(index) else 0
            seconds_of_video = float((index["n_frames"] / index["fps"]).sum()) if len(index) else 0.0
            internal = [r for r in results if not r["ok"] and is_internal(r["reason"])]
            report = {
                "split": data.split, "img_size": data.img_size, "fps_policy": data.fps or "native",
                "listed": listed, "stored": len(index),
                "stored_by_split": {s: int((index["split"] == s).sum()) for s in ("train", "test")},
                "skipped_count": len(skipped), "internal_error_count": len(internal), "frames": n_frames, "bytes": total_bytes,
                "bytes_per_video_second": total_bytes / seconds_of_video if seconds_of_video else 0.0,
                "skipped": sorted((p.as_dict() for p in skipped), key=lambda d: (d["path"], d["reason"])),
                "warnings": sorted(({"path": r["source"], "note": n} for r in results if r["ok"] for n in r["notes"]),
                                   key=lambda d: (d["path"], d["note"])),
                # Bugs met on single files (each also in "skipped"): the traceback to report them with.
                "internal_errors": [{"path": r["source"], "reason": r["reason"], "traceback": r["traceback"]}
                                    for r in sorted(internal, key=lambda r: r["source"])],
            }
            atomic_write_json(report_path, report)
            mlflow.log_metrics({"videos_listed": listed, "videos_stored": len(index), "videos_skipped": len(skipped),
                                "internal_errors": len(internal),
                                "frames": n_frames, "bytes": total_bytes, "wall_seconds": wall,
                                "frames_per_second": n_frames / wall if wall else 0.0,
                                "bytes_per_video_second": report["bytes_per_video_second"]})
            mlflow.log_artifact(str(report_path))
            if len(index) == 0:
                raise UserError(f"no video could be stored out of {listed} listed; see {REPORT_FILE} for each reason")
            check_bad_fraction("preprocess", len(skipped) - class_problems, listed, data.max_bad_fraction,
                               "data.max_bad_fraction", len(internal), REPORT_FILE, "listed videos")
            index.to_parquet(staged / INDEX_FILE, index=False)
        commit_dir(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if skipped:  # the console's one line about it; each file and reason is in the report
        console.note_once(f"warning: {len(skipped)} of {listed} listed videos were skipped; "
                          f"the reasons are in {REPORT_FILE}")
    print_summary("preprocess", [  # several figures per row: the console stays within ~15 lines
        ("videos stored train/test, skipped (internal errors)",
         f"{report['stored_by_split']['train']}/{report['stored_by_split']['test']}, {len(skipped)} ({len(internal)})"),
        ("frames, frames/s", f"{n_frames:,}, {n_frames / wall if wall else 0.0:,.2f}"), ("wall seconds", wall),
        ("store MB, bytes per video-second", f"{total_bytes / 1e6:,.2f}, {report['bytes_per_video_second']:,.0f}"),
        ("report", REPORT_FILE)])
    return report


if __name__ == "__main__":
    main_for("preprocess", preprocess)
