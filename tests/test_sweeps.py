"""Comparisons across budgets and sigma (fmstudy.sweeps) on planted grids: each budget read at
its own last checkpoint, Holm and Bonferroni over the whole table against scipy and by hand,
the tuned rate beside every row."""

import math

import numpy as np
import pandas as pd
import pytest
from planted import SPREAD, C, grid
from planted import cell as planted_cell
from scipy import stats

from fmstudy.analysis import holm
from fmstudy.sweeps import budget_table, comparison_groups, sigma_table

RATE = {"uniform": 0.03, "arcsine(floor=0.05, reweight=True)": 0.01, "stratified": 0.1}
# per-seed speed-ups planted per (budget, sampler); stratified's 3 slowest seeds never reach
R = {
    (300, "arcsine(floor=0.05, reweight=True)"): 1.5 * SPREAD,
    (300, "stratified"): np.r_[np.full(3, 0.5), np.linspace(1.1, 1.5, 7)],
    (1000, "arcsine(floor=0.05, reweight=True)"): 0.9 * SPREAD,
    (1000, "stratified"): 1.2 * SPREAD,
}


def _budgets():
    """steps x sampler+lr (zipped: each sampler at its own rate, the other rates empty)."""
    cells = {}
    for budget in (300, 1000):
        for s, run in RATE.items():
            for lr in sorted(set(RATE.values())):
                c = planted_cell(R.get((budget, s), np.ones(10)), budget=budget)
                if lr != run:
                    c = c.where(False).assign(cell_id=((), ""))
                cells[(budget, s, lr)] = c
    return grid(cells, ["steps", "sampler", "lr"])


def test_budget_table_reads_each_budget_at_its_own_last_checkpoint():
    ds = _budgets()
    assert np.isnan(ds["integrated_excess_ema"].sel(steps=300.0, sampler="uniform", lr=0.03, checkpoint=1000)).all()  # padded
    tab = budget_table(ds)
    assert tab.index.names == ["steps", "sampler"] and len(tab) == 4
    pvals, rows = [], []
    for (budget, s), r in R.items():
        row = tab.loc[(budget, s)]
        final, base = C * (1 - 0.4 * r), 0.6 * C  # the closed form of the planted curves at their own end
        ref = stats.ttest_rel(np.log(final), np.log(base))
        ci, sim = ref.confidence_interval(0.95), ref.confidence_interval(1 - 0.05 / 4)  # Bonferroni over the 4 rows
        assert row["ratio"].value == pytest.approx(math.exp(np.log(final / base).mean()))
        assert (row["ratio"].lo, row["ratio"].hi) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
        assert (row["ratio_simultaneous"].lo, row["ratio_simultaneous"].hi) == pytest.approx((math.exp(sim.low), math.exp(sim.high)))
        assert row["p"] == pytest.approx(ref.pvalue) and row["n"] == 10 and row["lr"] == RATE[s]
        assert row["metric"] == "integrated_excess_ema"
        pvals.append(ref.pvalue)
        rows.append((budget, s))
    order = np.argsort(pvals)  # Holm by hand over the whole table: sorted p times 4, 3, 2, 1, running maximum
    want = np.empty(4)
    want[order] = np.minimum(1, np.maximum.accumulate(np.array(pvals)[order] * [4, 3, 2, 1]))
    np.testing.assert_allclose([tab.loc[k, "p_holm"] for k in rows], want)
    assert not np.allclose(want, holm(np.array(pvals[:2])).tolist() + holm(np.array(pvals[2:])).tolist())  # not per budget
    sp = tab.loc[(300, "stratified"), "speedup_steps"]
    assert sp.censored == 3 and tab.loc[(300, "stratified"), "reached"] == 7 and sp.value == pytest.approx(np.median(R[(300, "stratified")]))
    slow = tab.loc[(1000, "arcsine(floor=0.05, reweight=True)"), "speedup_steps"]  # slower: no seed reaches in the budget
    assert slow.censored == 10 and np.isnan(slow.value) and (slow.lo, slow.hi) == (0.0, 1.0)  # bounded by budget / budget
    assert tab.loc[(1000, "stratified"), "speedup_steps"].value == pytest.approx(1.2)
    # no sampler here costs extra passes: the speed-up per FLOP is the one per step
    for key in rows:
        flops, steps = tab.loc[key, "speedup_flops"], tab.loc[key, "speedup_steps"]
        assert (flops.value, flops.lo, flops.hi) == pytest.approx((steps.value, steps.lo, steps.hi), nan_ok=True)


def test_sigma_table_and_a_group_without_the_baseline():
    cells = {(sg, s): planted_cell(R[(1000, s)] if s != "uniform" else np.ones(10)) for sg in (0.0, 1.0) for s in RATE}
    ds = grid(cells, ["sigma", "sampler"], fixed={"benchmark": "gmm8", "batch_size": 64, "hidden": 16, "depth": 2, "lr": 0.01})
    tab = sigma_table(ds, flops=False)
    assert tab.index.names == ["sigma", "sampler"] and len(tab) == 4 and "speedup_flops" not in tab
    assert (tab["lr"] == 0.01).all()
    assert tab.loc[(0.0, "stratified"), "ratio"].value == pytest.approx(tab.loc[(1.0, "stratified"), "ratio"].value)
    with pytest.raises(ValueError, match="axis='steps' is not allowed"):
        budget_table(ds)
    gap = ds.copy(deep=True)
    gap["cell_id"].loc[{"sigma": 1.0, "sampler": "uniform"}] = ""
    with pytest.raises(ValueError, match=r"without the baseline 'uniform' is not allowed"):
        sigma_table(gap)
    with pytest.raises(ValueError, match="baseline='nope' is not allowed"):
        list(comparison_groups(ds, baseline="nope"))


def test_the_held_out_objective_ranks_where_there_is_no_oracle():
    cells = {(s,): planted_cell(R[(1000, s)] if s != "uniform" else np.ones(10)) for s in RATE}
    ds = grid(cells, ["sampler"])
    ds["integrated_excess_ema"] = ds["integrated_excess_ema"] * np.nan
    (labels, group, metric), = comparison_groups(ds)
    assert metric == "heldout_objective_ema" and labels == {}


def test_holm_counts_count_only_unbiased_rows_significant_after_holm():
    from fmstudy.analysis import Estimate
    from fmstudy.sweeps import holm_counts

    def e(v):
        return Estimate(v, v, v, 10, 0.95)

    t = pd.DataFrame({"ratio": [e(0.8), e(1.2), e(0.9), e(0.7)], "p": [0.001, 0.001, 0.001, 0.001],
                      "p_holm": [0.01, 0.04, 0.2, 0.01], "unbiased": [True, True, True, False]})
    assert holm_counts(t) == (1, 1, 3)  # the fourth keeps no objective; the third is not significant after Holm
    assert holm_counts(t.drop(columns=["p_holm", "unbiased"])) == (3, 1, 4)  # without Holm: the raw p

    # only the ratios' own p: Holm over the 3 unbiased rows, by hand: sorted p 0.01, 0.02, 0.03
    # times 3, 2, 1 -> 0.03, 0.04, 0.04 (running max), all under 0.05
    def ep(v, p):
        return Estimate(v, v, v, 10, 0.95, p=p)

    own = pd.DataFrame({"ratio": [ep(0.8, 0.02), ep(1.2, 0.01), ep(0.9, 0.03), ep(0.7, 0.0)], "unbiased": [True, True, True, False]})
    assert holm_counts(own) == (2, 1, 3)
    own["ratio"] = [ep(0.8, 0.02), ep(1.2, 0.01), ep(0.9, 0.04), ep(0.7, 0.0)]  # 0.04 x 1 = 0.04, still; 0.02 x 2 = 0.04
    assert holm_counts(own) == (2, 1, 3)
    own["ratio"] = [ep(0.8, 0.03), ep(1.2, 0.01), ep(0.9, 0.04), ep(0.7, 0.0)]  # 0.03 x 2 = 0.06: no longer below 0.05
    assert holm_counts(own) == (0, 1, 3)


def test_holm_names_name_the_significant_samplers_with_their_rows():
    from fmstudy.analysis import Estimate
    from fmstudy.sweeps import holm_names

    def e(v):
        return Estimate(v, v, v, 10, 0.95)

    idx = pd.MultiIndex.from_tuples([(0.0, "var_opt"), (1.0, "var_opt"), (0.0, "logit_normal(m=0.0)"), (1.0, "grad_norm"), (2.0, "var_opt"),
                                     (0.0, "stratified")], names=["sigma", "sampler"])
    t = pd.DataFrame({"ratio": [e(0.8), e(0.9), e(1.3), e(0.7), e(0.95), e(float("nan"))], "p_holm": [0.01, 0.02, 0.001, 0.04, 0.3, 0.01],
                      "unbiased": [True, True, True, True, True, True]}, index=idx)
    assert holm_names(t, -1) == "var_opt (2), grad_norm (1)"  # sigma 2's var_opt is not significant; a NaN ratio is neither side
    assert holm_names(t, +1) == "logit_normal (1)"
    assert holm_names(t.assign(p_holm=0.5), -1) == "none"
