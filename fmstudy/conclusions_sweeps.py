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
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from . import prediction, report, stability, sweeps
from .analysis import Estimate
from .conclusions import NOT_RUN, TOP, VARIANCE, base_name, span

__all__ = [
    "SWEEPS",
    "SweepRow",
    "cell_of",
    "correlation_text",
    "budget_text",
    "gain_text",
    "holm_ratio_text",
    "sample_quality_text",
    "speed_span",
    "stability_sentence",
    "stability_text",
    "sweep_rows",
    "variance_names",
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
# how a sweep reads in prose, its values (:func:`axis_values_text`) filled in
SWEEP_WORDS = {
    "compare": "gmm8 across {values}", "sigma": "gmm8 across {values}", "budget": "gmm8 at σ = 1 across {values}",
    "gmm-d": "gmm-d at {values}", "toys": "2-D toys ({values})", "real": "real data ({values})",
}


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


def axis_values_text(axis: str, values: Sequence[Any]) -> str:
    """A sweep's values in words: "σ = 0, 0.1, 1", "300, 1,000 steps", "d = 8, 32 (3 instances
    each)" for random instances ("dim=8, seed=0"), else the labels themselves."""
    values = list(dict.fromkeys(values))
    if axis == "sigma":
        return "σ = " + ", ".join(f"{float(v):g}" for v in values)
    if axis == "steps":
        return ", ".join(f"{float(v):,.0f}" for v in values) + " steps"
    if axis == "benchmark_options":
        dims = [m.group(1) if (m := re.search(r"dim=(\d+)", str(v))) else None for v in values]
        if all(dims):
            per = pd.Series(dims).value_counts(sort=False).sort_index(key=lambda d: d.astype(int))
            return "d = " + ", ".join(per.index) + (f" ({per.iloc[0]} instances each)" if per.nunique() == 1 else "")
    return ", ".join(str(v) for v in values)


def sweep_rows(
    grids: Mapping[str, xr.Dataset], axes: Mapping[str, str], names: Sequence[str] = VARIANCE, skip: Sequence[str] = ("compare",)
) -> tuple[list[str], list[SweepRow]]:
    """For each sub-grid of ``grids`` (in order) with its swept axis in ``axes`` among its cell
    axes, not in ``skip``: the sentence "words (values): b better, w worse of n" of its whole
    ``sweeps.sweep_table`` (:data:`SWEEP_WORDS`, :func:`axis_values_text`; Holm over those n rows),
    and the rows whose sampler (options dropped) is in ``names``, each cell once (a row whose cell
    id is unknown is always kept)."""
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
        words = SWEEP_WORDS.get(grid, grid + " ({values})").format(values=axis_values_text(axis, t.index.get_level_values(axis)))
        counts.append(f"{words}: {better} better, {worse} worse of {n}")
    return counts, rows


def variance_names(rows: Sequence[SweepRow], names: Sequence[str] = VARIANCE) -> str:
    """The samplers of ``names`` with rows among ``rows`` (in the order of ``names``), and, in
    brackets, those without any: "grad_norm, var_opt, oracle_qstar (var_opt_neyman ran in none
    of these sweeps)"; "none" when no sampler has a row."""
    have = {base_name(r.labels.get("sampler", "")) for r in rows}
    counted = ", ".join(n for n in names if n in have) or "none"
    absent = [n for n in names if n not in have]
    return counted + (f" ({', '.join(absent)} ran in none of these sweeps)" if absent else "")


def variance_text(rows: Sequence[SweepRow]) -> str:
    """The sums B, W, N of the rows' verdicts as "B better and W worse than uniform of N distinct cells"."""
    better, worse, n = (sum(r.counts[i] for r in rows) for i in range(3))
    return f"{better} better and {worse} worse than uniform of {n} distinct cells" if n else NOT_RUN


def speed_span(estimates: Sequence[Any]) -> str:
    """:func:`span` of the identified speed-ups, and of those that censoring leaves bounded only
    (a median below b, ``Estimate.below``), "< b (k censored medians)" with the largest such b:
    e.g. "1.11, and < 1.02 (1 censored median)"; "n/a" if there is neither."""
    known = span(estimates)
    bounds = [float(e.below) for e in estimates if not np.isfinite(e.value) and np.isfinite(getattr(e, "below", math.nan))]
    if not bounds:
        return known
    more = f"< {max(bounds):.2f} ({len(bounds)} censored median{'s' * (len(bounds) != 1)})"
    return more if known == "n/a" else f"{known}, and {more}"


def resolved_text(estimates: Sequence[Any]) -> str:
    """How many of some speed-ups' intervals lie above 1 (lower end > 1: faster than uniform
    beyond the interval), "above 1 in k of n", with the :func:`span` of those medians where some
    but not all are: e.g. "interval above 1 in 2 of 8 (medians 1.12–1.16)"."""
    up = [e for e in estimates if np.isfinite(getattr(e, "lo", math.nan)) and e.lo > 1]
    text = f"interval above 1 in {len(up)} of {len(estimates)}"
    return text + (f" (medians {span(up)})" if 0 < len(up) < len(estimates) else "")


def gain_text(
    rows: Sequence[SweepRow],
    grid: str,
    axis: str | None = None,
    lo: float = -math.inf,
    hi: float = math.inf,
    speed: bool = True,
    names: Sequence[str] = TOP,
) -> str:
    """What the top samplers bought over the rows of sub-grid ``grid`` whose sampler is in
    ``names`` and, given ``axis``, with lo <= float(label[axis]) <= hi: "ratio a–b (better in k of
    n, Holm); step speed-up c–d, interval above 1 in i of n; FLOP speed-up e–f, interval above 1
    in j of n (medians ...)" (:func:`span` of the final ratios to uniform, the rows' Holm verdicts from
    their tables, :func:`speed_span` of the median speed-ups per step and per training FLOP with
    :func:`resolved_text` of their intervals); without ``speed`` the ratio and verdicts only; "n/a"."""
    if lo > hi:
        raise ValueError(f"lo={lo!r}, hi={hi!r} is not allowed: lo must be <= hi")
    sel = [
        r
        for r in rows
        if r.grid == grid and base_name(r.labels.get("sampler", "")) in names and (axis is None or lo <= float(r.labels[axis]) <= hi)
    ]
    if not sel:
        return "n/a"
    better, worse, n = (sum(r.counts[i] for r in sel) for i in range(3))
    verdict = f"better in {better}" + (f", worse in {worse}" if worse else "") + f" of {n}, Holm"
    text = f"ratio {span([r.row['ratio'] for r in sel])} ({verdict})"
    if not speed:
        return text
    steps = [r.row["speedup_steps"] for r in sel]
    text += f"; step speed-up {speed_span(steps)}, {resolved_text(steps)}"
    if all("speedup_flops" in r.row for r in sel):
        flops = [r.row["speedup_flops"] for r in sel]
        text += f"; FLOP speed-up {speed_span(flops)}, {resolved_text(flops)}"
    return text


def holm_ratio_text(rows: Sequence[SweepRow], grid: str, axis: str, name: str, values: Sequence[float]) -> str:
    """The rows of sub-grid ``grid`` for sampler ``name`` (exact label) at each of ``values`` of
    ``axis``, as "σ = s: r (95% CI lo to hi; simultaneous L% CI a to b, p(Holm) = p)": the
    Bonferroni-simultaneous interval and the Holm p of that sub-grid's whole table (chapter 7);
    "n/a" where none is found."""
    parts = []
    for v in values:
        hit = [r for r in rows if r.grid == grid and r.labels.get("sampler") == name and float(r.labels[axis]) == float(v)]
        if not hit:
            continue
        row = hit[0].row
        r, sim = row["ratio"], row.get("ratio_simultaneous")
        inner = f"{100 * r.level:.3g}% CI {r.lo:.3g} to {r.hi:.3g}"
        if isinstance(sim, Estimate):
            inner += f"; simultaneous {100 * sim.level:.3g}% CI {sim.lo:.3g} to {sim.hi:.3g}"
        if "p_holm" in row:
            inner += f"; p(Holm) = {row['p_holm']:.2g}"
        label = f"σ = {float(v):g}" if axis == "sigma" else f"{axis} = {v}"
        parts.append(f"{label}: {r.value:.3g} ({inner})")
    return "; ".join(parts) or "n/a"


def budget_text(budget: xr.Dataset | None, names: Sequence[str] = TOP) -> str:
    """How the top samplers fare against uniform at each budget of the budget sweep (separate runs;
    Holm over the sweep's whole table of m rows, :func:`fmstudy.sweeps.significant`): "300 steps:
    better in 0 of 2; 1,000 steps: better in 2 of 2; ... (Holm over the sweep's m rows)" (", worse
    in w" where some are); NOT_RUN without it."""
    if budget is None or "steps" not in budget.dims:
        return NOT_RUN
    table = sweeps.budget_table(budget)
    sig = sweeps.significant(table)
    parts = []
    for steps in sorted({float(i[0]) for i in sig.index}):
        s = sig[[float(i[0]) == steps and base_name(i[-1]) in names for i in sig.index]]
        if len(s):
            worse = int((s > 0).sum())
            parts.append(f"{steps:,.0f} steps: better in {int((s < 0).sum())}" + (f", worse in {worse}" if worse else "") + f" of {len(s)}")
    return "; ".join(parts) + f" (Holm over the sweep's {len(sig)} rows)" if parts else NOT_RUN


def sample_quality_text(real: pd.DataFrame, sampler: str = "var_opt") -> str:
    """Per benchmark of a real-data sample-quality table (``settings_report.sample_quality``):
    ``sampler``'s median classifier Fréchet distance against uniform's and the floor, with its
    paired sign test ("k of n seeds below uniform's, p"); "not run in this profile" without rows."""
    if not len(real) or sampler not in set(real["sampler"].map(base_name)):
        return NOT_RUN
    parts = []
    for bench, rows in real.groupby("benchmark", sort=False):
        mine = rows[rows["sampler"].map(base_name) == sampler]
        base = rows[rows["sampler"] == "uniform"]
        if not len(mine) or not len(base):
            continue
        m, u = mine.iloc[0], base.iloc[0]
        below = m["seeds below uniform's"]
        parts.append(f"{bench}: {m['Fréchet distance (median)']:.3g} against uniform's {u['Fréchet distance (median)']:.3g} "
                     f"(floor {m['floor']:.3g}; {below} seeds below uniform's, sign test p = {m['sign test p']:.2g})")
    return "; ".join(parts) or NOT_RUN


def correlation_text(pvm: pd.DataFrame, leave_out: Sequence[str] = ("logit_normal",)) -> str:
    """The Pearson correlation (log scale) of predicted step speed-up and measured final ratio
    over the sampler-settings of ``pvm`` (``prediction.predicted_vs_measured``, computed once by
    the caller, who reads it for more than this) with its cluster-bootstrap interval
    (``prediction.prediction_correlation``), and the same without the points of the samplers
    ``leave_out`` (``prediction.without``: by default the reweighted logit-normal's cluster far
    below the others); "not measured in this profile" under 3 points."""
    if len(pvm) < 3:
        return "not measured in this profile"
    pc = prediction.prediction_correlation(pvm, measured="ratio")
    c = pc["pearson"]
    text = (
        f"{c.value:.2f} [{c.lo:.2f}, {c.hi:.2f}] over {c.n} sampler-settings: Pearson on log scale, "
        f"{c.level:.0%} percentile bootstrap over the {pc['clusters']} settings (each resampled whole, with all its "
        "samplers); the points' own measurement errors are not propagated"
    )
    rest = prediction.without(pvm, leave_out)
    if len(rest) < len(pvm):
        out = pvm[~pvm.index.isin(rest.index)]
        who = ", ".join(dict.fromkeys(base_name(s) for s in out["sampler"]))
        if len(rest) >= 3:
            w = prediction.prediction_correlation(rest, measured="ratio")["pearson"]
            text += (f"; without the {len(out)} points of {who} (predicted {span(out['predicted'])}), {w.value:.2f} [{w.lo:.2f}, {w.hi:.2f}] "
                     f"over {w.n}")
        else:
            text += f"; without the {len(out)} points of {who}, too few points to correlate"
    return text


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
