"""``report.against_baseline``'s table as chapters 5 and 6 show it (re-exported by
:mod:`fmstudy.report` as ``shown``).

Each column has two header rows: the quantity, and what is shown with the interval's level, so
that a reader never has to guess whether an interval is a 95% t-interval (means and paired
ratios over seeds, A.2) or a median's order-statistic interval (97.9% at 10 seeds, A.7). Per
row, against the baseline on the same seeds:

    ratio      geometric mean of x_s / b_s with its t-interval                        (A.2)
    p (Holm)   the paired t-test's p-value, Holm-adjusted over the table's rows       (A.3, A.6)
    d_z        mean / standard deviation of the per-seed log-ratios (Cohen's d_z)     (A.4)

The baseline's own row compares it with itself (1 by construction, no test): it reads "—" in
those columns and is left out of the Holm family. A censored median known only to lie below b
reads ``< b`` beside its interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .analysis import holm

__all__ = ["PARTS", "interval_text", "level_text", "shown"]

PARTS = ("final", "speed-up")
DASH = "—"


def interval_text(est: Any, fmt: str = ".3g") -> str:
    """``value [lo, hi]``; ``< b`` for a censored median known only to lie below b; the value
    alone where no interval exists (one seed); "n/a" without seeds."""
    if not est.n:
        return "n/a"
    value = est.value_text(fmt)
    return f"{value} [{est.lo:{fmt}}, {est.hi:{fmt}}]" if np.isfinite(est.lo) and np.isfinite(est.hi) else value


def level_text(estimates: Any) -> str:
    """The level(s) of the intervals among ``estimates`` as "95%" (several: "97.9% or 98.4%",
    as a median's exact level depends on the seeds); "no" where none has an interval."""
    levels = sorted({round(100 * e.level, 1) for e in estimates if e.n and np.isfinite(e.lo) and np.isfinite(e.hi)})
    return " or ".join(f"{v:g}%" for v in levels) if levels else "no"


def _is_baseline(table: pd.DataFrame, baseline: str) -> np.ndarray:
    """Rows of ``table`` whose sampler (the index level 'sampler', or the index) is ``baseline``."""
    idx = table.index
    names = idx.get_level_values("sampler") if "sampler" in (idx.names or []) else idx
    return np.asarray([str(n) == baseline for n in names], dtype=bool)


def shown(table: pd.DataFrame, part: str = "final", baseline: str = "uniform") -> pd.DataFrame:
    """:func:`report.against_baseline`'s ``table`` (one or several concatenated, e.g. over
    sigma) for a page, in two parts narrow enough for it: ``"final"``, the final value, the paired
    ratio to ``baseline`` with its Holm-adjusted p-value over the table's rows and its d_z, the
    held-out objective's paired ratio (4 significant digits: it sits near 1), whether the sampler
    is unbiased, and the seeds; ``"speed-up"``, the median speed-up to the baseline's final value
    in steps and in training FLOPs per member, and the share of seeds that reach it."""
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not allowed: part must be 'final' or 'speed-up'")
    base = _is_baseline(table, baseline)

    def own(values: list, fill: str = DASH) -> list:
        return [fill if b else v for v, b in zip(values, base)]

    if part == "final":
        ratio = list(table["ratio"])
        p = np.array([e.p for e in ratio], dtype=float)
        p[base] = np.nan
        adjusted = holm(p)
        obj = list(table["objective_ratio"])
        columns = {
            ("final value", f"mean [{level_text(table['final'])} CI]"): [interval_text(e) for e in table["final"]],
            (f"ratio to {baseline}", f"geometric mean [{level_text(ratio)} CI]"): own([interval_text(e) for e in ratio]),
            ("p (Holm)", f"over the table's {int(np.isfinite(adjusted).sum())} rows"): own(
                ["n/a" if not np.isfinite(q) else f"{q:.2g}" for q in adjusted]),
            ("d_z", "Cohen's, per-seed log-ratios"): own(["n/a" if not np.isfinite(e.effect) else f"{e.effect:.2f}" for e in ratio]),
            ("held-out objective ratio", f"geometric mean [{level_text(obj)} CI]"): own([interval_text(e, "#.4g") for e in obj]),
            ("unbiased", ""): list(table["unbiased"]),
            ("seeds", ""): [e.n for e in ratio],
        }
    else:
        steps, flops = list(table["speedup"]), list(table["speedup_flops"])
        columns = {
            ("speed-up (steps)", f"median [{level_text(steps)} CI]"): own([interval_text(e) for e in steps]),
            ("speed-up (training FLOPs)", f"median [{level_text(flops)} CI]"): own([interval_text(e) for e in flops]),
            ("seeds reaching", f"{baseline}'s final value"): own([f"{r:.0%}" for r in table["reached"]]),
        }
    out = pd.DataFrame(columns, index=table.index)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out
