"""Chapter 6's comparison of the adaptive samplers with uniform (split from
:mod:`fmstudy.adaptive_report`, which re-exports every name): the compare grid at gmm8, its
per-sigma table against uniform with Holm p and simultaneous intervals, the headline numbers
(Holm counts, the largest speed-up) and the sentences that quote them.


Every comparison is a row of ``report.against_baseline`` (paired over seeds, A.2-A.4): the final
ratio r = exp(mean_s log(x_s / b_s)) and the median step speed-up to reach uniform's final value.
A row counts better (worse) than uniform when r < 1 (r > 1) with Holm-adjusted p < 0.05 over the
table's rows (A.6, ``sweeps.holm_counts``): the family is the table itself (its adaptive samplers
at each sigma), so a larger table (chapter 7's sweeps) adjusts the same comparison's p by more.
Beside each ratio the interval simultaneous over the same family (Bonferroni, level 1 - 0.05/m):
the 95% t-interval of the mean log-ratio widened from t_{n-1}(0.975) to t_{n-1}(1 - 0.025/m),

"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from . import report
from .analysis import Estimate, bonferroni_level, holm
from .baseline_page import interval_text
from .conclusions import ADAPTIVE
from .frames import require_columns
from .sweeps import holm_counts

__all__ = [
    "DESCRIBED", "EXTRA", "Comparison", "Headline", "best_speedup", "comparison", "extra_text", "final_shown", "fixed_setting",
    "headline", "not_run_text", "ran_text", "ratio_sentence", "ratio_text", "row_at", "simultaneous", "speed_table", "speedup_text",
    "with_family",
]

DESCRIBED = ADAPTIVE[:5]  # the samplers the chapter describes as compared (info_snr is described as not run)
EXTRA = ("learning_progress", "oracle_excess")  # implemented, and described apart: compared only where a profile runs them


class Comparison(NamedTuple):
    """The compare grid at gmm8 (``ds``), its uniform and adaptive samplers (``ad``), their
    labels (``names``), its sigmas and its convergence metric."""

    ds: xr.Dataset
    ad: xr.Dataset
    names: list[str]
    sigmas: list[float]
    metric: str


def comparison(ds: xr.Dataset | None, names: Sequence[str] = ADAPTIVE) -> Comparison | None:
    """The compare grid ``ds`` at gmm8 with uniform and those of its samplers whose name (options
    dropped) is in ``names``, in that order; None when it was not run or has no uniform."""
    if ds is None or "uniform" not in ds.sampler.values:
        return None
    ds = report.select_benchmark(ds)
    found = report.samplers_of(ds, tuple(names))
    ad = ds.sel(sampler=["uniform", *found])
    return Comparison(ds, ad, found, [float(s) for s in ad.sigma.values], report.convergence_metric(ad))


def ran_text(names: Sequence[str]) -> str:
    """ "`a`, `b` beside `uniform`", or "no adaptive sampler" when ``names`` is empty."""
    return ", ".join(f"`{n}`" for n in names) + " beside `uniform`" if names else "no adaptive sampler"


def not_run_text(names: Sequence[str], described: Sequence[str] = DESCRIBED) -> str:
    """The samplers of ``described`` not among ``names`` (exact labels), "`a`, `b`", or "none"."""
    return ", ".join(f"`{n}`" for n in described if n not in names) or "none"


def extra_text(names: Sequence[str], extra: Sequence[str] = EXTRA) -> str:
    """Which of ``extra`` ran (exact labels among ``names``): "neither was run in this profile, so
    this chapter does not compare them", "both were run ...", or "`a` was run ..., `b` not"."""
    ran = [n for n in extra if n in names]
    if not ran:
        return "neither was run in this profile, so this chapter does not compare them"
    if len(ran) == len(extra):
        return "both were run in this profile and appear in the tables below"
    rest = ", ".join(f"`{n}`" for n in extra if n not in ran)
    return f"{', '.join(f'`{n}`' for n in ran)} was run in this profile and appears in the tables below; {rest} was not"


def fixed_setting(ds: xr.Dataset | None, key: str) -> float:
    """The grid's fixed setting ``key`` (its ``fixed`` attribute, e.g. ``norm_stride``,
    ``probe_per_bin``, ``feedback_every``) as a number; NaN where it is not recorded."""
    if ds is None:
        return math.nan
    value = json.loads(ds.attrs.get("fixed") or "{}").get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def speed_table(cmp: Comparison | None) -> pd.DataFrame:
    """``report.against_baseline`` of each sigma (uniform's own row dropped) with a ``sigma``
    column, as one table with columns sampler, sigma, ...; empty without a comparison."""
    if cmp is None:
        return pd.DataFrame()
    parts = [
        report.against_baseline(cmp.ad.sel(sigma=s), cmp.metric).drop(index="uniform").assign(sigma=s).reset_index() for s in cmp.sigmas
    ]
    return with_family(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()


def simultaneous(est: Any, m: int, level: float = 0.95) -> Any:
    """A paired ratio's t-interval (``analysis.paired_ratio``) widened to the Bonferroni level
    ``1 - (1 - level) / m`` (6.1), so that m such intervals hold together with probability >=
    ``level``; an Estimate without a two-sided t-interval (one seed, no spread) comes back as it is."""
    if not isinstance(est, Estimate) or est.n < 2 or not (np.isfinite(est.lo) and np.isfinite(est.hi)) or est.hi <= est.lo:
        return est
    if est.method not in ("t", ""):
        raise ValueError(f"an interval of method {est.method!r} is not allowed: only a t-interval can be widened by (6.1)")
    wide = bonferroni_level(level, m)
    centre, half = (math.log(est.hi) + math.log(est.lo)) / 2, (math.log(est.hi) - math.log(est.lo)) / 2  # a t-interval's centre is log(value)
    half *= float(stats.t.ppf((1 + wide) / 2, est.n - 1) / stats.t.ppf((1 + est.level) / 2, est.n - 1))
    return Estimate(est.value, math.exp(centre - half), math.exp(centre + half), est.n, wide, est.p, est.effect, method=est.method)


def _names(table: pd.DataFrame) -> list[str]:
    """The sampler of each row: the ``sampler`` column, else the index level or the index."""
    if "sampler" in table.columns:
        return [str(v) for v in table["sampler"]]
    idx = table.index
    return [str(v) for v in (idx.get_level_values("sampler") if "sampler" in (idx.names or []) else idx)]


def with_family(table: pd.DataFrame, level: float = 0.95, baseline: str = "uniform") -> pd.DataFrame:
    """``table`` (rows of ``report.against_baseline``) with ``p_holm``, its ratios' p-values
    Holm-adjusted over the rows with one (the table is the family, as ``report.shown`` adjusts
    it; the baseline's own row, 1 by construction, is no comparison and gets NaN), and
    ``ratio_simultaneous``, each ratio's interval simultaneous over the same m rows (:func:`simultaneous`)."""
    require_columns(table, ("ratio",), "comparison table")
    out = table.copy()
    own = np.array([n == baseline for n in _names(out)], dtype=bool)
    p = np.array([e.p if isinstance(e, Estimate) else np.nan for e in out["ratio"]], dtype=float)
    p[own] = np.nan
    out["p_holm"] = holm(p)
    m = max(int(np.isfinite(p).sum()), 1)
    out["ratio_simultaneous"] = [None if o else simultaneous(e, m, level) for e, o in zip(out["ratio"], own)]
    return out


def final_shown(table: pd.DataFrame, baseline: str = "uniform") -> pd.DataFrame:
    """``report.shown(table, "final")`` with the simultaneous interval of :func:`with_family`
    beside the ratio ("—" for the baseline's own row; computed here when ``table`` lacks it)."""
    if "ratio_simultaneous" not in table:
        table = with_family(table, baseline=baseline)
    out = report.shown(table, "final", baseline)
    sim = list(table["ratio_simultaneous"])
    m = int(np.isfinite(table["p_holm"].to_numpy(dtype=float)).sum())
    levels = sorted({round(100 * e.level, 1) for e in sim if isinstance(e, Estimate) and e.n})
    head = (f"ratio, simultaneous over {m} rows", f"[{' or '.join(f'{v:g}%' for v in levels) or 'no'} CI]")
    cells = ["—" if n == baseline or not isinstance(e, Estimate) else interval_text(e) for n, e in zip(_names(table), sim)]
    at = [c[0] for c in out.columns].index(f"ratio to {baseline}") + 1
    out.insert(at, head, cells)
    return out


def best_speedup(speed: pd.DataFrame) -> tuple[str, float, Estimate] | None:
    """(sampler, sigma, speed-up) of the row of :func:`speed_table` with the largest median step
    speed-up among rows with seeds and a finite median (the first on a tie); None when none has."""
    require_columns(speed, ("sampler", "sigma", "speedup"), "speed table")
    values = speed["speedup"].map(lambda e: e.value if e.n else np.nan)
    if not values.notna().any():
        return None
    row = speed.loc[values.idxmax()]
    return str(row["sampler"]), float(row["sigma"]), row["speedup"]


def row_at(speed: pd.DataFrame, name: str, sigma: float | None) -> pd.Series | None:
    """The first row of :func:`speed_table` of sampler ``name`` (exact label) at ``sigma``; None
    when there is none (or ``sigma`` is None, or the table is empty)."""
    if not len(speed) or sigma is None:
        return None
    require_columns(speed, ("sampler", "sigma"), "speed table")
    rows = speed[(speed.sampler == name) & (speed.sigma == sigma)]
    return rows.iloc[0] if len(rows) else None


def ratio_text(row: pd.Series | None, alpha: float = 0.05) -> str:
    """A row's final ratio with its 95% interval, its simultaneous interval (:func:`with_family`)
    and Holm's verdict: "r (95% CI ...; simultaneous 99.5% CI a to b; p (Holm) q: lower than
    uniform's at family-wise level 5%)", "higher ..." or "not resolved from uniform's ..."; "n/a"."""
    if row is None:
        return "n/a"
    ratio = row["ratio"]
    text = ratio.text() if hasattr(ratio, "text") else str(ratio)
    sim, q = row.get("ratio_simultaneous"), row.get("p_holm", np.nan)
    extra = []
    if isinstance(sim, Estimate) and np.isfinite(sim.lo) and sim.level != getattr(ratio, "level", None):
        extra.append(f"simultaneous {100 * sim.level:.3g}% CI {sim.lo:.3g} to {sim.hi:.3g}")
    if q is not None and np.isfinite(q):
        side = "lower than" if ratio.value < 1 else "higher than"
        verdict = f"{side} uniform's" if q < alpha else "not resolved from uniform's"
        extra.append(f"p (Holm) {q:.2g}: {verdict} at family-wise level {alpha:.0%}")
    return f"{text[:-1]}; {'; '.join(extra)})" if extra and text.endswith(")") else text


def speedup_text(row: pd.Series | None) -> str:
    """A row's median speed-up in steps and per training FLOP: "a (CI ...) in steps, b (CI ...)
    per training FLOP"; "n/a" without a row."""
    if row is None:
        return "n/a"
    steps, flops = row["speedup"], row.get("speedup_flops")
    text = f"{steps.text() if hasattr(steps, 'text') else steps} in steps"
    return text + (f", {flops.text()} per training FLOP" if hasattr(flops, "text") else "")


def ratio_sentence(speed: pd.DataFrame, name: str, what: str, sigma: float | None) -> str:
    """ "`name` (what) has a final ratio to uniform of :func:`ratio_text`" and its speed-ups
    (:func:`speedup_text`) at ``sigma``, or "... was not run in this profile"."""
    row = row_at(speed, name, sigma)
    if row is None:
        return f"`{name}` ({what}) was not run in this profile"
    text = f"`{name}` ({what}) has a final ratio to uniform of {ratio_text(row)}"
    return text + (f" and a speed-up of {speedup_text(row)}" if "speedup" in row else "")


class Headline(NamedTuple):
    """The speed table's headline numbers: Holm counts, the largest step speed-up ("sampler at σ = s"
    and its estimate), and one sampler's speed-up and final ratio at ``sigma``; NaN (or "n/a") where missing."""

    better: float
    worse: float
    pairs: float
    best: str
    best_speedup: Any
    sigma: float
    ours_speedup: Any
    ours_ratio: Any


def headline(speed: pd.DataFrame, sigma: float | None, name: str = "var_opt") -> Headline:
    """:class:`Headline` of :func:`speed_table`: (better, worse, compared) at family-wise level 5%
    (Holm over the table's rows, its ``p_holm``; unbiased rows counted, ``sweeps.holm_counts``),
    :func:`best_speedup`, and the row of ``name`` at ``sigma`` (:func:`row_at`); every field NaN
    ("n/a" for ``best``) for an empty table."""
    nan = float("nan")
    if not len(speed):
        return Headline(nan, nan, nan, "n/a", nan, nan, nan, nan)
    better, worse, pairs = holm_counts(speed)
    best, ours = best_speedup(speed), row_at(speed, name, sigma)
    return Headline(
        better,
        worse,
        pairs,
        f"{best[0]} at σ = {best[1]:g}" if best else "n/a",
        best[2] if best else nan,
        nan if sigma is None else sigma,
        ours["speedup"] if ours is not None else nan,
        ours["ratio"] if ours is not None else nan,
    )
