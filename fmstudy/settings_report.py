"""Chapter 7's tables and numbers across settings: the comparison against uniform on the other
benchmarks, the central figure's predicted-against-measured summary and the sample quality on
real data. The learning-rate check is in :mod:`fmstudy.settings_tuning`.

A comparison's ``ratio`` is the geometric mean over seeds of the sampler's final metric over
uniform's (A.2); the figure's final gain is its inverse, 1 / ratio (larger is better). The
calibration of the prediction is, per point with an identified measured median,

    c = S_measured / S(r)          (S(r) the predicted step speed-up, 4.6)

summarised by its median and range. On real data each seed's sample quality is a distance; the
table gives its median over seeds (A.7's order-statistic interval, no censoring) and, paired by
seed, the k of n seeds whose Fréchet distance is below uniform's with the two-sided sign test
p = P(|Bin(n, 1/2) - n/2| >= |k - n/2|).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from . import analysis, lr_tuning, prediction, report, sweeps, tables
from .analysis import Estimate
from .baseline_page import level_text
from .conclusions_sweeps import SWEEPS
from .train import TrainConfig

__all__ = [
    "OTHERS", "budget_setup", "PVM_COLUMNS", "SHOW", "calibration_text", "fd_text", "holm_total", "other_tables",
    "prediction_summary", "pvm_table", "sample_quality", "sample_quality_shown", "shown", "table_over", "with_final_gain",
]

SHOW = ["ratio", "p_holm", "ratio_simultaneous", "effect", "n", "speedup_steps", "speedup_flops", "reached", "lr"]  # a sweep table's columns on the page
OTHERS = ("gmm-d", "toys", "real")  # the sub-grids of "Other benchmarks", each swept over its axis in SWEEPS
PVM_COLUMNS = ["dataset", "benchmark", "benchmark_options", "sigma", "steps", "sampler", "gain", "B_noise / B", "predicted", "predicted_R",
               "speedup_steps", "ratio", "n"]


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


def with_final_gain(pvm: pd.DataFrame) -> pd.DataFrame:
    """``prediction.predicted_vs_measured``'s table with ``final gain``, 1 / ratio as an Estimate
    (its interval [1 / hi, 1 / lo]); an empty table unchanged."""
    if not len(pvm):
        return pvm

    def inv(e: Estimate) -> Estimate:  # the final ratio as a gain: larger is better, the interval's ends swap
        return Estimate(1 / e.value, 1 / e.hi, 1 / e.lo, e.n, e.level)

    return pvm.assign(**{"final gain": pvm["ratio"].map(inv)})


def calibration_text(pvm: pd.DataFrame) -> str:
    """The median of c = S_measured / S(r) over the points where the measured median step speed-up
    is identified, "m (range lo to hi, k points)" to 2 decimals; "n/a" without any."""
    c = pvm["speedup_steps"].map(lambda e: e.value).to_numpy(float) / pvm["predicted"].to_numpy(float)
    c = c[np.isfinite(c)]
    return f"{np.median(c):.2f} (range {c.min():.2f} to {c.max():.2f}, {c.size} points)" if c.size else "n/a"


SUMMARY = ("pts", "sp_pts", "clusters", "sp_clusters", "or_pearson", "or_pts", "calib", "sp_pearson", "ra_pearson", "ra_spearman",
           "pred_max", "ceiling_max")


def prediction_summary(pvm: pd.DataFrame) -> dict[str, tuple[Any, str]]:
    """The prose's numbers on the predicted-against-measured table, name -> (value, format for
    ``report.glue_number``): ``pts`` the points; ``sp_pts``/``sp_clusters`` the points and settings
    of the correlation with the measured step speed-up (identified medians only), ``sp_pearson`` it;
    ``clusters``, ``ra_pearson``, ``ra_spearman`` those with the final gain
    (``prediction.prediction_correlation``, P.1); ``or_pts``/``or_pearson`` the final-gain Pearson
    on the oracle points (metric the integrated excess; "n/a" under 3); ``calib``
    (:func:`calibration_text`); ``pred_max``/``ceiling_max`` the largest S(r) and S(R). Every value
    "n/a" for an empty table."""
    if not len(pvm):
        return {k: ("n/a", ".3g") for k in SUMMARY}
    c_sp = prediction.prediction_correlation(pvm)
    c_ra = prediction.prediction_correlation(pvm, measured="ratio")
    oracle = pvm[pvm["metric"].astype(str).str.startswith("integrated_excess")]
    c_or = prediction.prediction_correlation(oracle, measured="ratio") if len(oracle) >= 3 else None
    return {
        "pts": (len(pvm), "d"),
        "sp_pts": (c_sp["points"], "d"),
        "clusters": (c_ra["clusters"], "d"),
        "sp_clusters": (c_sp["clusters"], "d"),
        "or_pearson": (c_or["pearson"] if c_or else "n/a", ".2f"),
        "or_pts": (len(oracle), "d"),
        "calib": (calibration_text(pvm), ".3g"),
        "sp_pearson": (c_sp["pearson"], ".2f"),
        "ra_pearson": (c_ra["pearson"], ".2f"),
        "ra_spearman": (c_ra["spearman"], ".2f"),
        "pred_max": (float(np.nanmax(pvm["predicted"])), ".3g"),
        "ceiling_max": (float(np.nanmax(pvm["predicted_R"])), ".3g"),
    }


def pvm_table(pvm: pd.DataFrame) -> pd.DataFrame:
    """The :data:`PVM_COLUMNS` of the predicted-against-measured table, indexed by (dataset, sampler), as text,
    with "above R's prediction": how each measured step speed-up stands against the speed-up the
    ceiling R predicts (``account_report.above_ceiling``)."""
    from .account_report import above_ceiling

    t = pvm[[c for c in PVM_COLUMNS if c in pvm]]
    if "predicted_R" in t and "speedup_steps" in t:
        t = t.assign(**{"above R's prediction": above_ceiling(t, "predicted_R", "speedup_steps")})
    return tables.as_text(t.set_index(["dataset", "sampler"]))


def _median(v: np.ndarray) -> Estimate:
    """The median over seeds with its order-statistic interval, no seed censored."""
    return analysis.median_censored(v, np.zeros(np.size(v), bool))


def _at(ds: xr.Dataset, bench: str) -> xr.Dataset:
    """``ds`` at benchmark ``bench`` (where that is an axis) and at its last sigma (where that is one)."""
    s = ds.sel(benchmark=bench) if "benchmark" in ds.dims else ds
    return s.isel(sigma=-1) if "sigma" in s.dims else s


def sample_quality(ds: xr.Dataset | None) -> tuple[pd.DataFrame, tuple | None]:
    """One row per (benchmark, sampler) that ran in the real-data grid ``ds`` (at its last sigma):
    the held-out objective's ratio to uniform (A.2, paired by seed), the Fréchet distance's median
    with its interval "lo to hi", the "k of n" seeds below uniform's and the sign test's p (NaN for
    uniform), its floor, the sliced W2's median and floor. Also the worst single seed,
    (distance, benchmark, sampler, that sampler's median), by the largest distance; None (and an
    empty table) without the grid."""
    if ds is None:
        return pd.DataFrame(), None
    benches = [str(b) for b in ds.benchmark.values] if "benchmark" in ds.dims else [lr_tuning.cell_param(ds, {}, "benchmark")]
    rows, worst = [], []
    for bench in benches:
        s = _at(ds, bench)
        base = s.sel(sampler="uniform")
        base_obj = report.final(base, "heldout_objective_ema").values
        for name in s.sampler.values:
            t = s.sel(sampler=name)
            if not str(t.cell_id.values):
                continue
            fd, sw = _median(t.sample_frechet.values), _median(t.sample_sw.values)
            worst.append((float(np.nanmax(t.sample_frechet.values)), bench, name, fd.value))
            k = int((t.sample_frechet.values < base.sample_frechet.values).sum())
            rows.append({"benchmark": bench, "sampler": name,
                         "held-out objective ratio to uniform": analysis.paired_ratio(report.final(t, "heldout_objective_ema").values, base_obj).value,
                         "Fréchet distance (median)": fd.value, "CI": f"{fd.lo:.3g} to {fd.hi:.3g}",
                         "seeds below uniform's": "" if name == "uniform" else f"{k} of {fd.n}",
                         "sign test p": np.nan if name == "uniform" else stats.binomtest(k, fd.n).pvalue,
                         "floor": float(t.floor_frechet), "sliced W2 (median)": sw.value, "sliced W2 floor": float(t.floor_sw)})
    return pd.DataFrame(rows), (max(worst) if worst else None)


def sample_quality_shown(real: pd.DataFrame) -> pd.DataFrame:
    """:func:`sample_quality`'s table for the page, indexed by (benchmark, sampler): uniform's
    comparisons with itself (objective ratio, seeds below, sign test) read "—"; the sign test's p
    to 2 significant digits, the other numbers to 4; an empty table unchanged."""
    if not len(real):
        return real
    own = real["sampler"] == "uniform"
    out = real.set_index(["benchmark", "sampler"]).round(4).astype(object)
    cols = ["held-out objective ratio to uniform", "seeds below uniform's", "sign test p"]
    out["sign test p"] = [f"{p:.2g}" for p in real["sign test p"]]
    out.loc[own.to_numpy(), cols] = "—"
    return out


def fd_text(real: pd.DataFrame, worst: tuple | None) -> str:
    """The sentence under the sample-quality table: the first benchmark's uniform median Fréchet
    distance against its floor and the worst single seed (:func:`sample_quality`)."""
    if not len(real):
        return "No real-data runs in this profile."
    u = real[(real.sampler == "uniform")].iloc[0]
    return (f"On {u.benchmark} the uniform schedule's samples sit at a median classifier Fréchet distance of "
            f"{u['Fréchet distance (median)']:.3g} against a floor of {u['floor']:.3g}; the largest single-seed distance is "
            f"{worst[0]:.3g} ({worst[2]} on {worst[1]}, whose median is {worst[3]:.3g}), which is why medians are shown. Differences "
            "between schedules are to be read against the gap to the floor and the seeds' intervals.")
