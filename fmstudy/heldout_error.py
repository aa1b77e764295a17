"""How far the held-out objective strays from the exact one, per sampler (review 2, item 1).

The held-out objective is the fixed objective estimated on one fixed set of n held-out points
(x0, x1, eps, t): with v* the oracle velocity and u the regression target,

    H(θ) = mean_i ||v_θ(x_i) - u_i||^2
         = mean_i ||v* - u||^2 + mean_i ||v_θ - v*||^2 + 2 mean_i <v_θ - v*, v* - u>,

irreducible part, excess and a cross term. Over fresh sets the cross term averages to 0, but on
the one fixed set it does not, and it depends on θ, hence on the sampler that trained θ. The
seed intervals of a held-out ratio do not contain it: every run is scored on the same set.

On an oracle benchmark the integrated excess E(θ) (a fixed quadrature with v* exact, no target
noise) gives the comparison. Per seed s, the objective a sampler's model would have if its
held-out offset H - E were the baseline's own is ``H*_s = (H_u,s - E_u,s) + E_s``, and

    b = exp mean_s log(H_s / H*_s)                                                     (H.1)

is the factor by which the held-out set distorts the sampler's held-out ratio to the baseline
(1 for the baseline itself; above 1: the set scores the sampler worse than its excess says),
with a t-interval over the paired seeds. It bounds what a held-out ratio can resolve: one
closer to 1 than the largest |log b| seen on the oracle benchmarks is not resolved by the
held-out set, whatever its seed interval says. (b also carries the part of the quadrature's
own error that differs between models: the quadrature is one fixed set of points as well.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import Estimate, paired_ratio

__all__ = ["comparison_bound", "distortion", "distortion_bound", "distortion_table", "unresolved", "unresolved_verdicts"]


def distortion(run: xr.Dataset, base: xr.Dataset, heldout: str = "heldout_objective_ema", exact: str = "integrated_excess_ema",
               level: float = 0.95) -> Estimate:
    """(H.1) for one run against the baseline's runs ``base``, both ``[member, checkpoint]`` on
    the same seeds (members in the same order), at the last checkpoint."""
    h, e = (np.asarray(run[v].isel(checkpoint=-1).values, dtype=float) for v in (heldout, exact))
    h_u, e_u = (np.asarray(base[v].isel(checkpoint=-1).values, dtype=float) for v in (heldout, exact))
    if "member" in run.coords and "member" in base.coords and not np.array_equal(run.member.values, base.member.values):
        raise ValueError(f"members {list(run.member.values)} against {list(base.member.values)} are not allowed: pairs need the same seeds")
    return paired_ratio(h, h_u - e_u + e, level=level)


def distortion_table(ds: xr.Dataset, baseline: str = "uniform", heldout: str = "heldout_objective_ema",
                     exact: str = "integrated_excess_ema", level: float = 0.95) -> pd.DataFrame:
    """Per sampler of ``ds`` (other axes selected; dims ``sampler``, ``member``,
    ``checkpoint``), at the last checkpoint: ``distortion`` b of (H.1) as an Estimate over the
    seeds paired with ``baseline``, and ``unbiased`` (whether the sampler keeps the fixed
    objective, where ``ds`` records it). Empty without the oracle's ``exact`` variable."""
    if exact not in ds or heldout not in ds:
        return pd.DataFrame()
    if baseline not in ds.sampler.values:
        raise ValueError(f"baseline={baseline!r} is not allowed: the samplers are {', '.join(map(str, ds.sampler.values))}")
    base = ds.sel(sampler=baseline)
    rows = {}
    for name in ds.sampler.values:
        if name == baseline:
            continue
        row = {"distortion": distortion(ds.sel(sampler=name), base, heldout, exact, level)}
        if "unbiased" in ds:
            row["unbiased"] = bool(ds["unbiased"].sel(sampler=name))
        rows[str(name)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def distortion_bound(tables: Iterable[pd.DataFrame], unbiased_only: bool = True) -> float:
    """The largest distortion, as a factor >= 1, that the intervals of :func:`distortion_table`
    tables allow: ``exp(max |log lo|, |log hi|)`` over their rows (only the samplers that keep
    the fixed objective, by default); NaN without any interval."""
    worst = math.nan
    for t in tables:
        if not len(t):
            continue
        keep = t["unbiased"] if unbiased_only and "unbiased" in t else pd.Series(True, index=t.index)
        for e, k in zip(t["distortion"], keep):
            if k and isinstance(e, Estimate) and np.isfinite(e.lo) and np.isfinite(e.hi) and e.lo > 0:
                far = max(abs(math.log(e.lo)), abs(math.log(e.hi)))
                worst = far if not np.isfinite(worst) else max(worst, far)
    return math.exp(worst) if np.isfinite(worst) else math.nan


def comparison_bound(ds: xr.Dataset | None) -> float:
    """:func:`distortion_bound` of the comparison grid ``ds`` (a sampler axis, one value of
    every other axis but ``sigma``): over its unbiased samplers at each of its sigmas, the bound
    chapters 5, 6, 7 and 9 hold held-out ratios against. NaN without it or its oracle."""
    if ds is None or "sampler" not in ds.dims:
        return math.nan
    sigmas = list(ds.sigma.values) if "sigma" in ds.dims else [None]
    return distortion_bound(distortion_table(ds if s is None else ds.sel(sigma=s)) for s in sigmas)


def unresolved(ratio: Estimate, bound: float) -> bool:
    """Whether a held-out ratio (an Estimate) lies closer to 1 than the distortion ``bound``
    (a factor >= 1) the oracle benchmarks allow: ``|log ratio| < log bound``. False without a
    bound or a value."""
    if not (isinstance(ratio, Estimate) and np.isfinite(ratio.value) and ratio.value > 0 and np.isfinite(bound)):
        return False
    return abs(math.log(ratio.value)) < math.log(bound)


def unresolved_verdicts(tables: dict[str, pd.DataFrame], bound: float, alpha: float = 0.05,
                        metric: str = "heldout_objective_ema") -> tuple[list[str], int]:
    """Of the rows of ``tables`` (chapter 7's, indexed by (benchmark, sampler), with ``ratio``,
    ``p_holm`` and ``metric`` columns) that read the held-out ``metric`` and are significant
    (``p_holm <= alpha``), those closer to 1 than ``bound`` (:func:`unresolved`), as
    "sampler on benchmark (ratio r)", and the number of such significant rows."""
    out, n = [], 0
    for t in tables.values():
        if not len(t) or "metric" not in t:
            continue
        for key, row in t.iterrows():
            if row["metric"] != metric or not row["p_holm"] <= alpha:
                continue
            n += 1
            if unresolved(row["ratio"], bound):
                bench, sampler = key if isinstance(key, tuple) else ("", key)
                out.append(f"{sampler} on {bench} (ratio {row['ratio'].value:.4g})")
    return out, n
