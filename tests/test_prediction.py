"""The central figure's data (fmstudy.prediction) on planted grids: the account's predicted
speed-up (4.6) from closed forms, the measured speed-up and ratio as planted, objective-changing
samplers left out, and the correlation over points against scipy."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from planted import SPREAD, grid
from planted import cell as planted_cell
from scipy import stats

from fmstudy import plots
from fmstudy.analysis import Estimate
from fmstudy.prediction import beyond_ceiling_text, predicted_vs_measured, prediction_correlation, setting_text, without


def S(r: float) -> float:
    """(4.6) with B_noise = 64 = B, as in every planted cell: (1 + 1) / (1 + 1 / r)."""
    return 2 / (1 + 1 / r)


SAMPLERS = {  # label -> (planted account, measured centre of the speed-up per sigma)
    "arcsine(floor=0.05, reweight=True)": ({"gain": 1.5}, {0.0: 1.1, 1.0: 1.3}),
    "stratified": ({"gain": 1.0, "v_strat": 32.0}, {0.0: 1.2, 1.0: 1.4}),  # V(U)/V_strat = 64 / 32 = 2
    "var_opt": ({"gain": 3.0}, {0.0: 1.25, 1.0: 1.6}),
    "logit_normal(reweight=False)": ({"gain": 5.0, "unbiased": 0.0}, {0.0: 2.0, 1.0: 2.0}),
}


def _sigma_grid():
    cells = {}
    for sg in (0.0, 1.0):
        cells[(sg, "uniform")] = planted_cell(np.ones(10), ceiling=4.0)
        for s, (account, centre) in SAMPLERS.items():
            cells[(sg, s)] = planted_cell(centre[sg] * SPREAD, ceiling=4.0, **account)
    return grid(cells, ["sigma", "sampler"], fixed={"benchmark": "gmm8", "batch_size": 64, "steps": 1000, "lr": 0.01})


def _budget_grid():
    cells = {(1000, "uniform"): planted_cell(np.ones(10)), (1000, "var_opt"): planted_cell(1.5 * SPREAD, gain=2.0)}
    return grid(cells, ["steps", "sampler"], fixed={"benchmark": "gmm-d", "benchmark_options": {"dim": 8, "seed": 1}, "batch_size": 64,
                                                    "sigma": 1.0})


def test_predicted_and_measured_from_the_planted_account_and_curves():
    table = predicted_vs_measured({"sigma": _sigma_grid(), "budget": _budget_grid()})
    assert len(table) == 3 * 2 + 1 and "logit_normal(reweight=False)" not in set(table["sampler"]) and "uniform" not in set(table["sampler"])
    gain = {"arcsine(floor=0.05, reweight=True)": 1.5, "stratified": 2.0, "var_opt": 3.0}
    for _, row in table[table["dataset"] == "sigma"].iterrows():
        r = SAMPLERS[row["sampler"]][1][row["sigma"]] * SPREAD
        assert row["gain"] == pytest.approx(gain[row["sampler"]]) and row["predicted"] == pytest.approx(S(gain[row["sampler"]]))
        assert row["ceiling"] == 4.0 and row["predicted_R"] == pytest.approx(S(4.0)) and row["B_noise / B"] == pytest.approx(1.0)
        assert row["speedup_steps"].value == pytest.approx(SAMPLERS[row["sampler"]][1][row["sigma"]])
        assert row["ratio"].value == pytest.approx(math.exp(np.mean(np.log((1 - 0.4 * r) / 0.6))))
        assert row["n"] == 10 and row["steps"] == 1000 and row["benchmark"] == "gmm8" and row["lr"] == 0.01
    assert set(table.loc[table["sampler"] == "stratified", "draws"]) == {"stratified"}
    budget = table[table["dataset"] == "budget"].iloc[0]
    assert budget["steps"] == 1000 and budget["sigma"] == 1.0 and budget["benchmark_options"] == "dim=8, seed=1"
    assert budget["predicted"] == pytest.approx(S(2.0)) and budget["speedup_steps"].value == pytest.approx(1.5)


def test_a_cell_two_datasets_share_is_one_point():
    sigma = _sigma_grid()
    again = predicted_vs_measured({"sigma": sigma, "compare": sigma.sel(sigma=[1.0])})  # the sigma = 1 cells twice
    assert len(again) == 3 * 2 and set(again["dataset"]) == {"sigma"} and again["cell_id"].is_unique


def test_correlation_over_points_against_scipy_and_a_direct_bootstrap():
    table = predicted_vs_measured([_sigma_grid(), _budget_grid()])
    got = prediction_correlation(table, n_boot=500, seed=3, cluster=None)
    # the points, from the closed forms, not from the table
    x = [S(g) for g in (1.5, 1.5, 2.0, 2.0, 3.0, 3.0, 2.0)]
    y = [1.1, 1.3, 1.2, 1.4, 1.25, 1.6, 1.5]
    x_t, y_t = table["predicted"].to_numpy(), table["speedup_steps"].map(lambda e: e.value).to_numpy()
    assert sorted(zip(np.round(x_t, 12), np.round(y_t, 12))) == sorted(zip(np.round(x, 12), np.round(y, 12)))
    ref = stats.pearsonr(np.log(x), np.log(y))
    assert got["pearson"].value == pytest.approx(ref.statistic) and got["pearson"].p == pytest.approx(ref.pvalue)
    assert got["spearman"].value == pytest.approx(stats.spearmanr(x, y).statistic)
    assert got["points"] == 7 and got["left_out"] == 0 and got["pearson"].n == 7 and "7 points" in got["pearson"].text()
    # the bootstrap interval: the same resampled points, correlated one by one with scipy
    lx, ly = np.log(x_t), np.log(y_t)
    idx = np.random.default_rng(3).integers(0, 7, size=(500, 7))
    boot = []
    for i in idx:
        if np.ptp(lx[i]) > 0 and np.ptp(ly[i]) > 0:
            boot.append(stats.pearsonr(lx[i], ly[i]).statistic)
    assert (got["pearson"].lo, got["pearson"].hi) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_the_cluster_bootstrap_resamples_whole_settings():
    """Each point repeated 4 times in its own setting: Pearson and Spearman (average ranks) of a
    multiset replicated k times equal the multiset's, so resampling the settings of the
    replicated table gives, pick for pick, the point bootstrap of the table itself; a point
    bootstrap of the replicated table (treating copies as independent) is far narrower."""
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(0, 0.3, 9))
    y = x * np.exp(rng.normal(0, 0.2, 9))
    base = pd.DataFrame({"predicted": x, "speedup_steps": [Estimate(v, 0, 9, 10) for v in y], "setting": range(9)})
    copies = pd.concat([base] * 4, ignore_index=True)
    ref = prediction_correlation(base, n_boot=400, seed=5, cluster=None)
    got = prediction_correlation(copies, n_boot=400, seed=5, cluster=["setting"])
    assert got["points"] == 36 and got["clusters"] == 9 and "settings" in got["pearson"].method
    for name in ("pearson", "spearman"):
        assert got[name].value == pytest.approx(ref[name].value)
        assert (got[name].lo, got[name].hi) == pytest.approx((ref[name].lo, ref[name].hi))
    naive = prediction_correlation(copies, n_boot=400, seed=5, cluster=None)["pearson"]
    assert naive.hi - naive.lo < 0.7 * (got["pearson"].hi - got["pearson"].lo)
    two = copies.assign(extra=np.arange(36) % 2)  # clusters keyed by two columns: 9 settings x 2
    assert prediction_correlation(two, n_boot=100, cluster=["setting", "extra"])["clusters"] == 18
    with pytest.raises(ValueError, match=r"cluster=\['nope'\] is not allowed: columns \['nope'\] are not in the table"):
        prediction_correlation(base, cluster=["nope"])


def test_correlation_of_a_perfect_prediction_and_of_too_few_points():
    perfect = pd.DataFrame({"predicted": [1.1, 1.5, 2.0, 3.0], "speedup_steps": [Estimate(v ** 2, 0, 9, 10) for v in (1.1, 1.5, 2.0, 3.0)]})
    got = prediction_correlation(perfect, n_boot=200, cluster=None)
    assert got["pearson"].value == pytest.approx(1.0) and got["pearson"].lo == pytest.approx(1.0) and got["spearman"].hi == pytest.approx(1.0)
    ratio = pd.DataFrame({"predicted": [1.1, 1.5, 2.0], "ratio": [Estimate(1 / v, 0, 9, 10) for v in (1.2, 1.1, 3.0)]})
    assert prediction_correlation(ratio, measured="ratio", n_boot=200, cluster=None)["spearman"].value == pytest.approx(0.5)  # 1 / ratio ranks 2, 1, 3
    hidden = perfect.assign(speedup_steps=[Estimate(math.nan, 0, 2, 10, censored=6)] * 2 + list(perfect["speedup_steps"][2:]))
    few = prediction_correlation(hidden, n_boot=200, cluster=None)
    assert few["points"] == 2 and few["left_out"] == 2 and math.isnan(few["pearson"].value)
    with pytest.raises(ValueError, match="n_boot"):
        prediction_correlation(perfect, n_boot=5, cluster=None)


def test_the_central_figure_draws_every_identified_point_with_its_interval_and_the_identity():
    table = predicted_vs_measured({"sigma": _sigma_grid()})
    table.loc[0, "speedup_steps"] = Estimate(math.nan, 0.0, 2.0, 10, censored=6)  # hidden by censoring
    ax = plots.predicted_vs_measured(table)
    drawn = {c.get_label(): c.lines for c in ax.containers}
    assert sum(len(lines[0].get_xdata()) for lines in drawn.values()) == 5 and "1 not identified (1 as bounds)" in ax.get_title()
    bounds = [c for c in ax.collections if c.get_label() == "not reached: upper bound"][0]
    np.testing.assert_allclose(bounds.get_offsets(), [[table.loc[0, "predicted"], 2.0]])  # at the interval's upper end
    var_opt = drawn["var_opt, gmm8"]
    np.testing.assert_allclose(var_opt[0].get_xdata(), [S(3.0)] * 2)
    np.testing.assert_allclose(var_opt[0].get_ydata(), [1.25, 1.6])
    segs = var_opt[2][0].get_segments()
    want = table[table["sampler"] == "var_opt"]["speedup_steps"]
    np.testing.assert_allclose([(s[0][1], s[1][1]) for s in segs], [(e.lo, e.hi) for e in want])
    identity = [ln for ln in ax.get_lines() if ln.get_label() == "measured = predicted"][0]
    assert np.allclose(identity.get_xdata(), identity.get_ydata()) and ax.get_xscale() == "log" and ax.get_yscale() == "log"
    matplotlib.pyplot.close("all")


def test_beyond_ceiling_counts_and_names_the_settings_above_the_predicted_ceiling():
    pvm = pd.DataFrame({"sampler": ["var_opt", "oracle_qstar", "grad_norm", "uniform"], "dataset": ["sigma"] * 4, "sigma": [0.5] * 4,
                        "predicted_R": [1.111, 1.124, 1.12, 1.0],
                        "speedup_steps": [Estimate(1.21, 1.16, 1.32, 10), Estimate(1.13, 1.05, 1.3, 10), Estimate(1.0, 0.9, 1.1, 10), None]})
    # var_opt: lower bound 1.16 > 1.111 (beyond); oracle_qstar: 1.13 > 1.124 > 1.05 (point only); grad_norm: no; uniform: n/a
    assert beyond_ceiling_text(pvm) == (
        "1 of 3 measured step speed-ups exceed the ceiling's predicted speed-up beyond their interval (var_opt on σ = 0.5), "
        "1 more in the point estimate only")
    # with its setting recorded, the point is named by it in words
    full = pvm.assign(benchmark="gmm-d", benchmark_options="dim=8, seed=0", steps=1000.0)
    assert "(var_opt on gmm-d (dim=8, seed=0), σ = 0.5, 1,000 steps)" in beyond_ceiling_text(full)
    assert beyond_ceiling_text(pvm.iloc[:0]) == "not measured in this profile"


def test_setting_text_and_without_by_hand():
    row = pd.Series({"benchmark": "gmm8", "benchmark_options": np.nan, "sigma": 0.0, "steps": 10000.0})
    assert setting_text(row) == "gmm8, σ = 0, 10,000 steps"
    assert setting_text(pd.Series({"benchmark": "digits", "benchmark_options": "", "sigma": 0.5})) == "digits, σ = 0.5"
    assert setting_text(pd.Series({"sigma": np.nan})) == ""
    table = pd.DataFrame({"sampler": ["logit_normal(m=0.0, reweight=True)", "var_opt", "logit_normal_x"], "predicted": [0.2, 1.1, 1.0]})
    assert list(without(table, ["logit_normal"])["sampler"]) == ["var_opt", "logit_normal_x"]  # options dropped, names whole
    assert len(without(table, [])) == 3 and without(table.iloc[:0], ["var_opt"]).empty
    with pytest.raises(ValueError, match="give a sequence of sampler names"):
        without(table, "var_opt")
