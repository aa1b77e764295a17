"""Statistics the chapters quote (STUDY.md section 6): paired comparisons over seeds on
log-ratios, Holm's correction across a table, speed-ups that count the seeds which never
reach the target, divergence rates, loss spikes.

Seeds are the unit of replication: every interval here is over seeds (members), never steps
or probes, and comparisons between schedules are paired (the same seeds, probes and held-out
set), so a schedule's ratio to the baseline is formed per seed first. With n seeds and paired
log-differences d_s = log(x_s / b_s):

    dbar = (1/n) sum_s d_s,   sd = sqrt(sum_s (d_s - dbar)^2 / (n - 1)),   se = sd / sqrt(n)   (A.1)
    t-interval     dbar -/+ t_{n-1, (1+level)/2} se; the ratio's is its exp                 (A.2)
    p-value        2 P(T_{n-1} > |dbar| / se)   (the paired t-test of "no difference")       (A.3)
    effect size    d_z = dbar / sd   (Cohen's d_z: the mean log-ratio in units of its
                   seed-to-seed spread; |d_z| = 0.2, 0.5, 0.8 read small, medium, large,
                   and P(a seed favours the better one) = Phi(|d_z|) for normal d_s)          (A.4)
    BCa bootstrap  the bootstrap means' quantiles at Phi(z0 + (z0 + z)/(1 - a (z0 + z)))
                   for z = Phi^-1((1 -/+ level)/2), z0 = Phi^-1(share of means < dbar,
                   ties half), a = sum(dbar_(.) - dbar_(-s))^3 / (6 (sum(...)^2)^1.5)
                   from the jackknife means dbar_(-s)                                       (A.5)

The t-interval (the default) is exact for normal d_s; at n = 10 it is measured
(tests/test_analysis.py) to cover 0.93-0.97 also for a gamma-distributed d_s of skewness 2/3
(0.94), while at skewness 1 it falls to about 0.925 and at 1.4 to 0.92. BCa, the option that
assumes no normality, under-covers at n = 10 (about 0.90 for normal d_s, measured): use it
from about 20 seeds on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .checks import check_float, check_int

__all__ = [
    "Estimate",
    "bonferroni_level",
    "bootstrap_mean",
    "holm",
    "loss_spikes",
    "mean_estimate",
    "median_censored",
    "paired_ratio",
    "rate_estimate",
    "speedup",
    "steps_to_reach",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its ``level`` interval [lo, hi] over ``n`` seeds; ``p`` is the
    test's p-value and ``effect`` the effect size (A.4) where the estimate has them, ``censored``
    the seeds known only by a bound (speed-ups), ``below`` what a value that censoring leaves
    unidentified is known to lie below (NaN otherwise), ``method`` how the interval was made,
    ``unit`` what ``n`` counts."""

    value: float
    lo: float
    hi: float
    n: int
    level: float = 0.95
    p: float = math.nan
    effect: float = math.nan
    censored: int = 0
    method: str = ""
    unit: str = "seed"  # what n counts (a correlation over settings counts points)
    below: float = math.nan

    def value_text(self, fmt: str = ".3g") -> str:
        """The value; ``< b`` for a value only known to lie below ``b`` (a censored median);
        ``n/a`` for one not identified at all."""
        if np.isfinite(self.value):
            return f"{self.value:{fmt}}"
        return f"< {self.below:{fmt}}" if np.isfinite(self.below) else "n/a"

    def text(self, fmt: str = ".3g") -> str:
        """e.g. ``0.82 (95% CI 0.75 to 0.9, 10 seeds)``; ``< 0.5 (...)`` for a median only known
        to lie below 0.5; ``n/a`` for what is not identified."""
        value = self.value_text(fmt)
        seeds = f"{self.n} {self.unit}{'' if self.n == 1 else 's'}"
        if np.isfinite(self.lo) and np.isfinite(self.hi):
            inner = f"{100 * self.level:.3g}% CI {self.lo:{fmt}} to {self.hi:{fmt}}, {seeds}"
        else:
            inner = f"no interval with {seeds}"
        if self.censored:
            inner += f", {self.censored} not reaching the target"
        return f"{value} ({inner})"


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


def _bca(x: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """The BCa interval (A.5) for the mean of ``x`` (n >= 2, not all equal)."""
    n, mean = x.size, x.mean()
    means = x[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
    share = (np.sum(means < mean) + 0.5 * np.sum(means == mean)) / n_boot
    z0 = special.ndtri(share)
    jack = (x.sum() - x) / (n - 1)
    dev = jack.mean() - jack
    a = np.sum(dev**3) / (6 * np.sum(dev**2) ** 1.5)
    z = special.ndtri(np.array([(1 - level) / 2, (1 + level) / 2]))
    probs = special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    if not np.all(np.isfinite(probs)):  # every resample on one side of the mean (tiny n)
        return math.nan, math.nan
    lo, hi = np.quantile(means, probs)
    return float(lo), float(hi)


def mean_estimate(x: np.ndarray, level: float = 0.95, method: str = "t", n_boot: int = 4000, seed: int = 0) -> Estimate:
    """Mean of the finite values of ``x`` (one per seed) with a t-interval (A.2) or, with
    ``method="bca"``, a BCa bootstrap interval (A.5) from ``n_boot`` resamples; p-value of
    mean 0 (A.3) and d_z = mean / sd (A.4). One seed gives no interval; n seeds all equal
    give the point itself."""
    level = check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    if method not in ("t", "bca"):
        raise ValueError(f"method={method!r} is not allowed: method must be 't' or 'bca'")
    x = _finite(x)
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level, method=method)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, level, method=method)
    sd = float(x.std(ddof=1))
    if sd == 0:  # no spread: the interval is the point and any nonzero mean is certain
        return Estimate(
            mean, mean, mean, n, level, p=float(mean == 0), effect=math.copysign(math.inf, mean) if mean else math.nan, method=method
        )
    se = sd / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    if method == "t":
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
        lo, hi = mean - half, mean + half
    else:
        lo, hi = _bca(x, level, check_int("n_boot", n_boot, 100), seed)
    return Estimate(mean, lo, hi, n, level, p=p, effect=mean / sd, method=method)


def bootstrap_mean(x: np.ndarray, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> Estimate:
    """:func:`mean_estimate` with a BCa bootstrap interval."""
    return mean_estimate(x, level, "bca", n_boot, seed)


def paired_ratio(x: np.ndarray, baseline: np.ndarray, level: float = 0.95, method: str = "t", **kw) -> Estimate:
    """Geometric-mean ratio ``exp(dbar)`` of ``x`` to ``baseline`` over paired seeds, with the
    exp of :func:`mean_estimate`'s interval on d_s = log(x_s / baseline_s); ``p`` tests ratio 1,
    ``effect`` is d_z on the log scale. Pairs where either value is not finite and positive are
    left out (a diverged seed has no final value: count it with :func:`rate_estimate`). Below 1:
    ``x`` is smaller (better, for losses) than the baseline on the same seeds."""
    x, b = np.asarray(x, dtype=float).ravel(), np.asarray(baseline, dtype=float).ravel()
    if x.shape != b.shape:
        raise ValueError(f"x has {x.size} seeds and baseline {b.size}, which is not allowed: pairs need the same seeds")
    ok = np.isfinite(x) & np.isfinite(b) & (x > 0) & (b > 0)
    e = mean_estimate(np.log(x[ok] / b[ok]), level, method, **kw)
    return Estimate(math.exp(e.value) if e.n else math.nan, math.exp(e.lo), math.exp(e.hi), e.n, e.level, e.p, e.effect, method=e.method)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values across one table's m comparisons (the finite entries;
    NaN stays NaN): with p_(1) <= ... <= p_(m) sorted,

        p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),                                     (A.6)

    so that rejecting every p~ <= alpha is Holm's procedure (reject H_(1), H_(2), ... while
    p_(j) <= alpha / (m - j + 1), stop at the first that is not), with family-wise error <= alpha."""
    p = np.asarray(pvalues, dtype=float)
    bad = p[np.isfinite(p) & ((p < 0) | (p > 1))]
    if bad.size:
        raise ValueError(f"p-value {float(bad[0])!r} is not allowed: p-values must be in [0, 1] (or NaN)")
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    order = np.argsort(q, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    out[ok] = adjusted
    return out


def bonferroni_level(level: float, m: int) -> float:
    """The per-comparison level ``1 - (1 - level) / m`` at which m intervals hold together with
    probability >= ``level`` (Bonferroni). Holm's p-values (A.6) can reject where such an
    interval still touches 1: Holm is the sharper test, the intervals the simultaneous ones."""
    level = check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    return 1 - (1 - level) / check_int("m", m, 1)


def rate_estimate(k: int, n: int, level: float = 0.95) -> Estimate:
    """Share ``k / n`` (e.g. of seeds that diverged) with the Wilson score interval

        (k/n + z^2/2n -/+ z sqrt(k/n (1 - k/n) / n + z^2/4n^2)) / (1 + z^2/n),  z = Phi^-1((1+level)/2),   (A.8)

    which, unlike k/n -/+ z se, is not empty at k = 0 (0 of 10 reads [0, 0.28])."""
    n = check_int("n", n, 0)
    k = check_int("k", k, 0, n)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level, method="wilson")
    z = float(special.ndtri((1 + check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)) / 2))
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    return Estimate(ph, max(0.0, centre - half), min(1.0, centre + half), n, level, method="wilson")


def steps_to_reach(curve: np.ndarray, steps: np.ndarray, target: float, interpolate: bool = True) -> float:
    """First step at which a decreasing-is-better ``curve`` (values at ``steps``) is at or below
    ``target``; NaN if it never is. The crossing is only known to lie between the checkpoint
    before and the first checkpoint that reaches the target: with ``interpolate`` the curve is
    taken as linear between those two measured points (checkpoints are evenly spaced late in
    training), otherwise the first checkpoint itself is returned (an upper bound)."""
    curve, steps = np.asarray(curve, dtype=float), np.asarray(steps, dtype=float)
    hit = np.flatnonzero(np.isfinite(curve) & (curve <= target))
    if hit.size == 0 or not np.isfinite(target):
        return math.nan
    i = int(hit[0])
    if i == 0 or not interpolate or not np.isfinite(curve[i - 1]):
        return float(steps[i])
    y0, y1 = curve[i - 1], curve[i]
    return float(steps[i - 1] + (y0 - target) / (y0 - y1) * (steps[i] - steps[i - 1]))


def median_censored(values: np.ndarray, censored: np.ndarray, level: float = 0.95) -> Estimate:
    """Median of per-seed ``values`` where a ``censored`` seed's true value is only known to be
    at most its entry, with the distribution-free order-statistic interval [v_(k), v_(n-k+1)]:
    k is the largest rank with 2 P(Bin(n, 1/2) <= k - 1) <= 1 - level, and the interval's exact
    coverage, 1 - 2 P(Bin(n, 1/2) <= k - 1) >= level, is the ``level`` it states (0.979 at
    n = 10; below n = 6 no such interval exists). A censored seed enters the lower end at 0 and
    the upper end at its bound, so censoring can only widen the interval (coverage stays at
    least as stated); the median is NaN when it depends on the censored values, and ``below``
    then says what it lies below (the median with the censored seeds at their bounds)."""
    v = np.asarray(values, dtype=float).ravel()
    c = np.asarray(censored, dtype=bool).ravel()
    keep = ~np.isnan(v)
    v, c = v[keep], c[keep]
    n, ncens = int(v.size), int(c.sum())
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level, method="median")
    low, high = np.sort(np.where(c, 0.0, v)), np.sort(v)
    med_low, med_high = float(np.median(low)), float(np.median(high))
    value = med_high if med_low == med_high else math.nan
    # a censored middle value is strictly below its bound, so the median is strictly below med_high
    below = math.nan if med_low == med_high else med_high
    ranks = np.arange(1, n // 2 + 1)
    tail = stats.binom.cdf(ranks - 1, n, 0.5)
    ok = ranks[2 * tail <= 1 - level]
    if ok.size == 0:
        return Estimate(value, math.nan, math.nan, n, level, censored=ncens, method="median", below=below)
    k = int(ok.max())
    exact = float(1 - 2 * stats.binom.cdf(k - 1, n, 0.5))
    return Estimate(value, float(low[k - 1]), float(high[n - k]), n, exact, censored=ncens, method="median", below=below)


def speedup(
    curves: np.ndarray,
    baseline: np.ndarray,
    steps: np.ndarray,
    baseline_steps: np.ndarray | None = None,
    level: float = 0.95,
    interpolate: bool = True,
) -> Estimate:
    """How many times less of the x axis (steps, seconds or FLOPs) a schedule needs to reach
    the baseline's final value, seed by seed:

        r_s = T_base(s) / T(s),   T(s) = steps_to_reach(curve_s, steps, baseline_s[-1])       (A.7)

    ``curves`` and ``baseline`` are [seed, checkpoint] on the same seeds; ``steps`` is the
    curves' x axis ([checkpoint] or [seed, checkpoint]) and ``baseline_steps`` the baseline's
    (default the same). A seed that never reaches the target is counted, censored at its
    budget: T(s) > steps[-1], so r_s < T_base(s) / steps[-1]. Returns
    :func:`median_censored` of the r_s (``censored`` = seeds not reaching); a seed whose
    baseline has no finite final value has no target, and a seed with no finite value at all
    was not run (a collected grid's NaN fill): both are left out. Counting matters: with a
    third of the seeds not reaching, the interval covers the true median speed-up 0.977 of the
    time at n = 10 (stated 0.979), and 0.62 if those seeds were dropped (measured)."""
    curves, baseline = np.atleast_2d(np.asarray(curves, dtype=float)), np.atleast_2d(np.asarray(baseline, dtype=float))
    if curves.shape[0] != baseline.shape[0]:
        raise ValueError(
            f"curves have {curves.shape[0]} seeds and baseline {baseline.shape[0]}, which is not allowed: pairs need the same seeds"
        )
    x_axis = np.broadcast_to(np.asarray(steps, dtype=float), curves.shape)
    b_axis = np.broadcast_to(np.asarray(steps if baseline_steps is None else baseline_steps, dtype=float), baseline.shape)
    ratios, cens = [], []
    for c, b, xs, bs in zip(curves, baseline, x_axis, b_axis):
        target = b[-1]
        if not np.isfinite(target) or not np.isfinite(c).any():
            continue
        t_base = steps_to_reach(b, bs, target, interpolate)
        t_x = steps_to_reach(c, xs, target, interpolate)
        reached = np.isfinite(t_x)
        with np.errstate(divide="ignore"):  # reached at step 0: an infinite speed-up
            ratios.append(np.divide(t_base, t_x if reached else xs[-1]))
        cens.append(not reached)
    return median_censored(np.array(ratios), np.array(cens, dtype=bool), level)


def loss_spikes(train_loss: np.ndarray, window: int = 50, factor: float = 3.0) -> np.ndarray:
    """Per member, the number of steps whose loss exceeds ``factor`` times the median of the
    ``window`` steps before it (a spike), counted after the first ``window`` steps. Non-finite
    losses (a diverged member is frozen and its later losses are NaN) are not counted. Pass the
    UNWEIGHTED batch loss (mean_b l_b, ``train_loss_unweighted``): the importance-weighted
    ``train_loss`` spikes whenever a rare t with a large weight w_b is drawn, which says
    nothing about the stability of training."""
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
