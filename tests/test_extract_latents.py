"""Latent store (clip rows, writer/reader, random access) and the extract_latents stage on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import shrink

from components.config import load_params
from components.generator.latent_stats import PLANES, LatentStats
from components.generator.store import (
    LatentStore,
    LatentWriter,
    clip_rows,
    position_moments,
)


def test_clip_rows_first_and_windows():
    index = pd.DataFrame({"video_id": ["b", "a"], "label": [1, 0], "split": ["train", "train"],
                          "frames_path": ["fb", "fa"], "n_frames": [20, 5]})
    first = clip_rows(index, 8, "first")
    assert first[["video_id", "start", "n_valid"]].values.tolist() == [["a", 0, 5], ["b", 0, 8]]
    win = clip_rows(index, 8, "windows")
    assert win[["video_id", "start", "n_valid"]].values.tolist() == [["a", 0, 5], ["b", 0, 8], ["b", 8, 8]]
    assert list(win.row) == [0, 1, 2]


def test_store_roundtrip_random_access_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    shapes = ((3, 4, 4), (3, 2, 4), (3, 2, 4))
    n = 10
    data = [rng.normal(5.0, 0.1 + np.arange(3)[None, :, None, None], size=(n, *s)).astype(np.float16) for s in shapes]
    w = LatentWriter(tmp_path / "lat", n, shapes, "float16")
    order = rng.permutation(n)
    stats = LatentStats(3)
    for chunk in np.array_split(order, 3):  # out of order, like actor results
        w.write(chunk, [d[chunk] for d in data])
        stats.merge(LatentStats(3).update([torch.from_numpy(d[chunk].astype(np.float32)) for d in data]))
    index = pd.DataFrame({"row": np.arange(n)[::-1], "video_id": [f"v{i}" for i in range(n)][::-1],
                          "label": [i % 2 for i in range(n)][::-1], "split": "train", "start": 0, "n_valid": 8})
    w.close(index, stats, {"note": "t"})
    store = LatentStore(tmp_path / "lat")
    assert len(store) == n and store.plane_shapes == shapes and store.meta["dtype"] == "float16"
    assert list(store.index.row) == list(range(n)) and store.index.video_id[3] == "v3"
    got = store.planes([7, 2, 7])
    for k in range(3):
        np.testing.assert_array_equal(got[k].numpy(), data[k][[7, 2, 7]].astype(np.float32))
    # Merged per-batch stats = a direct float64 computation over the stored values.
    for name, d in zip(PLANES, data):
        x = d.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
        np.testing.assert_allclose(store.stats.mean(name), x.mean(1), rtol=1e-12)
        np.testing.assert_allclose(store.stats.std(name), x.std(1), rtol=1e-9)
    pm = position_moments(store.chunks(size=3))
    np.testing.assert_allclose(pm["yt"][0], data[1].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(pm["yt"][1], data[1].astype(np.float64).std(0), rtol=1e-6, atol=1e-9)


def test_writer_refuses_missing_rows_and_reader_names_the_fix(tmp_path):
    from components.errors import UserError

    w = LatentWriter(tmp_path / "lat", 3, ((1, 2, 2),) * 3)
    w.write([0, 2], [np.zeros((2, 1, 2, 2), np.float16)] * 3)
    with pytest.raises(RuntimeError, match="never written"):
        w.close(pd.DataFrame({"row": [0, 1, 2]}), LatentStats(1), {})
    with pytest.raises(UserError, match="extract_latents"):
        LatentStore(tmp_path / "nothing")


@pytest.fixture(scope="module")
def extract_root(tmp_path_factory, ray_local) -> Path:
    """A tiny processed set plus a tiny tokenizer at models/tokenizer/finetune.pt."""
    from components.tokenizer.model import CoordTok
    from pipelines.common.trainer import save_model_file
    from pipelines.preprocess import preprocess
    from pipelines.synthesize import synthesize

    root = tmp_path_factory.mktemp("lat")
    raw = shrink(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text()), root)
    raw["extract_latents"] = {**raw.get("extract_latents", {}), "num_actors": 1, "batch_size": 3,
                              "cpus_per_actor": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    synthesize(params, root)
    preprocess(params, root)
    torch.manual_seed(0)
    model = CoordTok(params.tokenizer.arch, params.data.img_size, params.data.num_frames)
    save_model_file(root / "models/tokenizer/finetune.pt", {"config": model.config, "model": model.state_dict()})
    return root


@pytest.mark.slow
def test_extract_latents_stage_encodes_every_clip_with_exact_stats(extract_root):
    from components.data.store import FrameFile
    from components.tokenizer.released import load_tokenizer
    from components.data.pixels import to_unit
    from pipelines.extract_latents import extract_latents

    root = extract_root
    params = load_params(root / "params.yaml")
    summary = extract_latents(params, root)
    index = pd.read_parquet(root / "data/processed/index.parquet")
    train = index[index.split == "train"].sort_values("video_id").reset_index(drop=True)
    store = LatentStore(root / "latents")
    assert summary["clips"] == len(store) == len(train) and summary["clips_per_second"] > 0
    assert json.loads((root / "metrics/extract_latents.json").read_text()) == summary
    assert list(store.index.video_id) == list(train.video_id) and store.arrays["xy"].dtype == np.float16
    # Stats = direct computation over the whole store.
    for name in PLANES:
        x = np.asarray(store.arrays[name], np.float64).transpose(1, 0, 2, 3).reshape(store.stats.channels, -1)
        np.testing.assert_allclose(store.stats.mean(name), x.mean(1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(store.stats.std(name), x.std(1), rtol=1e-8)
    # Row 1 = the tokenizer's encoding of that video's first clip (fp16 rounding).
    tok = load_tokenizer(root / "models/tokenizer/finetune.pt").eval()
    r = store.index.iloc[1]
    f = FrameFile(root / "data/processed" / train.loc[1, "frames_path"])
    clip = np.zeros((params.data.num_frames, f.header.height, f.header.width, 3), np.uint8)
    clip[:r.n_valid] = f.read(0, int(r.n_valid))
    with torch.no_grad():
        ref = tok.encode(to_unit(torch.from_numpy(clip[None])), torch.tensor([int(r.n_valid)]))
    for got, want in zip(store.planes([1]), (ref.xy, ref.yt, ref.xt)):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    assert not any(p.name.startswith(".") for p in root.iterdir() if "latents" in p.name)  # no staging leftovers
