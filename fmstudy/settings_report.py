"""Chapter 7's tables and numbers across settings: the comparison against uniform on the other
benchmarks and in the sweeps, the budget sweep's setup and seed spread, and what ran. The
predicted-against-measured tables are in :mod:`fmstudy.settings_predicted`, the sample quality on
real data in :mod:`fmstudy.settings_quality` (both re-exported here); the learning-rate check is in
:mod:`fmstudy.settings_tuning`.

A comparison's ``ratio`` is the geometric mean over seeds of the sampler's final metric over
uniform's (A.2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from . import analysis, conclusions, lr_tuning, report, sweeps, tables
from .analysis import Estimate
from .baseline_page import level_text
from .conclusions_sweeps import SWEEPS
from .settings_predicted import PVM_COLUMNS, calibration_text, prediction_summary, pvm_parts, pvm_table, with_final_gain
from .settings_predicted import PVM_NAMES as PVM_NAMES
from .settings_predicted import SETTING_WORDS as SETTING_WORDS
from .settings_predicted import SETTINGS as SETTINGS
from .settings_predicted import SUMMARY as SUMMARY
from .settings_predicted import WITHOUT as WITHOUT
from .settings_quality import fd_text, outlier_seed, outlier_text, quadrature_design, quadrature_text, sample_quality, sample_quality_shown
from .train import TrainConfig

__all__ = [
    "KINDS", "OTHERS", "budget_setup", "budget_spread", "budget_spread_text", "PVM_COLUMNS", "SHOW", "calibration_text", "fd_text",
    "holm_total", "other_tables", "outlier_seed", "outlier_text", "prediction_summary", "pvm_parts", "pvm_table", "quadrature_design",
    "quadrature_text", "sample_quality", "sample_quality_shown", "scope_text", "shared_cells", "shown", "table_over", "with_final_gain",
]

SHOW = ["ratio", "p_holm", "ratio_simultaneous", "effect", "n", "speedup_steps", "speedup_flops", "reached", "lr"]  # a sweep table's columns on the page
OTHERS = ("gmm-d", "toys", "real")  # the sub-grids of "Other benchmarks", each swept over its axis in SWEEPS
# the benchmarks of the registry (``data.benchmark_names``) each of those sub-grids is meant to cover
KINDS = {"gmm-d": ("gmm-d",), "toys": ("moons", "checkerboard", "spirals"), "real": ("digits", "mnist1d")}


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The :data:`SHOW` columns a comparison table has, as text (``tables.as_text``), each column
    of intervals named with their level (``baseline_page.level_text``), e.g. "ratio [95% CI]"."""
    out = tables.as_text(table[[c for c in SHOW if c in table]])
    levels = {c: level_text(table[c]) for c in out.columns if len(table) and isinstance(table[c].iloc[0], Estimate)}
    return out.rename(columns={c: f"{c} [{lv} CI]" for c, lv in levels.items()})


def table_over(ds: xr.Dataset, axis: str) -> pd.DataFrame:
    """The comparison against uniform in every group of ``ds`` (``sweeps.comparison_groups``):
    ``sweeps.sweep_table`` over ``axis`` where it is one of the groups' axes; else the one group's
    ``tables.comparison_table`` with ``p_holm`` (Holm over its rows, A.6) and ``reached`` (seeds
    reaching uniform's final value); empty where uniform ran alone."""
    groups = list(sweeps.comparison_groups(ds))
    if groups and axis in groups[0][0]:
        return sweeps.sweep_table(ds, axis)
    if len(groups) != 1:
        raise ValueError(f"axis={axis!r} is not allowed: it is not an axis of these results, which have {len(groups)} groups (one is needed)")
    ((_, group, metric),) = groups
    model, batch = tables.model_of(group)
    t = tables.comparison_table(group, metric, "uniform", model, batch)
    if not len(t):  # uniform alone: nothing to compare
        return t
    return t.assign(p_holm=analysis.holm(t["p"].to_numpy(float)), reached=t["speedup_steps"].map(lambda e: e.n - e.censored))


def budget_setup(ds: xr.Dataset) -> dict[str, str]:
    """What differs between the budgets of a budget sweep besides the steps, as text: ``rates``,
    each sampler's learning rate (``lr_used``) and whether it is the same at every budget;
    ``feedback``, the steps between the adaptive samplers' feedback (``feedback_every``) at each
    budget, from the cells that ran (a grid axis, else the grid's fixed parameter)."""
    ids = ds["cell_id"]
    if "steps" not in ids.dims:
        raise ValueError(f"results with axes {list(ids.dims)} are not allowed: a budget sweep has a 'steps' axis")
    ran = ids.to_dataframe(name="id").reset_index()
    ran = ran[ran["id"] != ""]
    fixed = json.loads(ds.attrs.get("fixed") or "{}")
    if "feedback_every" not in ran:
        ran["feedback_every"] = fixed.get("feedback_every", TrainConfig.feedback_every)
    if "lr_used" in ds:
        lr = ds["lr_used"].to_dataframe().reset_index().dropna(subset=["lr_used"])
        lr = lr[lr.set_index(list(ids.dims)).index.isin(ran.set_index(list(ids.dims)).index)]
        per = lr.groupby("sampler", sort=False)["lr_used"].unique()
        if all(len(v) == 1 for v in per) and per.map(lambda v: v[0]).nunique() == 1:
            rates = f"{per.iloc[0][0]:g} for every sampler at every budget"
        else:
            rates = "; ".join(f"{name} {', '.join(f'{v:g}' for v in vals)}" for name, vals in per.items())
    else:
        rates = f"{fixed['lr']:g} for every sampler at every budget" if "lr" in fixed else "n/a"
    by = ran.groupby("feedback_every", sort=True)["steps"].unique()
    feedback = "; ".join(f"every {fe:g} steps at {', '.join(f'{st:,.0f}' for st in sorted(steps))} steps" for fe, steps in by.items())
    return {"rates": rates, "feedback": feedback}


def other_tables(grids: Mapping[str, xr.Dataset], names: Sequence[str] = OTHERS) -> dict[str, pd.DataFrame]:
    """:func:`table_over` of each sub-grid of ``names`` that ran (in ``grids``) over its axis in
    ``conclusions_sweeps.SWEEPS``, where it has a comparison (in the order of ``names``)."""
    axes = dict(SWEEPS)
    unknown = [n for n in names if n not in axes]
    if unknown:
        raise ValueError(f"names={list(names)!r} is not allowed: {unknown} sweep no known axis (known: {sorted(axes)})")
    out = {}
    for name in names:
        if name in grids and len(t := table_over(grids[name], axes[name])):
            out[name] = t
    return out


def holm_total(tables_by_name: Mapping[str, pd.DataFrame]) -> tuple[int, int, int]:
    """The sums over the tables of their (better, worse, compared) ``sweeps.holm_counts``: Holm
    applied within each table, not over their union; (0, 0, 0) for none."""
    counts = [sweeps.holm_counts(t) for t in tables_by_name.values()]
    return sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts)


def budget_spread(ds: xr.Dataset, baseline: str = "uniform") -> pd.DataFrame:
    """Per budget (the ``steps`` of each group of a budget sweep, ``sweeps.comparison_groups``), the
    spread over seeds behind the width of its intervals, on the group's ranking metric at the
    last checkpoint: ``sd_log_baseline``, the standard deviation over seeds of the baseline's log
    final value; ``sd_log_ratio_lo``/``_hi``, the range over the other samplers of the standard
    deviation of their per-seed log-ratios to the baseline (what the paired t-interval scales
    with); ``diverged``/``runs``, the member runs that diverged and all of them."""
    rows = []
    for labels, group, m in sweeps.comparison_groups(ds, baseline=baseline):
        if "steps" not in labels:
            raise ValueError(f"results with axes {sorted(labels)} are not allowed: a budget sweep has a 'steps' axis")
        ran = [str(s) for s in group.sampler.values if str(group.cell_id.sel(sampler=s).values)]
        base = np.log(report.final(group.sel(sampler=baseline), m).values.astype(float))
        sds = [float(np.std(np.log(report.final(group.sel(sampler=s), m).values.astype(float)) - base, ddof=1)) for s in ran if s != baseline]
        div = np.concatenate([np.asarray(group.sel(sampler=s).diverged_step.values, dtype=float).ravel() for s in ran]) \
            if "diverged_step" in group else np.zeros(0)
        rows.append({"steps": float(labels["steps"]), "sd_log_baseline": float(np.std(base, ddof=1)),
                     "sd_log_ratio_lo": min(sds) if sds else np.nan, "sd_log_ratio_hi": max(sds) if sds else np.nan,
                     "diverged": int((div >= 0).sum()), "runs": int(div.size), "metric": m})
    return pd.DataFrame(rows).set_index("steps").sort_index()


def budget_spread_text(spread: pd.DataFrame) -> str:
    """:func:`budget_spread` in words: per budget the two standard deviations, then the diverged runs."""
    if not len(spread):
        return "n/a"
    per = "; ".join(f"{st:,.0f} steps: {r['sd_log_baseline']:.2f} and {conclusions.span([r['sd_log_ratio_lo'], r['sd_log_ratio_hi']])}"
                    for st, r in spread.iterrows())
    return (f"the standard deviation over seeds of uniform's log final {str(spread['metric'].iloc[0]).replace('_ema', '').replace('_', ' ')}, "
            f"and that of the samplers' per-seed log-ratios to it, are {per}; {int(spread['diverged'].sum())} of "
            f"{int(spread['runs'].sum())} member runs diverged")


def scope_text(grids: Mapping[str, xr.Dataset], names: Sequence[str] = OTHERS, kinds: Mapping[str, Sequence[str]] = KINDS) -> tuple[str, str]:
    """(run, not run) of the other benchmarks, in words: for each sub-grid of ``names`` the
    benchmarks of its kind (:data:`KINDS`) that ran in it ("toys: checkerboard"), and those of its
    kind that did not, with the sub-grids that did not run at all ("toys: moons, spirals"); each
    "none" when empty."""
    ran, missing = [], []
    for name in names:
        kind = list(kinds.get(name, (name,)))
        g = grids.get(name)
        if g is None:
            missing.append(f"`{name}` ({', '.join(kind)})")
            continue
        if "benchmark" in g["cell_id"].dims:
            have = [str(b) for b in g.benchmark.values if (g["cell_id"].sel(benchmark=b) != "").any()]
        else:
            have = [str(lr_tuning.cell_param(g, {}, "benchmark"))]
        shown = list(have)
        if "benchmark_options" in g["cell_id"].dims:  # random instances: say how many of which dimension
            opts = [str(o) for o in g.benchmark_options.values if (g["cell_id"].sel(benchmark_options=o) != "").any()]
            dims = [m.group(1) for o in opts if (m := re.search(r"dim=(\d+)", o))]
            if len(dims) == len(opts) and dims:
                per = pd.Series(dims).value_counts(sort=False).sort_index(key=lambda d: d.astype(int))
                shown = [f"{have[0]} at d = {', '.join(per.index)} ({per.iloc[0]} instances each)" if per.nunique() == 1
                         else f"{have[0]} ({len(opts)} instances)"]
            else:
                shown = [f"{have[0]} ({len(opts)} instances)"]
        ran.append(f"`{name}`: {', '.join(shown)}")
        if rest := [b for b in kind if b not in have]:
            missing.append(f"`{name}`: {', '.join(rest)}")
    return "; ".join(ran) or "none", "; ".join(missing) or "none"


def shared_cells(a: xr.Dataset | None, b: xr.Dataset | None) -> int:
    """How many runs (non-empty cell ids) two collected sub-grids hold in common: the same run
    read in two tables (e.g. the budget sweep's 1,000-step cells and the sigma sweep's sigma = 1
    cells); 0 where either is None."""
    if a is None or b is None:
        return 0

    def ids(ds: xr.Dataset) -> set[str]:
        return {str(c) for c in np.asarray(ds["cell_id"].values).ravel() if str(c)}

    return len(ids(a) & ids(b))
