"""Transport: path conventions, the velocity loss, and every sampler against an exact Gaussian flow."""

from __future__ import annotations

import pytest
import torch

from components.errors import UserError
from components.generator.transport import (
    GVPPath,
    LinearPath,
    Transport,
    sample_ode,
    sample_sde,
)
from components.tokenizer.model import Triplane

torch.set_num_threads(1)

DIM = 3
MU = torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64)
_A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.4, 0.3, 0.5]], dtype=torch.float64)
SIGMA = _A @ _A.T * 1.5  # data covariance (noise is N(0, I))


def gaussian_velocity(path, mu=MU, cov=SIGMA):
    """Exact marginal velocity of x_t = a x1 + s x0 with x1 ~ N(mu, cov), x0 ~ N(0, I) (jointly Gaussian):
    v(x, t) = a' mu + (a a' cov + s s' I) C^-1 (x - a mu), C = a^2 cov + s^2 I."""
    eye = torch.eye(DIM, dtype=torch.float64)

    def v(parts, t):
        (x,) = parts
        out = torch.empty_like(x)
        for tv in t.unique():
            rows = t == tv
            tt = tv.to(torch.float64)
            a, da, s, ds = path.alpha(tt), path.d_alpha(tt), path.sigma(tt), path.d_sigma(tt)
            c = a * a * cov + s * s * eye
            gain = (a * da * cov + s * ds * eye) @ torch.linalg.inv(c)
            out[rows] = da * mu + (x[rows] - a * mu) @ gain.T
        return (out,)

    return v


def moments(x):
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / (x.shape[0] - 1)


def noise(n=4000, seed=0):
    return torch.randn(n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


MEAN_TOL, COV_TOL = 0.08, 0.15


def test_tolerances_discriminate():
    """The check below would fail for the untransported noise or a slightly wrong target."""
    m, c = moments(noise())
    assert (m - MU).abs().max() > 5 * MEAN_TOL and (c - SIGMA).abs().max() > 3 * COV_TOL


@pytest.mark.parametrize("method,steps,path", [("euler", 100, LinearPath()), ("heun", 20, LinearPath()),
                                               ("heun", 20, GVPPath())], ids=["euler", "heun", "heun-gvp"])
def test_ode_samplers_reach_the_gaussian_target(method, steps, path):
    x = sample_ode(gaussian_velocity(path), noise(), steps, method)
    m, c = moments(x)
    assert (m - MU).abs().max() < MEAN_TOL, m
    assert (c - SIGMA).abs().max() < COV_TOL, c


def test_ode_samplers_converge_to_the_exact_flow_map():
    """Against a fine Heun solution of the same ODE from the same noise (no sampling error): Heun is
    second order, Euler first order, and 5 Euler steps are visibly wrong."""
    v, x0 = gaussian_velocity(LinearPath()), noise(500)
    ref = sample_ode(v, x0, 400, "heun")
    err = {(m, n): (sample_ode(v, x0, n, m) - ref).abs().max().item()
           for m, n in [("heun", 10), ("heun", 20), ("euler", 50), ("euler", 100), ("euler", 5)]}
    assert err[("heun", 20)] < 1e-2 and err[("heun", 10)] / err[("heun", 20)] > 3, err
    assert err[("euler", 100)] < 0.1 and 1.6 < err[("euler", 50)] / err[("euler", 100)] < 2.5, err
    assert err[("euler", 5)] > 0.1, err


def test_sde_sampler_reaches_the_gaussian_target():
    x = sample_sde(gaussian_velocity(LinearPath()), noise(), 250, generators=torch.Generator().manual_seed(1))
    m, c = moments(x)
    assert (m - MU).abs().max() < MEAN_TOL, m
    assert (c - SIGMA).abs().max() < COV_TOL, c


def test_sde_with_wrong_velocity_misses_the_target():
    """Control: the SDE with the velocity of another Gaussian lands elsewhere."""
    v = gaussian_velocity(LinearPath(), mu=MU + 0.5, cov=SIGMA * 0.5)
    x = sample_sde(v, noise(), 100, generators=torch.Generator().manual_seed(1))
    m, c = moments(x)
    assert (m - MU).abs().max() > MEAN_TOL or (c - SIGMA).abs().max() > COV_TOL


@pytest.mark.parametrize("path", [LinearPath(), GVPPath()], ids=["linear", "gvp"])
def test_score_from_velocity_matches_the_gaussian_score(path):
    x = noise(50)
    for tv in (0.0, 0.3, 0.9):
        t = torch.full((50,), tv, dtype=torch.float64)
        (v,) = gaussian_velocity(path)((x,), t)
        a, s = path.alpha(t[0]), path.sigma(t[0])
        c = a * a * SIGMA + s * s * torch.eye(DIM, dtype=torch.float64)
        exact = -(x - a * MU) @ torch.linalg.inv(c).T
        torch.testing.assert_close(path.score_from_velocity(v, x, t), exact, rtol=1e-8, atol=1e-8)


def test_sde_per_row_generators_make_rows_independent_of_batching():
    v = gaussian_velocity(LinearPath())
    x0 = noise(4)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]
    full = sample_sde(v, x0, 20, generators=gens())
    g = gens()
    halves = torch.cat([sample_sde(v, x0[:2], 20, generators=g[:2]), sample_sde(v, x0[2:], 20, generators=g[2:])])
    torch.testing.assert_close(full, halves)


def test_linear_convention_noise_at_0_data_at_1():
    """x_t = (1 - t) x0 + t x1: the model sees the noise at t=0 and the data at t=1; target x1 - x0."""
    x1 = Triplane(torch.full((2, 2, 4, 4), 3.0), torch.full((2, 2, 6, 4), 3.0), torch.full((2, 2, 6, 4), 3.0))
    x0 = Triplane(torch.ones(2, 2, 4, 4), torch.ones(2, 2, 6, 4), torch.ones(2, 2, 6, 4))
    seen = {}

    def model(xt, t):
        seen["xt"] = xt
        return Triplane(torch.zeros_like(xt.xy), torch.zeros_like(xt.yt), torch.zeros_like(xt.xt))

    t = torch.tensor([0.0, 1.0])
    out = Transport("linear").training_losses(model, x1, t=t, noise=x0)
    assert isinstance(seen["xt"], Triplane)
    assert torch.all(seen["xt"].xy[0] == 1.0) and torch.all(seen["xt"].xy[1] == 3.0)
    # zero prediction: loss = mean of the three planes' mean (x1 - x0)^2 = 4
    torch.testing.assert_close(out["loss"], torch.tensor([4.0, 4.0]))


def test_loss_is_zero_for_the_true_velocity_and_per_plane_mean():
    g = torch.Generator().manual_seed(0)
    x1 = (torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 8, 4, generator=g))
    x0 = (torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 8, 4, generator=g))
    tr = Transport()
    exact = tr.training_losses(lambda xt, t: tuple(b - a for a, b in zip(x0, x1)), x1, noise=x0, generator=g)
    assert exact["loss"].abs().max() < 1e-12
    # a constant error e on the first part only: loss = e^2 / 2 (the two parts weigh equally)
    off = tr.training_losses(lambda xt, t: (x1[0] - x0[0] + 0.5, x1[1] - x0[1]), x1, noise=x0, generator=g)
    torch.testing.assert_close(off["loss"], torch.full((3,), 0.125))


def test_uniform_t_and_bad_arguments():
    t = Transport().sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.01
    v = gaussian_velocity(LinearPath())
    with pytest.raises(UserError, match="torchdiffeq|steps"):
        sample_ode(v, noise(4), 10, "dopri5") if not _has_torchdiffeq() else sample_ode(v, noise(4), 0, "euler")
    with pytest.raises(UserError, match="unknown transport path"):
        Transport("VPX")
    with pytest.raises(UserError, match="diffusion form"):
        sample_sde(v, noise(4), 3, diffusion_form="nope")


def _has_torchdiffeq() -> bool:
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True
