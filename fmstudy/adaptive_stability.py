"""Chapter 6's stability sweep: the learning-rate sweep that pushes samplers until uniform fails,
read as counts and sentences, and its figure.

A member *fails* when it diverges or ends no lower than its first checkpoint; a row of
``stability.stability_table`` (sampler[, sigma], lr) carries the failed and diverged shares k / n
with Wilson intervals (A.8), so k = round(share x n). ``stability.stability_summary`` gives each
sampler's largest stable rate (S.1: the largest swept rate at which, and at every smaller one, no
seed failed; NaN when one already fails at the lowest) and the rate where uniform breaks (at
least half its seeds failed). ``stability.failure_tests`` tests each sampler's failures against
uniform's (Fisher's exact test at the first rate where either failed a seed, Holm over the
sweep's rows, S.2); the sentences here say a largest stable rate below uniform's with that test
beside it, and the spike counts are read as description only.
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
    "counts_shown",
    "failure_counts",
    "less_stable_text",
    "load_sweep",
    "resolve_text",
    "stability_figure",
    "summary_shown",
    "swept_rates",
    "tests_text",
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


def _where(key: Any) -> str:
    """ "sampler at σ = s" for a (sampler, sigma) key, the sampler for a plain one."""
    return f"{key[0]} at σ = {key[1]:g}" if isinstance(key, tuple) else str(key)


def _count(e: Any) -> str:
    """ "k of n" of a Wilson share (k = round(share x n))."""
    return f"{round(e.value * e.n)} of {e.n}"


def _share(e: Any) -> str:
    """ "k of n [lo, hi]": a failure share with its 95% Wilson interval, 2 decimals; "—" without one."""
    if e is None or not getattr(e, "n", 0):
        return "—"
    return f"{_count(e)} [{e.lo:.2f}, {e.hi:.2f}]"


def less_stable_text(summary: pd.DataFrame, tests: pd.DataFrame | None = None) -> str:
    """The rows whose largest stable rate is below the baseline's, "sampler at σ = s" joined by ", "
    ("none"); with ``tests`` (``stability.failure_tests``), each with its test beside it: "(at lr
    r: k of n seeds failed against uniform's k of n; Fisher p = ..., Holm p = ...)"."""
    require_columns(summary, ("less_stable",), "stability summary")
    rows = summary.index[summary["less_stable"].to_numpy(dtype=bool)]
    bits = []
    for i in rows:
        text = _where(i)
        if tests is not None and i in tests.index and np.isfinite(tests.loc[i, "p"]):
            t = tests.loc[i]
            text += (f" (at rate {t['lr']:g}: {_count(t['failed'])} seeds failed against uniform's {_count(t['baseline_failed'])};"
                     f" Fisher's exact p = {t['p']:.2g}, Holm-adjusted {t['p_holm']:.2g})")
        bits.append(text)
    return ", ".join(bits) or "none"


def tests_text(tests: pd.DataFrame, alpha: float = 0.05) -> str:
    """The verdict of ``stability.failure_tests`` over its rows at family-wise level ``alpha``:
    "none of the m ... differs ...: not distinguishable at n seeds", or the rows that differ."""
    tested = tests[np.isfinite(tests["p"].to_numpy(dtype=float))] if len(tests) else tests
    if not len(tested):
        return "no sampler or uniform failed a seed at any swept rate, so there is nothing to test"
    rows = "(sampler, σ) rows" if "sigma" in (tested.index.names or []) else "samplers"
    seeds = sorted({int(n) for n in tested["n"]})
    seeds_text = " or ".join(str(n) for n in seeds)
    hit = tested[tested["p_holm"] < alpha]
    if not len(hit):
        return (f"none of the {len(tested)} {rows} differs from uniform in its failures at family-wise level "
                f"{alpha:.0%} (Fisher's exact test, Holm over the rows): not distinguishable at {seeds_text} seeds")
    named = ", ".join(f"{_where(i)} ({'more' if r['k'] / r['n'] > r['baseline_k'] / r['baseline_n'] else 'fewer'} failures; Holm p = {r['p_holm']:.2g})"
                      for i, r in hit.iterrows())
    return f"{len(hit)} of the {len(tested)} {rows} differ from uniform in their failures at family-wise level {alpha:.0%}: {named}"


def counts_shown(table: pd.DataFrame) -> pd.DataFrame:
    """``stability.stability_table`` for a page: one row per sampler (and sigma, first), one column
    per swept rate, each cell "k of n [lo, hi]" seeds failed with its 95% Wilson interval."""
    require_columns(table, ("failed",), "stability table")
    others = [n for n in table.index.names if n not in ("sampler", "lr")]
    wide = table["failed"].map(_share).unstack("lr")
    wide = wide.reorder_levels([*others, "sampler"]).sort_index(level=others, sort_remaining=False) if others else wide
    wide.columns = [f"rate {v:g}" for v in wide.columns]
    return wide


def summary_shown(summary: pd.DataFrame, tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """``stability.stability_summary`` for a page: largest stable rates (the sampler's and
    uniform's), uniform's breaking rate, the failed and diverged seeds there ("k of n [lo, hi]",
    Wilson), the mean spikes per seed there with its t-interval (description only), the largest
    shares over the sweep, and with ``tests`` the Fisher test against uniform (the rate tested, p
    and Holm-adjusted p; "—" for uniform itself and where nothing failed)."""
    require_columns(summary, ("largest_stable_lr", "baseline_largest_stable_lr", "baseline_breaks_at", "failed", "diverged"), "stability summary")

    def rate(v: float) -> str:
        return f"{v:g}" if np.isfinite(v) else "none"

    def spikes(e: Any) -> str:
        return "—" if e is None or not getattr(e, "n", 0) else f"{e.value:.2g} [{e.lo:.2g}, {e.hi:.2g}]"

    out = pd.DataFrame(index=summary.index)
    out["largest stable rate"] = summary["largest_stable_lr"].map(rate)
    out["uniform's"] = summary["baseline_largest_stable_lr"].map(rate)
    out["uniform breaks at"] = summary["baseline_breaks_at"].map(lambda v: f"{v:g}" if np.isfinite(v) else "not reached")
    out["failed there [95% CI]"] = summary["failed"].map(_share)
    out["diverged there [95% CI]"] = summary["diverged"].map(_share)
    if "spikes_ci" in summary:
        out["spikes per seed there [95% CI]"] = summary["spikes_ci"].map(spikes)
    out["most failed (any rate)"] = summary["max_failed"].map(lambda v: f"{v:.0%}")
    if tests is not None and len(tests):
        def tested(i: Any, col: str, fmt: str) -> str:
            if i not in tests.index or not np.isfinite(tests.loc[i, "p"]):
                return "—"
            return f"{tests.loc[i, col]:{fmt}}"

        out["vs uniform: rate tested"] = [tested(i, "lr", "g") for i in summary.index]
        out["Fisher p"] = [tested(i, "p", ".2g") for i in summary.index]
        out["p (Holm)"] = [tested(i, "p_holm", ".2g") for i in summary.index]
    return out


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
