"""Importing the released CoordTok / SiT checkpoints (components/checkpoint_import.py, pipelines/import_checkpoint.py).

Released-format files are produced here from this project's compatibility models through the inverse
mapping, so the tests need neither the released code nor the real files. The numerical match with
the released implementation itself was checked outside the repository (docs/released_checkpoints.md).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch

from components.checkpoint_import import (
    ConversionError,
    convert_released_sit,
    convert_released_tokenizer,
    convert_state_dict,
    export_state_dict,
    import_sit,
    import_tokenizer,
    parse_released_stats_log,
    read_released_checkpoint,
    released_sit_mappings,
    released_tokenizer_mappings,
    strip_prefixes,
)
from components.errors import UserError
from components.generator.presets import SIT_PRESETS
from components.generator.sit import SiT
from components.tokenizer.model import CoordTok, Triplane, grid_coords, reconstruct
from components.tokenizer.presets import TOKENIZER_PRESETS
from components.tokenizer.released import (
    ReleasedCoordTok,
    decode_group_frames,
    load_tokenizer,
    tokenizer_from_config,
)
from pipelines import import_checkpoint as cli

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
TINY = TOKENIZER_PRESETS["CoordTok-tiny"]
IMG, FRAMES = 32, 16


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _reference(name: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()
            if line and not line.startswith("#") and not line.startswith("name\t")]
    return {r[0]: tuple(int(x) for x in r[1].split("x")) for r in rows}


def _released_tokenizer_file(tmp_path: Path, seed: int = 0, extra: dict | None = None) -> tuple[Path, ReleasedCoordTok]:
    torch.manual_seed(seed)
    model = _randomize(ReleasedCoordTok(TINY, IMG, FRAMES), seed).eval()
    released = export_state_dict(model.state_dict(), released_tokenizer_mappings(TINY))
    state = {"module." + k: v for k, v in {**released, **(extra or {})}.items()}  # as DDP saves it
    path = tmp_path / "CoordTok_released.pth"
    torch.save({"epoch": 1234, "model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "best_psnr": 28.5}, path)
    return path, model


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

def test_tokenizer_import_reproduces_the_model_bit_for_bit(tmp_path):
    src, model = _released_tokenizer_file(tmp_path)
    out = tmp_path / "models" / "released.pt"
    meta = import_tokenizer(src, out, TINY, IMG, FRAMES)

    ckpt = torch.load(out, weights_only=True)
    assert ckpt["step"] == 1234 and ckpt["config"]["variant"] == "released"
    assert meta["source_tensors_dropped"] == {} and "optimizer" in meta["other_entries_not_converted"]
    imported = load_tokenizer(out).eval()
    assert type(imported) is ReleasedCoordTok
    video = torch.rand(2, FRAMES, IMG, IMG, 3) * 2 - 1
    n_frames = torch.tensor([FRAMES, 9])
    coords = torch.rand(2, 40, 3)
    with torch.no_grad():
        a, b = model.encode(video, n_frames), imported.encode(video, n_frames)
        for pa, pb in zip((a.xy, a.yt, a.xt), (b.xy, b.yt, b.xt)):
            assert torch.equal(pa, pb)
        assert torch.equal(model.decode(a, coords), imported.decode(b, coords))
        assert torch.equal(reconstruct(model, a), reconstruct(imported, b))
        # Decoded as the released sampler does (every frame in one attention context) unless params
        # say otherwise; this project's own models default to one frame per context.
        nt = imported.grid[0]
        assert decode_group_frames(imported, None) == nt > 1 and decode_group_frames(imported, 2) == 2
        assert decode_group_frames(CoordTok(TINY, IMG, FRAMES), None) == 1
        all_at_once = imported.decode(b, grid_coords(imported.grid).expand(2, -1, -1))  # sample_sit's decode_video
        whole = reconstruct(imported, b, group_frames=decode_group_frames(imported, None))
        torch.testing.assert_close(whole, reconstruct(imported, b, group_frames=nt))
        from components.tokenizer.model import unpatchify
        torch.testing.assert_close(whole, unpatchify(all_at_once.reshape(2, *imported.grid, -1), *imported.patch_size))
        assert not torch.allclose(whole, reconstruct(imported, b, group_frames=1))


def test_tokenizer_mapping_covers_the_reference_key_list_at_paper_scale():
    ref = _reference("official_coordtok_paper_config_state_dict.tsv")
    arch = TOKENIZER_PRESETS["CoordTok-L"]
    with torch.device("meta"):
        model = ReleasedCoordTok(arch, 128, 128)
    exported = export_state_dict(model.state_dict(), released_tokenizer_mappings(arch))
    assert {k: tuple(v.shape) for k, v in exported.items()} == ref
    assert sum(p.numel() for p in model.parameters()) == 853_410_496  # the reference's total
    # and the converter accepts exactly those names and shapes (meta tensors: no memory)
    source = {"module." + k: torch.empty(shape, device="meta") for k, shape in ref.items()}
    config, state, report = convert_released_tokenizer(strip_prefixes(source), arch, 128, 128)
    assert set(state) == set(model.state_dict()) and report.dropped == {}
    assert config["variant"] == "released"


def test_conversion_failure_lists_missing_unknown_and_mismatched_tensors():
    with torch.device("meta"):
        model = ReleasedCoordTok(TINY, IMG, FRAMES)
    source = export_state_dict(model.state_dict(), released_tokenizer_mappings(TINY))
    del source["decoder.projector.bias"]
    source["decoder.mystery.weight"] = torch.empty(3, device="meta")
    source["encoder.cross_pos_emb"] = torch.empty(1, 7, TINY.enc_embed_dim, device="meta")
    with pytest.raises(ConversionError) as err:
        convert_released_tokenizer(source, TINY, IMG, FRAMES)
    msg = str(err.value)
    assert "decoder.projector.bias" in msg and "decoder.mystery.weight" in msg
    assert "cross_pos_embed needs (1, 64, 128)" in msg and "(1, 7, 128)" in msg
    # a different architecture (wrong preset) fails instead of loading something half-right
    with pytest.raises(ConversionError, match="shape mismatches"):
        convert_released_tokenizer(export_state_dict(model.state_dict(), released_tokenizer_mappings(TINY)),
                                   TINY, 64, FRAMES)


def test_lpips_loss_network_is_dropped_with_a_reason(tmp_path):
    extra = {"decoder.lpips_loss.net.slice1.0.weight": torch.zeros(2, 3, 3, 3),
             "decoder.lpips_loss.scaling_layer.shift": torch.zeros(1, 3, 1, 1)}
    src, _ = _released_tokenizer_file(tmp_path, extra=extra)
    meta = import_tokenizer(src, tmp_path / "out.pt", TINY, IMG, FRAMES)
    assert set(meta["source_tensors_dropped"]) == set(extra)
    assert all("LPIPS" in reason for reason in meta["source_tensors_dropped"].values())


RAN: list[str] = []


class _Payload:

    def __reduce__(self):
        return (RAN.append, ("code ran",))


def test_unsafe_checkpoints_are_refused_without_running_their_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(UserError, match=r"evil\.pth.*weights_only=True"):
        read_released_checkpoint(path)
    assert RAN == []
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth"):
        read_released_checkpoint(garbage)


def test_argparse_namespace_is_the_one_allowed_extra_class(tmp_path):
    path = tmp_path / "sit.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "args": argparse.Namespace(model="SiT-L/2", epochs=3)}, path)
    ckpt = read_released_checkpoint(path)
    assert ckpt["args"].model == "SiT-L/2" and torch.equal(ckpt["ema"]["w"], torch.ones(2))


def test_released_padding_rule_adds_one_to_logits_from_floor_n_frames():
    model = ReleasedCoordTok(TINY, IMG, FRAMES)  # enc_patch_size_t = 4: 4 temporal token rows
    bias = model.padding_bias(torch.tensor([16, 9, 3]))
    per_row = bias.view(3, 4, -1)
    assert torch.equal(per_row[:, :, 0], torch.tensor([[0., 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]))
    assert bool((per_row == per_row[:, :, :1]).all())


def test_released_encoder_sees_padding_frames_as_the_released_code_does():
    torch.manual_seed(1)
    model = _randomize(ReleasedCoordTok(TINY, IMG, FRAMES), 1).eval()
    video = torch.rand(1, FRAMES, IMG, IMG, 3) * 2 - 1
    changed = video.clone()
    changed[:, 12:] = 0.5  # frames past n_frames = 12
    n = torch.tensor([12])
    with torch.no_grad():
        a, b, c = model.encode(video, n), model.encode(changed, n), model.encode(video)
    assert not torch.allclose(a.xy, b.xy)  # no padding mask in the released ViT: padding content matters
    assert not torch.allclose(a.xy, c.xy)  # and the +1.0 logit bias changes the result


def test_position_table_index_truncates_like_the_released_decoder():
    model = ReleasedCoordTok(TINY, IMG, FRAMES)
    nt, ny, nx = model.grid
    coords = grid_coords(model.grid)
    it, iy, ix = model.table_index(coords)
    t, y, x = torch.meshgrid(torch.arange(nt), torch.arange(ny), torch.arange(nx), indexing="ij")
    assert torch.equal(it, t.reshape(-1)) and torch.equal(iy, y.reshape(-1)) and torch.equal(ix, x.reshape(-1))
    off = torch.tensor([[0.999, 0.999, 0.5], [1.2, -0.1, 0.0]])
    it, iy, ix = model.table_index(off)
    assert it.tolist() == [nt - 2, nt - 1] and ix.tolist() == [nx - 2, 0] and iy.tolist() == [math.floor(0.5 * (ny - 1)), 0]


def test_load_tokenizer_builds_the_right_class_for_either_schema(tmp_path):
    native = CoordTok(TINY, IMG, FRAMES)
    path = tmp_path / "native.pt"
    torch.save({"config": native.config, "model": native.state_dict(), "step": 3}, path)
    assert type(load_tokenizer(path)) is CoordTok
    assert type(tokenizer_from_config(ReleasedCoordTok(TINY, IMG, FRAMES).config)) is ReleasedCoordTok
    with pytest.raises(UserError, match="variant"):
        tokenizer_from_config({**native.config, "variant": "mystery"})
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.pt")


# --------------------------------------------------------------------------------------------------
# SiT
# --------------------------------------------------------------------------------------------------

SIT_TINY = SIT_PRESETS["SiT-tiny/2"]
LOG = """[\x1b[34m2024-10-01 10:00:00\x1b[0m] Experiment directory created at results/coordtok_large
[\x1b[34m2024-10-01 10:05:00\x1b[0m] xy_mean: tensor([ 0.1000, -0.2000,  0.3000,
         0.4000])
[\x1b[34m2024-10-01 10:05:00\x1b[0m] xy_std: tensor([1.0000, 2.0000, 3.0000, 4.0000])
[\x1b[34m2024-10-01 10:05:00\x1b[0m] yt_mean: tensor([5., 6., 7., 8.])
[\x1b[34m2024-10-01 10:05:00\x1b[0m] yt_std: tensor([0.5000, 0.6000, 0.7000, 0.8000])
[\x1b[34m2024-10-01 10:05:00\x1b[0m] xt_mean: tensor([-1., -2., -3., -4.])
[\x1b[34m2024-10-01 10:05:00\x1b[0m] xt_std: tensor([0.1000, 0.2000, 0.3000, 0.4000])
"""


def test_sit_import_reproduces_the_model_and_carries_the_stats(tmp_path):
    torch.manual_seed(2)
    model = _randomize(SiT(SIT_TINY, 4, 8, 16, num_classes=0, learn_sigma=True), 2).eval()
    released = export_state_dict(model.state_dict(), released_sit_mappings(SIT_TINY.depth))
    # the released model carries a one-row label table; split some of the bias into it
    row = torch.randn(SIT_TINY.hidden_size) * 0.1
    released["y_embedder.embedding_table.weight"] = row[None].clone()
    released["t_embedder.mlp.2.bias"] = released["t_embedder.mlp.2.bias"] - row
    src = tmp_path / "CoordTok_SiT.pt"
    torch.save({"model": {k: torch.zeros_like(v) for k, v in released.items()}, "ema": released,
                "opt": {"state": {}}, "args": argparse.Namespace(model="SiT-tiny/2", global_seed=0)}, src)
    out = tmp_path / "sit.pt"
    meta = import_sit(src, out, SIT_TINY, 4, 8, 16, stats=parse_released_stats_log(LOG))
    assert meta["state_dict_key"] == "ema" and meta["args"]["model"] == "SiT-tiny/2"
    ckpt = torch.load(out, weights_only=True)
    imported = SiT.from_config(ckpt["config"]).eval()
    imported.load_state_dict(ckpt["model"])
    planes = Triplane(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        a, b = model(planes, t), imported(planes, t)
    assert torch.allclose(a.xy, b.xy, atol=1e-6) and torch.allclose(a.yt, b.yt, atol=1e-6)
    assert torch.allclose(a.xt, b.xt, atol=1e-6)
    stats = ckpt["latent_stats"]["planes"]
    assert stats["xt"]["mean"] == [5.0, 6.0, 7.0, 8.0]  # the released 'yt' is this project's xt
    assert stats["yt"]["std"] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_sit_mapping_covers_the_reference_key_list():
    ref = _reference("official_sit_l2_state_dict.tsv")
    arch = SIT_PRESETS["SiT-L/2"]
    source = {k: torch.empty(shape, device="meta") for k, shape in ref.items()}
    _, state, report = convert_released_sit(source, arch, 8, 16, 32)
    with torch.device("meta"):
        target = SiT(arch, 8, 16, 32, num_classes=0, learn_sigma=True).state_dict()
    assert set(state) == set(target) and len(report.used) == len(ref)


def test_released_stats_log_must_be_complete():
    with pytest.raises(UserError, match="xt_std"):
        parse_released_stats_log(LOG.replace("xt_std", "something"))


def test_generic_converter_rejects_a_state_dict_from_another_model():
    sit = {k: torch.empty(1, device="meta") for k in ("blocks.0.attn.qkv.weight", "pos_embed_xy")}
    with pytest.raises(ConversionError, match="missing"):
        convert_state_dict(sit, released_tokenizer_mappings(TINY), {"query_xy": torch.Size([1])})


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def test_cli_converts_and_reports_user_errors(tmp_path, capsys):
    src, _ = _released_tokenizer_file(tmp_path)
    out = tmp_path / "tok.pt"
    assert cli.main(["tokenizer", str(src), "--out", str(out), "--preset", "CoordTok-tiny", "--img-size", str(IMG),
                     "--num-frames", str(FRAMES)]) == 0
    assert out.is_file() and "written" in capsys.readouterr().out
    assert cli.main(["tokenizer", str(src), "--out", str(tmp_path / "x.pt")]) == 2  # default = paper preset
    err = capsys.readouterr().err
    assert err.startswith("error: the released tokenizer") and "shape mismatches" in err
    assert not (tmp_path / "x.pt").exists()
    assert cli.main(["sit", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_takes_the_geometry_overrides_params_have_and_lists_presets(tmp_path, capsys):
    # An ablation checkpoint (other triplane sizes) converts from the command line.
    geometry = TINY.replace(latent_resolution_xy=4, latent_resolution_t=16)
    torch.manual_seed(0)
    model = _randomize(ReleasedCoordTok(geometry, IMG, FRAMES), 0).eval()
    src = tmp_path / "ablation.pth"
    torch.save({"model": export_state_dict(model.state_dict(), released_tokenizer_mappings(geometry))}, src)
    base = ["tokenizer", str(src), "--preset", "CoordTok-tiny", "--img-size", str(IMG), "--num-frames", str(FRAMES)]
    assert cli.main([*base, "--out", str(tmp_path / "no.pt")]) == 2  # the preset's own geometry does not fit
    assert "shape mismatches" in capsys.readouterr().err
    out = tmp_path / "ablation.pt"
    assert cli.main([*base, "--out", str(out), "--latent-resolution-xy", "4", "--latent-resolution-t", "16"]) == 0
    assert "4x4x16" in capsys.readouterr().out
    imported = load_tokenizer(out)
    assert (imported.arch.latent_resolution_xy, imported.arch.latent_resolution_t) == (4, 16)
    assert torch.equal(imported.state_dict()["dec_head.weight"], model.state_dict()["dec_head.weight"])
    assert cli.main([*base, "--out", str(tmp_path / "bad.pt"), "--latent-resolution-t", "3"]) == 2
    assert "latent patch size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tokenizer", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in TOKENIZER_PRESETS) and "--latent-resolution-xy" in text
