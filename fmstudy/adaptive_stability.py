"""Chapter 6's stability sweep: the learning-rate sweep that pushes samplers until uniform fails,
read as counts and sentences, and its figure.

A member *fails* when it diverges or ends no lower than its first checkpoint; a row of
``stability.stability_table`` (sampler[, sigma], lr) carries the failed and diverged shares k / n
with Wilson intervals (A.8), so k = round(share x n). ``stability.stability_summary`` gives each
sampler's largest stable rate (S.1: the largest swept rate at which, and at every smaller one, no
seed failed; NaN when one already fails at the lowest) and the rate where uniform breaks (at
least half its seeds failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from . import plots, report
from .frames import require_columns

__all__ = [
    "at_lowest",
    "breaks_text",
    "failure_counts",
    "less_stable_text",
    "load_sweep",
    "resolve_text",
    "stability_figure",
    "swept_rates",
    "tuned_text",
]


def load_sweep(load: Callable[[str], xr.Dataset | None]) -> tuple[xr.Dataset | None, str]:
    """(the learning-rate sweep at gmm8, its sub-grid's name): ``load("stability")``, else
    ``load("robustness")``; at the largest batch of a batch-size sweep; (None, "robustness") without either."""
    rb, name = load("stability"), "stability"
    if rb is None:
        rb, name = load("robustness"), "robustness"
    if rb is None:
        return None, name
    rb = report.select_benchmark(rb)
    return (rb.isel(batch_size=-1) if "batch_size" in rb.dims else rb), name


def failure_counts(table: pd.DataFrame) -> tuple[int, int, int]:
    """(failed, diverged, runs) summed over a stability table's rows: k = round(share x n) per row."""
    require_columns(table, ("failed", "diverged", "n"), "stability table")

    def count(col: str) -> int:
        return int(table[col].map(lambda e: round(e.value * e.n)).sum())

    return count("failed"), count("diverged"), int(table["n"].sum())


def breaks_text(summary: pd.DataFrame, baseline: str = "uniform") -> str:
    """The smallest rate at which at least half of ``baseline``'s seeds failed, per sigma
    ("σ = s: lr" joined by "; "; "not reached" where the sweep did not reach it)."""
    require_columns(summary, ("baseline_breaks_at",), "stability summary")
    if "sigma" in summary.index.names:
        breaks = summary.xs(baseline, level="sampler")["baseline_breaks_at"]
    else:
        breaks = summary.loc[[baseline], "baseline_breaks_at"]
    return "; ".join(
        (f"σ = {k:g}: " if isinstance(k, float) else "") + (f"{v:g}" if np.isfinite(v) else "not reached") for k, v in breaks.items()
    )


def less_stable_text(summary: pd.DataFrame) -> str:
    """The rows whose largest stable rate is below the baseline's, "sampler at σ = s" joined by ", "; "none"."""
    require_columns(summary, ("less_stable",), "stability summary")
    rows = summary.index[summary["less_stable"].to_numpy(dtype=bool)]
    return ", ".join(f"{i[0]} at σ = {i[1]:g}" if isinstance(i, tuple) else str(i) for i in rows) or "none"


def swept_rates(rb: xr.Dataset) -> list[float]:
    """The sweep's learning rates, ascending; [] without an lr axis."""
    return sorted(float(v) for v in rb.lr.values) if "lr" in rb.dims else []


def at_lowest(summary: pd.DataFrame, lrs: Sequence[float]) -> tuple[int, int]:
    """(rows whose largest stable rate is the lowest swept rate, rows stable at no swept rate)."""
    require_columns(summary, ("largest_stable_lr",), "stability summary")
    stable = summary["largest_stable_lr"]
    lowest = min(lrs) if len(lrs) else float("nan")
    return int((stable == lowest).sum()), int(stable.isna().sum())


def resolve_text(summary: pd.DataFrame, lrs: Sequence[float]) -> str:
    """Whether the sweep resolves stable rates above its lowest: it does not when every row is
    stable only at the lowest rate or at none (and more than one rate was swept)."""
    at_min, none = at_lowest(summary, lrs)
    if at_min + none == len(summary) and len(lrs) > 1:
        return "so the sweep does not resolve differences in stable rate above its lowest rate, only which samplers already fail there"
    return "so the sweep resolves stable rates above its lowest rate"


def tuned_text(ds: xr.Dataset | None) -> str:
    """The distinct finite rates in ``lr_used`` (each sampler's tuned rate), or "not recorded in this profile"."""
    tuned = ds["lr_used"].values if ds is not None and "lr_used" in ds else np.array([])
    tuned = np.unique(tuned[np.isfinite(tuned)])
    return ", ".join(f"{v:g}" for v in tuned) if len(tuned) else "not recorded in this profile"


def stability_figure(rb: xr.Dataset, table: pd.DataFrame) -> plt.Figure:
    """One panel per sigma of the sweep ``rb``: the share of seeds failed against the rate (``plots.divergence_curves``)."""
    sig: list[Any] = [float(v) for v in rb.sigma.values] if "sigma" in rb.dims else [None]
    fig, axes = plt.subplots(1, len(sig), figsize=(6 * len(sig), 4), layout="constrained", squeeze=False)
    for ax, sg in zip(axes[0], sig):
        plots.divergence_curves(table.xs(sg, level="sigma") if sg is not None else table, ax=ax, outcome="failed")
        ax.set_title(f"σ = {sg:g}" if sg is not None else "")
    return fig
