"""fp32 vs bf16 autocast: time per training step of pretrain, finetune and train_sit at the sizes params give.

Each stage's step is built as the stage builds it (model, AdamW, clip, loss) from params.yaml
(embedded default: CoordTok-tiny at 64x64x32, batch 8, 256 sampled patches; finetune batch 4 x 4
frames; SiT-tiny/2 batch 16 on the 8x8x8 triplane), on random inputs of the right shapes (timing
does not depend on pixel values). Finetune is timed on its l2 term only: its LPIPS term runs in
fp32 under either setting (components/tokenizer/finetuning.py), so it adds the same time to both.

fp32 and bf16 steps are timed in interleaved rounds after warm-up, so load from other processes
hits both alike; per step it prints the median process CPU-seconds (all torch threads; what a
shared machine charges) and wall seconds, and the bf16/fp32 ratio. `precision: auto` on a CPU
picks bf16 for a stage only where this ratio is clearly below 1 (pipelines/common/trainer.py).

    python benchmarks/training_precision.py [--rounds 3] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_note, print_json, table  # noqa: E402

import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.generator.presets import sit_preset  # noqa: E402
from components.generator.sit import SiT  # noqa: E402
from components.generator.transport import Transport  # noqa: E402
from components.tokenizer.finetuning import FrameSamplingModel  # noqa: E402
from components.tokenizer.model import CoordTok  # noqa: E402
from components.tokenizer.training import adamw_with_schedule  # noqa: E402
from pipelines.common.trainer import cpu_has_fast_bf16  # noqa: E402


def _autocast(amp):
    """bf16 autocast when `amp` is a dtype, plain fp32 when None."""
    return torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)


def _apply(loss, model, opt, grad_clip) -> None:
    """The stages' update: backward, clip, AdamW step, zero grads."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def pretrain_step(params):
    data, arch, cfg = params.data, params.tokenizer.arch, params.pretrain
    model = CoordTok(arch, data.img_size, data.num_frames)
    opt, _ = adamw_with_schedule(model.parameters(), cfg)
    n_total = (data.num_frames // arch.dec_patch_size_t) * (data.img_size // arch.dec_patch_size_xy) ** 2
    n = max(1, round(cfg.sampling_ratio * n_total))
    b = cfg.batch_size
    video = torch.rand(b, data.num_frames, data.img_size, data.img_size, 3) * 2 - 1
    coords = torch.rand(b, n, 3)
    target = torch.rand(b, n, arch.dec_patch_size_t * arch.dec_patch_size_xy ** 2 * 3) * 2 - 1
    frames = torch.full((b,), data.num_frames)

    def step(amp):
        with _autocast(amp):
            pred = model(video, coords, frames)
        _apply(torch.nn.functional.mse_loss(pred.float(), target), model, opt, cfg.grad_clip)
    return step, f"{params.tokenizer.preset}, batch {b} x {n} patches"


def finetune_step(params):
    data, arch, cfg = params.data, params.tokenizer.arch, params.finetune
    model = FrameSamplingModel(CoordTok(arch, data.img_size, data.num_frames))
    opt, _ = adamw_with_schedule(model.parameters(), cfg)
    b, length = cfg.batch_size, params.tokenizer.group_frames
    groups = max(1, cfg.frames_per_video // (length * arch.dec_patch_size_t))
    nt = data.num_frames // arch.dec_patch_size_t
    video = torch.rand(b, data.num_frames, data.img_size, data.img_size, 3) * 2 - 1
    starts = (torch.arange(groups) * length % nt).repeat(b, 1)
    frames = torch.full((b,), data.num_frames)
    target = torch.rand(b, groups, length * arch.dec_patch_size_t, data.img_size, data.img_size, 3) * 2 - 1

    def step(amp):
        with _autocast(amp):
            pred = model(video, frames, starts, length)
        _apply(torch.nn.functional.mse_loss(pred.float(), target), model, opt, cfg.grad_clip)
    return step, f"{params.tokenizer.preset}, batch {b} x {groups * length * arch.dec_patch_size_t} frames (l2 only)"


def train_sit_step(params):
    arch, cfg = params.tokenizer.arch, params.train_sit
    c, s, t = arch.latent_n_features, arch.latent_resolution_xy, arch.latent_resolution_t
    model = SiT(sit_preset(cfg.preset), c, s, t)
    opt, _ = adamw_with_schedule(model.parameters(), cfg, betas=(0.9, 0.999))
    transport = Transport(cfg.path)
    b = cfg.batch_size
    x1 = (torch.randn(b, c, s, s), torch.randn(b, c, t, s), torch.randn(b, c, t, s))
    gen = torch.Generator().manual_seed(0)

    def step(amp):
        tt = transport.sample_t(b, generator=gen)
        noise = tuple(torch.randn(x.shape, generator=gen) for x in x1)
        with _autocast(amp):
            loss = transport.training_losses(model, x1, t=tt, noise=noise)["loss"].mean()
        _apply(loss, model, opt, cfg.grad_clip)
    return step, f"{cfg.preset}, batch {b}"


STAGES = {"pretrain": pretrain_step, "finetune": finetune_step, "train_sit": train_sit_step}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    p.add_argument("--rounds", type=int, default=3, help="interleaved fp32/bf16 rounds (default 3)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round and precision (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per precision first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = load_params(args.params)
    print(machine_note())
    print(f"# AVX512-BF16/AMX detected: {cpu_has_fast_bf16()}; {args.threads} threads; {args.rounds} rounds x "
          f"{args.steps} steps per precision", flush=True)
    rows, out = [], {}
    for name in args.stages.split(","):
        step, what = STAGES[name](params)
        times = {"fp32": ([], []), "bf16": ([], [])}
        for amp in (None, torch.bfloat16):
            for _ in range(args.warmup):
                step(amp)
        for _ in range(args.rounds):
            for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
                for _ in range(args.steps):
                    c0, w0 = time.process_time(), time.perf_counter()
                    step(amp)
                    times[label][0].append(time.process_time() - c0)
                    times[label][1].append(time.perf_counter() - w0)
        med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items()}
        ratio = med["bf16"][0] / med["fp32"][0]
        rows.append([name, what, med["fp32"][0], med["bf16"][0], ratio, med["fp32"][1], med["bf16"][1]])
        out[name] = {"what": what, "fp32_cpu_s": med["fp32"][0], "bf16_cpu_s": med["bf16"][0],
                     "fp32_wall_s": med["fp32"][1], "bf16_wall_s": med["bf16"][1], "bf16_over_fp32_cpu": ratio}
        print(f"  {name}: fp32 {med['fp32'][0]:.3f} cpu-s, bf16 {med['bf16'][0]:.3f} cpu-s (x{ratio:.2f})", flush=True)
    print(table(["stage", "step", "fp32 cpu-s", "bf16 cpu-s", "bf16/fp32", "fp32 wall s", "bf16 wall s"], rows,
                title="== training step time, median (process CPU-seconds and wall) =="))
    print_json("training_precision", {"threads": args.threads, "fast_bf16_cpu": cpu_has_fast_bf16(), "stages": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
