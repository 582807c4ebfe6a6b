"""The sweep's pure part: search space, per-candidate params, study naming, Pareto front, best fragment.

No Optuna, Ray or MLflow here (pipelines/sweep.py drives those). A candidate is one choice of
(triplane spatial size, triplane temporal size, coordinate sampling ratio); its trial runs the
pretrain section for `sweep.trial_steps` steps with those three values applied.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.config import Params, ParamsError, RatioRange, validate_params
from components.errors import UserError

# Optuna parameter name -> (params section, key) it sets.
PARAM_KEYS: dict[str, tuple[str, str]] = {
    "latent_resolution_xy": ("tokenizer", "latent_resolution_xy"),
    "latent_resolution_t": ("tokenizer", "latent_resolution_t"),
    "sampling_ratio": ("pretrain", "sampling_ratio"),
}
OBJECTIVES = {"single": ("test_psnr",), "multi": ("test_psnr", "num_tokens")}
DIRECTIONS = {"single": ("maximize",), "multi": ("maximize", "minimize")}
# Trial user attribute of a trial that repeated an already-tried point and reused its result
# (it trained nothing; reports and the dashboard leave it out).
ATTR_DUPLICATE = "duplicate_of"

# Sweep keys that do not change what a trial measures: a rerun with other values continues the study.
BUDGET_KEYS = ("n_trials", "timeout", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "storage", "study_name")
# Pretrain keys a trial overrides or does not use (one process, no checkpoints).
TRIAL_OVERRIDDEN = ("steps", "eval_every", "checkpoint_every", "sampling_ratio", "eval_videos", "batch_size",
                    "num_workers", "min_workers", "max_failures", "cpus_per_worker", "gpus_per_worker", "storage_path",
                    "keep_checkpoints", "log_every")


class SearchSpaceError(UserError):
    """A search-space value the model cannot take, found before any trial starts."""


def num_tokens(xy: int, t: int) -> int:
    """H'W' + W'T' + H'T' for H' = W' = xy, T' = t (1280 for the paper's 16x16x32)."""
    return xy * xy + 2 * xy * t


@dataclass(frozen=True)
class Candidate:
    latent_resolution_xy: int
    latent_resolution_t: int
    sampling_ratio: float

    @property
    def num_tokens(self) -> int:
        return num_tokens(self.latent_resolution_xy, self.latent_resolution_t)

    def as_dict(self) -> dict[str, Any]:
        return {"latent_resolution_xy": self.latent_resolution_xy, "latent_resolution_t": self.latent_resolution_t,
                "sampling_ratio": self.sampling_ratio}

    def key(self) -> tuple[int, int, float]:
        return (self.latent_resolution_xy, self.latent_resolution_t, self.sampling_ratio)

    def label(self) -> str:
        return f"xy={self.latent_resolution_xy} t={self.latent_resolution_t} ratio={self.sampling_ratio:.4g}"


def trial_params(params: Params, cand: Candidate, source: str | None = None) -> Params:
    """The validated params of one trial: the candidate applied, the pretrain section shortened to a trial."""
    sw = params.sweep
    raw = params.model_dump(mode="json")
    raw["tokenizer"].update(latent_resolution_xy=int(cand.latent_resolution_xy),
                            latent_resolution_t=int(cand.latent_resolution_t))
    pt = raw["pretrain"]
    pt.update(sampling_ratio=float(cand.sampling_ratio), steps=sw.trial_steps, eval_every=sw.report_every,
              checkpoint_every=sw.trial_steps, log_every=min(pt["log_every"], sw.report_every), num_workers=1,
              min_workers=None, cpus_per_worker=sw.cpus_per_trial, gpus_per_worker=sw.gpus_per_trial,
              eval_videos=sw.eval_videos or pt["eval_videos"], batch_size=sw.batch_size or pt["batch_size"])
    return validate_params(raw, source=source or f"sweep candidate {cand.label()}")


def ratio_bounds(params: Params) -> list[float]:
    """The sampling ratios that bound the search space (every choice, or a range's two ends)."""
    r = params.sweep.sampling_ratio
    return [r.low, r.high] if isinstance(r, RatioRange) else list(r)


def validate_search_space(params: Params) -> list[Candidate]:
    """Build and validate the params of every corner of the search space; return the candidates
    within the token budget (all of them when sweep.max_tokens is null).

    Each size and ratio goes through the same validation as params.yaml (components.config), so a
    size the model cannot take is reported with its key and reason before any trial starts.
    """
    sw = params.sweep
    grid = [Candidate(xy, t, r) for xy, t, r in itertools.product(sw.latent_resolution_xy, sw.latent_resolution_t,
                                                                   ratio_bounds(params))]
    by_params_key = {f"{section}.{key}": name for name, (section, key) in PARAM_KEYS.items()}
    for cand in grid:
        try:
            trial_params(params, cand)
        except ParamsError as exc:
            reason = str(exc).split(": ", 1)[-1].rstrip(".")
            found = re.match(r"(\w+\.\w+) = ", reason)
            name = by_params_key.get(found.group(1)) if found else None
            if name is not None:  # one value of one axis: name it
                value = getattr(cand, name)
                raise SearchSpaceError(f"sweep.{name} holds {value!r}, which this model and data cannot take "
                                       f"({reason}); remove it from the search space") from None
            raise SearchSpaceError(f"the search-space combination {cand.label()} is not a valid model ({reason}); "
                                   "narrow sweep.latent_resolution_xy / latent_resolution_t / sampling_ratio") from None
    feasible = [c for c in grid if within_budget(c, sw.max_tokens)]
    if not feasible:
        raise SearchSpaceError(f"no triplane of the search space fits sweep.max_tokens = {sw.max_tokens}; "
                               "raise it or add smaller sizes")
    return feasible


def within_budget(cand: Candidate, max_tokens: int | None) -> bool:
    return max_tokens is None or cand.num_tokens <= max_tokens


def study_name(params: Params) -> str:
    """`coordtok-sweep-<hash>` of what defines the study (sweep.study_name wins when set).

    Budget and resource keys are left out, so raising sweep.n_trials and rerunning continues the study.
    """
    if params.sweep.study_name:
        return params.sweep.study_name
    dumped = params.model_dump(mode="json")
    defining = {
        "data": dumped["data"],
        "tokenizer": {k: v for k, v in dumped["tokenizer"].items() if not k.startswith("latent_resolution")},
        "pretrain": {k: v for k, v in dumped["pretrain"].items() if k not in TRIAL_OVERRIDDEN},
        "sweep": {k: v for k, v in dumped["sweep"].items() if k not in BUDGET_KEYS},
    }
    # The effective values define the objective, whichever section they come from.
    defining["sweep"]["eval_videos"] = params.sweep.eval_videos or params.pretrain.eval_videos
    defining["sweep"]["batch_size"] = params.sweep.batch_size or params.pretrain.batch_size
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:10]
    return f"coordtok-sweep-{digest}"


# ---------------------------------------------------------------------------- results


def pareto_mask(psnr: Sequence[float], tokens: Sequence[float]) -> np.ndarray:
    """True for the points no other point dominates (PSNR at least as high and tokens at most as
    many, one of them strictly better). Duplicated points are all kept."""
    p, k = np.asarray(psnr, float), np.asarray(tokens, float)
    mask = np.ones(len(p), bool)
    for i in range(len(p)):
        dominated = (p >= p[i]) & (k <= k[i]) & ((p > p[i]) | (k < k[i]))
        mask[i] = not dominated.any()
    return mask


def pick_best(rows: Sequence[dict[str, Any]], max_tokens: int | None) -> dict[str, Any] | None:
    """The completed trial with the highest test PSNR within the token budget (ties: fewer tokens,
    then the earlier trial). Each row needs number, test_psnr, num_tokens."""
    ok = [r for r in rows if np.isfinite(r["test_psnr"]) and (max_tokens is None or r["num_tokens"] <= max_tokens)]
    if not ok:
        return None
    return min(ok, key=lambda r: (-r["test_psnr"], r["num_tokens"], r["number"]))


def best_fragment(cand_params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The params.yaml fragment that applies a trial's choices: {section: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in cand_params.items():
        section, key = PARAM_KEYS[name]
        out.setdefault(section, {})[key] = float(value) if name == "sampling_ratio" else int(value)
    return out


def set_overrides(fragment: dict[str, dict[str, Any]]) -> list[str]:
    """`dvc exp run -S` arguments for a fragment, e.g. ["tokenizer.latent_resolution_xy=16", ...]."""
    return [f"{section}.{key}={value}" for section, keys in fragment.items() for key, value in keys.items()]


def apply_fragment(raw: dict[str, Any], fragment: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of a parsed params.yaml with the fragment merged in (what `dvc exp run -S` does)."""
    out = copy.deepcopy(raw)
    for section, keys in fragment.items():
        out.setdefault(section, {}).update(keys)
    return out


def resolve_storage(storage: str, root: str | os.PathLike) -> str:
    """An Optuna storage spec with relative sqlite/journal paths made absolute against the checkout
    (`shared_root`: a queued DVC experiment's temporary workspace shares the workspace's study)."""
    from components.config import resolve_path, shared_root

    base = shared_root(root)
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        return "sqlite:///" + str((base / storage[len("sqlite:///"):]).resolve())
    if "://" not in storage:  # a journal file
        return str(resolve_path(base, storage).resolve())
    return storage
