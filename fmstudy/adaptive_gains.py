"""Chapter 6's predicted gains and the comparison's side results (split from
:mod:`fmstudy.adaptive_report`, which re-exports every name): predicted against measured gains
with the ceiling flags, the sigma = 1 sub-grids beside uniform, the FLOPs ratio, the share of
negative signal estimates, and why oracle_qstar gains less than the ceiling R.


Why oracle_qstar, q* measured on fresh probes, gains less than the ceiling R of the same
checkpoint (:func:`ceiling_gap`): R is q*'s gain computed on the checkpoint's own probes; the
run's q was set at the last feedback from another draw of as many probes (and mixed with the
floor), so it carries that draw's error. With equal-width bins of mass p_k, second moments S_k,
their standard errors se_k and ||G||^2 of the checkpoint's account, the gain of a proposal q is

    V(U) / V(q),  V(q) = sum_k p_k^2 S_k / q_k - ||G||^2                                (4.5a)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from . import report
from .account_report import above_ceiling, predicted_gains, shown
from .adaptive_compare import Comparison, fixed_setting, with_family
from .conclusions import vs_uniform

__all__ = [
    "CeilingGap", "ceiling_gap", "ceiling_gap_text", "flops_ratio", "negative_share", "others_table", "predicted_shown", "predicted_tables",
    "signal_noise_text",
]


def predicted_shown(pred: pd.DataFrame, fmt: str = ".3g", baseline: str = "uniform") -> pd.DataFrame:
    """A table of :func:`predicted_tables` for a page: numbers to ``fmt`` (3 significant figures),
    an infinite noise scale as ``account_report.NO_SIGNAL``, an Estimate as "value [lo, hi]"; the
    baseline's own flag against the ceiling (it has no speed-up of its own to hold there) "—"."""
    out = report.as_text(shown(pred, fmt), fmt)
    if "above R's prediction" in out and baseline in out.index:
        out.loc[baseline, "above R's prediction"] = "—"
    return out


def predicted_tables(cmp: Comparison | None, speed: pd.DataFrame) -> dict[float, pd.DataFrame]:
    """Per sigma, ``account_report.predicted_gains`` of the comparison with a ``measured speed-up``
    column from :func:`speed_table` (1 for uniform, its own baseline; NaN for a sampler without a
    row) and ``account_report.above_ceiling`` as ``above R's prediction``; empty without a
    comparison or without the variance account."""
    if cmp is None or "var_adam_gain_run" not in cmp.ad:
        return {}
    _, batch = report.model_of(cmp.ad)
    out = {}
    for sigma in cmp.sigmas:
        pred = predicted_gains(cmp.ad.sel(sigma=sigma), batch)
        meas = speed[speed.sigma == sigma].set_index("sampler")["speedup"]
        # uniform is the baseline: its speed-up over itself is 1 by definition
        pred["measured speed-up"] = [1.0 if k == "uniform" else meas[k] if k in meas.index else float("nan") for k in pred.index]
        pred["above R's prediction"] = above_ceiling(pred)
        out[sigma] = pred
    return out


def others_table(cmp: Comparison | None, grids: Mapping[str, tuple[xr.Dataset | None, str]]) -> pd.DataFrame | None:
    """Each cell of the sigma = 1 sub-grids ``grids`` (name -> (grid, its axis)) against the
    comparison's uniform at sigma = 1 (``conclusions.vs_uniform``), rows labelled "name: value",
    in the order of ``grids``; None when none of them could be compared."""
    parts = []
    for name, (grid, axis) in grids.items():
        tag = f" @{name}"  # a suffix keeps a grid's own "uniform" apart from the baseline's
        t = vs_uniform(cmp.ad if cmp else None, grid, axis, tag)
        if t is not None:
            parts.append(t.rename(index=lambda s, tag=tag, name=name: f"{name}: {s.removesuffix(tag)}"))
    return with_family(pd.concat(parts)) if parts else None


def flops_ratio(cmp: Comparison | None, name: str, sigma: float, baseline: str = "uniform") -> float:
    """Training FLOPs per member of sampler ``name`` over the baseline's at the end of the run, at
    equal steps (``report.run_flops``: its norms and extra probe passes counted); NaN without it."""
    if cmp is None or name not in cmp.ad.sampler.values or sigma not in cmp.sigmas:
        return math.nan
    model, batch = report.model_of(cmp.ad)
    at = cmp.ad.sel(sigma=sigma)
    mine = report.run_flops(at.sel(sampler=name), model, batch, name)[-1]
    return float(mine / report.run_flops(at.sel(sampler=baseline), model, batch, baseline)[-1])


def negative_share(values: np.ndarray) -> float:
    """The share of the finite entries of ``values`` (unbiased estimates of a nonnegative
    quantity, e.g. a bin's ||E g||^2) that are negative: where the estimate's noise exceeds its
    signal; NaN without any."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float((x < 0).mean()) if x.size else math.nan


def signal_noise_text(cmp: Comparison | None, baseline: str = "uniform", var: str = "grad_signal") -> str:
    """ "x% at σ = s; ...": per sigma, :func:`negative_share` of the baseline's per-bin estimates
    of ||E g||^2 on the fixed probes (``grad_signal``; every seed, bin and checkpoint from half
    the budget on, as chapter 3 reads them); "n/a" without them."""
    if cmp is None or var not in cmp.ad or baseline not in cmp.ad.sampler.values:
        return "n/a"
    u = cmp.ad[var].sel(sampler=baseline)
    late = u.sel(checkpoint=u.checkpoint[u.checkpoint >= u.checkpoint[-1] / 2])
    return "; ".join(f"{100 * negative_share(late.sel(sigma=s).values):.0f}% at σ = {s:g}" for s in cmp.sigmas)


class CeilingGap(NamedTuple):
    """:func:`ceiling_gap`: means over members and the checkpoints after step 0 of R (``ceiling``),
    its jackknife bias estimate (``bias``), the gain of q* with the floor on the same probes
    (``floored``), of q* with the floor measured on a redraw of the probes (``redrawn``), and the
    run's own gain (``gain``); the gap R - gain at the checkpoints where the run had just set its
    proposal (``gap_fresh``, ``fresh`` of them) and at the others (``gap_stale``, ``stale``); the
    floor f, the probes per bin and the steps between feedbacks."""

    ceiling: float
    bias: float
    floored: float
    redrawn: float
    gain: float
    gap_fresh: float
    fresh: int
    gap_stale: float
    stale: int
    floor: float
    per_bin: float
    every: float


def _gain(p: np.ndarray, second: np.ndarray, full_sq: np.ndarray, q: np.ndarray) -> np.ndarray:
    """V(U) / V(q) (4.5a) of [..., K] moments and proposal masses, ||G||^2 [...]."""
    v = lambda r: (p**2 * second / r).sum(-1) - full_sq  # noqa: E731
    return v(np.broadcast_to(p, second.shape)) / v(q)


def _qstar(p: np.ndarray, second: np.ndarray, floor: float) -> np.ndarray:
    """q*_k ∝ p_k sqrt(S_k) (4.5b), negative estimates as 0, mixed with the floor: (1 - f) q* + f p."""
    score = p * np.sqrt(np.clip(second, 0, None))
    return (1 - floor) * score / score.sum(-1, keepdims=True) + floor * p


def ceiling_gap(cmp: Comparison | None, sigma: float, name: str = "oracle_qstar", draws: int = 200, seed: int = 0) -> CeilingGap | None:
    """Why ``name``'s gain V(U)/V(q) falls below the ceiling R in its own runs at ``sigma`` (Adam's
    metric; module docstring): the pieces of :class:`CeilingGap`, the redraw model over ``draws``
    draws of the per-bin standard errors (generator ``seed``); None without the sampler or the account."""
    if cmp is None or name not in cmp.ad.sampler.values or sigma not in cmp.sigmas or "bin_grad_sq_adam_se" not in cmp.ad:
        return None
    from .samplers import make_sampler
    from .tables import label_spec

    cell = cmp.ad.sel(sigma=sigma, sampler=name)
    late = cell.isel(checkpoint=slice(1, None))
    widths = (cell["t_hi"] - cell["t_lo"]).values if "t_hi" in cell.coords else np.ones(cell.sizes["t_bin"])
    p = widths / widths.sum()
    second, se = late["bin_grad_sq_adam"].values.astype(float), late["bin_grad_sq_adam_se"].values.astype(float)
    full_sq = late["var_adam_full_sq"].values.astype(float)
    floor = float(make_sampler(label_spec(name), [0]).floor)
    floored = _gain(p, second, full_sq, _qstar(p, second, floor))
    rng = np.random.default_rng(seed)
    redrawn = np.mean([_gain(p, second, full_sq, _qstar(p, second + np.nan_to_num(se) * rng.standard_normal(second.shape), floor))
                       for _ in range(draws)], axis=0)
    ceiling, gain = late["var_adam_ceiling"].values, late["var_adam_gain_run"].values
    every = fixed_setting(cmp.ad, "feedback_every")
    steps = late.checkpoint.values
    fresh = steps % every == 0 if np.isfinite(every) else np.zeros(steps.size, bool)
    gap = ceiling - gain
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mean of no finite value is NaN
        return CeilingGap(
            float(np.nanmean(ceiling)), float(np.nanmean(late["var_adam_ceiling_bias"].values)), float(np.nanmean(floored)),
            float(np.nanmean(redrawn)), float(np.nanmean(gain)), float(np.nanmean(gap[:, fresh])) if fresh.any() else math.nan,
            int(fresh.sum()), float(np.nanmean(gap[:, ~fresh])) if (~fresh).any() else math.nan, int((~fresh).sum()), floor,
            fixed_setting(cmp.ad, "probe_per_bin"), every,
        )


def _joined(values: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    values = list(values)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def ceiling_gap_text(gaps: Mapping[float, CeilingGap | None], name: str = "oracle_qstar") -> str:
    """Chapter 6's sentences on :func:`ceiling_gap`, one value per sigma in the order of ``gaps``;
    "`name` was not run in this profile" without any."""
    got = {s: g for s, g in gaps.items() if g is not None}
    if not got:
        return f"`{name}` was not run in this profile"
    g0, gs = next(iter(got.values())), list(got.values())

    def each(fmt: str, field: str) -> str:
        return _joined([f"{getattr(g, field):{fmt}}" for g in gs])

    order = f"σ = {_joined([f'{s:g}' for s in got])}" + (" in this order" if len(got) > 1 else "")
    return (
        f"`{name}`'s gain in its own runs, {each('.3g', 'gain')}, is below their ceiling R, {each('.3g', 'ceiling')} ({order}). "
        f"The {g0.floor:.0%} floor is not why: q* mixed with it gains {each('.3g', 'floored')} on the same probes. Staleness between "
        f"feedbacks (every {g0.every:g} steps) is not why either: R minus the gain is {each('.2g', 'gap_fresh')} at the "
        f"{g0.fresh} checkpoints where the run had just set its proposal on the same weights, and {each('.2g', 'gap_stale')} at the "
        f"{g0.stale} others. The run's q* is measured on the feedback's own {g0.per_bin:g} probes per bin, not on the checkpoint's, and "
        f"R is the best gain for the checkpoint's probes: its plug-in is biased upwards by them (jackknife bias estimate "
        f"{each('+.2g', 'bias')}), and a proposal estimated on other probes falls below it. Probe errors of the measured size "
        f"suffice for the whole gap: redrawing each bin's S_k with a normal error of its standard error (the least an "
        f"independent estimate differs by) and allocating by the redraw gives {each('.3g', 'redrawn')}. This is a model's "
        f"reading, not a measured decomposition"
    )
