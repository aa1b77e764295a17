"""Chapter 7's central figure: the speed-up chapter 4's variance account predicts, against the
measured one (re-exported by :mod:`fmstudy.plots`, whose colours and error bars it uses).

Each point is a sampler in one setting (a row of ``prediction.predicted_vs_measured``): the
predicted step speed-up (chapter 4's prediction from the noise reduction r and the noise scale,
labelled ``eq-predicted`` there) on x, the measured value (an Estimate with its interval) on y,
log-log with the identity. A point whose measured median is not identified (most of its seeds
never reach uniform's final value) has no value to draw: it is drawn as an open triangle at its
interval's upper end, a bound, and counted apart in the title.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from . import plots

__all__ = ["log_ticks", "predicted_vs_measured"]

BOUND = "not reached: upper bound"
LEGEND = ("inside", "outside", "none")


def log_ticks(ax: plt.Axes, axes: str = "xy") -> plt.Axes:
    """Plain-number major ticks at 1, 2 and 5 times the powers of ten on the log ``axes`` of
    ``ax`` ("0.2", "0.5", "1", "2"), and no labels on the minor ticks (their "3 x 10^-1"
    labels collide)."""
    if not axes or set(axes) - {"x", "y"}:
        raise ValueError(f"axes={axes!r} is not allowed: give 'x', 'y' or 'xy'")
    for axis in [getattr(ax, f"{a}axis") for a in dict.fromkeys(axes)]:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    return ax


def predicted_vs_measured(table: pd.DataFrame, ax: plt.Axes | None = None, predicted: str = "predicted", measured: str = "speedup_steps",
                          legend: str = "inside") -> plt.Axes:
    """The figure (module docstring) on ``ax``; ``legend`` "inside" the axes, "outside" to their
    right, or "none". The title counts the points with a measured value and, apart, those whose
    median is not identified and how many of them are drawn as bounds."""
    if legend not in LEGEND:
        raise ValueError(f"legend={legend!r} is not allowed: legend must be one of {', '.join(LEGEND)}")
    ax = plots._ax(ax, (5.6, 5.0))
    ok = table[measured].map(lambda e: np.isfinite(e.value) and e.value > 0) & (table[predicted] > 0)
    shown = table[ok].reset_index()
    shown["_bench"] = shown["benchmark"].astype(str) if "benchmark" in shown else ""
    markers = dict(zip(dict.fromkeys(shown["_bench"]), "osD^P*X<>"))
    floor = 0.5 * float(shown[measured].map(lambda e: e.value).min()) if len(shown) else 0.0
    for (sampler, bench), rows in shown.groupby(["sampler", "_bench"], sort=False):
        plots._errorbar(ax, rows[predicted].to_numpy(float), list(rows[measured]), floor=floor, fmt=markers[bench],
                        color=plots.sampler_color(sampler), ms=5, lw=0.8, label=f"{sampler}" + (f", {bench}" if bench else ""))
    bound = table[~ok & (table[predicted] > 0) & table[measured].map(lambda e: np.isfinite(e.hi) and e.hi > 0)]
    if len(bound):
        ax.scatter(bound[predicted].to_numpy(float), bound[measured].map(lambda e: e.hi).to_numpy(float), marker="v", s=30,
                   facecolors="none", edgecolors=[plots.sampler_color(s) for s in bound["sampler"]], label=BOUND)
    vals = np.r_[shown[predicted].to_numpy(float), shown[measured].map(lambda e: e.value).to_numpy(float),
                 bound[predicted].to_numpy(float), bound[measured].map(lambda e: e.hi).to_numpy(float)]
    lo, hi = (vals.min() / 1.2, vals.max() * 1.2) if vals.size else (0.5, 2.0)
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="measured = predicted")
    ax.set(xscale="log", yscale="log", xlabel="predicted speed-up (chapter 4, from the variance account)",
           ylabel="measured speed-up (steps)")
    log_ticks(ax)
    title = f"{int(ok.sum())} points with a measured value"
    if (~ok).any():
        title += (f";\n{int((~ok).sum())} not identified ({len(bound)} as bounds), drawn ▽ at their interval's upper end:"
                  "\nmost of their seeds never reach uniform's final value")
    ax.set_title(title, fontsize="small")
    if legend == "inside":
        ax.legend(frameon=False, fontsize="x-small")
    elif legend == "outside":
        ax.legend(frameon=False, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax
