"""extract_latents throughput (clips/s) with 1 and 2 Ray Data actors on a local Ray cluster.

Input: `--videos` synthetic videos written straight to the frame store at data.img_size (no AVI
decode: the stage reads preprocessed frames), a random-init tokenizer of the embedded default
(tokenizer.preset at data.img_size x data.num_frames; a trained one costs the same), saved as a
checkpoint that each actor loads. The stage's own pipeline (pipelines.extract_latents.encode_to_store:
from_pandas -> map_batches with an ActorPoolStrategy -> store writer + merged stats) runs once per
actor count, `--cpus-per-actor` CPUs and one torch thread per actor, batch `--batch-size`.
Reported: clips/s over the whole run (actor start-up and model load included) and the time to the
first batch (mostly that start-up). Prints figures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, print_json, table
from sit_cached_vs_reencode import default_params, make_frame_store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=160, help="clips to encode (default 160)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts tried (default 1 2)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per actor call (default 4)")
    p.add_argument("--cpus-per-actor", type=float, default=0.5, help="Ray CPUs per actor (default 0.5)")
    p.add_argument("--num-cpus", type=int, default=2, help="local Ray cluster CPUs (default 2)")
    args = p.parse_args()

    # isort: off
    import pipelines  # noqa: F401 - first: it sets RAY_AUTH_MODE, which Ray reads when imported
    import ray
    # isort: on
    import torch

    from components.generator.store import clip_rows
    from components.tokenizer.model import CoordTok
    from pipelines.common.trainer import save_model_file
    from pipelines.extract_latents import encode_to_store

    torch.set_num_threads(1)
    params = default_params(extract_latents={"batch_size": args.batch_size, "cpus_per_actor": args.cpus_per_actor})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = make_frame_store(tmp, args.videos, params)
        rows = clip_rows(index, params.data.num_frames, "first")
        torch.manual_seed(0)
        tok = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames)
        save_model_file(tmp / "tok.pt", {"config": tok.config, "model": tok.state_dict()})
        a = tok.arch
        shapes = ((a.latent_n_features, a.latent_resolution_xy, a.latent_resolution_xy),
                  (a.latent_n_features, a.latent_resolution_t, a.latent_resolution_xy),
                  (a.latent_n_features, a.latent_resolution_t, a.latent_resolution_xy))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            for n in args.actors:
                res = encode_to_store(rows, tmp / f"latents{n}", params, tmp / "tok.pt", tmp, shapes, {},
                                      num_actors=n)
                results.append([n, res["clips"], res["seconds"], res["first_batch_seconds"], res["clips_per_second"]])
        finally:
            ray.shutdown()
    print(machine_note())
    print(table(["actors", "clips", "seconds", "first batch (s)", "clips/s"], results,
                title=f"extract_latents, {params.tokenizer.preset} {params.data.img_size}px x {params.data.num_frames} "
                      f"frames, batch {args.batch_size}, {args.cpus_per_actor} CPU/actor, {args.num_cpus}-CPU cluster"))
    if len(results) >= 2:
        print(f"scaling {results[0][0]} -> {results[-1][0]} actors: x{results[-1][4] / results[0][4]:.2f}")
    print_json("extract_throughput", {"runs": [dict(zip(["actors", "clips", "seconds", "first_batch_seconds", "clips_per_s"], r))
                                               for r in results]})


if __name__ == "__main__":
    main()
