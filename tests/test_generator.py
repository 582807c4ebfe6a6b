"""SiT over triplanes: shapes, released-checkpoint layout, adaLN-Zero init, conditioning, EMA, overfitting,
and video generation end to end with a tiny tokenizer."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from components.errors import UserError
from components.generator.latent_stats import LatentStats
from components.generator.presets import SIT_PRESETS, sit_preset
from components.generator.sampling import generate_videos
from components.generator.sit import (
    LabelEmbedder,
    SiT,
    ema_update,
    patchify_plane,
    sincos_pos_embed_2d,
    timestep_embedding,
    unpatchify_plane,
)
from components.generator.transport import Transport
from components.tokenizer.model import CoordTok, Triplane
from components.tokenizer.presets import TOKENIZER_PRESETS

torch.set_num_threads(1)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_sit_l2_state_dict.tsv"
C, S, T = 4, 8, 12


def planes(b: int = 2, seed: int = 0, c: int = C, s: int = S, t: int = T) -> Triplane:
    g = torch.Generator().manual_seed(seed)
    return Triplane(torch.randn(b, c, s, s, generator=g), torch.randn(b, c, t, s, generator=g),
                    torch.randn(b, c, t, s, generator=g))


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Move every parameter off its init (so zero-initialised paths carry signal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("preset", ["SiT-tiny/2", "SiT-S/2"])
def test_forward_keeps_each_plane_shape(preset):
    model = SiT(sit_preset(preset), C, S, T)
    perturb(model)
    x = planes()
    out = model(x, torch.tensor([0.1, 0.9]))
    assert isinstance(out, Triplane)
    for name in ("xy", "yt", "xt"):
        assert getattr(out, name).shape == getattr(x, name).shape
        assert torch.isfinite(getattr(out, name)).all()
    tup = model((x.xy, x.yt, x.xt), 0.5)  # tuples in, tuples out; scalar t broadcasts
    assert isinstance(tup, tuple) and tup[1].shape == (2, C, T, S)
    assert model.num_tokens == (S // 2) ** 2 + 2 * (T // 2) * (S // 2)


def test_bad_geometry_and_conditioning_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        SiT(sit_preset("SiT-tiny/2"), C, 7, T)
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    with pytest.raises(ValueError, match="shapes"):
        model(planes(t=T + 2), torch.zeros(2))
    with pytest.raises(ValueError, match="unconditional"):
        model(planes(), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UserError, match="unknown SiT preset"):
        sit_preset("SiT-H/2")


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    ref = {}
    for line in REFERENCE.read_text().splitlines():
        if line.startswith(("#", "name")):
            continue
        name, shape, _ = line.split("\t")
        ref[name] = tuple(int(v) for v in shape.split("x"))
    return ref


def test_state_dict_matches_the_released_sit_l2_exactly():
    """Built on the meta device (no memory): same keys, same shapes, same 461,462,720 numbers."""
    with torch.device("meta"):
        model = SiT(sit_preset("SiT-L/2"), 8, 16, 32, num_classes=1, class_dropout_prob=0.0, learn_sigma=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _reference_shapes()
    assert sum(v.numel() for v in model.state_dict().values()) == 461_462_720


def _expected_params(depth, d, p=2, c=8, s=16, t=32, freq=256):
    """Closed-form parameter count (trainable; fixed positions excluded), unconditional, velocity only."""
    block = 18 * d * d + 15 * d  # qkv 3d^2+3d, proj d^2+d, fc1 4d^2+4d, fc2 4d^2+d, adaLN 6d^2+6d
    final = 2 * d * d + 2 * d + d * p * p * c + p * p * c
    embed = 3 * (c * p * p * d + d) + freq * d + d + d * d + d + 3 * d
    return depth * block + 3 * final + embed


@pytest.mark.parametrize("preset", list(SIT_PRESETS))
def test_parameter_counts_at_paper_geometry(preset):
    arch = sit_preset(preset)
    with torch.device("meta"):
        model = SiT(arch, 8, 16, 32)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_params(arch.depth, arch.hidden_size)
    if preset == "SiT-L/2":  # released trainable 461,397,184 minus learned t positions (128x1024),
        # the learn_sigma half of the final layers (3 x (1024x32 + 32)) and the single label row (1024)
        assert n == 461_397_184 - 128 * 1024 - 3 * (1024 * 32 + 32) - 1024


# ---------------------------------------------------------------------------------------------- pieces

def test_patchify_unpatchify_inverse_and_conv_embedding_is_linear_on_patches():
    x = torch.randn(2, C, T, S)
    tok = patchify_plane(x, 2)
    assert tok.shape == (2, (T // 2) * (S // 2), 4 * C)
    torch.testing.assert_close(unpatchify_plane(tok, (T // 2, S // 2), 2), x, rtol=0, atol=0)
    # token 1 is the patch at rows 0-1, cols 2-3, flattened (p_row, p_col, C)
    torch.testing.assert_close(tok[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    conv = model.x_embedder_yt.proj
    w = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1)
    torch.testing.assert_close(model.x_embedder_yt(x), tok @ w.T + conv.bias, rtol=1e-5, atol=1e-5)


def test_sincos_positions_layout():
    pe = sincos_pos_embed_2d(16, 3, 5)
    assert pe.shape == (15, 16)
    # token (row 2, col 3) = index 13: first half encodes the column, second half the row
    torch.testing.assert_close(pe[13, 0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(pe[13, 4], torch.tensor(math.cos(3.0)))
    torch.testing.assert_close(pe[13, 8], torch.tensor(math.sin(2.0)))
    torch.testing.assert_close(pe[13, 9], torch.tensor(math.sin(2.0 / 10000 ** 0.25)))
    assert len({tuple(r.tolist()) for r in pe}) == 15  # all positions distinct


def test_timestep_embedding_shape_and_values():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = timestep_embedding(t, 256)
    assert emb.shape == (3, 256)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    torch.testing.assert_close(emb[1, 0], torch.tensor(math.cos(0.5)))
    torch.testing.assert_close(emb[1, 128 + 64], torch.tensor(math.sin(0.5 * 10000 ** (-0.5))))
    assert timestep_embedding(t, 7).shape == (3, 7)
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    assert model.t_embedder(t).shape == (3, 128)


def test_adaln_zero_init_makes_blocks_identity_and_output_zero():
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    x = torch.randn(2, model.num_tokens, 128)
    c = torch.randn(2, 128)
    for blk in model.blocks:
        assert torch.equal(blk(x, c), x)
    for fl in (model.final_layer_xy, model.final_layer_yt, model.final_layer_xt):
        assert torch.count_nonzero(fl(x, c)) == 0
    out = model(planes(), torch.rand(2))
    assert all(torch.count_nonzero(getattr(out, n)) == 0 for n in ("xy", "yt", "xt"))
    perturb(model)  # control: once trained away from init they are not
    assert not torch.allclose(model.blocks[0](x, c), x)


def test_label_dropout_and_embedding():
    emb = LabelEmbedder(5, 8, dropout_prob=0.5)
    assert emb.embedding_table.num_embeddings == 6  # null class = index 5
    labels = torch.randint(5, (4000,), generator=torch.Generator().manual_seed(0))
    dropped = emb.token_drop(labels, generator=torch.Generator().manual_seed(1))
    frac = (dropped == 5).float().mean().item()
    assert 0.47 < frac < 0.53
    assert torch.equal(dropped[dropped != 5], labels[dropped != 5])
    torch.testing.assert_close(emb(labels[:3], train=False), emb.embedding_table.weight[labels[:3]])
    forced = emb(labels[:3], train=False, force_drop_ids=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(forced[0], emb.embedding_table.weight[5])
    torch.testing.assert_close(forced[1], emb.embedding_table.weight[labels[1]])
    assert LabelEmbedder(5, 8, 0.0).embedding_table.num_embeddings == 5  # no CFG row without dropout
    torch.manual_seed(0)
    no_drop = LabelEmbedder(5, 8, 0.0)
    assert torch.equal(no_drop(labels[:50], train=True), no_drop.embedding_table.weight[labels[:50]])


def test_classifier_free_guidance_combines_conditional_and_null_outputs():
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T, num_classes=3, class_dropout_prob=0.1).eval()
    perturb(model, seed=3)
    x, t, y = planes(), torch.tensor([0.2, 0.7]), torch.tensor([0, 2])
    cond = model(x, t, y)
    uncond = model(x, t, y, force_drop_ids=torch.ones(2))
    guided = model.forward_with_cfg(x, t, y, 4.0)
    for n in ("xy", "yt", "xt"):
        ref = getattr(uncond, n) + 4.0 * (getattr(cond, n) - getattr(uncond, n))
        torch.testing.assert_close(getattr(guided, n), ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond.xy, uncond.xy)
    with pytest.raises(ValueError, match="null class"):
        SiT(sit_preset("SiT-tiny/2"), C, S, T).forward_with_cfg(x, t, None, 2.0)


def test_config_round_trip():
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T, num_classes=4, class_dropout_prob=0.1)
    perturb(model)
    clone = SiT.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    x, t, y = planes(), torch.rand(2), torch.tensor([1, 3])
    assert torch.equal(clone.eval()(x, t, y).xt, model.eval()(x, t, y).xt)


def test_ema_update_matches_closed_form():
    """e_k = d^k e_0 + (1 - d) sum_j d^(k-j) p_j for a sequence of model states p_1..p_k."""
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    ema = copy.deepcopy(model)
    ema_update(ema, model, 0.0)
    e0 = {k: v.clone().double() for k, v in ema.named_parameters()}
    d, states = 0.9, []
    for k in range(3):
        perturb(model, seed=10 + k)
        states.append({n: v.detach().clone().double() for n, v in model.named_parameters()})
        ema_update(ema, model, d)
    for name, e in ema.named_parameters():
        ref = d ** 3 * e0[name] + (1 - d) * sum(d ** (2 - j) * states[j][name] for j in range(3))
        torch.testing.assert_close(e.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ema.pos_embed_t, model.pos_embed_t)


# ---------------------------------------------------------------------------------------------- learning

@pytest.mark.slow
def test_tiny_sit_overfits_a_fixed_latent_batch():
    """adaLN-Zero starts slowly; 80 steps on 4 latents (x2 noise draws) cut the held-out-noise loss by >25%."""
    torch.manual_seed(0)
    model = SiT(sit_preset("SiT-tiny/2"), C, S, T)
    data = planes(4, seed=5)
    transport = Transport("linear")
    g_eval = torch.Generator().manual_seed(99)
    eval_data = Triplane.cat([data] * 16)
    eval_t = transport.sample_t(64, generator=g_eval)
    eval_noise = Triplane(*(torch.randn(p.shape, generator=g_eval) for p in (eval_data.xy, eval_data.yt, eval_data.xt)))

    def eval_loss():
        with torch.no_grad():
            return transport.training_losses(model, eval_data, t=eval_t, noise=eval_noise)["loss"].mean().item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    batch = Triplane.cat([data] * 2)
    for _ in range(80):
        loss = transport.training_losses(model, batch, generator=g)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.75 * before, (before, after)


# ---------------------------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    tok = CoordTok(TOKENIZER_PRESETS["CoordTok-tiny"], img_size=16, num_frames=8)
    a = tok.arch
    sit = SiT(sit_preset("SiT-tiny/2"), a.latent_n_features, a.latent_resolution_xy, a.latent_resolution_t)
    perturb(sit, seed=7, std=0.02)
    stats = LatentStats(a.latent_n_features).update(planes(3, seed=8, c=a.latent_n_features,
                                                           s=a.latent_resolution_xy, t=a.latent_resolution_t))
    return sit, tok, stats


@pytest.mark.parametrize("sampler,steps", [("sde", 4), ("euler", 3), ("heun", 2)])
def test_generate_videos_is_seedable_and_independent_of_batch_size(tiny_pair, sampler, steps):
    sit, tok, stats = tiny_pair
    kw = {"seed": 3, "sampler": sampler, "steps": steps, "progress": False}
    a = generate_videos(sit, tok, stats, 3, batch_size=3, **kw)
    assert a.shape == (3, 8, 16, 16, 3) and a.dtype == np.uint8
    b = generate_videos(sit, tok, stats, 3, batch_size=1, **kw)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding of batch shapes at most
    c = generate_videos(sit, tok, stats, 2, batch_size=2, **{**kw, "seed": 4})
    assert np.abs(a[:2].astype(int) - c.astype(int)).mean() > 1  # another seed, other videos
    assert sit.training and tok.training  # modes restored


def test_generate_videos_rejects_bad_requests(tiny_pair):
    sit, tok, stats = tiny_pair
    with pytest.raises(UserError, match="unconditional"):
        generate_videos(sit, tok, stats, 1, seed=0, labels=[0], progress=False)
    with pytest.raises(UserError, match="unknown sampler"):
        generate_videos(sit, tok, stats, 1, seed=0, sampler="ddim", progress=False)
    assert generate_videos(sit, tok, stats, 0, seed=0, progress=False).shape == (0, 8, 16, 16, 3)
