"""The central figure's data (issue 15): the speed-up the variance account predicts for each
unbiased sampler against the speed-up measured in training, over benchmarks, sigma and budgets.

Predicted, before any training curve is read (:mod:`fmstudy.account_report`): the sampler's
noise reduction r = V(uniform) / V(q) at its own proposal q, in Adam's metric by default, and
the step speed-up it implies at the run's noise scale B_noise = V(uniform) / ||G||^2,

    S(r) = (1 + B_noise / B) / (1 + B_noise / (r B))                                   (4.6)

beside S(R) for the ceiling R = V(uniform) / V(q*). Measured: the median over seeds of the
step speed-up to reach uniform's final value (A.7, non-reaching seeds censored) and the
geometric-mean ratio of the final metric (A.2). Objective-changing samplers (weights off) are
left out: the account's V(q) is of the reweighted estimator only.

The agreement over the points (x_i, y_i) = (predicted, measured):

    Pearson   rho = corr(log x, log y)  (the figure is log-log; a constant factor is ignored)
    Spearman  rho_s = corr(rank x, rank y)                                             (P.1)

each with a percentile bootstrap interval that resamples settings (clusters of points measured
against the same uniform runs), not seeds: the points' own measurement errors are not propagated. A sampler slower than uniform has no
identified median step speed-up (most seeds never reach uniform's final value), so the
correlation on ``speedup_steps`` is over the faster points only; the one on the final ratio
(``measured="ratio"``) keeps every point and is the one to quote beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from .account_report import above_ceiling, predicted_gains
from .analysis import Estimate
from .checks import check_float, check_int
from .lr_tuning import cell_param
from .sweeps import comparison_groups
from .tables import comparison_table

__all__ = [
    "beyond_ceiling_text",
    "predicted_vs_measured",
    "prediction_correlation",
    "setting_text",
    "without",
]

_SETTING = ("benchmark", "benchmark_options", "sigma", "steps")


def predicted_vs_measured(
    datasets: Mapping[str, xr.Dataset] | Sequence[xr.Dataset],
    metric: str | None = None,
    baseline: str = "uniform",
    account: str = "adam",
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per unbiased sampler (not the baseline) and setting of every dataset (a sub-grid
    name -> its collected grid; its other axes are the settings): ``benchmark``,
    ``benchmark_options``, ``sigma``, ``steps`` (NaN where not recorded), ``dataset``,
    ``sampler``, ``lr``; predicted ``gain`` r, ``draws``, ``B_noise / B``, ``predicted`` S(r),
    ``ceiling`` R and ``predicted_R`` S(R) (4.6, metric ``account``); measured
    ``speedup_steps`` (A.7) and ``ratio`` (A.2) on ``metric`` (default per setting: the
    integrated excess where there is an oracle, else the held-out objective), ``n`` seeds;
    ``cell_id``, the sampler's cell: a cell that several datasets hold is one row, the first."""
    items = datasets.items() if isinstance(datasets, Mapping) else enumerate(datasets)
    rows = []
    for name, ds in items:
        for labels, group, m in comparison_groups(ds, metric, baseline):
            batch = int(cell_param(group, labels, "batch_size"))
            gains = predicted_gains(group, batch, account)
            comp = comparison_table(group, m, baseline, level=level)
            for sampler, c in comp.iterrows():
                if sampler not in gains.index or ("unbiased" in c and not bool(c["unbiased"])):
                    continue
                g = gains.loc[sampler]
                setting = {}
                for key in _SETTING:
                    try:
                        setting[key] = cell_param(group, labels, key)
                    except KeyError:
                        setting[key] = np.nan
                rows.append({
                    **setting, "dataset": name, "sampler": sampler, "cell_id": str(group["cell_id"].sel(sampler=sampler).values),
                    "lr": c.get("lr", np.nan), "metric": m,
                    "gain": g["gain V(U)/V(q)"], "draws": g["draws"], "B_noise / B": g["B_noise / B"],
                    "predicted": g["predicted speed-up"], "ceiling": g["ceiling R"], "predicted_R": g["predicted speed-up of R"],
                    "speedup_steps": c["speedup_steps"], "ratio": c["ratio"], "n": c["n"],
                })
    # a cell that two datasets share (compare's sigma = 1 cells are also the sigma sweep's and the
    # budget sweep's 1,000-step cells) is one point, counted where it first appears
    return pd.DataFrame(rows).drop_duplicates("cell_id", ignore_index=True) if rows else pd.DataFrame(rows)


def without(table: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The rows of :func:`predicted_vs_measured`'s table whose sampler, options dropped
    ("logit_normal(m=0.0, ...)" -> "logit_normal"), is not in ``names``: e.g. the correlation
    (P.1) without one sampler's cluster of points."""
    if isinstance(names, str):
        raise ValueError(f"names={names!r} is not allowed: give a sequence of sampler names, e.g. [{names!r}]")
    keep = [str(s).split("(")[0] not in set(names) for s in table["sampler"]] if len(table) else []
    return table[np.asarray(keep, dtype=bool)] if len(table) else table


def _corr_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with the same row of ``y`` (NaN for a constant row)."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))


def _cluster_codes(table: pd.DataFrame, cluster: Sequence[str] | None) -> np.ndarray:
    """One integer per row: rows with the same values in the ``cluster`` columns share it (NaN
    equal to NaN); every row its own code when ``cluster`` is None."""
    if cluster is None:
        return np.arange(len(table))
    missing = [c for c in cluster if c not in table.columns]
    if missing:
        raise ValueError(f"cluster={list(cluster)!r} is not allowed: columns {missing} are not in the table (it has {list(table.columns)})")
    keys = ["\x1f".join(str(v) for v in row) for row in table[list(cluster)].itertuples(index=False)]
    return np.unique(np.array(keys, dtype=str), return_inverse=True)[1].reshape(-1) if keys else np.zeros(0, int)


def prediction_correlation(
    table: pd.DataFrame, predicted: str = "predicted", measured: str = "speedup_steps", level: float = 0.95, n_boot: int = 4000,
    seed: int = 0, cluster: Sequence[str] | None = _SETTING,
) -> dict[str, object]:
    """(P.1) over the rows of :func:`predicted_vs_measured`'s table whose predicted and measured
    values are finite and positive: ``pearson`` and ``spearman`` as Estimates (value, bootstrap
    interval, p-value of no correlation, n points), ``points`` used, ``clusters`` and
    ``left_out`` (e.g. medians hidden by censoring). ``measured="ratio"`` correlates 1 / ratio
    (a final-metric gain, larger is better, as a speed-up).

    The interval is a cluster bootstrap: the samplers of one setting (``cluster`` columns;
    default benchmark, its options, sigma and budget) are measured against the same uniform
    runs, so their points are not independent; whole settings are resampled with replacement,
    every point of a chosen setting with it. ``cluster=None`` resamples points (each its own
    cluster). The p-value is scipy's, which assumes independent points."""
    level = check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    n_boot = check_int("n_boot", n_boot, 100)
    y = table[measured].map(lambda e: e.value).to_numpy(dtype=float)
    y = 1 / y if measured == "ratio" else y
    x = table[predicted].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    codes = _cluster_codes(table, cluster)[ok]
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = int(ok.sum())
    groups = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    method = "percentile bootstrap over " + ("points" if cluster is None else "settings (clusters of points)")
    out: dict[str, object] = {"points": n, "clusters": len(groups), "left_out": int((~ok).sum())}
    if n < 3 or len(groups) < 2 or np.ptp(lx) == 0 or np.ptp(ly) == 0:
        for name in ("pearson", "spearman"):
            out[name] = Estimate(math.nan, math.nan, math.nan, n, level, method=method, unit="point")
        return out
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(n_boot, len(groups)))  # shared by both
    boots: dict[str, list[float]] = {"pearson": [], "spearman": []}
    for row in picks:
        idx = np.concatenate([groups[g] for g in row])
        bx, by = lx[idx][None], ly[idx][None]
        boots["pearson"].append(float(_corr_rows(bx, by)[0]))
        boots["spearman"].append(float(_corr_rows(stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1))[0]))
    refs = {"pearson": stats.pearsonr(lx, ly), "spearman": stats.spearmanr(lx, ly)}
    for name, ref in refs.items():
        boot = np.asarray(boots[name])
        boot = boot[np.isfinite(boot)]  # a resample of one repeated point has no correlation
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot.size else (math.nan, math.nan)
        out[name] = Estimate(float(ref.statistic), float(lo), float(hi), n, level, p=float(ref.pvalue), method=method, unit="point")
    return out


def setting_text(row: pd.Series) -> str:
    """A point's setting in words: its benchmark (with its options), sigma and budget, e.g. "gmm8,
    σ = 0.5, 1,000 steps" or "gmm-d (dim=8, seed=0), σ = 1, 1,000 steps"; a setting not recorded
    (NaN or blank) is left out."""

    def known(v: object) -> bool:
        return not (v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)) or str(v) == "")

    parts = []
    if known(row.get("benchmark")):
        parts.append(str(row["benchmark"]) + (f" ({row['benchmark_options']})" if known(row.get("benchmark_options")) else ""))
    if known(row.get("sigma")):
        parts.append(f"σ = {float(row['sigma']):g}")
    if known(row.get("steps")):
        parts.append(f"{float(row['steps']):,.0f} steps")
    return ", ".join(parts)


def beyond_ceiling_text(pvm: pd.DataFrame) -> str:
    """Over the points of :func:`predicted_vs_measured`, how many measured step speed-ups exceed
    the speed-up the ceiling R predicts (``predicted_R``, 4.6): beyond their interval (each its
    own, not corrected over the points), naming them with their setting (:func:`setting_text`),
    and in the point estimate only (:func:`fmstudy.account_report.above_ceiling`); "not measured
    in this profile" without points."""
    flags = above_ceiling(pvm, "predicted_R", "speedup_steps") if len(pvm) else pd.Series(dtype=object)
    flags = flags[flags != "n/a"]
    if not len(flags):
        return "not measured in this profile"
    beyond = [f"{pvm.loc[i, 'sampler']} on {setting_text(pvm.loc[i])}" for i in flags.index[flags == "beyond its interval"]]
    point = int((flags == "point estimate only").sum())
    return (f"{len(beyond)} of {len(flags)} measured step speed-ups exceed the ceiling's predicted speed-up beyond their interval"
            + (f" ({'; '.join(beyond)})" if beyond else "") + f", {point} more in the point estimate only")
