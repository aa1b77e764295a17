"""Statistics the chapters quote: bootstrap confidence intervals over seeds, paired ratios
against a baseline schedule, steps to reach a target, loss spikes (STUDY.md section 6).

Seeds are the unit of replication: every interval here resamples seeds (members), never
steps or probes, and comparisons between schedules are paired (the same seeds, probes and
held-out set), so a schedule's ratio to uniform is computed per seed before resampling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "bootstrap_mean", "loss_spikes", "paired_ratio", "speedup", "steps_to_reach"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% percentile-bootstrap interval over ``n`` seeds."""

    value: float
    lo: float
    hi: float
    n: int

    def text(self, fmt: str = ".3g") -> str:
        return f"{self.value:{fmt}} (95% CI {self.lo:{fmt}} to {self.hi:{fmt}}, {self.n} seeds)"


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


def bootstrap_mean(x: np.ndarray, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of the finite values of ``x`` (one per seed) with a percentile bootstrap interval:
    resample the n seeds with replacement ``n_boot`` times and take the (1 -/+ level)/2
    quantiles of the resampled means. With one seed the interval is the point itself."""
    x = _finite(x)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return Estimate(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(x.size))


def paired_ratio(x: np.ndarray, baseline: np.ndarray, **kw) -> Estimate:
    """Geometric-mean ratio ``exp(mean_s log(x_s / baseline_s))`` over seeds s, with a bootstrap
    interval on the mean log ratio (pairs where either value is not finite and positive are dropped).
    Below 1: ``x`` is smaller (better, for losses) than the baseline on the same seeds."""
    x, b = np.asarray(x, dtype=float).ravel(), np.asarray(baseline, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(b) & (x > 0) & (b > 0)
    est = bootstrap_mean(np.log(x[ok] / b[ok]), **kw)
    return Estimate(float(np.exp(est.value)), float(np.exp(est.lo)), float(np.exp(est.hi)), est.n)


def steps_to_reach(curve: np.ndarray, steps: np.ndarray, target: float) -> float:
    """First step at which a decreasing-is-better ``curve`` (values at ``steps``) reaches
    ``target``, interpolating linearly in log(value) between the two checkpoints around the
    crossing (checkpoints are log-spaced, curves roughly power laws). NaN if never reached."""
    curve, steps = np.asarray(curve, dtype=float), np.asarray(steps, dtype=float)
    hit = np.flatnonzero(np.isfinite(curve) & (curve <= target))
    if hit.size == 0 or not np.isfinite(target) or target <= 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    y0, y1 = np.log(curve[i - 1]), np.log(curve[i])
    frac = (y0 - np.log(target)) / (y0 - y1) if y0 != y1 else 1.0
    return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))


def speedup(curves: np.ndarray, baseline: np.ndarray, steps: np.ndarray, baseline_steps: np.ndarray | None = None, **kw) -> tuple[Estimate, float]:
    """How many times fewer steps (or seconds) a schedule needs to reach the baseline's final
    value, per seed: ``T_base(s) / T(s)`` with ``T(s) = steps_to_reach(curve_s, steps,
    baseline_s[-1])`` (the baseline's own final value on the same seed). ``curves`` and
    ``baseline`` are [seed, checkpoint]; ``steps`` is the curves' x axis and ``baseline_steps``
    the baseline's (default the same; pass each run's training seconds at its checkpoints for
    a wall-clock speed-up). Returns the geometric-mean speed-up with its interval over the seeds
    that reach the target, and the fraction of seeds that do (a seed that never does is slower
    than the baseline by an unknown factor, so it is reported, not imputed)."""
    curves, baseline = np.atleast_2d(curves), np.atleast_2d(baseline)
    baseline_steps = steps if baseline_steps is None else baseline_steps
    targets = baseline[:, -1]
    t_base = np.array([steps_to_reach(b, baseline_steps, tg) for b, tg in zip(baseline, targets)])
    t_x = np.array([steps_to_reach(c, steps, tg) for c, tg in zip(curves, targets)])
    reached = float(np.mean(np.isfinite(t_x)))
    return paired_ratio(t_base, t_x, **kw), reached


def loss_spikes(train_loss: np.ndarray, window: int = 50, factor: float = 3.0) -> np.ndarray:
    """Per member, the number of steps whose loss exceeds ``factor`` times the median of the
    ``window`` steps before it (a spike), counted after the first ``window`` steps. Non-finite
    losses (a diverged member is frozen and its later losses are NaN) are not counted."""
    x = np.atleast_2d(np.asarray(train_loss, dtype=float))
    m, n = x.shape
    if n <= window:
        return np.zeros(m, dtype=int)
    windows = np.lib.stride_tricks.sliding_window_view(x[:, :-1], window, axis=1)  # [m, n - window, window]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window (after divergence) has no median
        ref = np.nanmedian(windows, axis=-1)
        spikes = x[:, window:] > factor * ref
    return spikes.sum(axis=1)
