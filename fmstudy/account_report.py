"""The variance account on a page (STUDY.md 4.5; book chapter "What allocation over t can buy").

A run records, at every checkpoint and for every member, the account of
:func:`fmstudy.signals.variance_record` in two metrics: Euclidean (``var_``) and Adam's
(``var_adam_``). This module turns those records into the chapter's numbers: the ceiling R
with its standard error, the gradient-noise scale, and the speed-up that a noise reduction
predicts before any training curve is read (eq-predicted of the chapter):

    B_noise = V(uniform) / ||G||^2                       per-sample noise over signal
    S(r)    = (1 + B_noise / B) / (1 + B_noise / (r B))  steps saved by dividing V by r      (4.6)

(McCandlish et al. 2018: steps to a given loss scale as 1 + B_noise / B.) S(r) <= r, and
S(r) -> r when B_noise >> B (noise-dominated), -> 1 when B_noise << B.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import Estimate
from .frames import require_columns
from .noise_scale import NO_SIGNAL, noise_scale, noise_scale_se, predicted_speedup

__all__ = [
    "NO_SIGNAL",
    "above_ceiling",
    "ceiling_sentence",
    "ceiling_table",
    "draws_stratified",
    "extremes_text",
    "inversions_text",
    "noise_scale",
    "noise_scale_se",
    "predicted_gains",
    "predicted_speedup",
    "probe_design",
    "shown",
    "span",
]



def _mean_se(da: xr.DataArray, se: xr.DataArray | None) -> tuple[float, float]:
    """Mean over members and a conservative standard error of that mean. Every member of a
    run is measured on the same fresh probes, so part of the probe error is common to all of
    them and the members' spread does not show it: the error is taken as
    ``sqrt(s^2 / n + mean(se_m^2))``, the spread's part plus the members' own (jackknife) probe
    errors as if fully shared (with one member: its probe error alone)."""
    x = np.asarray(da.values, dtype=float).ravel()
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 0:
        return float("nan"), float("nan")
    spread = x[ok].var(ddof=1) / n if n > 1 else 0.0
    probe = float(np.mean(np.asarray(se.values, dtype=float).ravel()[ok] ** 2)) if se is not None else 0.0
    return float(x[ok].mean()), float(np.sqrt(spread + probe))


def ceiling_table(ds: xr.Dataset, batch: int, by: str = "sigma", checkpoints: tuple[int, ...] = (1, -1)) -> pd.DataFrame:
    """One row per value of ``by`` and checkpoint (index into the run's checkpoints; the first
    after step 0 and the last by default) of a run whose other axes are selected: the ceiling R
    in both metrics and with stratified draws (mean over members and its standard error,
    :func:`_mean_se`), the median over members of the noise scale per batch with its standard
    error (:func:`noise_scale_se`), and the speed-up
    (4.6) at that median and at the mean R in Adam's metric: what the best allocation would predict."""
    rows = []
    for value in ds[by].values:
        s = ds.sel({by: value})
        n = s.sizes["checkpoint"]
        for c in sorted({c % n for c in checkpoints}):
            at = s.isel(checkpoint=c)
            row = {by: value, "step": int(at.checkpoint)}
            for label, var in (("R", "var_ceiling"), ("R stratified", "var_ceiling_strat"), ("R (Adam)", "var_adam_ceiling"),
                               ("R stratified (Adam)", "var_adam_ceiling_strat")):
                if var in at:
                    row[label], row[label + " se"] = _mean_se(at[var], at.get(var + "_se"))
                    if var == "var_adam_ceiling" and var + "_bias" in at:  # the plug-in's jackknife bias, to read against its error
                        row[label + " bias"] = float(np.nanmean(at[var + "_bias"].values))
            if "var_adam_full_sq" in at and "var_adam_ceiling" in at:
                bn = noise_scale(at).values.ravel()
                row["B_noise / B (Adam)"] = float(np.median(bn)) / batch
                row["B_noise / B (Adam) se"] = noise_scale_se(at) / batch
                row["predicted speed-up of R (Adam)"] = float(predicted_speedup(row["R (Adam)"], row["B_noise / B (Adam)"] * batch, batch))
            rows.append(row)
    return pd.DataFrame(rows).set_index([by, "step"])


def draws_stratified(label: str) -> bool:
    """Whether the sampler labelled ``label`` (``name(k=v, ...)``) draws its batch stratified
    (``stratified``, ``var_opt_neyman``, any ``stratified=True``): its variance is then the
    stratified one, ``V_strat(q) = sum_k p_k^2 (S_k - ||G_k||^2) / q_k`` (4.5d), not V(q). The
    account stratifies over its K bins; draws stratified over B > K finer strata vary at most
    as much, so the gain read from it is a lower bound for them."""
    from .samplers import make_sampler
    from .tables import label_spec

    try:
        return bool(make_sampler(label_spec(label), [0]).stratified)
    except (ValueError, TypeError):  # one that needs more than a spec to build
        return "stratified=True" in str(label) or str(label).split("(")[0] in ("stratified", "var_opt_neyman", "oracle_qstar_neyman")


def predicted_gains(ds: xr.Dataset, batch: int, metric: str = "adam") -> pd.DataFrame:
    """Per unbiased sampler (rows) of a grid whose other axes are selected, over the
    checkpoints after step 0: ``gain V(U)/V(q)``, the noise reduction of the sampler's own
    estimator (``gain_run``; for stratified draws, :func:`draws_stratified`,
    ``V(uniform) / V_strat(q)``) and ``ceiling R``, each a mean over members and those
    checkpoints; ``B_noise / B``, the median over members and those checkpoints of the noise
    scale per batch (infinite where at least half of them resolve no signal); and the
    speed-ups (4.6) that the two means predict at that median, ``predicted speed-up`` of the
    sampler and ``predicted speed-up of R`` (the best unbiased allocation with i.i.d. draws)."""
    if metric not in ("adam", "euclid"):
        raise ValueError(f"metric={metric!r} is not allowed: the account is in 'adam' or 'euclid' metric")
    prefix = "var_adam_" if metric == "adam" else "var_"
    rows = []
    for name in ds.sampler.values:
        s = ds.sel(sampler=name)
        if "unbiased" in s and not bool(s["unbiased"]):  # V(q) assumes the weights 1/q: not this sampler's estimate
            continue
        if prefix + "gain_run" not in s or not np.isfinite(s[prefix + "gain_run"].values).any():
            continue
        late = s.isel(checkpoint=slice(1, None))
        strat = draws_stratified(str(name)) and prefix + "v_strat_run" in late
        per = late[prefix + "v_uniform"] / late[prefix + "v_strat_run"] if strat else late[prefix + "gain_run"]
        gain = float(np.nanmean(per.values))
        ceiling = float(np.nanmean(late[prefix + "ceiling"].values))
        bn = float(np.nanmedian(noise_scale(late, metric).values))
        rows.append({"sampler": str(name), "gain V(U)/V(q)": gain, "draws": "stratified" if strat else "iid", "ceiling R": ceiling,
                     "B_noise / B": bn / batch, "predicted speed-up": float(predicted_speedup(gain, bn, batch)),
                     "predicted speed-up of R": float(predicted_speedup(ceiling, bn, batch))})
    return pd.DataFrame(rows).set_index("sampler") if rows else pd.DataFrame()


def probe_design(ds: xr.Dataset) -> tuple[int, float, float]:
    """(members, probe groups, probes per bin and group) behind the account's standard errors:
    the run's ``member`` axis and its fixed ``variance_groups`` and ``probe_per_bin`` (NaN where
    the results do not record them)."""
    fixed = json.loads(ds.attrs.get("fixed") or "{}")
    groups, per_bin = float(fixed.get("variance_groups", np.nan)), float(fixed.get("probe_per_bin", np.nan))
    return int(ds.sizes.get("member", 1)), groups, per_bin / groups if groups else float("nan")


def shown(table: pd.DataFrame, fmt: str = ".3f") -> pd.DataFrame:
    """``table`` for a page: its floats as text in ``fmt``, NaN as "n/a", an infinite noise scale
    as :data:`NO_SIGNAL`, any other infinity as "∞"; other cells as they are."""

    def one(v: object) -> object:
        if not isinstance(v, (float, np.floating)):
            return v
        if np.isnan(v):
            return "n/a"
        return NO_SIGNAL if v == np.inf else "∞" if np.isinf(v) else f"{v:{fmt}}"

    return pd.DataFrame({c: [one(v) for v in table[c]] for c in table.columns}, index=table.index)


def span(tables: Iterable[pd.DataFrame], column: str, fmt: str = ".3g") -> str:
    """ "lo to hi": the smallest and largest finite value of ``column`` over ``tables`` (one
    value alone; "n/a" when there is none)."""
    values = [float(v) for t in tables if column in t for v in t[column] if np.isfinite(v)]
    if not values:
        return "n/a"
    lo, hi = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return lo if lo == hi else f"{lo} to {hi}"


def extremes_text(table: pd.DataFrame, column: str, fmt: str = ".3f", by: str = "sigma", step: int | None = None) -> str:
    """ "from a at σ = s to b at σ = s'": the smallest and largest finite value of ``column`` of
    :func:`ceiling_table` (rows by ``by`` and step) at checkpoint ``step`` (the last of the
    table's steps by default), with where each lies; "n/a" when there is none."""
    if list(table.index.names) != [by, "step"]:
        raise ValueError(f"a table indexed by {list(table.index.names)} is not allowed: it must be ceiling_table's, by {by!r} and step")
    if column not in table:
        return "n/a"
    steps = table.index.get_level_values("step")
    at = table.xs(int(steps.max()) if step is None else int(step), level="step")[column]
    at = at[np.isfinite(at.astype(float))]
    if at.empty:
        return "n/a"
    name = "σ" if by == "sigma" else by
    lo, hi = at.idxmin(), at.idxmax()
    return f"from {at[lo]:{fmt}} at {name} = {lo:g} to {at[hi]:{fmt}} at {name} = {hi:g}"


PAIRS = (("R", "R stratified", "Euclidean"), ("R (Adam)", "R stratified (Adam)", "Adam's"))


def inversions_text(table: pd.DataFrame) -> str:
    """Where :func:`ceiling_table` has the stratified ceiling below the i.i.d. one (the true
    values satisfy R_N >= R), as "k of the n pairs in the table: at σ = s, step t (metric),
    R stratified a is below R b, a difference of d, smaller than either standard error (e1, e2)"
    (or "smaller than one standard error only", "larger than both standard errors"), joined by
    "; "; "none of the n pairs in the table" when none inverts."""
    if list(table.index.names) != ["sigma", "step"]:
        raise ValueError(f"a table indexed by {list(table.index.names)} is not allowed: it must be ceiling_table's, by sigma and step")
    found, n = [], 0
    for (sigma, step), row in table.iterrows():
        for iid, strat, metric in PAIRS:
            if iid not in row or strat not in row or not (np.isfinite(row[iid]) and np.isfinite(row[strat])):
                continue
            n += 1
            if row[strat] < row[iid]:
                d, e1, e2 = row[iid] - row[strat], row[strat + " se"], row[iid + " se"]
                within = ("smaller than either standard error" if d < min(e1, e2) else
                          "smaller than one standard error only" if d < max(e1, e2) else "larger than both standard errors")
                found.append(f"at σ = {sigma:g}, step {step} ({metric} metric), R stratified {row[strat]:.3f} is below R "
                             f"{row[iid]:.3f}, a difference of {d:.3f}, {within} ({e1:.3f}, {e2:.3f})")
    if not found:
        return f"none of the {n} pairs in the table"
    return f"{len(found)} of the {n} pairs in the table: " + "; ".join(found)


def above_ceiling(table: pd.DataFrame, predicted: str = "predicted speed-up of R", measured: str = "measured speed-up") -> pd.Series:
    """Per row, how the measured speed-up (an Estimate) stands against the speed-up (4.6) that the
    ceiling R predicts: "beyond its interval" (its lower bound above it), "point estimate only"
    (the median above it, the lower bound not), "no", or "n/a" (no Estimate with seeds: a
    baseline, a missing row; or a censored median only known to lie below a bound above it)."""
    require_columns(table, (predicted, measured), "predicted-against-measured table")

    def one(ceiling: float, e: Any) -> str:
        if not isinstance(e, Estimate) or not e.n or not np.isfinite(ceiling):
            return "n/a"
        if np.isfinite(e.lo) and e.lo > ceiling:
            return "beyond its interval"
        if np.isfinite(e.value):
            return "point estimate only" if e.value > ceiling else "no"
        return "no" if np.isfinite(e.below) and e.below <= ceiling else "n/a"

    return pd.Series([one(c, e) for c, e in zip(table[predicted], table[measured])], index=table.index, dtype=object)


def ceiling_sentence(tables: Mapping[float, pd.DataFrame], column: str = "above R's prediction") -> str:
    """Chapter 6's sentence on the flags ``column`` (:func:`above_ceiling`) of the tables of
    ``adaptive_report.predicted_tables``, counted over the settings (sampler, sigma) with a flag
    other than "n/a", naming those beyond (or, if none, those above in their point estimate)."""
    flags = [(name, sigma, flag) for sigma, t in tables.items() for name, flag in t[column].items() if flag != "n/a"]
    if not flags:
        return "no setting has a measured speed-up to hold against the ceiling's prediction"
    m = len(flags)
    beyond = [f"`{n}` at σ = {s:g}" for n, s, f in flags if f == "beyond its interval"]
    point = [f"`{n}` at σ = {s:g}" for n, s, f in flags if f == "point estimate only"]
    if beyond:
        return (f"in {len(beyond)} of {m} settings ({', '.join(beyond)}) the measured speed-up exceeds even the ceiling's prediction, "
                "beyond its interval: allocation under Adam changes the step size too (chapter 4)"
                + (f"; in {len(point)} more the point estimate alone exceeds it" if point else ""))
    text = f"in none of the {m} settings does the measured speed-up exceed the ceiling's prediction beyond its interval"
    if point:
        return text + (f"; its point estimate exceeds it in {len(point)} ({', '.join(point)}), within its interval: above what the "
                       "variance account predicts even for the best allocation, but not beyond chance")
    return text + ", nor in its point estimate"
