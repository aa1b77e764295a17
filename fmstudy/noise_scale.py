"""The gradient-noise scale and the step speed-up a noise reduction predicts (STUDY.md 4.6;
McCandlish et al. 2018, "An empirical model of large-batch training"): steps to a given loss
scale as ``1 + B_noise / B``, so dividing the per-sample noise by r saves

    B_noise = V(uniform) / ||G||^2                       per-sample noise over signal
    S(r)    = (1 + B_noise / B) / (1 + B_noise / (r B))  steps saved by dividing V by r      (4.6)

with S(r) <= r, S(r) -> r when B_noise >> B (noise-dominated) and -> 1 when B_noise << B.
Read from the variance account that a run records at every checkpoint and member
(:func:`fmstudy.signals.variance_record`; ``var_`` Euclidean, ``var_adam_`` Adam's metric).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

__all__ = ["NO_SIGNAL", "noise_scale", "noise_scale_se", "noise_scale_text", "predicted_speedup"]

# How a page shows an infinite noise scale: the estimate of ||G||^2 was not positive (for at least half the members of a median).
NO_SIGNAL = "∞ (no signal resolved)"


def noise_scale(ds: xr.Dataset, metric: str = "adam") -> xr.DataArray:
    """``B_noise = V(uniform) / ||G||^2`` per member and checkpoint; infinite where the
    (unbiased, hence noisy) estimate of ``||G||^2`` is not positive: no signal is resolved; NaN
    where the account was not measured (step 0, a checkpoint a shorter run does not have)."""
    prefix = "var_adam_" if metric == "adam" else "var_"
    g = ds[prefix + "full_sq"]
    return xr.where(g > 0, ds[prefix + "v_uniform"] / g, xr.where(g.isnull(), np.nan, np.inf))


def noise_scale_se(at: xr.Dataset, metric: str = "adam", n_boot: int = 2000, seed: int = 0) -> float:
    """Standard error of the median over members of ``B_noise`` (:func:`noise_scale`) at one
    checkpoint ``at``, taken on the log scale and returned as ``median * se(log)``:

        se(log)^2 = h^2 + median_m (se_V / V + se_G / G)_m^2

    ``h`` is the members' part, half the 16-84% range of the log of the median over
    ``n_boot`` resamples of the members (a robust standard deviation; a resample whose median
    is infinite counts as +inf). The second is each member's own probe error, the jackknife
    errors ``se_V`` of V(uniform) and ``se_G`` of ||G||^2 (both stored) combined as if fully
    correlated in the worst direction (their correlation is not stored: |d log B| <= |d log V| +
    |d log G|), and counted as shared by all members, who are measured on the same probes.
    NaN where the median is infinite (no signal resolved) or not measured, or where the
    members' part is unbounded (more than 16% of the resamples without a signal)."""
    prefix = "var_adam_" if metric == "adam" else "var_"
    b = np.asarray(noise_scale(at, metric).values, dtype=float).ravel()
    b = b[~np.isnan(b)]
    if not len(b) or not np.isfinite(np.median(b)):
        return float("nan")
    logs = np.log(b)  # +inf where no signal
    rng = np.random.default_rng(seed)
    boot = np.median(logs[rng.integers(0, len(logs), (n_boot, len(logs)))], axis=1)
    lo, hi = np.quantile(boot, [0.16, 0.84])
    spread = (hi - lo) / 2 if np.isfinite(hi) else np.inf
    probe = 0.0
    if prefix + "v_uniform_se" in at and prefix + "full_sq_se" in at:
        v, g = (np.asarray(at[prefix + n].values, dtype=float).ravel() for n in ("v_uniform", "full_sq"))
        se_v, se_g = (np.asarray(at[prefix + n + "_se"].values, dtype=float).ravel() for n in ("v_uniform", "full_sq"))
        ok = (g > 0) & (v > 0)
        rel = se_v[ok] / v[ok] + se_g[ok] / g[ok]
        probe = float(np.median(rel**2)) if ok.any() else 0.0
    total = math.sqrt(spread**2 + probe)
    return float(np.exp(np.median(logs)) * total) if np.isfinite(total) else float("nan")


def predicted_speedup(gain: np.ndarray | float, b_noise: np.ndarray | float, batch: int) -> np.ndarray:
    """(4.6): the speed-up in steps predicted for a noise reduction ``gain = V(uniform)/V(q)``
    at noise scale ``b_noise`` and batch size ``batch``; with an infinite noise scale it is the
    gain itself."""
    gain, ratio = np.asarray(gain, dtype=float), np.asarray(b_noise, dtype=float) / batch
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = (1 + ratio) / (1 + ratio / gain)
    return np.where(np.isinf(ratio), gain, finite)


def noise_scale_text(value: float, se: float, fmt: str = ".3g") -> str:
    """A noise scale (per batch) for the prose: "v (s.e. e)"; "v, not resolved (...)" where its
    standard error is unbounded or at least the value itself (:func:`noise_scale_se`);
    :data:`NO_SIGNAL` when infinite; "n/a" when not measured."""
    if np.isnan(value):
        return "n/a"
    if np.isinf(value):
        return NO_SIGNAL
    if not np.isfinite(se) or se >= value:
        return f"{value:{fmt}}, not resolved (its standard error is unbounded or larger than itself)"
    return f"{value:{fmt}} (s.e. {se:.2g})"
