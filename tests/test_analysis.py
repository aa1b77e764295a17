"""Chapter statistics against hand computations, scipy.stats and simulated coverage at n = 10."""

import math

import numpy as np
import pytest
from scipy import stats

from fmstudy.analysis import (
    Estimate,
    bonferroni_level,
    bootstrap_mean,
    holm,
    loss_spikes,
    mean_estimate,
    median_censored,
    paired_ratio,
    rate_estimate,
    speedup,
    steps_to_reach,
)


# -- paired comparisons ---------------------------------------------------------------------
def test_paired_ratio_matches_scipys_paired_t_test_and_hand_effect_size():
    rng = np.random.default_rng(3)
    base = rng.lognormal(0.0, 1.0, 12)
    x = base * rng.lognormal(-0.2, 0.3, 12)
    est = paired_ratio(x, base)
    ref = stats.ttest_rel(np.log(x), np.log(base))
    ci = ref.confidence_interval(0.95)
    d = np.log(x / base)
    assert est.n == 12 and est.level == 0.95 and est.method == "t"
    assert est.value == pytest.approx(math.exp(d.mean()))
    assert (est.lo, est.hi) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
    assert est.p == pytest.approx(ref.pvalue)
    assert est.effect == pytest.approx(d.mean() / d.std(ddof=1))
    x[0] = np.nan  # a diverged seed drops out of the pairs
    assert paired_ratio(x, base).n == 11


def test_bca_interval_matches_scipys_bca():
    rng = np.random.default_rng(4)
    d = rng.gamma(2.0, 1.0, 15)
    est = mean_estimate(d, method="bca", n_boot=40000, seed=1)
    ref = stats.bootstrap((d,), np.mean, method="BCa", n_resamples=40000, random_state=2).confidence_interval
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert abs(est.lo - ref.low) < 0.05 * se and abs(est.hi - ref.high) < 0.05 * se
    assert bootstrap_mean(d, n_boot=40000, seed=1) == est


def test_small_and_degenerate_samples_say_what_they_can():
    one = mean_estimate(np.array([3.0, np.nan]))
    assert (one.value, one.n) == (3.0, 1) and math.isnan(one.lo) and math.isnan(one.hi)
    assert one.text() == "3 (no interval with 1 seed)"
    assert mean_estimate(np.array([np.nan])).n == 0
    assert mean_estimate(np.array([])).text() == "n/a (no interval with 0 seeds)"
    same = paired_ratio(np.array([1.0, 2.0, 4.0]) * 0.5, np.array([1.0, 2.0, 4.0]))
    assert (same.value, same.lo, same.hi, same.p) == pytest.approx((0.5, 0.5, 0.5, 0.0))
    two = paired_ratio(np.array([1.0, 2.0]), np.array([2.0, 2.0]))  # t with 1 degree of freedom
    assert two.n == 2 and two.hi / two.lo > 1e3
    assert Estimate(0.8, 0.7, 0.9, 10).text() == "0.8 (95% CI 0.7 to 0.9, 10 seeds)"
    with pytest.raises(ValueError, match="method='perc' is not allowed"):
        mean_estimate(np.ones(3), method="perc")
    with pytest.raises(ValueError, match="pairs need the same seeds"):
        paired_ratio(np.ones(3), np.ones(4))


def _coverage(samples: np.ndarray, truth: float, **kw) -> float:
    return float(np.mean([(e.lo <= truth <= e.hi) for e in (mean_estimate(s, **kw) for s in samples)]))


def test_t_interval_covers_95_percent_at_ten_seeds():
    """4,000 replications: Monte-Carlo sd of a coverage near 0.95 is 0.0034, so the window
    0.93-0.97 is about 6 sd wide on each side of 0.95."""
    rng = np.random.default_rng(10)
    normal = rng.normal(-0.1, 0.2, size=(4000, 10))
    assert 0.94 <= _coverage(normal, -0.1) <= 0.96
    skewed = rng.gamma(9.0, 0.05, size=(4000, 10)) - 0.3  # skewness 2/3, mean 0.15
    assert 0.93 <= _coverage(skewed, 9 * 0.05 - 0.3) <= 0.97


def test_bca_interval_undercovers_at_ten_seeds_as_documented():
    rng = np.random.default_rng(11)
    normal = rng.normal(0.0, 1.0, size=(4000, 10))
    assert 0.87 <= _coverage(normal, 0.0, method="bca", n_boot=1000) <= 0.93


# -- Holm -----------------------------------------------------------------------------------
def test_holm_against_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])
    with pytest.raises(ValueError, match="p-value 1.5 is not allowed"):
        holm(np.array([0.1, 1.5]))


def _step_down(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's procedure as defined: reject in order of p while p_(j) <= alpha / (m - j + 1)."""
    reject = np.zeros(p.size, dtype=bool)
    for j, i in enumerate(np.argsort(p)):
        if p[i] > alpha / (p.size - j):
            break
        reject[i] = True
    return reject


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(5)
    for _ in range(300):
        p = rng.uniform(0, 0.1, size=int(rng.integers(1, 9))) ** rng.uniform(0.5, 2)
        for alpha in (0.01, 0.05, 0.1):
            assert np.array_equal(holm(p) <= alpha, _step_down(p, alpha))


def test_bonferroni_level():
    assert bonferroni_level(0.95, 5) == pytest.approx(0.99)
    assert bonferroni_level(0.95, 1) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="m=0 is not allowed"):
        bonferroni_level(0.95, 0)


# -- rates ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (7, 23)])
def test_wilson_interval_matches_scipy(k, n):
    est = rate_estimate(k, n)
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert est.value == pytest.approx(k / n) and est.n == n
    assert (est.lo, est.hi) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_interval_hand_value_and_bad_counts():
    assert rate_estimate(0, 10).hi == pytest.approx(1.96**2 / 10 / (1 + 1.96**2 / 10), abs=1e-3)  # 0.2775
    with pytest.raises(ValueError, match="k=11 is not allowed"):
        rate_estimate(11, 10)


# -- speed-ups ------------------------------------------------------------------------------
def test_steps_to_reach_interpolates_linearly_between_measured_checkpoints_only():
    steps = np.array([0, 100, 200, 300], dtype=float)
    curve = np.array([1.0, 0.8, 0.4, 0.3])
    assert steps_to_reach(curve, steps, 0.8) == 100
    assert steps_to_reach(curve, steps, 0.5) == pytest.approx(175)  # 3/4 of the way from 0.8 to 0.4
    assert steps_to_reach(curve, steps, 0.5, interpolate=False) == 200
    assert steps_to_reach(curve, steps, 2.0) == 0
    assert math.isnan(steps_to_reach(curve, steps, 0.1))


def test_order_statistic_interval_of_the_median_by_hand():
    v = np.arange(1.0, 11.0)  # n = 10: k = 2, P(Bin(10, 1/2) <= 1) = 11/1024
    est = median_censored(v, np.zeros(10, dtype=bool))
    assert (est.value, est.lo, est.hi) == (5.5, 2.0, 9.0)
    assert est.level == pytest.approx(1 - 22 / 1024)
    assert "97.9% CI 2 to 9, 10 seeds" in est.text()
    few = median_censored(v[:5], np.zeros(5, dtype=bool))  # 2 / 32 > 0.05: no interval exists
    assert few.value == 3.0 and math.isnan(few.lo)
    # two seeds known only to be <= 0.5 and <= 0.7: below every other, so the median is
    # known (3.5); the lower end becomes 0, the upper the 9th of [0.5, 0.7, 1..8]
    below = np.r_[np.zeros(8, bool), True, True]
    cens = median_censored(np.r_[v[:8], 0.5, 0.7], below)
    assert (cens.value, cens.lo, cens.hi, cens.censored) == (3.5, 0.0, 7.0, 2)
    # one known only to be <= 20 may lie on either side of the middle: median in [3.5, 4.5]
    wide = median_censored(np.r_[v[:8], 0.5, 20.0], below)
    assert math.isnan(wide.value) and (wide.lo, wide.hi) == (0.0, 8.0)
    # ... and below 4.5, the median with the censored seeds at their bounds: it reads "< 4.5"
    assert wide.below == 4.5 and wide.text().startswith("< 4.5 (97.9% CI 0 to 8, 10 seeds, 2 not reaching")
    assert math.isnan(cens.below) and cens.value_text() == "3.5"
    # most seeds censored: the median depends on them and is not identified, only bounded:
    # six seeds known only to be <= 1 and four at 1: the median is below 1
    most = median_censored(np.ones(10), np.arange(10) < 6)
    assert math.isnan(most.value) and most.below == 1.0 and most.value_text(".2f") == "< 1.00"
    assert median_censored(np.array([]), np.array([], bool)).value_text() == "n/a"


def _linear_runs(r: np.ndarray, n_ckpt: int = 11, budget: float = 1000.0):
    """Baselines c (1 - t / 2T) and schedules c (1 - r t / 2T) on linear checkpoints: the
    schedule reaches the baseline's final value c/2 at T / r, i.e. a speed-up of exactly r,
    or never within the budget T when r < 1."""
    steps = np.linspace(0, budget, n_ckpt)
    c = np.linspace(1.0, 2.0, r.size)[:, None]
    base = c * (1 - 0.5 * steps / budget)
    fast = c * (1 - 0.5 * r[:, None] * steps / budget)
    return fast, base, steps


def test_speedup_counts_the_seeds_that_never_reach_the_target():
    r = np.array([4.0, 3.0, 2.5, 2.0, 2.0, 1.5, 1.25, 0.5, 0.5, 0.5])
    est = speedup(*_linear_runs(r))
    assert est.n == 10 and est.censored == 3
    assert est.value == pytest.approx(1.75)  # the median of the 10, slow ones below it
    assert est.lo == 0.0 and est.hi == pytest.approx(3.0)  # ranks 2 and 9; censored at bound 1
    # no seed reaches uniform's final value within the budget: the speed-up is below 1
    assert speedup(*_linear_runs(np.full(10, 0.5))).text().startswith("< 1 (97.9% CI 0 to 1, 10 seeds, 10 not reaching")
    fast, base, steps = _linear_runs(r)
    base[0, -1] = np.nan  # a baseline seed that diverged has no target
    assert speedup(fast, base, steps).n == 9
    fast[1] = np.nan  # a seed this schedule's cell did not run (NaN in a collected grid)
    assert (speedup(fast, base, steps).n, speedup(fast, base, steps).censored) == (8, 3)
    fast[2, 3:] = np.nan  # a seed frozen early whose metric is lost later: it never reaches
    assert (speedup(fast, base, steps).n, speedup(fast, base, steps).censored) == (8, 4)


@pytest.mark.parametrize("mu,sd,censoring", [(0.5, 0.2, False), (0.2, 0.5, True)])
def test_speedup_interval_covers_the_median_speedup_at_ten_seeds(mu, sd, censoring):
    """Per-seed speed-ups exp(N(mu, sd)); with mu = 0.2, sd = 0.5 a third of the seeds never
    reach the target. The interval must cover exp(mu) at least at its stated level (0.979)
    minus 3 Monte-Carlo sd; without censoring it is exact, so also at most that plus 3 sd."""
    rng = np.random.default_rng(12)
    hits, reps = 0, 3000
    censored = 0
    for _ in range(reps):
        est = speedup(*_linear_runs(np.exp(rng.normal(mu, sd, 10))))
        hits += est.lo <= math.exp(mu) <= est.hi
        censored += est.censored
    level, mc = 1 - 22 / 1024, 3 * math.sqrt(0.0215 * 0.9785 / reps)
    assert hits / reps >= level - mc
    assert (censored > 0.25 * 10 * reps) == censoring
    if not censoring:
        assert hits / reps <= level + mc


# -- loss spikes ----------------------------------------------------------------------------
def test_loss_spikes_counts_planted_spikes_only():
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 2, 600))[None, :] * (1 + 0.05 * rng.normal(size=(2, 600)))
    loss[0, [200, 400]] *= 10
    loss[1, 300:] = np.nan  # a frozen member
    assert loss_spikes(loss, window=50, factor=3.0).tolist() == [2, 0]
