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

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["ceiling_table", "draws_stratified", "noise_scale", "predicted_gains", "predicted_speedup"]


def noise_scale(ds: xr.Dataset, metric: str = "adam") -> xr.DataArray:
    """``B_noise = V(uniform) / ||G||^2`` per member and checkpoint; infinite where the
    (unbiased, hence noisy) estimate of ``||G||^2`` is not positive: no signal is resolved."""
    prefix = "var_adam_" if metric == "adam" else "var_"
    g = ds[prefix + "full_sq"]
    return xr.where(g > 0, ds[prefix + "v_uniform"] / g, np.inf)


def predicted_speedup(gain: np.ndarray | float, b_noise: np.ndarray | float, batch: int) -> np.ndarray:
    """(4.6): the speed-up in steps predicted for a noise reduction ``gain = V(uniform)/V(q)``
    at noise scale ``b_noise`` and batch size ``batch``; with an infinite noise scale it is the
    gain itself."""
    gain, ratio = np.asarray(gain, dtype=float), np.asarray(b_noise, dtype=float) / batch
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = (1 + ratio) / (1 + ratio / gain)
    return np.where(np.isinf(ratio), gain, finite)


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
    in both metrics and with stratified draws (mean over members and its standard error), the
    noise scale per batch, and the speed-up (4.6) that the best allocation (R) would predict."""
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
            if "var_adam_full_sq" in at:
                bn = noise_scale(at).values.ravel()
                row["B_noise / B (Adam)"] = float(np.median(bn)) / batch
                row["predicted speed-up of q* (Adam)"] = float(np.median(predicted_speedup(at["var_adam_ceiling"].values.ravel(), bn, batch)))
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
    checkpoints after step 0 (means over members and checkpoints): ``gain V(U)/V(q)``, the
    noise reduction of the sampler's own estimator (``gain_run``; for stratified draws,
    :func:`draws_stratified`, ``V(uniform) / V_strat(q)``); ``ceiling R``; ``B_noise / B``, the
    run's median noise scale per batch; and the speed-ups (4.6) they predict at that noise
    scale, ``predicted speed-up`` of the sampler and ``predicted speed-up of R`` (the best
    unbiased allocation with i.i.d. draws)."""
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
