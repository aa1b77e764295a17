"""Chapter 6's analysis (adaptive allocation against fixed schedules): the compare grid's adaptive
samplers beside uniform, their per-sigma tables against uniform, the headline numbers (Holm
counts, the largest speed-up), predicted against measured gains, the Rao-Blackwellised target
and the weightings beside uniform, and the chapter's figures of the comparison. The stability
sweep is :mod:`fmstudy.adaptive_stability`.

Every comparison is a row of ``report.against_baseline`` (paired over seeds, A.2-A.4): the final
ratio r = exp(mean_s log(x_s / b_s)) and the median step speed-up to reach uniform's final value.
A row counts better (worse) than uniform when r < 1 (r > 1) with Holm-adjusted p < 0.05 over the
table's rows (A.6, ``sweeps.holm_counts``): the family is the table itself (its adaptive samplers
at each sigma), so a larger table (chapter 7's sweeps) adjusts the same comparison's p by more.
Beside each ratio the interval simultaneous over the same family (Bonferroni, level 1 - 0.05/m):
the 95% t-interval of the mean log-ratio widened from t_{n-1}(0.975) to t_{n-1}(1 - 0.025/m),

    [exp(dbar - t_{n-1}(1 - 0.025/m) s/sqrt(n)), exp(dbar + t_{n-1}(1 - 0.025/m) s/sqrt(n))].   (6.1)

Why oracle_qstar, q* measured on fresh probes, gains less than the ceiling R of the same
checkpoint (:func:`ceiling_gap`): R is q*'s gain computed on the checkpoint's own probes; the
run's q was set at the last feedback from another draw of as many probes (and mixed with the
floor), so it carries that draw's error. With equal-width bins of mass p_k, second moments S_k,
their standard errors se_k and ||G||^2 of the checkpoint's account, the gain of a proposal q is

    V(U) / V(q),  V(q) = sum_k p_k^2 S_k / q_k - ||G||^2                                (4.5a)

and the redraw model replaces q by q~ = (1 - f) q*(S~) + f p, S~_k = max(S_k + se_k z_k, 0),
z_k ~ N(0, 1) independent: the gain a proposal measured on an independent probe set would have.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from . import plots, report
from .account_report import above_ceiling, predicted_gains, shown
from .analysis import Estimate, bonferroni_level, holm
from .baseline_page import interval_text
from .conclusions import ADAPTIVE, vs_uniform
from .frames import require_columns
from .sweeps import holm_counts

__all__ = [
    "DESCRIBED",
    "EXTRA",
    "CeilingGap",
    "Comparison",
    "Headline",
    "best_speedup",
    "ceiling_gap",
    "ceiling_gap_text",
    "comparison",
    "curves_figure",
    "extra_text",
    "final_shown",
    "fixed_setting",
    "flops_ratio",
    "headline",
    "negative_share",
    "not_run_text",
    "others_table",
    "predicted_shown",
    "predicted_tables",
    "q_figure",
    "ran_text",
    "ratio_sentence",
    "ratio_text",
    "row_at",
    "signal_noise_text",
    "simultaneous",
    "speed_table",
    "speedup_text",
    "with_family",
]

DESCRIBED = ADAPTIVE[:5]  # the samplers the chapter describes as compared (info_snr is described as not run)
EXTRA = ("learning_progress", "oracle_excess")  # implemented, and described apart: compared only where a profile runs them


class Comparison(NamedTuple):
    """The compare grid at gmm8 (``ds``), its uniform and adaptive samplers (``ad``), their
    labels (``names``), its sigmas and its convergence metric."""

    ds: xr.Dataset
    ad: xr.Dataset
    names: list[str]
    sigmas: list[float]
    metric: str


def comparison(ds: xr.Dataset | None, names: Sequence[str] = ADAPTIVE) -> Comparison | None:
    """The compare grid ``ds`` at gmm8 with uniform and those of its samplers whose name (options
    dropped) is in ``names``, in that order; None when it was not run or has no uniform."""
    if ds is None or "uniform" not in ds.sampler.values:
        return None
    ds = report.select_benchmark(ds)
    found = report.samplers_of(ds, tuple(names))
    ad = ds.sel(sampler=["uniform", *found])
    return Comparison(ds, ad, found, [float(s) for s in ad.sigma.values], report.convergence_metric(ad))


def ran_text(names: Sequence[str]) -> str:
    """ "`a`, `b` beside `uniform`", or "no adaptive sampler" when ``names`` is empty."""
    return ", ".join(f"`{n}`" for n in names) + " beside `uniform`" if names else "no adaptive sampler"


def not_run_text(names: Sequence[str], described: Sequence[str] = DESCRIBED) -> str:
    """The samplers of ``described`` not among ``names`` (exact labels), "`a`, `b`", or "none"."""
    return ", ".join(f"`{n}`" for n in described if n not in names) or "none"


def extra_text(names: Sequence[str], extra: Sequence[str] = EXTRA) -> str:
    """Which of ``extra`` ran (exact labels among ``names``): "neither was run in this profile, so
    this chapter does not compare them", "both were run ...", or "`a` was run ..., `b` not"."""
    ran = [n for n in extra if n in names]
    if not ran:
        return "neither was run in this profile, so this chapter does not compare them"
    if len(ran) == len(extra):
        return "both were run in this profile and appear in the tables below"
    rest = ", ".join(f"`{n}`" for n in extra if n not in ran)
    return f"{', '.join(f'`{n}`' for n in ran)} was run in this profile and appears in the tables below; {rest} was not"


def fixed_setting(ds: xr.Dataset | None, key: str) -> float:
    """The grid's fixed setting ``key`` (its ``fixed`` attribute, e.g. ``norm_stride``,
    ``probe_per_bin``, ``feedback_every``) as a number; NaN where it is not recorded."""
    if ds is None:
        return math.nan
    value = json.loads(ds.attrs.get("fixed") or "{}").get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def speed_table(cmp: Comparison | None) -> pd.DataFrame:
    """``report.against_baseline`` of each sigma (uniform's own row dropped) with a ``sigma``
    column, as one table with columns sampler, sigma, ...; empty without a comparison."""
    if cmp is None:
        return pd.DataFrame()
    parts = [
        report.against_baseline(cmp.ad.sel(sigma=s), cmp.metric).drop(index="uniform").assign(sigma=s).reset_index() for s in cmp.sigmas
    ]
    return with_family(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()


def simultaneous(est: Any, m: int, level: float = 0.95) -> Any:
    """A paired ratio's t-interval (``analysis.paired_ratio``) widened to the Bonferroni level
    ``1 - (1 - level) / m`` (6.1), so that m such intervals hold together with probability >=
    ``level``; an Estimate without a two-sided t-interval (one seed, no spread) comes back as it is."""
    if not isinstance(est, Estimate) or est.n < 2 or not (np.isfinite(est.lo) and np.isfinite(est.hi)) or est.hi <= est.lo:
        return est
    if est.method not in ("t", ""):
        raise ValueError(f"an interval of method {est.method!r} is not allowed: only a t-interval can be widened by (6.1)")
    wide = bonferroni_level(level, m)
    centre, half = (math.log(est.hi) + math.log(est.lo)) / 2, (math.log(est.hi) - math.log(est.lo)) / 2  # a t-interval's centre is log(value)
    half *= float(stats.t.ppf((1 + wide) / 2, est.n - 1) / stats.t.ppf((1 + est.level) / 2, est.n - 1))
    return Estimate(est.value, math.exp(centre - half), math.exp(centre + half), est.n, wide, est.p, est.effect, method=est.method)


def _names(table: pd.DataFrame) -> list[str]:
    """The sampler of each row: the ``sampler`` column, else the index level or the index."""
    if "sampler" in table.columns:
        return [str(v) for v in table["sampler"]]
    idx = table.index
    return [str(v) for v in (idx.get_level_values("sampler") if "sampler" in (idx.names or []) else idx)]


def with_family(table: pd.DataFrame, level: float = 0.95, baseline: str = "uniform") -> pd.DataFrame:
    """``table`` (rows of ``report.against_baseline``) with ``p_holm``, its ratios' p-values
    Holm-adjusted over the rows with one (the table is the family, as ``report.shown`` adjusts
    it; the baseline's own row, 1 by construction, is no comparison and gets NaN), and
    ``ratio_simultaneous``, each ratio's interval simultaneous over the same m rows (:func:`simultaneous`)."""
    require_columns(table, ("ratio",), "comparison table")
    out = table.copy()
    own = np.array([n == baseline for n in _names(out)], dtype=bool)
    p = np.array([e.p if isinstance(e, Estimate) else np.nan for e in out["ratio"]], dtype=float)
    p[own] = np.nan
    out["p_holm"] = holm(p)
    m = max(int(np.isfinite(p).sum()), 1)
    out["ratio_simultaneous"] = [None if o else simultaneous(e, m, level) for e, o in zip(out["ratio"], own)]
    return out


def final_shown(table: pd.DataFrame, baseline: str = "uniform") -> pd.DataFrame:
    """``report.shown(table, "final")`` with the simultaneous interval of :func:`with_family`
    beside the ratio ("—" for the baseline's own row; computed here when ``table`` lacks it)."""
    if "ratio_simultaneous" not in table:
        table = with_family(table, baseline=baseline)
    out = report.shown(table, "final", baseline)
    sim = list(table["ratio_simultaneous"])
    m = int(np.isfinite(table["p_holm"].to_numpy(dtype=float)).sum())
    levels = sorted({round(100 * e.level, 1) for e in sim if isinstance(e, Estimate) and e.n})
    head = (f"ratio, simultaneous over {m} rows", f"[{' or '.join(f'{v:g}%' for v in levels) or 'no'} CI]")
    cells = ["—" if n == baseline or not isinstance(e, Estimate) else interval_text(e) for n, e in zip(_names(table), sim)]
    at = [c[0] for c in out.columns].index(f"ratio to {baseline}") + 1
    out.insert(at, head, cells)
    return out


def best_speedup(speed: pd.DataFrame) -> tuple[str, float, Estimate] | None:
    """(sampler, sigma, speed-up) of the row of :func:`speed_table` with the largest median step
    speed-up among rows with seeds and a finite median (the first on a tie); None when none has."""
    require_columns(speed, ("sampler", "sigma", "speedup"), "speed table")
    values = speed["speedup"].map(lambda e: e.value if e.n else np.nan)
    if not values.notna().any():
        return None
    row = speed.loc[values.idxmax()]
    return str(row["sampler"]), float(row["sigma"]), row["speedup"]


def row_at(speed: pd.DataFrame, name: str, sigma: float | None) -> pd.Series | None:
    """The first row of :func:`speed_table` of sampler ``name`` (exact label) at ``sigma``; None
    when there is none (or ``sigma`` is None, or the table is empty)."""
    if not len(speed) or sigma is None:
        return None
    require_columns(speed, ("sampler", "sigma"), "speed table")
    rows = speed[(speed.sampler == name) & (speed.sigma == sigma)]
    return rows.iloc[0] if len(rows) else None


def ratio_text(row: pd.Series | None, alpha: float = 0.05) -> str:
    """A row's final ratio with its 95% interval, its simultaneous interval (:func:`with_family`)
    and Holm's verdict: "r (95% CI ...; simultaneous 99.5% CI a to b; p (Holm) q: lower than
    uniform's at family-wise level 5%)", "higher ..." or "not resolved from uniform's ..."; "n/a"."""
    if row is None:
        return "n/a"
    ratio = row["ratio"]
    text = ratio.text() if hasattr(ratio, "text") else str(ratio)
    sim, q = row.get("ratio_simultaneous"), row.get("p_holm", np.nan)
    extra = []
    if isinstance(sim, Estimate) and np.isfinite(sim.lo) and sim.level != getattr(ratio, "level", None):
        extra.append(f"simultaneous {100 * sim.level:.3g}% CI {sim.lo:.3g} to {sim.hi:.3g}")
    if q is not None and np.isfinite(q):
        side = "lower than" if ratio.value < 1 else "higher than"
        verdict = f"{side} uniform's" if q < alpha else "not resolved from uniform's"
        extra.append(f"p (Holm) {q:.2g}: {verdict} at family-wise level {alpha:.0%}")
    return f"{text[:-1]}; {'; '.join(extra)})" if extra and text.endswith(")") else text


def speedup_text(row: pd.Series | None) -> str:
    """A row's median speed-up in steps and per training FLOP: "a (CI ...) in steps, b (CI ...)
    per training FLOP"; "n/a" without a row."""
    if row is None:
        return "n/a"
    steps, flops = row["speedup"], row.get("speedup_flops")
    text = f"{steps.text() if hasattr(steps, 'text') else steps} in steps"
    return text + (f", {flops.text()} per training FLOP" if hasattr(flops, "text") else "")


def ratio_sentence(speed: pd.DataFrame, name: str, what: str, sigma: float | None) -> str:
    """ "`name` (what) has a final ratio to uniform of :func:`ratio_text`" and its speed-ups
    (:func:`speedup_text`) at ``sigma``, or "... was not run in this profile"."""
    row = row_at(speed, name, sigma)
    if row is None:
        return f"`{name}` ({what}) was not run in this profile"
    text = f"`{name}` ({what}) has a final ratio to uniform of {ratio_text(row)}"
    return text + (f" and a speed-up of {speedup_text(row)}" if "speedup" in row else "")


class Headline(NamedTuple):
    """The speed table's headline numbers: Holm counts, the largest step speed-up ("sampler at σ = s"
    and its estimate), and one sampler's speed-up and final ratio at ``sigma``; NaN (or "n/a") where missing."""

    better: float
    worse: float
    pairs: float
    best: str
    best_speedup: Any
    sigma: float
    ours_speedup: Any
    ours_ratio: Any


def headline(speed: pd.DataFrame, sigma: float | None, name: str = "var_opt") -> Headline:
    """:class:`Headline` of :func:`speed_table`: (better, worse, compared) at family-wise level 5%
    (Holm over the table's rows, its ``p_holm``; unbiased rows counted, ``sweeps.holm_counts``),
    :func:`best_speedup`, and the row of ``name`` at ``sigma`` (:func:`row_at`); every field NaN
    ("n/a" for ``best``) for an empty table."""
    nan = float("nan")
    if not len(speed):
        return Headline(nan, nan, nan, "n/a", nan, nan, nan, nan)
    better, worse, pairs = holm_counts(speed)
    best, ours = best_speedup(speed), row_at(speed, name, sigma)
    return Headline(
        better,
        worse,
        pairs,
        f"{best[0]} at σ = {best[1]:g}" if best else "n/a",
        best[2] if best else nan,
        nan if sigma is None else sigma,
        ours["speedup"] if ours is not None else nan,
        ours["ratio"] if ours is not None else nan,
    )


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


def curves_figure(cmp: Comparison) -> plt.Figure:
    """One panel per sigma: each sampler's curve of the convergence metric, mean over seeds with a 95% t band (plots.t_band)."""
    n = len(cmp.sigmas)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.4), layout="constrained", squeeze=False)
    for ax, sigma in zip(axes[0], cmp.sigmas):
        plots.band_curves(report.tidy_curves(cmp.ad.sel(sigma=sigma), cmp.metric), "checkpoint", cmp.metric, "sampler", ax=ax)
        ax.set_title(f"σ = {sigma:g}: mean over seeds, 95% t band")
    return fig


def q_figure(cmp: Comparison) -> plt.Figure:
    """One heatmap per adaptive sampler at the last sigma: its proposal q over t and training step, mean over members."""
    if not cmp.names:
        raise ValueError("a comparison with names=[] is not allowed: there is no adaptive sampler's q to draw")
    sigma, n = cmp.sigmas[-1], len(cmp.names)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), layout="constrained", squeeze=False)
    for ax, name in zip(axes[0], cmp.names):
        q = cmp.ad.q.sel(sampler=name, sigma=sigma).mean("member")
        plots.t_step_heatmap(q, ax=ax, log=True, title=f"{name}, σ = {sigma:g}", cmap="magma")
    return fig
