"""Chapter statistics against closed forms and simulated coverage."""

import numpy as np
import pytest

from fmstudy.analysis import (
    bootstrap_mean,
    loss_spikes,
    paired_ratio,
    speedup,
    steps_to_reach,
)


def test_bootstrap_interval_covers_the_mean_at_about_its_level():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        est = bootstrap_mean(rng.normal(2.0, 1.0, size=30), n_boot=1000, seed=int(rng.integers(1 << 30)))
        hits += est.lo <= 2.0 <= est.hi
    assert 0.90 <= hits / 400 <= 0.98  # percentile bootstrap at n=30 is slightly anti-conservative
    one = bootstrap_mean(np.array([3.0, np.nan]))
    assert (one.value, one.lo, one.hi, one.n) == (3.0, 3.0, 3.0, 1)
    assert bootstrap_mean(np.array([np.nan])).n == 0


def test_paired_ratio_is_the_geometric_mean_of_per_seed_ratios():
    base = np.array([1.0, 2.0, 4.0, 8.0])
    x = base * np.array([0.5, 0.5, 0.5, 0.5])
    est = paired_ratio(x, base)
    assert est.value == pytest.approx(0.5) and est.lo == pytest.approx(0.5) and est.hi == pytest.approx(0.5)
    x2 = base * np.array([0.25, 1.0, 0.25, 1.0])
    assert paired_ratio(x2, base).value == pytest.approx(0.5)  # exp(mean(log(.25), log(1)))
    assert paired_ratio(np.array([1.0, np.nan]), np.array([2.0, 1.0])).n == 1


def test_steps_to_reach_interpolates_a_power_law_exactly():
    steps = np.array([0, 10, 100, 1000], dtype=float)
    curve = np.array([10.0, 1.0, 0.1, 0.01])
    assert steps_to_reach(curve, steps, 1.0) == 10
    # log-linear between (10, 1) and (100, 0.1): log(0.5) is 0.301 of the way down
    assert steps_to_reach(curve, steps, 0.5) == pytest.approx(10 + 90 * np.log10(2))
    assert steps_to_reach(curve, steps, 20.0) == 0
    assert np.isnan(steps_to_reach(curve, steps, 0.001))


def test_speedup_of_a_curve_that_is_the_baseline_compressed_in_steps():
    steps = np.array([0, 100, 200, 400, 800], dtype=float)
    base = np.array([[1.0, 0.5, 0.25, 0.125, 0.0625]] * 3)
    fast = np.array([[1.0, 0.25, 0.0625, 0.03, 0.02]] * 3)  # reaches 0.0625 at step 200, base at 800
    est, reached = speedup(fast, base, steps)
    assert est.value == pytest.approx(4.0) and reached == 1.0
    slow = np.array([[1.0, 0.9, 0.8, 0.7, 0.6]] * 3)
    est, reached = speedup(slow, base, steps)
    assert reached == 0.0 and est.n == 0


def test_loss_spikes_counts_planted_spikes_only():
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 2, 600))[None, :] * (1 + 0.05 * rng.normal(size=(2, 600)))
    loss[0, [200, 400]] *= 10
    loss[1, 300:] = np.nan  # a frozen member
    assert loss_spikes(loss, window=50, factor=3.0).tolist() == [2, 0]
