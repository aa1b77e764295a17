"""Chapter 7's predicted-against-measured pages (split from :mod:`fmstudy.settings_report`, which
re-exports every name): the table of predicted speed-ups S(r), S(R) against the measured step
speed-up and final ratio, the final gain 1 / ratio, the calibration and the prose's summary.

The figure's final gain is 1 / ratio (larger is better), a comparison's ``ratio`` the geometric
mean over seeds of the sampler's final metric over uniform's (A.2). The calibration of the
prediction is, per point with an identified measured median,

    c = S_measured / S(r)          (S(r) the predicted step speed-up, 4.6)

summarised by its median and range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import prediction, tables
from .analysis import Estimate
from .baseline_page import level_text

__all__ = [
    "PVM_COLUMNS", "PVM_NAMES", "SETTINGS", "SETTING_WORDS", "SUMMARY", "WITHOUT", "calibration_text", "prediction_summary", "pvm_parts",
    "pvm_table", "with_final_gain",
]

PVM_COLUMNS = ["dataset", "benchmark", "benchmark_options", "sigma", "steps", "sampler", "gain", "ceiling", "B_noise / B", "predicted",
               "predicted_R", "speedup_steps", "ratio", "n"]
PVM_NAMES = {"gain": "r (gain)", "ceiling": "R (ceiling)", "predicted": "S(r) predicted", "predicted_R": "S(R) predicted"}  # on the page
SETTINGS = ("benchmark", "benchmark_options", "sigma", "steps")  # what a point's setting is
SETTING_WORDS = {"benchmark": "benchmark", "benchmark_options": "instance", "sigma": "σ", "steps": "steps"}


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
