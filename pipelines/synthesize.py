"""Stage `synthesize`: the embedded default dataset, written in the exact UCF-101 layout.

<out_dir>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi (MPEG-4 Part 2, XVID, AVI) and
<out_dir>/ucfTrainTestlist/{classInd.txt, trainlist01.txt, testlist01.txt}; fold 1 tests on
groups 1-7 as in UCF-101. Clips are rendered and encoded in parallel Ray tasks; the same seed
gives the same bytes. The folder appears only when complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from components.config import Params, SynthesizeParams, resolve_path
from components.data.synthetic import MOTION_FAMILIES, render_clip
from components.data.ucf101 import fold_test_groups, format_class_index, format_testlist, format_trainlist
from components.data.video import encode_avi
from components.io import TMP_PREFIX, atomic_write_json, atomic_write_text, commit_dir, remove_stale_staging, staging_dir
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.cluster import check_fits, default_parallelism, ray_cluster, run_tasks
from pipelines.common.isolation import check_bad_fraction, item_errors, run_item
from pipelines.common.report import print_summary
from pipelines.common.tracking import stage_run

VIDEO_ROOT = "UCF-101"
SPLITS_DIR = "ucfTrainTestlist"
SKIPPED_FILE = "skipped.json"  # only when a clip failed: each with its reason (they are left out of the lists)


@dataclass(frozen=True)
class ClipSpec:
    class_index: int     # 1-based, as in classInd.txt
    class_name: str
    family: str
    group: int
    clip: int
    n_frames: int
    seed: tuple[int, ...]

    @property
    def rel_path(self) -> str:
        return f"{self.class_name}/v_{self.class_name}_g{self.group:02d}_c{self.clip:02d}.avi"


def class_names(num_classes: int) -> list[tuple[str, str]]:
    """(class name, motion family); families cycle, later rounds get a letter suffix (B, C, ...)."""
    out = []
    for i in range(num_classes):
        family = MOTION_FAMILIES[i % len(MOTION_FAMILIES)]
        rnd = i // len(MOTION_FAMILIES)
        out.append((family + (chr(ord("A") + rnd) if rnd else ""), family))
    return out


def plan_clips(cfg: SynthesizeParams) -> list[ClipSpec]:
    """Every clip of the dataset with its length and seed; pure function of the params."""
    specs = []
    for ci, (name, family) in enumerate(class_names(cfg.num_classes), start=1):
        for g in range(1, cfg.groups + 1):
            for c in range(1, cfg.clips_per_group + 1):
                seed = (cfg.seed, ci, g, c)
                seconds = np.random.default_rng((*seed, 1)).uniform(cfg.min_seconds, cfg.max_seconds)
                specs.append(ClipSpec(ci, name, family, g, c, max(1, int(round(seconds * cfg.fps))), seed))
    return specs


def write_clip(spec: ClipSpec, video_root: str, cfg: SynthesizeParams) -> int:
    """Render and encode one clip; returns its frame count."""
    frames = render_clip(spec.family, spec.seed, spec.n_frames, height=cfg.height, width=cfg.width)
    encode_avi(Path(video_root) / spec.rel_path, frames, fps=cfg.fps)
    return len(frames)


def split_lists(specs: list[ClipSpec], num_classes: int) -> dict[str, str]:
    test = set(fold_test_groups(1))
    names = [name for name, _ in class_names(num_classes)]
    return {
        "classInd.txt": format_class_index(names),
        "trainlist01.txt": format_trainlist([(s.rel_path, s.class_index) for s in specs if s.group not in test]),
        "testlist01.txt": format_testlist([s.rel_path for s in specs if s.group in test]),
    }


def synthesize(params: Params, root: Path) -> dict[str, float]:
    """Write the synthetic UCF-101-shaped dataset; returns summary figures."""
    quiet_third_party()
    cfg = params.synthesize
    out_dir = resolve_path(root, cfg.out_dir)
    specs = plan_clips(cfg)
    remove_stale_staging(out_dir.parent, out_dir.name)
    staged = staging_dir(out_dir)
    try:
        with stage_run(params, root, "synthesize", f"classes={cfg.num_classes} clips={len(specs)}") as _run:
            import mlflow

            start = time.perf_counter()
            with ray_cluster(params.ray) as resources:
                check_fits({"CPU": cfg.cpus_per_task}, {"CPU": "synthesize.cpus_per_task"}, "task")
                task = ray.remote(num_cpus=cfg.cpus_per_task)(run_item)
                in_flight = default_parallelism(resources, cfg.cpus_per_task, None)
                counts = run_tasks(task, [(write_clip, s.rel_path, s, str(staged / VIDEO_ROOT), cfg) for s in specs],
                                   in_flight, desc="synthesize", unit="clip")
            # A worker killed mid-clip (Ray retried its task) leaves its unfinished temporary file behind.
            for leftover in (staged / VIDEO_ROOT).glob(f"*/{TMP_PREFIX}*"):
                leftover.unlink()
            failed = item_errors(counts)
            made = [s for s, c in zip(specs, counts) if isinstance(c, int)]
            if failed:  # clips that failed are left out of the lists (and listed with their reason)
                atomic_write_json(staged / SKIPPED_FILE, sorted((e.as_dict() for e in failed), key=lambda d: d["path"]))
                mlflow.log_artifact(str(staged / SKIPPED_FILE))
            check_bad_fraction("synthesize", len(failed), len(specs), params.data.max_bad_fraction,
                               "data.max_bad_fraction", len(failed), f"this MLflow run's {SKIPPED_FILE} artifact", "clips")
            for name, text in split_lists(made, cfg.num_classes).items():
                atomic_write_text(staged / SPLITS_DIR / name, text)
            seconds = time.perf_counter() - start
            frames = int(sum(c for c in counts if isinstance(c, int)))
            n_test = sum(s.group in set(fold_test_groups(1)) for s in made)
            figures = {"clips": len(made), "train_clips": len(made) - n_test, "test_clips": n_test,
                       "frames": frames, "seconds": seconds, "frames_per_second": frames / seconds,
                       "clips_skipped": len(failed), "internal_errors": len(failed)}
            mlflow.log_metrics({k: float(v) for k, v in figures.items()})
        commit_dir(staged, out_dir)
    except BaseException:
        import shutil
        shutil.rmtree(staged, ignore_errors=True)
        raise
    # Few rows, several figures each: the stage's console stays within ~15 lines (README "What you will see").
    print_summary("synthesize", [("classes", cfg.num_classes),
                                 ("clips train/test, skipped (internal errors)",
                                  f"{figures['train_clips']}/{figures['test_clips']}, {figures['internal_errors']}"),
                                 ("frames, frames/s", f"{frames:,}, {figures['frames_per_second']:,.2f}"),
                                 ("wall seconds", seconds), ("output", str(out_dir))])
    return figures


if __name__ == "__main__":
    main_for("synthesize", synthesize)
