"""Chapter 6's analysis (adaptive allocation against fixed schedules): the compare grid's adaptive
samplers beside uniform, their per-sigma tables against uniform, the headline numbers (Holm
counts, the largest speed-up), predicted against measured gains, the Rao-Blackwellised target
and the weightings beside uniform, and the chapter's figures of the comparison. The stability
sweep is :mod:`fmstudy.adaptive_stability`.

Every comparison is a row of ``report.against_baseline`` (paired over seeds, A.2-A.4): the final
ratio r = exp(mean_s log(x_s / b_s)) and the median step speed-up to reach uniform's final value.
A row counts better (worse) than uniform when r < 1 (r > 1) with Holm-adjusted p < 0.05 over the
table's unbiased rows (A.6, ``sweeps.holm_counts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from . import plots, report
from .account_report import above_ceiling, predicted_gains, shown
from .analysis import Estimate
from .conclusions import ADAPTIVE, vs_uniform
from .frames import require_columns
from .sweeps import holm_counts

__all__ = [
    "DESCRIBED",
    "Comparison",
    "Headline",
    "best_speedup",
    "comparison",
    "curves_figure",
    "headline",
    "not_run_text",
    "others_table",
    "predicted_shown",
    "predicted_tables",
    "q_figure",
    "ran_text",
    "ratio_sentence",
    "row_at",
    "speed_table",
]

DESCRIBED = ADAPTIVE[:-1]  # info_snr is described in the chapter as not run


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


def speed_table(cmp: Comparison | None) -> pd.DataFrame:
    """``report.against_baseline`` of each sigma (uniform's own row dropped) with a ``sigma``
    column, as one table with columns sampler, sigma, ...; empty without a comparison."""
    if cmp is None:
        return pd.DataFrame()
    parts = [
        report.against_baseline(cmp.ad.sel(sigma=s), cmp.metric).drop(index="uniform").assign(sigma=s).reset_index() for s in cmp.sigmas
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


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


def ratio_sentence(speed: pd.DataFrame, name: str, what: str, sigma: float | None) -> str:
    """ "`name` (what) has a final ratio to uniform of r (CI)" at ``sigma``, or "... was not run in
    this profile"."""
    row = row_at(speed, name, sigma)
    if row is None:
        return f"`{name}` ({what}) was not run in this profile"
    ratio = row["ratio"]
    return f"`{name}` ({what}) has a final ratio to uniform of {ratio.text() if hasattr(ratio, 'text') else ratio}"


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
    (Holm over its unbiased rows, ``sweeps.holm_counts``), :func:`best_speedup`, and the row of
    ``name`` at ``sigma`` (:func:`row_at`); every field NaN ("n/a" for ``best``) for an empty table."""
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


def predicted_shown(pred: pd.DataFrame, fmt: str = ".3g") -> pd.DataFrame:
    """A table of :func:`predicted_tables` for a page: numbers to ``fmt`` (3 significant figures),
    an infinite noise scale as ``account_report.NO_SIGNAL``, an Estimate as "value [lo, hi]"."""
    return report.as_text(shown(pred, fmt), fmt)


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
    return pd.concat(parts) if parts else None


def curves_figure(cmp: Comparison) -> plt.Figure:
    """One panel per sigma: each sampler's curve of the convergence metric, mean over seeds with a 95% bootstrap band."""
    n = len(cmp.sigmas)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.4), layout="constrained", squeeze=False)
    for ax, sigma in zip(axes[0], cmp.sigmas):
        plots.band_curves(report.tidy_curves(cmp.ad.sel(sigma=sigma), cmp.metric), "checkpoint", cmp.metric, "sampler", ax=ax)
        ax.set_title(f"σ = {sigma:g}: mean over seeds, 95% bootstrap band")
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
