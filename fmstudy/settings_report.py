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
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from . import analysis, conclusions, lr_tuning, prediction, report, sweeps, tables
from .analysis import Estimate
from .baseline_page import level_text
from .conclusions_sweeps import SWEEPS
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
PVM_COLUMNS = ["dataset", "benchmark", "benchmark_options", "sigma", "steps", "sampler", "gain", "ceiling", "B_noise / B", "predicted",
               "predicted_R", "speedup_steps", "ratio", "n"]
PVM_NAMES = {"gain": "r (gain)", "ceiling": "R (ceiling)", "predicted": "S(r) predicted", "predicted_R": "S(R) predicted"}  # on the page
SETTINGS = ("benchmark", "benchmark_options", "sigma", "steps")  # what a point's setting is
SETTING_WORDS = {"benchmark": "benchmark", "benchmark_options": "instance", "sigma": "σ", "steps": "steps"}


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


SUMMARY = ("pts", "sp_pts", "clusters", "sp_clusters", "or_pearson", "or_pts", "calib", "calib_out", "calib_out_below", "sp_pearson",
           "ra_pearson", "ra_spearman", "wo_pearson", "wo_pts", "wo_out", "pred_max", "ceiling_max")
WITHOUT = ("logit_normal",)  # the cluster of points far below the others (its predicted S(r) 0.14-0.83 in the paper profile)


def prediction_summary(pvm: pd.DataFrame) -> dict[str, tuple[Any, str]]:
    """The prose's numbers on the predicted-against-measured table, name -> (value, format for
    ``report.glue_number``): ``pts`` the points; ``sp_pts``/``sp_clusters`` the points and settings
    of the correlation with the measured step speed-up (identified medians only), ``sp_pearson`` it;
    ``clusters``, ``ra_pearson``, ``ra_spearman`` those with the final gain
    (``prediction.prediction_correlation``, P.1); ``or_pts``/``or_pearson`` the final-gain Pearson
    on the oracle points (metric the integrated excess; "n/a" under 3); ``calib``
    (:func:`calibration_text`), ``calib_out`` the points it leaves out (median not identified) and
    ``calib_out_below`` how many of those are predicted below 1; ``wo_pearson``/``wo_pts``/``wo_out``
    the final-gain Pearson without the samplers of :data:`WITHOUT` (``prediction.without``), its
    points and the points left out ("n/a" under 3); ``pred_max``/``ceiling_max`` the largest S(r)
    and S(R). Every value "n/a" for an empty table."""
    if not len(pvm):
        return {k: ("n/a", ".3g") for k in SUMMARY}
    c_sp = prediction.prediction_correlation(pvm)
    c_ra = prediction.prediction_correlation(pvm, measured="ratio")
    oracle = pvm[pvm["metric"].astype(str).str.startswith("integrated_excess")]
    c_or = prediction.prediction_correlation(oracle, measured="ratio") if len(oracle) >= 3 else None
    rest = prediction.without(pvm, WITHOUT)
    c_wo = prediction.prediction_correlation(rest, measured="ratio") if len(rest) >= 3 else None
    hidden = ~pvm["speedup_steps"].map(lambda e: bool(np.isfinite(e.value))).to_numpy(bool)
    return {
        "pts": (len(pvm), "d"),
        "sp_pts": (c_sp["points"], "d"),
        "clusters": (c_ra["clusters"], "d"),
        "sp_clusters": (c_sp["clusters"], "d"),
        "or_pearson": (c_or["pearson"] if c_or else "n/a", ".2f"),
        "or_pts": (len(oracle), "d"),
        "calib": (calibration_text(pvm), ".3g"),
        "calib_out": (int(hidden.sum()), "d"),
        "calib_out_below": (int((pvm["predicted"].to_numpy(float)[hidden] < 1).sum()), "d"),
        "sp_pearson": (c_sp["pearson"], ".2f"),
        "ra_pearson": (c_ra["pearson"], ".2f"),
        "ra_spearman": (c_ra["spearman"], ".2f"),
        "wo_pearson": (c_wo["pearson"] if c_wo else "n/a", ".2f"),
        "wo_pts": (len(rest), "d"),
        "wo_out": (len(pvm) - len(rest), "d"),
        "pred_max": (float(np.nanmax(pvm["predicted"])), "#.3g"),  # as the tables show them: 3 digits, trailing zeros kept
        "ceiling_max": (float(np.nanmax(pvm["predicted_R"])), "#.3g"),
    }


def _setting_value(column: str, v: Any) -> str:
    """A setting's label as text: sigma with ``g``, steps with thousands separators, blank for NaN."""
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return ""
    if column == "steps":
        return f"{float(v):,.0f}"
    if column == "sigma":
        return f"{float(v):g}"
    return str(v)


def pvm_table(pvm: pd.DataFrame, fmt: str = "#.3g") -> pd.DataFrame:
    """The :data:`PVM_COLUMNS` of the predicted-against-measured table, indexed by (dataset, sampler),
    as text, named for the page (:data:`PVM_NAMES`; the intervals with their level): every number to 3 significant figures with its trailing zeros (``fmt``, so that 1.10
    reads 1.10, not 1.1), the settings as labels (:func:`_setting_value`), the Estimates with their
    intervals (``tables.as_text``); and "above R's prediction": how each measured step speed-up
    stands against the speed-up the ceiling R predicts (``account_report.above_ceiling``)."""
    from .account_report import above_ceiling

    t = pvm[[c for c in PVM_COLUMNS if c in pvm]]
    if "predicted_R" in t and "speedup_steps" in t:
        t = t.assign(**{"above R's prediction": above_ceiling(t, "predicted_R", "speedup_steps")})
    settings = [c for c in SETTINGS if c in t]
    levels = {c: level_text(t[c]) for c in ("speedup_steps", "ratio") if c in t and len(t) and isinstance(t[c].iloc[0], Estimate)}
    t = t.assign(**{c: [_setting_value(c, v) for v in t[c]] for c in settings})
    # renamed first: as_text reads a column whose name starts with "p" as p-values (2 digits)
    t = t.rename(columns={**PVM_NAMES, **{c: f"{c} [{lv} CI]" for c, lv in levels.items()}})
    return tables.as_text(t.set_index(["dataset", "sampler"]), fmt)


def pvm_parts(pvm: pd.DataFrame, fmt: str = "#.3g") -> list[tuple[str, pd.DataFrame]]:
    """:func:`pvm_table` split by dataset (sub-grid), in the order first met, each small enough for
    a page to show whole: (title, table indexed by the settings that vary within the sub-grid and
    the sampler). The settings the sub-grid holds fixed leave the table and are named in the
    title, e.g. "budget (gmm8, σ = 1)"."""
    if not len(pvm):
        return []
    whole = pvm_table(pvm, fmt).reset_index()
    parts = []
    for name in dict.fromkeys(pvm["dataset"]):
        t = whole[whole["dataset"] == name].drop(columns="dataset")
        settings = [c for c in SETTINGS if c in t]
        fixed = [c for c in settings if t[c].nunique() == 1]
        varying = [c for c in settings if c not in fixed]
        words = [f"{SETTING_WORDS[c]} = {t[c].iloc[0]}" if c == "sigma" else (f"{t[c].iloc[0]} steps" if c == "steps" else t[c].iloc[0])
                 for c in fixed if t[c].iloc[0]]
        title = f"{name}" + (f" ({', '.join(words)})" if words else "")
        t = t.drop(columns=fixed).set_index([*varying, "sampler"]).rename_axis(index=[SETTING_WORDS[c] for c in varying] + ["sampler"])
        parts.append((title, t))
    return parts


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


def quadrature_design(benchmark: str = "gmm8", sigma: float = 1.0, t_eps: float = 1e-3) -> tuple[int, int]:
    """(Gauss-Legendre nodes, draws of x_t per node) of the fixed quadrature on which every run's
    checkpoint meter measures the integrated excess, read off the meter itself
    (``meter.CheckpointMeter`` built for ``benchmark``, as a run builds it): one set of points per
    benchmark instance (seeded by the benchmark's seed), shared by every run on it."""
    import torch

    from .data import get_benchmark
    from .meter import CheckpointMeter
    from .paths import BrownianBridge

    bench = get_benchmark(benchmark)
    path = BrownianBridge(sigma, t_eps)
    oracle = bench.oracle(path) if bench.mixture is not None else None  # as a run builds it
    quad = CheckpointMeter(bench, path, None, oracle, torch.device("cpu"))._quadrature
    if quad is None:
        raise ValueError(f"benchmark={benchmark!r} is not allowed: it has no oracle, so no quadrature")
    return int(quad.n_nodes), int(quad.x.shape[0]) // int(quad.n_nodes)


def quadrature_text(nodes: int, draws: int) -> str:
    """What the integrated excess is computed on, and what that removes and does not, in words."""
    return (f"a fixed {nodes}-node Gauss-Legendre quadrature over t with {draws} draws of x_t per node ({nodes * draws:,} points, "
            "the exact v* there): no target noise, and the same points for every run on a benchmark, so its own error (one set of "
            "points, never replicated) is common to the runs compared and is not in the seed intervals")


def outlier_seed(ds: xr.Dataset | None, worst: tuple | None, others: Sequence[str] = ("var_opt",)) -> dict[str, Any] | None:
    """What the records show of :func:`sample_quality`'s worst single seed (``worst``: distance,
    benchmark, sampler, median) in the real-data grid ``ds`` (at its last sigma): its ``member``,
    ``frechet`` and the sampler's median ``frechet_median``; its sliced W2 and MMD (``sw``,
    ``mmd``) and final held-out objective (``heldout``), each with the sampler's median over seeds
    (``*_median``) and the range of its other seeds (``*_others``); ``diverged`` (whether it diverged);
    ``ratio_at`` / ``ratio_all``: for each of ``others`` that ran, its held-out ratio to the
    sampler at that seed and its geometric mean over all seeds (paired, A.2); ``high``, every
    (sampler, seed, distance) of that benchmark above twice its sampler's median Fréchet distance;
    and the ODE the samples were drawn with (``ode``). None without the grid or a worst seed."""
    if ds is None or worst is None:
        return None
    _, bench, name, _ = worst
    s = _at(ds, bench)
    t = s.sel(sampler=name)
    fd = np.asarray(t.sample_frechet.values, dtype=float)
    i = int(np.nanargmax(fd))
    heldout = report.final(t, "heldout_objective_ema").values
    out: dict[str, Any] = {"benchmark": bench, "sampler": name, "member": int(t.member.values[i]), "frechet": float(fd[i]),
                           "frechet_median": float(np.nanmedian(fd)),
                           "diverged": bool(np.asarray(t.diverged_step.values)[i] >= 0) if "diverged_step" in t else False}
    rest = np.arange(fd.size) != i
    for key, var in (("sw", "sample_sw"), ("mmd", "sample_mmd"), ("heldout", None)):
        if var is not None and var not in t:
            continue
        v = heldout.astype(float) if var is None else np.asarray(t[var].values, dtype=float)
        out[key], out[key + "_median"] = float(v[i]), float(np.nanmedian(v))
        out[key + "_others"] = (float(np.nanmin(v[rest])), float(np.nanmax(v[rest])))
    out["ratio_at"], out["ratio_all"] = {}, {}
    for other in others:
        if other in s.sampler.values and str(s.sel(sampler=other).cell_id.values) and other != name:
            h = report.final(s.sel(sampler=other), "heldout_objective_ema").values
            out["ratio_at"][other] = float(h[i] / heldout[i])
            out["ratio_all"][other] = analysis.paired_ratio(h, heldout).value
    high = []
    for other in s.sampler.values:
        c = s.sel(sampler=other)
        if not str(c.cell_id.values):
            continue
        v = np.asarray(c.sample_frechet.values, dtype=float)
        med = float(np.nanmedian(v))
        high += [(str(other), int(c.member.values[j]), float(v[j])) for j in np.flatnonzero(v > 2 * med)]
    out["high"] = sorted(high, key=lambda h: -h[2])
    try:
        out["ode"] = f"{lr_tuning.cell_param(ds, {}, 'ode_method')}, {int(lr_tuning.cell_param(ds, {}, 'ode_steps'))} steps"
    except KeyError:
        out["ode"] = "n/a"
    return out


def outlier_text(o: dict[str, Any] | None) -> str:
    """The sentences on :func:`outlier_seed`'s seed (none to tell where it lies within twice its
    sampler's median Fréchet distance): whether its training failed (it diverged, or
    its held-out objective or MMD is above every other seed's) or only its samples; the other
    seeds far above their median; and whether it moves the paired held-out ratios."""
    if o is None:
        return ""

    def not_above(key: str) -> bool:  # no worse than its worst other seed
        return o[key] <= o[key + "_others"][1]

    def where(key: str, fmt: str) -> str:
        lo, hi = o[key + "_others"]
        return f"{o[key]:{fmt}} (its other seeds {lo:{fmt}} to {hi:{fmt}})"

    if o["frechet"] <= 2 * o["frechet_median"]:
        return (f"The seed with the largest distance ({o['frechet']:.3g}, seed {o['member']} of {o['sampler']} on {o['benchmark']}) "
                f"lies within twice its sampler's median ({o['frechet_median']:.3g}): no seed stands out.")
    text = f"The seed with the largest distance ({o['frechet']:.3g}) is seed {o['member']} of {o['sampler']} on {o['benchmark']}. "
    text += ("That run diverged. " if o["diverged"] else "That run did not diverge; ")
    text += f"its final held-out objective is {where('heldout', '.4g')}"
    if "mmd" in o:
        text += f" and its MMD {where('mmd', '.3g')}"
    if "sw" in o:
        text += f", while its sliced W2 is {o['sw']:.3g} (the sampler's median over seeds {o['sw_median']:.3g})"
    text += ". "
    if not o["diverged"] and not_above("heldout") and ("mmd" not in o or not_above("mmd")):
        text += (f"So it is a failure of that seed's samples, drawn by the ODE solver ({o['ode']}), not of its training, consistent with a "
                 "few samples carried far off, since the Fréchet and sliced distances grow without bound with them and MMD's "
                 "bounded kernel barely moves. ")
    if len(o["high"]) > 1:
        text += ("Seeds above twice their sampler's median Fréchet distance on this benchmark: "
                 + "; ".join(f"{n} seed {m} ({v:.3g})" for n, m, v in o["high"]) + ". ")
    for other, r in o["ratio_at"].items():
        text += (f"The held-out ratios pair seeds: {other}'s at seed {o['member']} is {r:.3g}, against {o['ratio_all'][other]:.3g} "
                 "over all seeds, so that seed does not move them; the medians keep it from moving the sample-quality columns. ")
    return text.strip()


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
