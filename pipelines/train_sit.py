"""Stage `train_sit`: the SiT generator on the cached latents (no tokenizer in the loop), on Ray Train.

Each step draws `train_sit.batch_size` latents from latents/ (each item a pure function of seed,
step and its place in the global batch, so a resumed run and any number of workers see the same batches), normalises them with latents/stats.json and
minimises the transport loss (linear path, velocity prediction); AdamW, warm-up + cosine schedule,
EMA of the weights. Evaluation samples `eval_samples` latents with the EMA model (`eval_sampler`,
`eval_steps`) and measures how far their statistics are from the data's, in data-std units:
`stats_distance` per plane and channel (mean, std) and `position_distance` per plane, channel and
position. An untrained SiT (adaLN-Zero: zero velocity, so its samples are the noise) is measured
the same way for reference. Checkpoints, resume, MLflow and output files: pipelines/common/trainer.py.
Outputs: models/sit/sit.pt (config, raw + EMA weights, latent stats, step), metrics/train_sit.json,
plots/train_sit/{loss,eval}.csv.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.config import Params, resolve_path, validate_params
from components.errors import UserError
from pipelines.common import trainer
from pipelines.common.cli import main_for, quiet_third_party
from pipelines.common.report import print_summary
from pipelines.common.tracking import resolve_tracking_uri, stage_run

log = logging.getLogger("train_sit")

LATENTS_DIR = "latents"
MODEL_OUT = "models/sit/sit.pt"
METRICS_OUT = "metrics/train_sit.json"
PLOTS_DIR = "plots/train_sit"
EVAL_COLS = ["stats_distance", "position_distance"]


def build_sit(params: Params, store) -> Any:
    """A fresh SiT (seeded) shaped like the store's latents."""
    from components.generator.presets import sit_preset
    from components.generator.sit import SiT

    cfg = params.train_sit
    (c, s, _), (_, t, _), _ = store.plane_shapes
    num_classes = int(store.meta.get("num_classes", int(store.labels.max()) + 1)) if cfg.class_conditional else 0
    torch.manual_seed(cfg.seed)
    return SiT(sit_preset(cfg.preset), c, s, t, num_classes=num_classes,
               class_dropout_prob=cfg.label_dropout if cfg.class_conditional else 0.0)


def item_generator(seed: int, step: int, item: int) -> torch.Generator:
    """The torch generator of one item of a step's global batch: a function of (seed, step, item)
    only, so any split over workers and micro-steps draws the same rows, times and noise."""
    from components.data.sampling import item_seed

    state = np.random.SeedSequence(item_seed(seed, step, item, stream=2)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def draw_items(seed: int, step: int, items, n_rows: int, shapes, transport, label_dropout: float):
    """Store rows [B], times [B], noise per plane [B, ...] and label-drop flags [B] of the given items
    (drawn on the CPU: identical on any device, after a resume and for any number of workers)."""
    rows, ts, drops, noise = [], [], [], [[] for _ in shapes]
    for item in items:
        gen = item_generator(seed, step, int(item))
        rows.append(int(torch.randint(n_rows, (1,), generator=gen)))
        ts.append(transport.sample_t(1, generator=gen))
        for parts, shape in zip(noise, shapes):
            parts.append(torch.randn(shape, generator=gen))
        drops.append(torch.rand(1, generator=gen) < label_dropout)
    return (np.asarray(rows, np.int64), torch.cat(ts), tuple(torch.stack(p) for p in noise), torch.cat(drops))


def data_position_moments(store, batch: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-position moments of the normalised data (the reference of `position_distance`)."""
    from components.generator.latent_stats import normalize
    from components.generator.store import position_moments

    return position_moments(normalize(p, store.stats) for p in store.chunks(batch))


@torch.no_grad()
def sample_distances(sit, reference: dict[str, tuple[np.ndarray, np.ndarray]], n: int, sampler: str, steps: int,
                     seed: int, device) -> dict[str, float]:
    """Generate n normalised latents with `sit`; their distance to the normalised data's statistics.

    stats_distance: RMS over (plane, channel) of (mean, std - 1) -- normalised data has mean 0, std 1
    per channel. position_distance: RMS over (plane, channel, position) of the differences of
    per-position mean and std to `reference`.
    """
    from components.generator.latent_stats import LatentStats
    from components.generator.sampling import (
        initial_noise,
        sample_latents,
        video_generators,
    )
    from components.generator.store import position_moments

    was_training = sit.training
    sit.eval()
    gens = video_generators(seed, range(n))
    noise = initial_noise(sit, gens, device)
    labels = (torch.arange(n, device=device) % sit.num_classes) if sit.num_classes else None
    out = sample_latents(sit, noise, sampler=sampler, steps=steps, labels=labels, generators=gens)
    sit.train(was_training)
    planes = (out.xy.float(), out.yt.float(), out.xt.float())
    stats = LatentStats(planes[0].shape[1]).update(planes)
    ch = [np.concatenate([stats.mean(p), stats.std(p) - 1.0]) for p in ("xy", "yt", "xt")]
    pm = position_moments([planes])
    pos = [np.concatenate([(pm[p][0] - reference[p][0]).ravel(), (pm[p][1] - reference[p][1]).ravel()])
           for p in ("xy", "yt", "xt")]
    return {"stats_distance": float(np.sqrt(np.mean(np.concatenate(ch) ** 2))),
            "position_distance": float(np.sqrt(np.mean(np.concatenate(pos) ** 2)))}


class SiTRunner:
    """One process's share of a SiT training run: the model (already holding its start weights), its
    EMA, AdamW + schedule and the step's global sample plan over the latent store.

    The train_sit stage's Ray Train workers wrap `ddp` for DDP (`runner.ddp = prepare_model(runner.model)`)
    after restoring a checkpoint; tests/ddp_worker.py wraps it in plain DDP.
    """

    def __init__(self, cfg, model: torch.nn.Module, store, device, amp: torch.dtype | None = None, rank: int = 0,
                 world: int = 1):
        from components.data.sampling import SamplePlan
        from components.generator.transport import Transport
        from components.tokenizer.training import adamw_with_schedule

        self.cfg, self.store, self.device, self.amp, self.rank = cfg, store, device, amp, rank
        self.model = model
        self.ddp: torch.nn.Module = model  # what the step runs (a DDP wrapper in the stage)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.opt, self.sched = adamw_with_schedule(model.parameters(), cfg, betas=(0.9, 0.999))  # SiT's AdamW defaults
        self.transport = Transport(cfg.path)
        self.plan = SamplePlan(cfg.batch_size, world, cfg.grad_accum)
        self.labels = torch.from_numpy(store.labels)

    def train_step(self, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step (with gradient accumulation) and EMA update on this rank's slices of the
        step's global batch; returns ({loss of the global batch, grad_norm}, latents this rank saw)."""
        from components.generator.latent_stats import normalize
        from components.generator.sit import ema_update
        from components.parallel import global_sum, micro_step

        cfg, device, plan, store = self.cfg, self.device, self.plan, self.store
        loss_sum, seen = 0.0, 0
        for micro in range(cfg.grad_accum):
            items = plan.items(self.rank, micro)
            rows, t, noise, drops = draw_items(cfg.seed, step, items, len(store), store.plane_shapes, self.transport,
                                               cfg.label_dropout)
            x1 = normalize(store.planes(rows, device), store.stats)
            t, noise = t.to(device), tuple(n.to(device) for n in noise)
            kwargs: dict[str, Any] = {}
            if self.model.num_classes:
                kwargs["y"] = self.labels[rows].to(device)
                kwargs["force_drop_ids"] = drops.to(device)
            with micro_step(self.ddp, micro, cfg.grad_accum):
                with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    # The slice's mean x its share of the global batch; x world undoes DDP's averaging.
                    loss = self.transport.training_losses(self.ddp, x1, t=t, noise=noise,
                                                          model_kwargs=kwargs)["loss"].mean() * plan.share
                (loss * plan.world).backward()
            loss_sum += loss.item()
            seen += len(items)
        loss_sum = global_sum(loss_sum, device)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        ema_update(self.ema, self.model, cfg.ema_decay)
        return {"loss": loss_sum, "grad_norm": float(grad_norm)}, seen

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "config": self.model.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])


# ------------------------------------------------------------------------------ worker side


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker; rank 0 also evaluates, checkpoints and logs to MLflow."""
    import ray.train.torch

    from components.generator.store import LatentStore

    params = validate_params(config["params"])
    cfg = params.train_sit
    from components.generator.presets import sit_preset

    sit_arch, tok_arch = sit_preset(cfg.preset), params.tokenizer.arch
    grid_xy, grid_t = tok_arch.latent_resolution_xy // sit_arch.patch_size, tok_arch.latent_resolution_t // sit_arch.patch_size
    worker = trainer.TrainWorker(config, cfg, grid_xy * grid_xy + 2 * grid_t * grid_xy, sit_arch.hidden_size)
    device = worker.device
    store = LatentStore(config["latents_dir"])

    init = config.get("init_from")
    if init:  # a given checkpoint's architecture (e.g. a converted release: learn_sigma, folded labels)
        from components.generator.checkpoint import read_sit_payload
        from components.generator.sit import SiT

        init_payload = read_sit_payload(init)
        torch.manual_seed(cfg.seed)
        model = SiT.from_config(init_payload["config"]).to(device)
    else:
        model = build_sit(params, store).to(device)
    eval_seed = cfg.seed + 1_000_003  # evaluation noise apart from training noise
    reference = untrained = None
    if worker.is_main:
        reference = data_position_moments(store)
        # The untrained model, before any restore: its weights depend only on the seed.
        untrained = sample_distances(model, reference, cfg.eval_samples, cfg.eval_sampler, cfg.eval_steps,
                                     eval_seed, device)
    if init:
        model.load_state_dict(init_payload.get("model") or init_payload["ema"])
    # The step (sample plan split by rank, loss arithmetic, DDP, EMA) lives in the runner: tests/ddp_worker.py
    # trains the same runner in a plain gloo group to show 2 workers train the 1-worker model.
    runner = SiTRunner(cfg, model, store, device, worker.amp, worker.rank, worker.world)
    ema = runner.ema
    if init and init_payload.get("ema") is not None:
        ema.load_state_dict(init_payload["ema"])

    start = worker.restore(runner.load_state_dict)
    runner.ddp = ray.train.torch.prepare_model(model)

    runner.ddp.train()
    for step in range(start, cfg.steps):
        stepped, seen = runner.train_step(step)
        worker.count(seen)
        done = step + 1
        row: dict[str, float] = {**stepped, "lr": runner.lr}
        if worker.is_main and worker.is_eval_step(done):
            row.update(sample_distances(ema, reference, cfg.eval_samples, cfg.eval_sampler, cfg.eval_steps,
                                        eval_seed, device))
        worker.end_step(done, row, lambda: {**runner.state_dict(), "untrained": untrained})
    worker.finish()


# ------------------------------------------------------------------------------ driver side


def latents_digest(folder: Path) -> str:
    """What identifies the training data: the store's index, stats and meta (stats change with any value)."""
    h = hashlib.sha256()
    for name in ("index.parquet", "stats.json", "meta.json"):
        h.update(trainer.file_digest(folder / name).encode())
    return h.hexdigest()[:16]


def _register(run_id: str, config: dict[str, Any], ema: dict[str, Any]) -> None:
    """Register the EMA SiT as `coordtok-sit` (served as forward(xy, yt, xt, t) -> flat velocity)."""
    import tempfile

    import numpy as np

    from components.generator.sit import SiT
    from pipelines.common.tracking import SIT_MODEL, register_model

    shapes = SiT.from_config(config).plane_shapes
    rng = np.random.default_rng(0)
    example = {name: rng.standard_normal((1, *shape)).astype(np.float32) for name, shape in zip(("xy", "yt", "xt"), shapes)}
    example["t"] = np.array([0.5], np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "sit_ema.pt"
        trainer.save_model_file(served, {"config": config, "model": ema})
        register_model(run_id, served, SIT_MODEL, "components.generator.checkpoint:served_sit_from_config",
                       config=config, input_example=example, tags={"checkpoint": MODEL_OUT, "weights": "ema"})


def train_sit(params: Params, root: Path) -> dict[str, Any]:
    """Train the SiT on latents/; returns the metrics written to metrics/train_sit.json."""
    quiet_third_party()
    import pandas as pd

    from components.generator.checkpoint import payload_from_states
    from components.generator.presets import sit_preset
    from components.generator.store import LatentStore

    cfg = params.train_sit
    sit_preset(cfg.preset)  # an unknown name is one clear error before Ray starts
    latents = resolve_path(root, LATENTS_DIR)
    store = LatentStore(latents)
    if store.meta.get("num_frames") not in (None, params.data.num_frames):
        raise UserError(f"latents/ holds {store.meta['num_frames']}-frame clips but data.num_frames is "
                        f"{params.data.num_frames}; rerun extract_latents")
    built = build_sit(params, store)  # plane shapes vs the preset's patch size: fail here, not in a worker
    init = None
    if cfg.init_from:
        from components.generator.checkpoint import read_sit_payload

        init = resolve_path(root, cfg.init_from)
        got = read_sit_payload(init)["config"]
        keys = ("in_channels", "resolution_xy", "resolution_t")
        if any(int(got[k]) != int(built.config[k]) for k in keys):
            raise UserError(f"train_sit.init_from = {cfg.init_from!r} has planes "
                            f"{tuple(got[k] for k in keys)} but latents/ holds {tuple(built.config[k] for k in keys)} "
                            "(channels, H', T'); extract latents with the matching tokenizer or change init_from")
    storage = resolve_path(root, cfg.storage_path).resolve()
    name = trainer.run_name("train_sit", params, ("train_sit",),
                            {"latents": latents_digest(latents),
                             "init_sha256": trainer.file_digest(init) if init else None})
    suffix = f"{cfg.preset} steps={cfg.steps} batch={cfg.batch_size} lr={cfg.lr:g}"
    with stage_run(params, root, "train_sit", suffix, extra_tags={"ray.run_name": name}, system_metrics=True) as run:
        started = time.perf_counter()
        state = trainer.fit(params, cfg, train_loop_per_worker,
                            {"params": params.model_dump(mode="json"), "latents_dir": str(latents),
                             "init_from": str(init) if init else None,
                             "mlflow_run_id": run.info.run_id, "tracking_uri": resolve_tracking_uri(params, root)},
                            name, storage)
        wall = time.perf_counter() - started
        history = pd.DataFrame(state["history"])
        k = max(1, min(20, len(history) // 5))  # per-step losses are noisy (random t): compare window means
        last_eval = history.dropna(subset=["stats_distance"]).iloc[-1]
        untrained = state["untrained"]
        summary = {
            "step": int(state["step"]), "latents": len(store), "preset": cfg.preset,
            "train_loss_first": float(history["loss"].iloc[:k].mean()),
            "train_loss": float(history["loss"].iloc[-k:].mean()), "loss_window_steps": k,
            "stats_distance_trained": float(last_eval["stats_distance"]),
            "stats_distance_untrained": float(untrained["stats_distance"]),
            "position_distance_trained": float(last_eval["position_distance"]),
            "position_distance_untrained": float(untrained["position_distance"]),
            "eval_samples": cfg.eval_samples, "eval_sampler": cfg.eval_sampler, "eval_steps": cfg.eval_steps,
            "precision": state.get("precision", "fp32"),
        }
        trainer.save_model_file(root / MODEL_OUT, payload_from_states(
            state["config"], state["model"], state["ema"], store.stats, state["step"],
            ema_decay=cfg.ema_decay, latents_digest=latents_digest(latents)))
        trainer.write_curves(root / PLOTS_DIR, state["history"], ["loss", "grad_norm", "lr"], EVAL_COLS)
        trainer.write_metrics(root / METRICS_OUT, summary, wall)
        if params.mlflow.register_models:
            _register(run.info.run_id, state["config"], state["ema"])
    print_summary("train_sit", [
        ("preset, steps, latents", f"{cfg.preset}, {summary['step']:,}, {len(store):,}"),
        (f"train loss (mean of {k} steps) first -> last", f"{summary['train_loss_first']:.4f} -> {summary['train_loss']:.4f}"),
        ("per-channel stats distance trained / untrained",
         f"{summary['stats_distance_trained']:.4f} / {summary['stats_distance_untrained']:.4f}"),
        ("per-position stats distance trained / untrained",
         f"{summary['position_distance_trained']:.4f} / {summary['position_distance_untrained']:.4f}"),
        ("wall seconds", wall), ("model", MODEL_OUT)])
    return summary


if __name__ == "__main__":
    main_for("train_sit", train_sit)
