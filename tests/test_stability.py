"""Stability measured on a planted learning-rate sweep (fmstudy.stability): divergence rates with
Wilson intervals against scipy, the largest stable rate and uniform's breaking rate by
construction, spikes counted on the unweighted loss, and the divergence figure's data."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from fmstudy import plots
from fmstudy.stability import breaking_lr, stability_summary, stability_table

RATES = [0.1, 0.3, 0.6, 1.0]
N_STEPS = 120
# seeds diverged per swept rate: uniform breaks (>= 5 of 10) at 1.0 for sigma 0 and never for
# sigma 1; var_opt diverges earlier (less stable); stratified later
DIVERGED = {
    ("uniform", 0.0): [0, 0, 3, 6],
    ("var_opt", 0.0): [0, 2, 5, 9],
    ("stratified", 0.0): [0, 0, 0, 1],
    ("uniform", 1.0): [0, 0, 1, 2],
    ("var_opt", 1.0): [0, 0, 0, 0],
    ("stratified", 1.0): [1, 1, 1, 1],
}
SPIKES = {("var_opt", 0.0, 1.0): 4}  # 4 planted spikes on one seed of one cell, unweighted loss
STUCK = {}  # (sampler, sigma, lr) -> seeds that failed without diverging


def _cell(k: int, spikes: int, stuck: int = 0) -> xr.Dataset:
    """k diverged seeds (the first k), ``stuck`` further seeds whose metric ends above its start."""
    rng = np.random.default_rng(k)
    metric = np.tile(np.linspace(3.0, 0.5, 5), (10, 1))
    metric[k : k + stuck, -1] = 9.0  # blew up and settled on a plateau: not diverged, but no progress
    smooth = np.exp(-np.linspace(0, 1, N_STEPS))[None, :] * (1 + 0.01 * rng.normal(size=(10, N_STEPS)))
    unweighted = smooth.copy()
    unweighted[3, 80 : 80 + spikes] *= 10
    weighted = smooth.copy()
    weighted[:, 100] *= 30  # a large importance weight: a spike of the weighted loss only
    return xr.Dataset(
        {
            "train_loss": (("member", "step"), weighted),
            "train_loss_unweighted": (("member", "step"), unweighted),
            "diverged_step": (("member",), np.where(np.arange(10) < k, 60.0, -1.0)),
            "integrated_excess_ema": (("member", "checkpoint"), metric),
            "cell_id": ((), "c"),
        },
        coords={"member": np.arange(10), "step": np.arange(N_STEPS), "checkpoint": np.arange(5)},
    )


def _sweep() -> xr.Dataset:
    parts = [
        _cell(ks[i], SPIKES.get((s, sg, lr), 0), STUCK.get((s, sg, lr), 0)).expand_dims(sampler=[s], sigma=[sg], lr=[lr])
        for (s, sg), ks in DIVERGED.items()
        for i, lr in enumerate(RATES)
    ]
    ds = xr.merge(parts, join="outer", compat="no_conflicts")
    ds["cell_id"] = ds["cell_id"].astype(str)
    return ds.transpose("sampler", "sigma", "lr", ...)


def test_summary_finds_the_planted_stable_and_breaking_rates():
    summary = stability_summary(_sweep())
    assert summary.index.names == ["sampler", "sigma"]
    got = summary["largest_stable_lr"].to_dict()
    assert got[("uniform", 0.0)] == 0.3 and got[("var_opt", 0.0)] == 0.1 and got[("stratified", 0.0)] == 0.6
    assert got[("var_opt", 1.0)] == 1.0 and np.isnan(got[("stratified", 1.0)])  # diverged already at the smallest rate
    assert summary.loc[("var_opt", 0.0), "less_stable"] and not summary.loc[("stratified", 0.0), "less_stable"]
    assert summary.loc[("stratified", 1.0), "less_stable"] and not summary.loc[("var_opt", 1.0), "less_stable"]
    assert (summary.xs(0.0, level="sigma")["baseline_breaks_at"] == 1.0).all()
    assert summary.xs(1.0, level="sigma")["baseline_breaks_at"].isna().all()  # the sweep did not reach it at sigma 1
    assert summary.xs(1.0, level="sigma")["diverged"].isna().all()
    est = summary.loc[("var_opt", 0.0), "diverged"]  # 9 of 10 at uniform's breaking rate
    ci = stats.binomtest(9, 10).proportion_ci(0.95, method="wilson")
    assert est.value == 0.9 and (est.lo, est.hi) == pytest.approx((ci.low, ci.high)) and est.n == 10
    assert summary.loc[("var_opt", 0.0), "spikes"] == pytest.approx(0.4)  # 4 spikes on one of 10 seeds
    assert summary.loc[("uniform", 0.0), "spikes"] == 0 and (summary["spikes_on"] == "train_loss_unweighted").all()
    assert summary.loc[("var_opt", 0.0), "max_diverged"] == 0.9 and summary.loc[("stratified", 1.0), "max_diverged"] == 0.1


def test_breaking_lr_is_the_smallest_rate_where_half_the_seeds_diverged():
    broke = breaking_lr(stability_table(_sweep()))
    assert broke[("var_opt", 0.0)] == 0.6 and broke[("uniform", 0.0)] == 1.0 and np.isnan(broke[("uniform", 1.0)])


def test_summary_refuses_a_sweep_without_its_axes_or_baseline():
    with pytest.raises(ValueError, match="sampler and lr must both be axes"):
        stability_summary(_sweep().sel(lr=0.1))
    with pytest.raises(ValueError, match="baseline='nope' is not allowed"):
        stability_summary(_sweep(), baseline="nope")


def test_divergence_curves_draw_the_wilson_intervals_of_one_sigma():
    table = stability_table(_sweep())
    with pytest.raises(ValueError, match=r"several values of \['sigma'\]"):
        plots.divergence_curves(table)
    ax = plots.divergence_curves(table.xs(0.0, level="sigma", drop_level=False))
    drawn = {c.get_label(): c.lines for c in ax.containers}  # (data line, caps, bars) per sampler
    assert set(drawn) == {"uniform", "var_opt", "stratified"}
    np.testing.assert_allclose(drawn["var_opt"][0].get_ydata(), np.array(DIVERGED[("var_opt", 0.0)]) / 10)
    np.testing.assert_allclose(drawn["uniform"][0].get_xdata(), RATES)
    # the error bars span the Wilson interval of each rate
    bars = drawn["var_opt"][2][0].get_segments()
    for seg, k in zip(bars, DIVERGED[("var_opt", 0.0)]):
        ci = stats.binomtest(k, 10).proportion_ci(0.95, method="wilson")
        assert (seg[0][1], seg[1][1]) == pytest.approx((ci.low, ci.high))
    matplotlib.pyplot.close("all")


def test_a_seed_that_settles_above_its_start_has_failed_without_diverging(monkeypatch):
    # var_opt at sigma 1 never diverges; planted: 6 of 10 seeds end above their first checkpoint at 0.6
    monkeypatch.setitem(STUCK, ("var_opt", 1.0, 0.6), 6)
    monkeypatch.setitem(STUCK, ("var_opt", 1.0, 0.3), 1)
    table = stability_table(_sweep())
    row = table.loc[("var_opt", 1.0, 0.6)]
    assert row["diverged"].value == 0 and row["failed"].value == 0.6 and row["metric"] == "integrated_excess_ema"
    assert table.loc[("var_opt", 1.0, 0.3), "failed"].value == 0.1
    summary = stability_summary(_sweep())
    assert summary.loc[("var_opt", 1.0), "largest_stable_lr"] == 0.1  # 0.3 already has a failed seed
    assert summary.loc[("var_opt", 1.0), "max_failed"] == 0.6 and summary.loc[("var_opt", 1.0), "max_diverged"] == 0
    assert breaking_lr(table)[("var_opt", 1.0)] == 0.6  # half the seeds failed there
    assert breaking_lr(table, any_seed=True)[("var_opt", 1.0)] == 0.3  # the first failed seed (1 of 10)


def _hypergeometric_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's two-sided p by hand (S.2): the hypergeometric probabilities of the tables with the
    same margins, summed over those no more likely than the observed one."""
    from math import comb

    k = k1 + k2
    prob = {x: comb(n1, x) * comb(n2, k - x) / comb(n1 + n2, k) for x in range(max(0, k - n2), min(k, n1) + 1)}
    return sum(p for p in prob.values() if p <= prob[k1] * (1 + 1e-9))


def test_fisher_p_against_the_hypergeometric_law():
    from fmstudy.stability import fisher_p

    # 2 and 3 of 10 failed against 0 of 10: 2 x 45/190 and 2 x 120/1140 (both tails are equally likely)
    assert fisher_p(2, 10, 0, 10) == pytest.approx(2 * 45 / 190) and fisher_p(3, 10, 0, 10) == pytest.approx(2 * 120 / 1140)
    for counts in [(5, 10, 6, 10), (0, 10, 3, 10), (1, 4, 7, 9), (9, 10, 1, 10)]:
        assert fisher_p(*counts) == pytest.approx(_hypergeometric_p(*counts))
    with pytest.raises(ValueError, match="not allowed"):
        fisher_p(11, 10, 0, 10)


def test_failure_tests_take_the_first_rate_where_either_failed():
    from fmstudy.stability import failure_tests

    tests = failure_tests(stability_table(_sweep()))
    assert "uniform" not in tests.index.get_level_values("sampler")
    # DIVERGED: var_opt at sigma 0 fails first at 0.3 (2 of 10, uniform 0); stratified at 0.6 (0 against uniform's 3);
    # at sigma 1 var_opt never fails, uniform first at 0.6 (1); stratified fails at 0.1 already (1 against 0)
    want = {("var_opt", 0.0): (0.3, 2, 0), ("stratified", 0.0): (0.6, 0, 3), ("var_opt", 1.0): (0.6, 0, 1), ("stratified", 1.0): (0.1, 1, 0)}
    for key, (lr, k, kb) in want.items():
        row = tests.loc[key]
        assert (row["lr"], row["k"], row["baseline_k"], row["n"], row["baseline_n"]) == (lr, k, kb, 10, 10)
        assert row["p"] == pytest.approx(_hypergeometric_p(k, 10, kb, 10))
    # Holm over the 4 rows, by hand: sorted p, (m - j + 1) p_(j), running maximum, capped at 1
    p = tests["p"].to_numpy()
    order = np.argsort(p)
    adjusted = np.minimum(1, np.maximum.accumulate((4 - np.arange(4)) * p[order]))
    np.testing.assert_allclose(tests["p_holm"].to_numpy()[order], adjusted)


def test_spikes_carry_a_t_interval_floored_at_zero():
    summary = stability_summary(_sweep())
    e = summary.loc[("var_opt", 0.0), "spikes_ci"]  # counts 4 on one seed, 0 on nine
    counts = np.array([0, 0, 0, 4, 0, 0, 0, 0, 0, 0], dtype=float)
    lo, hi = stats.t.interval(0.95, 9, counts.mean(), stats.sem(counts))
    assert e.value == pytest.approx(0.4) and e.hi == pytest.approx(hi) and lo < 0 and e.lo == 0.0
    assert summary.loc[("uniform", 0.0), "spikes_ci"].value == 0
