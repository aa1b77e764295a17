"""The conclusions' sentences (chapter 9) from the sweeps of chapter 7 and the stability sweep of
chapter 6: Holm counts per sweep, the variance-targeting samplers over distinct cells, what
``var_opt`` and its oracle bought per setting, the central figure's correlation, and where
each sampler first fails.

A sweep table (``sweeps.sweep_table``) is Holm-adjusted over all its rows (A.6); a row counts
better (worse) than uniform when its ratio r < 1 (r > 1) with p~ < 0.05 (``sweeps.holm_counts``).
The variance count is over distinct cells: a cell in two sub-grids (budget's 1,000 steps is
sigma's sigma = 1) counts once, with the verdict of the sub-grid that listed it first. A
stability group's first failing rate is the smallest swept lr with k >= 1 of n seeds failed
(``stability.breaking_lr`` with ``any_seed``); its largest stable rate is S.1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from . import prediction, report, stability, sweeps
from .conclusions import NOT_RUN, TOP, VARIANCE, base_name, span

__all__ = [
    "SWEEPS",
    "SweepRow",
    "cell_of",
    "correlation_text",
    "gain_text",
    "stability_sentence",
    "stability_text",
    "sweep_rows",
    "variance_text",
]

SWEEPS = (
    ("compare", "sigma"),
    ("sigma", "sigma"),
    ("budget", "steps"),
    ("gmm-d", "benchmark_options"),
    ("toys", "benchmark"),
    ("real", "benchmark"),
)  # chapter 7's sub-grids and the axis each sweeps


class SweepRow(NamedTuple):
    """One variance-targeting row of a sweep table: its sub-grid, its index labels (with
    ``sampler``), the table's row, and its (better, worse, compared) verdict."""

    grid: str
    labels: dict[str, Any]
    row: pd.Series
    counts: tuple[int, int, int]


def cell_of(g: xr.Dataset, names: Sequence[str], idx: Sequence[Any]) -> str | None:
    """The cell id of the sweep-table row with index ``idx`` (levels ``names``, the sampler last)
    in the collected grid ``g``; None where ``g`` carries no such cell id."""
    try:
        sel = {k: v for k, v in zip(names, idx) if k in g["cell_id"].dims and k != "sampler"}
        sel["sampler"] = idx[-1]
        return str(g["cell_id"].sel(sel).values)
    except (KeyError, ValueError, IndexError, TypeError):
        return None


def sweep_rows(
    grids: Mapping[str, xr.Dataset], axes: Mapping[str, str], names: Sequence[str] = VARIANCE, skip: Sequence[str] = ("compare",)
) -> tuple[list[str], list[SweepRow]]:
    """For each sub-grid of ``grids`` (in order) with its swept axis in ``axes`` among its cell
    axes, not in ``skip``: the sentence "grid (axis): b better, w worse of n" of its whole
    ``sweeps.sweep_table``, and the rows whose sampler (options dropped) is in ``names``, each
    cell once (a row whose cell id is unknown is always kept)."""
    counts, rows, seen = [], [], set()
    for grid, g in grids.items():
        axis = axes.get(grid)
        if grid in skip or axis is None or "cell_id" not in g or axis not in g["cell_id"].dims:
            continue
        t = sweeps.sweep_table(g, axis)
        for idx, row in t[[base_name(i[-1]) in names for i in t.index]].iterrows():
            cid = cell_of(g, t.index.names, idx)
            if cid is None or cid not in seen:
                seen.add(cid)
                rows.append(SweepRow(grid, dict(zip(t.index.names, idx)), row, sweeps.holm_counts(t.loc[[idx]])))
        better, worse, n = sweeps.holm_counts(t)
        counts.append(f"{grid} ({axis}): {better} better, {worse} worse of {n}")
    return counts, rows


def variance_text(rows: Sequence[SweepRow]) -> str:
    """The sums B, W, N of the rows' verdicts as "B better and W worse than uniform of N distinct cells"."""
    better, worse, n = (sum(r.counts[i] for r in rows) for i in range(3))
    return f"{better} better and {worse} worse than uniform of {n} distinct cells" if n else NOT_RUN


def gain_text(
    rows: Sequence[SweepRow],
    grid: str,
    axis: str | None = None,
    lo: float = -math.inf,
    hi: float = math.inf,
    speed: bool = True,
    names: Sequence[str] = TOP,
) -> str:
    """What the top samplers bought, "ratio a–b, step speed-up c–d" (:func:`span` of the final ratio to
    uniform and of the median step speed-up) over the rows of sub-grid ``grid`` whose sampler is in ``names`` and,
    given ``axis``, with lo <= float(label[axis]) <= hi; without ``speed`` the ratio only; "n/a"."""
    if lo > hi:
        raise ValueError(f"lo={lo!r}, hi={hi!r} is not allowed: lo must be <= hi")
    sel = [
        r.row
        for r in rows
        if r.grid == grid and base_name(r.labels.get("sampler", "")) in names and (axis is None or lo <= float(r.labels[axis]) <= hi)
    ]
    if not sel:
        return "n/a"
    text = f"ratio {span([r['ratio'] for r in sel])}"
    return text + (f", step speed-up {span([r['speedup_steps'] for r in sel])}" if speed else "")


def correlation_text(grids: Mapping[str, xr.Dataset]) -> str:
    """The Pearson correlation (log scale) of predicted step speed-up and measured final ratio
    over the sampler-settings of ``grids`` (``prediction.prediction_correlation``) with its
    cluster-bootstrap interval; "not measured in this profile" under 3 points."""
    if not grids:
        return "not measured in this profile"
    pvm = prediction.predicted_vs_measured(dict(grids))
    if len(pvm) < 3:
        return "not measured in this profile"
    pc = prediction.prediction_correlation(pvm, measured="ratio")
    c = pc["pearson"]
    return (
        f"{c.value:.2f} [{c.lo:.2f}, {c.hi:.2f}] over {c.n} sampler-settings: Pearson on log scale, "
        f"{c.level:.0%} percentile bootstrap over the {pc['clusters']} settings (each resampled whole, with all its "
        "samplers); the points' own measurement errors are not propagated"
    )


def _group_sentence(tab: pd.DataFrame, stable: pd.Series, lowest: float) -> str:
    """One group's sentence: uniform's first failing rate, the samplers failing below it, the
    largest stable rates (``stable`` per sampler, NaN: stable at no swept rate)."""
    first = {}  # each sampler's smallest swept rate at which any seed failed, with its failed seeds
    for name, lr in stability.breaking_lr(tab, any_seed=True).dropna().items():
        r = tab.loc[(name, lr), "failed"]
        first[name] = (float(lr), round(r.value * r.n), r.n)
    u = first.get("uniform")
    text = f"uniform first fails at lr {u[0]:g} ({u[1]} of {u[2]} seeds)" if u else "uniform never fails"
    early = [
        f"{base_name(n)} at lr {f[0]:g} ({f[1]} of {f[2]} seeds)"
        for n, f in sorted(first.items())
        if n != "uniform" and (u is None or f[0] < u[0])
    ]
    text += ("; failing at a lower rate than uniform: " + ", ".join(early)) if early else "; no sampler fails at a lower rate than uniform"
    fin = stable[np.isfinite(stable.values)]
    none = [base_name(i) for i in stable.index[~np.isfinite(stable.values)]]
    if len(fin) and fin.nunique() == 1:
        return text + (
            f"; the largest stable rate is {fin.iloc[0]:g}"
            + (", the lowest swept," if fin.iloc[0] == lowest else "")
            + " for every sampler"
            + (f" but {', '.join(none)} (stable at no swept rate)" if none else "")
        )
    return text + f"; largest stable rates {span(fin, 'g')}" + (f" ({', '.join(none)}: none)" if none else "")


def stability_sentence(table: pd.DataFrame, summary: pd.DataFrame, lrs: Sequence[float]) -> str:
    """The stability sentence from ``stability.stability_table`` (index sampler[, sigma], lr) and
    ``stability.stability_summary`` (index sampler[, sigma]) of one sweep over the rates ``lrs``:
    per sigma ("at σ = s: ..."), joined by "; ", then the swept rates."""
    lrs = sorted(float(v) for v in lrs)
    if not lrs:
        raise ValueError("lrs=[] is not allowed: the sweep must have at least one learning rate")
    groups = [None] if "sigma" not in table.index.names else sorted(set(table.index.get_level_values("sigma")))
    bits = []
    for sg in groups:
        tab = table.xs(sg, level="sigma") if sg is not None else table
        stable = (summary.xs(sg, level="sigma") if sg is not None else summary)["largest_stable_lr"]
        bits.append((f"at σ = {sg:g}: " if sg is not None else "") + _group_sentence(tab, stable, lrs[0]))
    return "; ".join(bits) + f" (swept rates {', '.join(f'{v:g}' for v in lrs)})"


def stability_text(sb: xr.Dataset | None) -> str:
    """:func:`stability_sentence` of the stability sub-grid at gmm8 (its largest batch size where
    batch sizes were swept); "not run in this profile" without it or without an lr axis."""
    if sb is None or "lr" not in sb.dims:
        return NOT_RUN
    sb = report.select_benchmark(sb)
    if "batch_size" in sb.dims:
        sb = sb.isel(batch_size=-1)
    return stability_sentence(stability.stability_table(sb), stability.stability_summary(sb), sb.lr.values)
