"""How fast does the tokenizer learn per CPU-second? Candidates trained on identical data and recipe.

Every candidate is this project's pretraining step (components.tokenizer.training.PretrainRunner:
same clip sampler, patch sampling, AdamW, schedule, loss, seed) on the processed store of a
`dvc repro` (default `data/processed`), single process, `--threads` torch threads. Training stops
at each budget of process CPU-seconds (`--clock cpu`, the default: user+system time of all torch
threads, fair on a shared machine) or wall seconds (`--clock wall`); the clock is paused while the
candidate is evaluated there. At every budget it prints steps done, train PSNR (full reconstruction
of `--train-videos` training clips: what it memorised) and test PSNR (the stage's evaluation clips),
next to naive baselines of the same test clips:

- mean colour:   every pixel replaced by the clip's mean RGB (3 numbers);
- same numbers:  the clip box-averaged to a grid holding as many values as the triplane, trilinear back up;
- temporal mean: every frame replaced by the clip's mean frame (8x more numbers than the default triplane).

`--curve RUN_ROOT` instead writes the learning curve of a pretrain run in RUN_ROOT (a folder with
its params.yaml, data/processed and mlruns.db; the curve is read from plots/pretrain/eval.csv, or
from MLflow while the run is still going) with its baselines to `--out` (plots/cpu_hour/curve.csv).

A candidate is `label:key=value,...`; keys are `variant` (native | released: the released
architecture with its learned decoder position table), `init` (release | vit: see
components/tokenizer/model.py INIT_SCHEMES), `plane_skip` (true | false: the tokenizer override) and any
`pretrain.*` field (lr, batch_size,
sampling_ratio, warmup_steps, precision, grad_clip, weight_decay, ...). With `--schedule budget`
(default) the cosine schedule is sized, after 10 steps, to the steps the largest budget will allow.

    python benchmarks/tokenizer_learning.py --budgets 60,300
    python benchmarks/tokenizer_learning.py --budgets 120 --candidate "lr2e-3:lr=0.002" --candidate "default:"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_note, print_json, table  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from components.config import load_params, validate_params  # noqa: E402
from components.metrics import baselines  # noqa: E402
from components.tokenizer.model import CoordTok  # noqa: E402
from components.tokenizer.released import ReleasedCoordTok  # noqa: E402
from components.tokenizer.training import (  # noqa: E402
    PretrainRunner, eval_clips, evaluate_reconstruction, lr_factor, pretrain_tokens_per_clip,
)
from pipelines.common.trainer import autocast_dtype, step_activation  # noqa: E402

DEFAULT_CANDIDATES = [
    "project, vit init:variant=native,init=vit",
    "released, vit init:variant=released,init=vit",
    "released, release init:variant=released,init=release",
    "project, release init:variant=native,init=release",
]
MODEL_CLASSES = {"native": CoordTok, "released": ReleasedCoordTok}


def parse_candidate(spec: str) -> tuple[str, dict[str, str]]:
    label, _, rest = spec.partition(":")
    pairs = [kv for kv in rest.split(",") if kv.strip()]
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise SystemExit(f"candidate {spec!r}: {bad} are not key=value")
    return label.strip() or rest, dict(kv.strip().split("=", 1) for kv in pairs)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


# ------------------------------------------------------------------------------ baselines


def same_numbers_grid(num_values: int, frames: int, size: int) -> tuple[int, int]:
    """(spatial side g, frames f) of the training stages' same-numbers grid (components.metrics.baselines)
    for a cubic triplane (T' = H' = W', the embedded default's)."""
    f, g, _ = baselines.same_numbers_grid(num_values, (frames, size, size), (1, 1, 1))
    return g, f


def baseline_psnrs(clips: np.ndarray, valid: np.ndarray, num_values: int) -> dict[str, float]:
    """Mean-over-clips PSNR (dB) of the training stages' naive baselines (components.metrics.baselines)."""
    g, f = same_numbers_grid(num_values, clips.shape[1], clips.shape[2])
    per_video = baselines.baseline_psnrs(clips, valid, (f, g, g))
    return {name.replace("_", " "): float(np.mean(v)) for name, v in per_video.items()}


# ------------------------------------------------------------------------------ one candidate


def train_candidate(label: str, settings: dict[str, str], base: dict, processed: Path, index: pd.DataFrame,
                    budgets: list[float], clock: str, schedule: str, train_clips: tuple[np.ndarray, np.ndarray],
                    ) -> list[dict]:
    settings = dict(settings)
    variant = settings.pop("variant", "native")
    init = settings.pop("init", None)
    tokenizer = {k: _value(settings.pop(k)) for k in ("plane_skip",) if k in settings}
    if variant not in MODEL_CLASSES:
        raise SystemExit(f"candidate {label!r}: variant must be one of {sorted(MODEL_CLASSES)}")
    dumped = {**base, "tokenizer": {**base["tokenizer"], **tokenizer},
              "pretrain": {**base["pretrain"], **{k: _value(v) for k, v in settings.items()}}}
    if schedule == "budget":
        dumped["pretrain"]["steps"] = 10**9  # resized after the first steps
    params = validate_params(dumped)
    device = torch.device("cpu")
    arch = params.tokenizer.arch
    tokens = pretrain_tokens_per_clip(params.data, arch, params.pretrain.sampling_ratio)
    amp = autocast_dtype(params.pretrain.precision, device, step_activation(params.pretrain.batch_size, tokens,
                                                                            arch.width))  # as the stage picks
    runner = PretrainRunner(params, processed, index, device, amp, model_class=MODEL_CLASSES[variant], init=init)
    runner.model.train()
    cfg = params.pretrain

    def now() -> float:
        return time.process_time() if clock == "cpu" else time.perf_counter()

    rows, step, spent, wall = [], 0, 0.0, 0.0
    for budget in budgets:
        while spent < budget:
            t0, w0 = now(), time.perf_counter()
            runner.train_step(step)
            step += 1
            spent += now() - t0
            wall += time.perf_counter() - w0
            if schedule == "budget" and step == 10:
                total = max(step + 1, int(max(budgets) / (spent / step)))
                runner.sched.lr_lambdas[0] = (lambda s, total=total: lr_factor(s, total, cfg.warmup_steps,
                                                                                 cfg.min_lr_ratio))
        test = runner.evaluate()
        train = evaluate_reconstruction(runner.core, *train_clips, runner.group_frames, device, amp)
        rows.append({"candidate": label, "budget": budget, "steps": step, "seconds": spent, "wall_seconds": wall,
                     "seconds_per_step": spent / step, "train_psnr": train.psnr, "test_psnr": test.psnr,
                     "precision": "bf16" if amp is not None else "fp32"})
        print(f"  {label}: {budget:g} {clock}-s -> {step} steps, train {train.psnr:.2f} dB, "
              f"test {test.psnr:.2f} dB", flush=True)
    return rows


def curve_from_mlflow(run_root: Path) -> pd.DataFrame:
    """The evaluation rows logged so far by RUN_ROOT's latest pretrain run (a run still going, or
    stopped before the stage wrote plots/pretrain/eval.csv)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_root / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'pretrain'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no pretrain run in {run_root / 'mlruns.db'}")
    cols = {}
    for key in ("test_psnr", "test_ssim", "baseline_psnr", "cpu_seconds", "wall_seconds"):
        cols[key] = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, key)}
    return pd.DataFrame(cols).rename_axis("step").reset_index().sort_values("step")


def write_curve(run_root: Path, out: Path) -> int:
    """A pretrain run's learning curve (RUN_ROOT/plots/pretrain/eval.csv: test PSNR vs step, process
    CPU-seconds and wall seconds) with the baselines of its own evaluation clips as constant columns."""
    from components.io import atomic_write_text

    params = load_params(run_root / "params.yaml")
    processed = run_root / "data/processed"
    index = pd.read_parquet(processed / "index.parquet")
    _, x, n = eval_clips(processed, index[index.split == "test"], params.data.num_frames, params.pretrain.eval_videos)
    arch = params.tokenizer.arch
    base = baseline_psnrs(x, n, arch.num_tokens * arch.latent_n_features)
    eval_csv = run_root / "plots/pretrain/eval.csv"
    curve = pd.read_csv(eval_csv) if eval_csv.is_file() else curve_from_mlflow(run_root)
    for name, value in base.items():
        curve["baseline_" + name.replace(" ", "_") + "_psnr"] = value
    atomic_write_text(out, curve.to_csv(index=False))
    print(f"# {len(x)} test clips of {run_root}; baselines (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in base.items()))
    print(curve.to_string(index=False))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", type=Path, default=REPO / "data/processed", help="processed store (preprocess stage)")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params: data, tokenizer, pretrain recipe")
    p.add_argument("--budgets", default="60,300", help="comma-separated training budgets in seconds (default 60,300)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU-seconds (default) or wall")
    p.add_argument("--schedule", choices=("budget", "params"), default="budget",
                   help="budget: cosine sized to the largest budget; params: pretrain.steps as given")
    p.add_argument("--candidate", action="append", default=None, metavar="LABEL:KEY=VALUE,...",
                   help="a candidate (repeatable); default: project / released x vit / release init")
    p.add_argument("--train-videos", type=int, default=8, help="training clips reconstructed for train PSNR")
    p.add_argument("--eval-videos", type=int, default=None, help="test clips (default pretrain.eval_videos)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--curve", type=Path, default=None, metavar="RUN_ROOT",
                   help="instead: write RUN_ROOT's pretrain curve with its baselines to --out (no training)")
    p.add_argument("--out", type=Path, default=REPO / "plots/cpu_hour/curve.csv", help="csv for --curve")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.curve is not None:
        return write_curve(args.curve, args.out)

    budgets = sorted(float(b) for b in args.budgets.split(","))
    params = load_params(args.params)
    if args.eval_videos is not None:
        params = validate_params({**params.model_dump(mode="json"),
                                  "pretrain": {**params.pretrain.model_dump(mode="json"), "eval_videos": args.eval_videos}})
    index_path = args.processed / "index.parquet"
    if not index_path.is_file():
        print(f"no processed store at {args.processed}: run `dvc repro preprocess` first", file=sys.stderr)
        return 2
    index = pd.read_parquet(index_path)
    data, arch = params.data, params.tokenizer.arch
    _, test_x, test_n = eval_clips(args.processed, index[index.split == "test"], data.num_frames,
                                   params.pretrain.eval_videos)
    _, train_x, train_n = eval_clips(args.processed, index[index.split == "train"], data.num_frames, args.train_videos)
    num_values = arch.num_tokens * arch.latent_n_features
    g, f = same_numbers_grid(num_values, data.num_frames, data.img_size)
    base_test = baseline_psnrs(test_x, test_n, num_values)
    base_train = baseline_psnrs(train_x, train_n, num_values)

    print(machine_note())
    print(f"# {len(test_x)} test / {len(train_x)} train clips, {data.num_frames} frames at {data.img_size}px; "
          f"triplane {arch.num_tokens} tokens x {arch.latent_n_features} = {num_values} numbers; same-numbers grid "
          f"{g}x{g}x{f} x 3; {args.threads} threads; budgets {budgets} {args.clock}-seconds", flush=True)
    rows = []
    for spec in args.candidate or DEFAULT_CANDIDATES:
        label, settings = parse_candidate(spec)
        rows += train_candidate(label, settings, params.model_dump(mode="json"), args.processed, index, budgets,
                                args.clock, args.schedule, (train_x, train_n))

    frame = pd.DataFrame(rows)
    out = [[r.candidate, f"{r.budget:g}", r.steps, r.seconds_per_step, r.wall_seconds, r.train_psnr, r.test_psnr,
            r.test_psnr - base_test["same numbers"]] for r in frame.itertuples()]
    for name in base_test:
        out.append([f"baseline: {name}", "-", "-", "-", "-", base_train[name], base_test[name],
                    base_test[name] - base_test["same numbers"]])
    print(table(["candidate", f"budget ({args.clock}-s)", "steps", f"{args.clock}-s/step", "wall s",
                 "train PSNR", "test PSNR", "vs same numbers"], out,
                title="== tokenizer learning per budget (PSNR in dB, mean over clips) =="))
    print_json("tokenizer_learning", {"clock": args.clock, "threads": args.threads, "budgets": budgets,
                                      "baselines_test": base_test, "baselines_train": base_train,
                                      "same_numbers_grid": [g, g, f], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
