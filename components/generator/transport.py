"""Transport between noise and data: interpolant paths, the velocity loss, ODE and SDE samplers.

Convention (SiT's): time t in [0, 1]; x0 ~ N(0, I) is NOISE at t = 0, x1 is DATA at t = 1, and

    x_t = alpha(t) * x1 + sigma(t) * x0,        target velocity u_t = alpha'(t) * x1 + sigma'(t) * x0.

The linear path has alpha = t, sigma = 1 - t: x_t = (1 - t) x0 + t x1 and u_t = x1 - x0. Samplers
integrate from t = 0 (noise) to t = 1 (data). The model predicts the velocity E[u_t | x_t].

A "state" is what the model sees: one tensor, a tuple of tensors (planes) or a `Triplane`; losses
and samplers keep its type. Every per-sample quantity averages over the state's parts with equal
weight (the released loss: the mean of the three planes' mean squared errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from components.errors import UserError
from components.tokenizer.model import Triplane

__all__ = [
    "GVPPath", "LinearPath", "Path", "Transport", "VelocityFn", "make_path", "randn_like_state",
    "sample_ode", "sample_sde",
]

State = Tensor | tuple[Tensor, ...] | Triplane
VelocityFn = Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, ...]]
"""velocity(parts, t [B]) -> parts: the sampler's view of a model."""


def _parts(x: State) -> tuple[tuple[Tensor, ...], Callable[[Sequence[Tensor]], State]]:
    """A state as a tuple of tensors plus the function that rebuilds the state's type."""
    if isinstance(x, Triplane):
        return (x.xy, x.yt, x.xt), lambda p: Triplane(*p)
    if isinstance(x, Tensor):
        return (x,), lambda p: p[0]
    return tuple(x), tuple


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------

class Path:
    """x_t = alpha(t) x1 + sigma(t) x0. Subclasses give alpha, sigma and their time derivatives."""

    name = "path"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_over_d_alpha(self, t: Tensor) -> Tensor:
        """alpha / alpha' (override where a closed form is more stable)."""
        return self.alpha(t) / self.d_alpha(t)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        return _bcast(self.alpha(t), x1) * x1 + _bcast(self.sigma(t), x0) * x0

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        return _bcast(self.d_alpha(t), x1) * x1 + _bcast(self.d_sigma(t), x0) * x0

    def score_from_velocity(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x) from the exact velocity: with r = alpha/alpha',
        E[x0 | x] = (r v - x) / (r sigma' - sigma) and score = -E[x0 | x] / sigma, i.e.
        score = (r v - x) / (sigma^2 - r sigma' sigma)."""
        r = _bcast(self.alpha_over_d_alpha(t), x)
        s, ds = _bcast(self.sigma(t), x), _bcast(self.d_sigma(t), x)
        return (r * v - x) / (s * s - r * ds * s)

    def diffusion(self, t: Tensor, form: str, norm: float) -> Tensor:
        """SDE diffusion coefficient w(t) (dx = [v + w score] dt + sqrt(2 w) dW keeps the marginals).

        "sigma": norm * sigma(t) (SiT's default; for the linear path w*score = t v - x, finite on
        [0, 1]); "linear": norm * (1 - t); "constant": norm; "SBDM": norm * (r sigma^2 - sigma sigma'),
        the score-based diffusion model's choice (singular at t = 0: start at t0 > 0).
        """
        if form == "sigma":
            return norm * self.sigma(t)
        if form == "linear":
            return norm * (1 - t)
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "SBDM":
            s = self.sigma(t)
            return norm * (s * s / self.alpha_over_d_alpha(t) - s * self.d_sigma(t))
        raise UserError(f"unknown SDE diffusion form {form!r}: use sigma, linear, constant or SBDM")


class LinearPath(Path):
    """alpha = t, sigma = 1 - t (rectified flow / SiT 'Linear')."""

    name = "linear"

    def alpha(self, t):
        return t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return 1 - t

    def d_sigma(self, t):
        return -torch.ones_like(t)

    def alpha_over_d_alpha(self, t):
        return t


class GVPPath(Path):
    """alpha = sin(pi t / 2), sigma = cos(pi t / 2) (variance preserving for unit-variance data)."""

    name = "gvp"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2)

    def d_alpha(self, t):
        return math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2)

    def d_sigma(self, t):
        return -math.pi / 2 * torch.sin(t * math.pi / 2)

    def alpha_over_d_alpha(self, t):
        return torch.tan(t * math.pi / 2) * (2 / math.pi)


PATHS: dict[str, type[Path]] = {"linear": LinearPath, "gvp": GVPPath}


def make_path(name: str | Path) -> Path:
    if isinstance(name, Path):
        return name
    try:
        return PATHS[name.lower()]()
    except KeyError:
        raise UserError(f"unknown transport path {name!r}: use one of {', '.join(PATHS)}") from None


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def randn_like_state(x: State, generator: torch.Generator | None = None) -> State:
    parts, rebuild = _parts(x)
    return rebuild([torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in parts])


class Transport:
    """Velocity-prediction training on a path (default linear)."""

    def __init__(self, path: str | Path = "linear"):
        self.path = make_path(path)

    def sample_t(self, batch: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """t ~ U[0, 1) per sample (velocity prediction on linear/GVP is stable on the whole interval)."""
        return torch.rand(batch, device=device, generator=generator)

    def training_losses(self, model: Callable[..., State], x1: State, *, t: Tensor | None = None,
                        noise: State | None = None, generator: torch.Generator | None = None,
                        model_kwargs: dict | None = None) -> dict[str, Tensor]:
        """Per-sample loss [B]: mean over parts of the mean squared error between model(x_t, t) and u_t.

        x1 is data; noise (x0) and t are drawn (from `generator`) unless given. Returns
        {"loss": [B], "t": [B], "pred": model output}; train on loss.mean().
        """
        parts1, _ = _parts(x1)
        b, dev = parts1[0].shape[0], parts1[0].device
        if t is None:
            t = self.sample_t(b, dev, generator)
        x0 = randn_like_state(x1, generator) if noise is None else noise
        parts0, rebuild = _parts(x0)
        xt = rebuild([self.path.interpolate(a, d, t) for a, d in zip(parts0, parts1)])
        target = [self.path.velocity(a, d, t) for a, d in zip(parts0, parts1)]
        pred = model(xt, t, **(model_kwargs or {}))
        pred_parts, _ = _parts(pred)
        per_part = [(p.float() - u.float()).pow(2).flatten(1).mean(1) for p, u in zip(pred_parts, target)]
        return {"loss": torch.stack(per_part).mean(0), "t": t, "pred": pred}


# --------------------------------------------------------------------------------------------------
# Samplers (noise at t=0 -> data at t=1)
# --------------------------------------------------------------------------------------------------

def _axpy(x: Sequence[Tensor], a: float | Tensor, y: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(xi + a * yi for xi, yi in zip(x, y))


def _times(t: float, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), float(t), device=like.device, dtype=torch.float32)


def sample_ode(velocity: VelocityFn, x0: State, steps: int, method: str = "euler", *, t0: float = 0.0,
               t1: float = 1.0, atol: float = 1e-6, rtol: float = 1e-3) -> State:
    """Integrate dx/dt = velocity(x, t) from t0 (noise x0) to t1 (data).

    method "euler" (steps model calls) or "heun" (2 per step, the last step included: 2*steps calls)
    on a uniform grid; any other name ("dopri5", ...) is an adaptive torchdiffeq solver if that
    package is installed (steps is then ignored).
    """
    parts, rebuild = _parts(x0)
    if steps < 1:
        raise UserError(f"sampling steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        return rebuild(_torchdiffeq(velocity, parts, method, t0, t1, atol, rtol))
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
    x = parts
    for i in range(steps):
        ta, tb = grid[i], grid[i + 1]
        dt = tb - ta
        k1 = velocity(x, _times(ta, x[0]))
        if method == "euler":
            x = _axpy(x, dt, k1)
        else:
            k2 = velocity(_axpy(x, dt, k1), _times(tb, x[0]))
            x = tuple(xi + 0.5 * dt * (a + b) for xi, a, b in zip(x, k1, k2))
    return rebuild(x)


def _torchdiffeq(velocity: VelocityFn, parts, method, t0, t1, atol, rtol):
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise UserError(f"ODE method {method!r} needs the optional package torchdiffeq "
                        "(pip install torchdiffeq), or use method 'euler' or 'heun'") from None
    ts = torch.tensor([t0, t1], dtype=torch.float32, device=parts[0].device)
    out = odeint(lambda t, x: velocity(x, t.expand(x[0].shape[0])), parts, ts, method=method,
                 atol=atol, rtol=rtol)
    return tuple(o[-1] for o in out)


def _noise(parts: Sequence[Tensor], generators) -> tuple[Tensor, ...]:
    """Gaussian noise like parts; one generator per batch row keeps a row's draws independent of batching."""
    if generators is None or isinstance(generators, torch.Generator):
        return tuple(torch.randn(p.shape, generator=generators, device=p.device, dtype=p.dtype) for p in parts)
    if len(generators) != parts[0].shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {parts[0].shape[0]}")
    out = []
    for p in parts:
        rows = [torch.randn(p.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
        out.append(torch.stack(rows).to(device=p.device, dtype=p.dtype))
    return tuple(out)


def sample_sde(velocity: VelocityFn, x0: State, steps: int = 250, *, path: str | Path = "linear",
               diffusion_form: str = "sigma", diffusion_norm: float = 1.0, last_step: str = "mean",
               last_step_size: float = 0.04, t0: float | None = None,
               generators: torch.Generator | Sequence[torch.Generator] | None = None) -> State:
    """Euler-Maruyama on dx = [v + w(t) score] dt + sqrt(2 w(t)) dW from t0 to 1 (SiT's SDE sampler).

    The score comes from the velocity through the path's closed form (`Path.score_from_velocity`).
    `steps` model calls in all: steps - 1 stochastic steps on a uniform grid from t0 to
    1 - last_step_size, then one deterministic step of size last_step_size: "mean" uses the SDE drift
    (the mean of an Euler-Maruyama step without its noise; SiT's default), "euler" the ODE velocity.
    Defaults are SiT's 250-step setting (w = sigma(t), last step 0.04). `generators`: one
    torch.Generator, or one per batch row (then a row's path does not depend on the batch it is in).
    """
    p = make_path(path)
    parts, rebuild = _parts(x0)
    if steps < 2:
        raise UserError(f"SDE sampling needs steps >= 2, got {steps}")
    if not 0 < last_step_size < 1:
        raise UserError(f"last_step_size must be in (0, 1), got {last_step_size}")
    if last_step not in ("mean", "euler"):
        raise UserError(f"unknown SDE last_step {last_step!r}: use mean or euler")
    if t0 is None:
        t0 = 1e-3 if diffusion_form == "SBDM" else 0.0  # SBDM's w(t) is singular at t = 0
    t_end = 1.0 - last_step_size
    grid = torch.linspace(t0, t_end, steps, dtype=torch.float64).tolist()

    def drift(x, t):
        v = velocity(x, t)
        w = p.diffusion(t, diffusion_form, diffusion_norm)
        return tuple(vi + _bcast(w, xi) * p.score_from_velocity(vi, xi, t) for vi, xi in zip(v, x)), w

    x = parts
    for i in range(steps - 1):
        dt = grid[i + 1] - grid[i]
        t = _times(grid[i], x[0])
        f, w = drift(x, t)
        dw = _noise(x, generators)
        x = tuple(xi + fi * dt + _bcast(torch.sqrt(2 * w), xi) * math.sqrt(dt) * ni for xi, fi, ni in zip(x, f, dw))
    t = _times(t_end, x[0])
    f = drift(x, t)[0] if last_step == "mean" else velocity(x, t)
    return rebuild(_axpy(x, last_step_size, f))
