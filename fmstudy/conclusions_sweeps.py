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

from . import heldout_error, prediction, report, stability, sweeps
from .analysis import Estimate
from .conclusions import NOT_RUN, TOP, VARIANCE, base_name, span

__all__ = [
    "SWEEPS",
    "SweepRow",
    "cell_of",
    "correlation_text",
    "budget_text",
    "gain_text",
    "held_unresolved_text",
    "held_note",
    "holm_ratio_text",
    "sample_quality_text",
    "speed_span",
    "stability_sentence",
    "stability_text",
    "sweep_rows",
    "unresolved_labels",
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
    unresolved: str = ""  # "sampler on benchmark" where its significant verdict is within the held-out set's distortion


HELDOUT = "heldout_objective_ema"  # the held-out objective, as a sweep table's ``metric`` names it


def _and(names: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _distortion(bound: float) -> str:
    """The held-out set's distortion bound (a factor >= 1) as "the held-out set's 0.76% distortion"."""
    return f"the held-out set's {100 * (bound - 1):.2g}% distortion" if np.isfinite(bound) else "the held-out set's distortion"


def unresolved_labels(table: pd.DataFrame, bound: float, metric: str = HELDOUT) -> dict[Any, str]:
    """The rows of a sweep table (``sweeps.sweep_table``, with ``metric`` and ``ratio``) that are
    significant (``sweeps.significant``), read the held-out ``metric`` and lie closer to 1 than
    ``bound`` (``heldout_error.unresolved``, the criterion of ``heldout_error.unresolved_verdicts``):
    index -> "sampler on benchmark" (the sub-grid's benchmark level, else the sampler alone)."""
    if not len(table) or "metric" not in table or not np.isfinite(bound):
        return {}
    sig = sweeps.significant(table)
    out = {}
    for idx in sig.index[sig != 0]:
        row = table.loc[idx]
        if row["metric"] == metric and heldout_error.unresolved(row["ratio"], bound):
            labels = dict(zip(table.index.names, idx if isinstance(idx, tuple) else (idx,)))
            sampler = labels.get("sampler", idx[-1] if isinstance(idx, tuple) else idx)
            out[idx] = f"{sampler} on {labels['benchmark']}" if "benchmark" in labels else str(sampler)
    return out


def held_note(labels: Sequence[str], count: int, bound: float) -> str:
    """How many of ``count`` verdicts (``labels`` of them not resolved by the held-out objective)
    are not resolved, as a bracket to follow the count: " (1 of them, var_opt on mnist1d, within
    the held-out set's 0.76% distortion and so not resolved)"; "" for none."""
    if not labels:
        return ""
    k = len(labels)
    who = ("both" if k == 2 else f"all {k}") + " of them" if k == count and k > 1 else (f"{k} of them" if k < count else "")
    lead = f"{who}, " if who else ""
    return f" ({lead}{_and(labels)}, within {_distortion(bound)} and so not resolved)"


def held_unresolved_text(held_out: Sequence[str], n: int) -> str:
    """The verdicts of ``heldout_error.unresolved_verdicts`` (``held_out`` of the ``n``
    significant held-out verdicts) as a clause: "one of the 5 significant held-out verdicts, var_opt
    on mnist1d (ratio 0.9968), is closer to 1 than that and so is not resolved"; "2 of the 5 ...,
    a and b, are closer ..."; "none of the 5 ... is closer to 1 than that"; "no held-out verdict is
    significant"."""
    if not n:
        return "no held-out verdict is significant"
    of = f"of the {n} significant held-out verdict{'s' * (n != 1)}"
    if not held_out:
        return f"{'none ' + of + ' is' if n > 1 else 'the one significant held-out verdict is not'} closer to 1 than that"
    k = len(held_out)
    if k == 1:
        head = "the one significant held-out verdict" if n == 1 else f"one {of}"
        return f"{head}, {held_out[0]}, is closer to 1 than that and so is not resolved"
    head = ("both" if k == 2 else f"all {k}") + f" {of}" if k == n else f"{k} {of}"
    return f"{head}, {_and(held_out)}, are closer to 1 than that and so are not resolved"


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
    grids: Mapping[str, xr.Dataset],
    axes: Mapping[str, str],
    names: Sequence[str] = VARIANCE,
    skip: Sequence[str] = ("compare",),
    bound: float = math.nan,
) -> tuple[list[str], list[SweepRow]]:
    """For each sub-grid of ``grids`` (in order) with its swept axis in ``axes`` among its cell
    axes, not in ``skip``: the sentence "words (values): b better, w worse of n" of its whole
    ``sweeps.sweep_table`` (:data:`SWEEP_WORDS`, :func:`axis_values_text`; Holm over those n rows),
    and the rows whose sampler (options dropped) is in ``names``, each cell once (a row whose cell
    id is unknown is always kept). With the held-out set's distortion ``bound``, each count of
    better (worse) rows says how many of them that bound leaves unresolved (:func:`held_note`),
    and each row carries its own (``SweepRow.unresolved``, :func:`unresolved_labels`)."""
    counts, rows, seen = [], [], set()
    for grid, g in grids.items():
        axis = axes.get(grid)
        if grid in skip or axis is None or "cell_id" not in g or axis not in g["cell_id"].dims:
            continue
        t = sweeps.sweep_table(g, axis)
        held = unresolved_labels(t, bound)
        for idx, row in t[[base_name(i[-1]) in names for i in t.index]].iterrows():
            cid = cell_of(g, t.index.names, idx)
            if cid is None or cid not in seen:
                seen.add(cid)
                rows.append(SweepRow(grid, dict(zip(t.index.names, idx)), row, sweeps.holm_counts(t.loc[[idx]]), held.get(idx, "")))
        better, worse, n = sweeps.holm_counts(t)
        sig = sweeps.significant(t)
        side = {s: [held[i] for i in sig.index[sig == s] if i in held] for s in (-1, 1)}
        words = SWEEP_WORDS.get(grid, grid + " ({values})").format(values=axis_values_text(axis, t.index.get_level_values(axis)))
        counts.append(f"{words}: {better} better{held_note(side[-1], better, bound)}, {worse} worse{held_note(side[1], worse, bound)} of {n}")
    return counts, rows


def variance_names(rows: Sequence[SweepRow], names: Sequence[str] = VARIANCE) -> str:
    """The samplers of ``names`` with rows among ``rows`` (in the order of ``names``), and, in
    brackets, those without any: "grad_norm, var_opt, oracle_qstar (var_opt_neyman ran in none
    of these sweeps)"; "none" when no sampler has a row."""
    have = {base_name(r.labels.get("sampler", "")) for r in rows}
    counted = ", ".join(n for n in names if n in have) or "none"
    absent = [n for n in names if n not in have]
    return counted + (f" ({', '.join(absent)} ran in none of these sweeps)" if absent else "")


def _held_sides(rows: Sequence[SweepRow]) -> tuple[list[str], list[str]]:
    """The ``unresolved`` labels of the rows counted better, and of those counted worse."""
    return [r.unresolved for r in rows if r.unresolved and r.counts[0]], [r.unresolved for r in rows if r.unresolved and r.counts[1]]


def variance_text(rows: Sequence[SweepRow], bound: float = math.nan) -> str:
    """The sums B, W, N of the rows' verdicts as "B better and W worse than uniform of N distinct
    cells", each count with how many of its rows the held-out set's distortion ``bound`` leaves
    unresolved (:func:`held_note`)."""
    better, worse, n = (sum(r.counts[i] for r in rows) for i in range(3))
    ub, uw = _held_sides(rows)
    return (f"{better} better{held_note(ub, better, bound)} and {worse} worse{held_note(uw, worse, bound)} than uniform of {n} distinct cells"
            if n else NOT_RUN)


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
    but not all are, then how many lie below 1 (upper end < 1: slower) where any do: e.g.
    "interval above 1 in 2 of 8 (medians 1.12–1.16)", "interval above 1 in 0 of 2, below 1 in 2 of 2"."""
    up = [e for e in estimates if np.isfinite(getattr(e, "lo", math.nan)) and e.lo > 1]
    down = [e for e in estimates if np.isfinite(getattr(e, "hi", math.nan)) and e.hi < 1]
    text = f"interval above 1 in {len(up)} of {len(estimates)}"
    text += f" (medians {span(up)})" if 0 < len(up) < len(estimates) else ""
    return text + (f", below 1 in {len(down)} of {len(estimates)}" if down else "")


def gain_text(
    rows: Sequence[SweepRow],
    grid: str,
    axis: str | None = None,
    lo: float = -math.inf,
    hi: float = math.inf,
    speed: bool = True,
    names: Sequence[str] = TOP,
    bound: float = math.nan,
) -> str:
    """What the top samplers bought over the rows of sub-grid ``grid`` whose sampler is in
    ``names`` and, given ``axis``, with lo <= float(label[axis]) <= hi: "ratio a–b (better in k of
    n, Holm); step speed-up c–d, interval above 1 in i of n; FLOP speed-up e–f, interval above 1
    in j of n (medians ...)" (:func:`span` of the final ratios to uniform, the rows' Holm verdicts from
    their tables, :func:`speed_span` of the median speed-ups per step and per training FLOP with
    :func:`resolved_text` of their intervals); without ``speed`` the ratio and verdicts only; "n/a".
    The verdicts name those the held-out set's distortion ``bound`` leaves unresolved ("better in
    2 of 2, Holm; of the better, var_opt on mnist1d is within the held-out set's 0.76% distortion
    and so not resolved")."""
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
    for word, held in zip(("better", "worse"), _held_sides(sel)):
        if held:
            verdict += f"; of the {word}, {_and(held)} {'is' if len(held) == 1 else 'are'} within {_distortion(bound)} and so not resolved"
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


def _test_text(tests: pd.DataFrame | None, name: Any, alpha: float = 0.05) -> str:
    """A sampler's row of ``stability.failure_tests`` (indexed by sampler) in words: "; against
    uniform's 0 of 10 there, Fisher p = 0.47, Holm p = 1: not distinguishable at 10 seeds" (or
    "fewer/more failures than uniform's" where Holm p <= ``alpha``); "" without a test."""
    if tests is None or name not in tests.index or not np.isfinite(tests.loc[name, "p"]):
        return ""
    t = tests.loc[name]
    verdict = (f"not distinguishable from uniform at {int(t['n'])} seeds" if not t["p_holm"] <= alpha
               else f"{'more' if t['k'] / t['n'] > t['baseline_k'] / t['baseline_n'] else 'fewer'} failures than uniform")
    return (f"; against uniform's {int(t['baseline_k'])} of {int(t['baseline_n'])} there, Fisher p = {t['p']:.2g}, "
            f"Holm p = {t['p_holm']:.2g}: {verdict}")


def _group_sentence(tab: pd.DataFrame, stable: pd.Series, lowest: float, tests: pd.DataFrame | None = None) -> str:
    """One group's sentence: uniform's first failing rate, the samplers failing below it (each
    with its Fisher test against uniform from ``tests``, :func:`_test_text`), the largest stable
    rates (``stable`` per sampler, NaN: stable at no swept rate)."""
    first = {}  # each sampler's smallest swept rate at which any seed failed, with its failed seeds
    for name, lr in stability.breaking_lr(tab, any_seed=True).dropna().items():
        r = tab.loc[(name, lr), "failed"]
        first[name] = (float(lr), round(r.value * r.n), r.n)
    u = first.get("uniform")
    text = f"uniform first fails at lr {u[0]:g} ({u[1]} of {u[2]} seeds)" if u else "uniform never fails"
    early = [
        f"{base_name(n)} at lr {f[0]:g} ({f[1]} of {f[2]} seeds{_test_text(tests, n)})"
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


def stability_sentence(table: pd.DataFrame, summary: pd.DataFrame, lrs: Sequence[float], tests: pd.DataFrame | None = None) -> str:
    """The stability sentence from ``stability.stability_table`` (index sampler[, sigma], lr) and
    ``stability.stability_summary`` (index sampler[, sigma]) of one sweep over the rates ``lrs``:
    per sigma ("at σ = s: ..."), joined by "; ", then the swept rates; with ``tests``
    (``stability.failure_tests`` of the table, Holm over its rows, as chapter 6), each sampler
    failing below uniform's first failing rate carries its test."""
    lrs = sorted(float(v) for v in lrs)
    if not lrs:
        raise ValueError("lrs=[] is not allowed: the sweep must have at least one learning rate")
    groups = [None] if "sigma" not in table.index.names else sorted(set(table.index.get_level_values("sigma")))
    bits = []
    for sg in groups:
        tab = table.xs(sg, level="sigma") if sg is not None else table
        stable = (summary.xs(sg, level="sigma") if sg is not None else summary)["largest_stable_lr"]
        sub = None if tests is None or not len(tests) else (tests.xs(sg, level="sigma") if sg is not None else tests)
        bits.append((f"at σ = {sg:g}: " if sg is not None else "") + _group_sentence(tab, stable, lrs[0], sub))
    return "; ".join(bits) + f" (swept rates {', '.join(f'{v:g}' for v in lrs)})"


def stability_text(sb: xr.Dataset | None) -> str:
    """:func:`stability_sentence` of the stability sub-grid at gmm8 (its largest batch size where
    batch sizes were swept), with chapter 6's failure tests (``stability.failure_tests``); "not run in this profile" without it or without an lr axis."""
    if sb is None or "lr" not in sb.dims:
        return NOT_RUN
    sb = report.select_benchmark(sb)
    if "batch_size" in sb.dims:
        sb = sb.isel(batch_size=-1)
    table = stability.stability_table(sb)
    return stability_sentence(table, stability.stability_summary(sb), sb.lr.values, stability.failure_tests(table))
