"""Time samplers: how training samples are allocated over t (STUDY.md section 4).

The registry. The classes live in :mod:`fmstudy.sampler_base` (the proposal as a table, draws,
importance weights (4.2), the uniform floor (4.3), resume), :mod:`fmstudy.fixed_samplers`,
:mod:`fmstudy.adaptive_samplers` and :mod:`fmstudy.variance_samplers` (the allocations of the
variance account, 4.5). ``make_sampler(spec, seeds, t_eps)`` builds any of them by name.

Objective-changing loss weightings (Min-SNR-like, EDM2-like) are not samplers: see
:mod:`fmstudy.weighting`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .adaptive_samplers import GradNorm, LearningProgress, LossSecondMoment, OracleExcess
from .fixed_samplers import Arcsine, Beta, LogitNormal, Mode, Uniform, UShaped
from .sampler_base import Feedback, TimeDraw, TimeSampler
from .variance_samplers import InfoSNR, OracleQStar, VarOpt

__all__ = [
    "TimeDraw",
    "Feedback",
    "TimeSampler",
    "make_sampler",
    "sampler_class",
    "sampler_names",
    "SAMPLERS",
]

SAMPLERS: dict[str, type[TimeSampler]] = {
    cls.name: cls
    for cls in (
        Uniform, LogitNormal, Mode, Beta, Arcsine, UShaped,
        LossSecondMoment, GradNorm, LearningProgress, OracleExcess,
        VarOpt, OracleQStar, InfoSNR,
    )  # fmt: skip
}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "stratified": ("uniform", {"stratified": True}),
    # Neyman allocation is optimal with draws stratified over bins (4.5d): the two go together.
    "var_opt_neyman": ("var_opt", {"neyman": True, "stratified": True}),
    "oracle_qstar_neyman": ("oracle_qstar", {"neyman": True, "stratified": True}),
}


def sampler_class(name: Any) -> type[TimeSampler] | None:
    """The class behind a sampler name or alias (None for an unknown name)."""
    name = _ALIASES[name][0] if name in _ALIASES else name
    return SAMPLERS.get(name)


def sampler_names() -> list[str]:
    return sorted([*SAMPLERS, *_ALIASES])


def make_sampler(
    spec: Mapping[str, Any] | str,
    seeds: Sequence[int] | Tensor,
    t_eps: float = 0.0,
    device: torch.device | str | None = None,
) -> TimeSampler:
    """Build a sampler from a grid file's description, e.g.
    ``{"name": "logit_normal", "m": 0.0, "s": 1.0, "reweight": True}``. The time domain
    ``t_eps`` belongs to the path and is passed separately. Unknown names and keys, and bad
    values, get a one-line ``ValueError`` that lists what is allowed."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name in _ALIASES:
        name, extra = _ALIASES[name]
        spec = {**extra, **spec}
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: known samplers are {', '.join(sampler_names())}")
    cls = SAMPLERS[name]
    allowed = set(cls.options)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for sampler {name!r}: allowed parameters are {', '.join(sorted(allowed))}"
        )
    if "truncate" in spec and spec["truncate"] is not None:
        spec["truncate"] = tuple(spec["truncate"])
    return cls(seeds, t_eps=t_eps, device=device, **spec)
