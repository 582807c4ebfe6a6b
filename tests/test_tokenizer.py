"""CoordTok model: shapes, conventions, padding, chunked/random-access decoding, bf16, and an overfit run."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.sampling import denormalise_coords, gather_patches, normalise_indices, sample_patches
from components.tokenizer.model import (
    CoordTok, Triplane, attend, decode_frames, grid_coords, patchify, read_plane, reconstruct, sample_triplane,
    unpatchify,
)
from components.tokenizer.presets import TOKENIZER_PRESETS

torch.set_num_threads(min(2, torch.get_num_threads()))

REFERENCE_TSV = (Path(__file__).resolve().parents[2] / "shared" / "reference"
                 / "official_coordtok_paper_config_state_dict.tsv")
TINY = TOKENIZER_PRESETS["CoordTok-tiny"]
IMG, FRAMES = 32, 16


@pytest.fixture(scope="module")
def model() -> CoordTok:
    torch.manual_seed(0)
    return CoordTok(TINY, IMG, FRAMES).eval()


def _video(b: int = 2, t: int = FRAMES, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, IMG, IMG, 3, generator=g) * 2 - 1


def _all_coords(m: CoordTok, b: int) -> torch.Tensor:
    return grid_coords(m.grid)[None].expand(b, -1, -1)


# ---------------------------------------------------------------- shapes, config, presets

def test_shapes_token_count_and_config_round_trip(model):
    video = _video()
    planes = model.encode(video)
    s, t, c = TINY.latent_resolution_xy, TINY.latent_resolution_t, TINY.latent_n_features
    assert planes.xy.shape == (2, c, s, s) and planes.yt.shape == (2, c, t, s) and planes.xt.shape == (2, c, t, s)
    assert model.num_tokens == planes.num_tokens == s * s + 2 * s * t == 192
    assert planes.to_tokens().shape == (2, model.num_tokens, c)
    assert model.grid == (FRAMES // TINY.dec_patch_size_t, IMG // 8, IMG // 8)
    coords = torch.rand(2, 37, 3)
    out = model(video, coords)
    assert out.shape == (2, 37, TINY.dec_patch_size_t * 8 * 8 * 3)
    torch.testing.assert_close(out, model.decode(planes, coords))

    clone = CoordTok.from_config(model.config)
    assert model.config == {"arch": model.config["arch"], "img_size": IMG, "num_frames": FRAMES}
    assert all(isinstance(v, int) for v in model.config["arch"].values())
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(video, coords), out)
    with pytest.raises(ValueError, match="not divisible"):
        CoordTok(TINY, 36, FRAMES)


def test_paper_config_has_1280_tokens_and_reference_size():
    with torch.device("meta"):
        big = CoordTok(TOKENIZER_PRESETS["CoordTok-L"], 128, 128)
    assert big.num_tokens == 1280 and big.grid == (128, 16, 16)
    ours = sum(p.numel() for p in big.parameters())
    if not REFERENCE_TSV.exists():
        pytest.skip(f"reference table not found at {REFERENCE_TSV}")
    rows = [ln.split("\t") for ln in REFERENCE_TSV.read_text().splitlines() if ln and not ln.startswith(("#", "name"))]
    reference = sum(int(r[2]) for r in rows)
    print(f"CoordTok-L parameters: ours {ours:,} vs official {reference:,} ({ours / reference - 1:+.1%})")
    # The official decoder learns a 128x16x16x1024 positional table (33.5M); ours is sin-cos.
    assert abs(ours / reference - 1) < 0.2


# ---------------------------------------------------------------- plane reads and coordinates

def _bilinear(plane: np.ndarray, u: float, v: float) -> np.ndarray:
    """Hand-computed align-corners bilinear read of plane [C, R, S] at column u, row v in [0, 1]."""
    _, r, s = plane.shape
    fx, fy = u * (s - 1), v * (r - 1)
    x0, y0 = min(int(math.floor(fx)), s - 1), min(int(math.floor(fy)), r - 1)
    x1, y1 = min(x0 + 1, s - 1), min(y0 + 1, r - 1)
    ax, ay = fx - x0, fy - y0
    return ((1 - ay) * ((1 - ax) * plane[:, y0, x0] + ax * plane[:, y0, x1])
            + ay * ((1 - ax) * plane[:, y1, x0] + ax * plane[:, y1, x1]))


def test_bilinear_read_matches_hand_computation():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)  # [B, C, R=5 rows, S=7 cols]
    corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
    edges = [(0, 0.3), (1, 0.55), (0.4, 0), (0.71, 1), (0.5, 0.5), (1 / 6, 0.25)]  # incl. exact pixel centres
    points = corners + edges + [tuple(p) for p in rng.random((20, 2))]
    u = torch.tensor([[p[0] for p in points]] * 2, dtype=torch.float32)
    v = torch.tensor([[p[1] for p in points]] * 2, dtype=torch.float32)
    got = read_plane(torch.from_numpy(plane), u, v).numpy()  # [B, N, C]
    want = np.stack([[_bilinear(plane[b], *p) for p in points] for b in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # corners hit the corner pixels exactly
    np.testing.assert_allclose(got[:, 0], plane[:, :, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[:, 3], plane[:, :, -1, -1], atol=1e-6)


def test_triplane_axes_are_read_at_the_right_coordinates():
    """Planes holding their own column/row index: a read returns the coordinate scaled by (size - 1)."""
    s, t = 5, 9
    def index_plane(rows, cols):
        r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                              indexing="ij")
        return torch.stack([c, r])[None]  # channel 0 = column index, channel 1 = row index
    planes = Triplane(index_plane(s, s), index_plane(t, s), index_plane(t, s))
    coords = torch.rand(1, 50, 3)
    f = sample_triplane(planes, coords)[0]  # [N, 6]
    tt, xx, yy = coords[0].unbind(-1)
    want = torch.stack([xx * (s - 1), yy * (s - 1),   # xy: cols x, rows y
                        yy * (s - 1), tt * (t - 1),   # yt: cols y, rows t
                        xx * (s - 1), tt * (t - 1)], -1)  # xt: cols x, rows t
    torch.testing.assert_close(f, want, atol=1e-5, rtol=0)


def test_grid_coords_round_trip_with_sampling_normalisation():
    for grid in [(8, 4, 6), (1, 3, 2), (5, 1, 1)]:
        nt, ny, nx = grid
        t, y, x = np.meshgrid(np.arange(nt), np.arange(ny), np.arange(nx), indexing="ij")
        idx = np.stack([t, x, y], -1).reshape(-1, 3)  # (t, x, y) indices in (t, y, x)-major order
        coords = grid_coords(grid).numpy()
        np.testing.assert_array_equal(coords, normalise_indices(idx, grid))
        np.testing.assert_array_equal(denormalise_coords(coords, grid), idx)
        sub = grid_coords(grid, frames=[nt - 1, 0]).numpy()
        np.testing.assert_array_equal(sub, np.concatenate([coords[(nt - 1) * ny * nx:], coords[:ny * nx]]))


def test_patchify_inverts_and_matches_gather_patches():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (2, 8, 16, 24, 3), dtype=np.uint8)
    video = torch.from_numpy(clip)
    for pt, p in [(1, 8), (2, 4)]:
        patches = patchify(video, pt, p)
        nt, ny, nx = 8 // pt, 16 // p, 24 // p
        assert patches.shape == (2, nt, ny, nx, pt * p * p * 3)
        assert torch.equal(unpatchify(patches, pt, p), video)
        # patchify's (t, y, x)-major flattening is grid_coords' order; each patch is gather_patches'.
        idx = denormalise_coords(grid_coords((nt, ny, nx)).numpy(), (nt, ny, nx))
        for b in range(2):
            gathered = gather_patches(clip[b], idx, pt, p).reshape(len(idx), -1)
            np.testing.assert_array_equal(patches[b].reshape(-1, pt * p * p * 3).numpy(), gathered)


def test_sampled_patch_loss_equals_masked_full_loss(model):
    rng = np.random.default_rng(3)
    clip = rng.integers(0, 256, (FRAMES, IMG, IMG, 3), dtype=np.uint8)
    target_patches, coords, idx = sample_patches(clip, 40, rng, patch_t=1, patch_xy=8)
    video = torch.from_numpy(clip).float()[None] / 127.5 - 1
    with torch.no_grad():
        pred = model(video, torch.from_numpy(coords)[None])[0]  # [N, 192]
    target = torch.from_numpy(target_patches).float().reshape(40, -1) / 127.5 - 1
    sampled_loss = (pred - target).pow(2).mean()

    full_target = patchify(video, 1, 8)[0]  # [Nt, Ny, Nx, D]
    full_pred = torch.zeros_like(full_target)
    mask = torch.zeros(full_target.shape[:3], dtype=torch.bool)
    t, x, y = torch.from_numpy(idx).unbind(-1)
    full_pred[t, y, x] = pred
    mask[t, y, x] = True
    masked_loss = ((full_pred - full_target).pow(2) * mask[..., None]).sum() / (mask.sum() * full_target.shape[-1])
    torch.testing.assert_close(sampled_loss, masked_loss, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- full / chunked / random-access decoding

def test_chunked_reconstruct_equals_one_shot(model):
    video = _video()
    with torch.no_grad():
        planes = model.encode(video)
        # one attention context over the whole video == decoding all coordinates at once
        single = reconstruct(model, planes, group_frames=FRAMES)
        direct = unpatchify(model.decode(planes, _all_coords(model, 2)).view(2, *model.grid, -1), 1, 8)
    torch.testing.assert_close(single, direct, atol=1e-5, rtol=0)
    for gf in (1, 3, 16):  # 3: groups of 3,3,...,3,1 (a shorter last group)
        one_shot = reconstruct(model, planes, group_frames=gf, max_tokens_per_chunk=10**9)
        chunked = reconstruct(model, planes, group_frames=gf, max_tokens_per_chunk=1)
        assert one_shot.shape == (2, FRAMES, IMG, IMG, 3)
        torch.testing.assert_close(chunked, one_shot, atol=1e-5, rtol=0)
    assert not torch.allclose(reconstruct(model, planes, 1), single, atol=1e-3)  # the context matters


def test_random_access_equals_full_decode(model):
    video = _video(seed=1)
    with torch.no_grad():
        planes = model.encode(video)
    for gf in (1, 3):
        full = reconstruct(model, planes, group_frames=gf)
        frames = [5, 0, 15, 5, 13]
        part = decode_frames(model, planes, frames, group_frames=gf, max_tokens_per_chunk=40)
        assert part.shape == (2, len(frames), IMG, IMG, 3)
        torch.testing.assert_close(part, full[:, frames], atol=1e-5, rtol=0)

    # region: its own attention context (the group's frames x the region's patches)
    region = decode_frames(model, planes, [4, 2], group_frames=3, region=(8, 16, 16, 8))
    assert region.shape == (2, 2, 16, 8, 3)
    ts = torch.arange(0, 3)  # group holding frames 2 and 4 with group_frames=3: time steps 0..2 and 3..5
    def region_decode(t_steps):
        nt, ny, nx = model.grid
        t, y, x = torch.meshgrid(t_steps, torch.arange(1, 3), torch.arange(2, 3), indexing="ij")
        c = torch.stack([t / (nt - 1), x / (nx - 1), y / (ny - 1)], -1).reshape(1, -1, 3).expand(2, -1, -1)
        with torch.no_grad():
            return unpatchify(model.decode(planes, c).view(2, len(t_steps), 2, 1, -1), 1, 8)
    torch.testing.assert_close(region[:, 1], region_decode(ts)[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(region[:, 0], region_decode(ts + 3)[:, 1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples"):
        decode_frames(model, planes, [0], region=(4, 0, 8, 8))
    with pytest.raises(ValueError, match="outside"):
        decode_frames(model, planes, [FRAMES])


# ---------------------------------------------------------------- padding

def test_padded_frames_do_not_change_the_triplane(model):
    video = _video(seed=2)
    n_frames = torch.tensor([FRAMES, 6])  # sample 1: tokens of frames 8.. are padding (enc_patch_size_t = 4)
    with torch.no_grad():
        ref = model.encode(video, n_frames)
        changed = video.clone()
        changed[1, 8:] = torch.rand_like(changed[1, 8:]) * 10 - 5
        out = model.encode(changed, n_frames)
        for a, b in zip((ref.xy, ref.yt, ref.xt), (out.xy, out.yt, out.xt)):
            assert torch.equal(a, b)  # bit-identical: padded keys have exactly zero weight
        # frames 6-7 share a token with real frames 4-5, so they do count (loaders zero-pad them)
        changed[1, 6] += 1
        assert not torch.equal(model.encode(changed, n_frames).xy[1], ref.xy[1])
        # without the mask the padded content leaks in
        assert not torch.equal(model.encode(changed)[1].xy, model.encode(video)[1].xy)
        with pytest.raises(ValueError, match="n_frames"):
            model.encode(video, torch.tensor([FRAMES, 0]))


def test_attention_weights_are_exactly_zero_on_padded_keys(model):
    video = _video(seed=4)
    n_frames = torch.tensor([3, 9])
    mask = model.padding_mask(n_frames)  # [B, N]: True = real token
    per_t = model.enc_grid[1] * model.enc_grid[2]
    assert mask[0].sum() == per_t and mask[1].sum() == 3 * per_t  # token t is real iff 4t < n_frames
    with torch.no_grad():
        x = model.video_tokens(video)
        blk = model.vit_blocks[0]
        q, k, _ = blk.attn.qkv_heads(blk.norm1(x))
        n = k.shape[2]
        eye = torch.eye(n).expand(*k.shape[:2], n, n)
        weights = attend(q, k, eye, mask)  # attention with identity values = the weight matrix
        assert weights.shape == (2, TINY.enc_num_heads, n, n)
        assert torch.all(weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0)
        assert torch.all(weights.masked_select(mask[:, None, None, :].expand_as(weights)) > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:3]))
        # cross-attention of the triplane queries uses the same key mask
        cq = model._queries(2)
        ca = model.enc_blocks[0].cross_attn
        qh = ca.q(model.enc_blocks[0].norm1(cq)).view(2, -1, ca.num_heads, q.shape[-1]).transpose(1, 2)
        kh = ca.kv(x).view(2, n, 2, ca.num_heads, q.shape[-1]).permute(2, 0, 3, 1, 4)[0]
        cw = attend(qh, kh, eye, mask)
        assert torch.all(cw.masked_select(~mask[:, None, None, :].expand_as(cw)) == 0)


# ---------------------------------------------------------------- helpers, bf16

def test_triplane_helpers(model):
    with torch.no_grad():
        planes = model.encode(_video(b=3))
    tokens = planes.to_tokens()
    back = Triplane.from_tokens(tokens, TINY.latent_resolution_xy, TINY.latent_resolution_t)
    assert all(torch.equal(a, b) for a, b in zip((planes.xy, planes.yt, planes.xt), (back.xy, back.yt, back.xt)))
    # token order: xy row-major (y, x) first
    assert torch.equal(tokens[:, 1], planes.xy[:, :, 0, 1])
    assert planes.index(1).batch_size == 1 and torch.equal(planes[[2, 0]].xt[0], planes.xt[2])
    assert Triplane.cat([planes[0], planes[1:]]).batch_size == 3
    assert planes.to(torch.float64).yt.dtype == torch.float64
    with pytest.raises(ValueError, match="triplane"):
        Triplane.from_tokens(tokens[:, 1:], TINY.latent_resolution_xy, TINY.latent_resolution_t)


def test_bf16_autocast_forward_runs_on_cpu(model):
    video, coords = _video(), torch.rand(2, 20, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, coords, torch.tensor([FRAMES, 5]))
        planes = model.encode(video)
        rec = reconstruct(model, planes, group_frames=2)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 20, 192) and torch.isfinite(out).all()
    assert rec.shape == (2, FRAMES, IMG, IMG, 3) and torch.isfinite(rec).all()
    with torch.no_grad():
        ref = model(video, coords, torch.tensor([FRAMES, 5]))
    assert (out.float() - ref).abs().max() < 0.1


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(1)
    m = CoordTok(TINY, IMG, FRAMES)
    loss = m(_video(), torch.rand(2, 30, 3), torch.tensor([FRAMES, 7])).pow(2).mean()
    loss.backward()
    dead = [name for name, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_release_init_gives_the_released_scales_and_vit_init_the_old_ones():
    """`release`: PyTorch-default linears, unit-scale encoder positions, zero query positions, width^-0.5
    decoder table; `vit` (the default): std-0.02 linears and positions. Same seed, same weights."""
    from components.tokenizer.model import DEFAULT_INIT
    from components.tokenizer.released import ReleasedCoordTok

    torch.manual_seed(0)
    rel = CoordTok(TINY, IMG, FRAMES, init="release")
    torch.manual_seed(0)
    again = CoordTok(TINY, IMG, FRAMES, init="release")
    assert all(torch.equal(a, b) for a, b in zip(rel.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(0)
    vit = CoordTok(TINY, IMG, FRAMES, init="vit")
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(vit.state_dict().values(),
                                                 CoordTok(TINY, IMG, FRAMES, init=DEFAULT_INIT).state_dict().values()))
    rel.requires_grad_(False)
    vit.requires_grad_(False)
    d = TINY.enc_embed_dim
    for m in (rel.pos_embed, rel.cross_pos_embed):
        assert 0.9 < float(m.std()) < 1.1
    assert float(rel.query_pos_embed.abs().max()) == 0.0
    fc = rel.vit_blocks[0].mlp.fc1
    assert float(fc.weight.abs().max()) <= d ** -0.5 and float(fc.bias.abs().max()) > 0  # kaiming-uniform bound
    assert 0.04 < float(fc.weight.std()) < 0.06  # 1 / sqrt(3 * 128) = 0.051
    q = rel.enc_blocks[0].cross_attn.q.weight
    assert float(q.abs().max()) <= (6 / (4 * d)) ** 0.5 and float(rel.enc_blocks[0].cross_attn.q.bias.abs().max()) == 0
    for m in (vit.pos_embed, vit.cross_pos_embed, vit.query_pos_embed, vit.vit_blocks[0].mlp.fc1.weight):
        assert 0.015 < float(m.std()) < 0.025
    assert float(vit.vit_blocks[0].mlp.fc1.bias.abs().max()) == 0.0
    table = ReleasedCoordTok(TINY, IMG, FRAMES, init="release").dec_pos_table.detach()
    assert abs(float(table.std()) - TINY.dec_embed_dim ** -0.5) < 0.01
    pos = CoordTok(TINY, IMG, FRAMES, init="positions").requires_grad_(False)  # vit linears, release positions
    assert 0.9 < float(pos.pos_embed.std()) < 1.1 and 0.015 < float(pos.vit_blocks[0].mlp.fc1.weight.std()) < 0.025
    with pytest.raises(ValueError, match="unknown init scheme"):
        CoordTok(TINY, IMG, FRAMES, init="xavier")


def test_plane_skip_adds_the_video_features_averaged_over_each_planes_missing_axis():
    """CoordTok-tiny's plane skip: with the query path silenced, xy = Linear(features averaged over t),
    yt = Linear(averaged over x), xt = Linear(averaged over y), computed here from the encoder's own
    features; resampled (antialiased bilinear) when the triplane is not the encoder grid's size. The
    paper presets and the released variant have no such layer."""
    from components.tokenizer.model import _resize_plane
    from components.tokenizer.released import ReleasedCoordTok

    assert TINY.plane_skip and not TOKENIZER_PRESETS["CoordTok-L"].plane_skip
    assert not any("plane_skip" in k for k in ReleasedCoordTok(TINY, IMG, FRAMES).state_dict())
    assert not any("plane_skip" in k for k in CoordTok(TINY.replace(plane_skip=False), IMG, FRAMES).state_dict())
    for img, frames in ((64, 32), (IMG, FRAMES)):  # encoder grid 8x8x8 = the triplane; then 4x4x4, resized
        torch.manual_seed(0)
        m = CoordTok(TINY, img, frames).eval()
        with torch.no_grad():
            for proj in (m.latent_proj_xy, m.latent_proj_yt, m.latent_proj_xt):
                proj.weight.zero_()
                proj.bias.zero_()
            for lin in m.plane_skip:
                lin.weight.normal_(0, 0.1)
                lin.bias.normal_(0, 0.1)
        seen = {}
        m.vit_norm.register_forward_hook(lambda mod, inp, out: seen.update(features=out))
        g = torch.Generator().manual_seed(3)
        video = torch.rand(2, frames, img, img, 3, generator=g) * 2 - 1
        with torch.no_grad():
            planes = m.encode(video)
            grid = seen["features"].view(2, *m.enc_grid, -1)  # [B, t, y, x, D]
            s, lt = TINY.latent_resolution_xy, TINY.latent_resolution_t
            expected = {"xy": (m.plane_skip[0](grid.mean(1)), (s, s)), "yt": (m.plane_skip[1](grid.mean(3)), (lt, s)),
                        "xt": (m.plane_skip[2](grid.mean(2)), (lt, s))}
            for name, (value, size) in expected.items():
                want = _resize_plane(value.permute(0, 3, 1, 2), size)
                assert want.shape[-2:] == size
                torch.testing.assert_close(getattr(planes, name), want, rtol=1e-5, atol=1e-6, msg=name)
        if img == 64:
            assert m.enc_grid == (8, 8, 8)  # the first case compared without any resampling


# ---------------------------------------------------------------- overfit

def _moving_pattern(t: int = 8, s: int = 32) -> torch.Tensor:
    """A smooth moving scene in [-1, 1]: travelling sinusoids plus a soft disc moving diagonally."""
    tt, y, x = np.meshgrid(np.arange(t), np.arange(s), np.arange(s), indexing="ij")
    disc = 1 / (1 + np.exp(((y - 10 - 1.5 * tt) ** 2 + (x - 8 - 2.0 * tt) ** 2 - 36) / 4.0))
    v = np.stack([np.sin(2 * np.pi * (x + 2 * tt) / 8) * 0.5 + disc,
                  np.cos(2 * np.pi * (y - 1.5 * tt) / 11) * 0.5 - disc,
                  np.sin(2 * np.pi * (x * np.cos(0.3 * tt) + y) / 16) * 0.6 + 0.4 * disc], -1)
    return torch.tensor(np.clip(v, -1.2, 1.2) / 1.2, dtype=torch.float32)[None]


def test_overfits_one_video_from_random_coordinate_samples():
    torch.manual_seed(0)
    video = _moving_pattern()  # [1, 8, 32, 32, 3]
    model = CoordTok(TINY, 32, 8)
    target = patchify(video, 1, 8).reshape(-1, 192)  # (t, y, x)-major, as grid_coords
    coords = grid_coords(model.grid)
    steps, batch, n = 300, 2, 64
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.stack([torch.randperm(len(coords), generator=g)[:n] for _ in range(batch)])
        loss = (model(video.expand(batch, -1, -1, -1, -1), coords[idx]) - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        rec = reconstruct(model, model.encode(video), group_frames=1)
    mse = ((rec - video) / 2).pow(2).mean()  # on the [0, 1] scale
    psnr = float(10 * torch.log10(1 / mse))
    print(f"overfit: {steps} steps, {seconds:.1f} s, PSNR {psnr:.2f} dB")
    assert psnr >= 28.0


def test_encoder_carries_each_video_into_its_triplane():
    """Several clips trained jointly are each reconstructed, and the output follows the input
    video (a model that ignored its encoder could only memorise one clip in its queries)."""
    torch.manual_seed(0)
    # Four distinct smooth moving scenes (the synthetic data set's 1/f textures are a harder,
    # separate question: the tokenizer's learning curve, not this wiring check).
    base = _moving_pattern()[0]  # [T, H, W, 3]
    video = torch.stack([base, base.flip(2), base.flip(1), base.flip(0).flip(2)])
    model = CoordTok(TOKENIZER_PRESETS["CoordTok-tiny"], 32, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = patchify(video, 1, 8).reshape(4, -1, 192)
    coords = grid_coords(model.grid).unsqueeze(0).expand(4, -1, -1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        pick = torch.randperm(coords.shape[1], generator=gen)[:64]
        loss = ((model(video, coords[:, pick]) - target[:, pick]) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        recon = reconstruct(model, model.encode(video))
        psnr = 10 * torch.log10(4 / ((recon - video) ** 2).flatten(1).mean(1))
        swapped = reconstruct(model, model.encode(video[[1, 0, 3, 2]]))
    assert (psnr > 28).all(), psnr
    torch.testing.assert_close(swapped[0], recon[1])
    assert (swapped[0] - recon[0]).abs().max() > 0.1
