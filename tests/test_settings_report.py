"""Chapter 7's report layer (fmstudy.settings_tuning, fmstudy.settings_report) on small planted
grids and hand-made tables: the tuning check and its sentences, the other benchmarks' tables
and Holm sums, the predicted-against-measured summary and calibration, and the real-data
sample-quality table, each against values worked out by hand."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from planted import SPREAD, grid
from planted import cell as planted_cell
from scipy import stats

from fmstudy import settings_report as sr
from fmstudy import settings_tuning as st
from fmstudy.analysis import Estimate

RATES = [0.003, 0.01, 0.03]
NOISE = np.array([-0.01, 0.0, 0.01])  # three tuning seeds with mean 0: a cell's mean is its level


def _cell(level: float, exact: float, seeds: np.ndarray, ran: bool = True) -> xr.Dataset:
    """One collected cell: held-out objective and exact excess end at ``level`` and ``exact`` (+ noise)."""
    n = len(seeds)
    noise = np.resize(NOISE, n)
    ds = xr.Dataset(
        {
            "heldout_objective_ema": (("member", "checkpoint"), np.stack([np.full(n, 2.0), level + noise], axis=1)),
            "integrated_excess_ema": (("member", "checkpoint"), np.stack([np.full(n, 2.0), exact + noise], axis=1)),
            "diverged_step": (("member",), np.full(n, -1.0)),
            "cell_id": ((), "c"),
        },
        coords={"member": seeds, "checkpoint": [0, 1000]},
    )
    return ds if ran else ds.assign(cell_id=((), ""))


def _merge(cells: dict[tuple, xr.Dataset], axes: dict[str, list], fixed: dict) -> xr.Dataset:
    parts = [c.assign(cell_id=((), "|".join(map(str, k)) if str(c["cell_id"].values) else "")).expand_dims(
        {a: [v] for a, v in zip(axes, k)}) for k, c in cells.items()]
    ds = xr.merge(parts, join="outer", compat="no_conflicts")
    ds["cell_id"] = ds["cell_id"].fillna("").astype(str)
    ds.attrs["fixed"] = json.dumps(fixed)
    return ds.reindex(axes)


# planted: uniform's held-out objective is lowest at 0.01 (interior) but its exact excess at 0.003
# (0.2 there against 0.3 at 0.01: cost 1.5, the rule's rate the higher); arcsine's both at 0.03 (an edge; cost 1)
HELD = {"uniform": {0.003: 1.0, 0.01: 0.5, 0.03: 0.8}, "arcsine": {0.003: 1.0, 0.01: 0.7, 0.03: 0.4}}
EXACT = {"uniform": {0.003: 0.2, 0.01: 0.3, 0.03: 0.6}, "arcsine": {0.003: 0.9, 0.01: 0.6, 0.03: 0.1}}


def _tune() -> xr.Dataset:
    cells = {(s, lr): _cell(HELD[s][lr], EXACT[s][lr], np.arange(100, 103)) for s in HELD for lr in RATES}
    return _merge(cells, {"sampler": list(HELD), "lr": RATES}, {"benchmark": "gmm8", "sigma": 1.0})


def _evaluation(rates: dict[str, float], seeds=np.arange(10)) -> xr.Dataset:
    """A zipped sampler+lr grid over two sigmas, each sampler run at ``rates[sampler]`` only."""
    lrs = sorted(set(rates.values()))
    cells = {(s, lr, sg): _cell(0.5, 0.5, seeds, ran=lr == run) for s, run in rates.items() for lr in lrs for sg in (0.0, 1.0)}
    return _merge(cells, {"sampler": list(rates), "lr": lrs, "sigma": [0.0, 1.0]}, {"benchmark": "gmm8"})


BY = {"compare": (("tune-a",), None), "budget": (("tune-a",), None), "sigma": (("tune-a",), None), "weighting": (("tune-b",), None)}


def test_tuning_names_each_once_in_the_order_first_named():
    assert st.tuning_names() == ["tune-gmm8", "tune-gmm8-rb", "tune-gmm8-weighting", "tune-gmm-d", "tune-checkerboard", "tune-digits", "tune-mnist1d"]
    assert st.tuning_names(BY) == ["tune-a", "tune-b"]


def test_check_tuning_counts_distinct_cells_and_the_rules_cost():
    ev = _evaluation({"uniform": 0.01, "arcsine": 0.03})
    # compare and budget hold the same 4 cells (2 samplers x 2 sigmas): 4 distinct; sigma did not run; tune-b did not run
    tuned, checked, cost = st.check_tuning({"compare": ev, "budget": ev, "sigma": None}, {"tune-a": _tune(), "tune-b": None}, BY)
    assert list(tuned) == ["tune-a"] and checked == 4
    lr = tuned["tune-a"]["lr"].droplevel("benchmark")
    assert lr["uniform"] == 0.01 and lr["arcsine"] == 0.03
    assert list(cost["tuning"]) == ["tune-a", "tune-a"]
    assert cost.loc["uniform", "lr_best"] == 0.003 and cost.loc["uniform", "cost"] == pytest.approx(0.3 / 0.2)
    assert cost.loc["arcsine", "cost"] == pytest.approx(1.0)
    assert st.cost_texts(cost) == {"agree": "1 of 2", "higher": "1 of 1", "max": "1.5", "worst": "uniform"}
    edges = st.edge_rates(tuned)  # arcsine's 0.03 is the largest candidate; uniform's 0.01 is inside
    assert edges == [("tune-a", ("arcsine", "gmm8"), 0.03)]
    assert st.edge_text(edges) == "tune-a: arcsine, gmm8 at 0.03" and st.edge_text([]) == "none"
    assert st.candidates_text(tuned) == "3"
    none = st.check_tuning({"compare": ev}, {"tune-a": None, "tune-b": None}, BY)
    assert none.tuned == {} and none.checked == 0 and none.cost.empty


def test_check_tuning_refuses_tuning_seeds_and_cells_off_their_rate():
    with pytest.raises(RuntimeError, match=r"^compare: tuned on its own evaluation seeds \[100, 101\]$"):
        st.check_tuning({"compare": _evaluation({"uniform": 0.01}, seeds=np.arange(95, 102))}, {"tune-a": _tune()}, BY)
    with pytest.raises(RuntimeError, match=r"^evaluation cells not at their tuned rate:\n") as err:
        st.check_tuning({"compare": _evaluation({"uniform": 0.03, "arcsine": 0.03})}, {"tune-a": _tune()}, BY)
    assert str(err.value).count("ran at another rate than the rule's choice") == 2  # uniform at both sigmas


def test_cost_texts_and_candidates_on_hand_made_tables():
    idx = pd.MultiIndex.from_tuples([("dim=8", "uniform"), ("dim=8", "var_opt"), ("dim=32", "var_opt")])
    cost = pd.DataFrame({"lr_rule": [0.01, 0.03, 0.003], "lr_best": [0.01, 0.01, 0.01], "cost": [1.0, 1.04, 1.3]}, index=idx)
    # two off the best rate: one above (0.03 > 0.01), one below; the worst row's first level is named
    assert st.cost_texts(cost) == {"agree": "1 of 3", "higher": "1 of 2", "max": "1.3", "worst": "dim=32"}
    assert st.cost_texts(cost.iloc[:1])["higher"] == "n/a"
    assert st.cost_texts(pd.DataFrame()) == dict.fromkeys(("agree", "higher", "max", "worst"), "n/a")
    assert st.candidates_text({"a": pd.DataFrame({"rates": [(1, 2, 3, 4), (1, 2, 3)]}), "b": pd.DataFrame({"rates": [(1, 2, 3)]})}) == "3 or 4"
    assert st.candidates_text({}) == "n/a"


def test_rates_table_blanks_the_axes_a_tuning_grid_lacks():
    a = pd.DataFrame({"sampler": ["uniform"], "lr": [0.01], "rates": [(0.01, 0.03)], "n": [3], "eligible": [2]}).set_index("sampler")
    b = pd.DataFrame({"weighting": ["uncertainty"], "lr": [0.03], "rates": [(0.01, 0.03)], "n": [3]}).set_index("weighting")
    t = st.rates_table({"tune-a": a, "tune-b": b})
    assert t.index.names == ["tuning", "sampler", "weighting"] and list(t.columns) == ["lr", "rates", "n"]
    assert list(t.index) == [("tune-a", "uniform", ""), ("tune-b", "", "uncertainty")] and list(t["lr"]) == [0.01, 0.03]
    assert st.rates_table({}) is None


def _ratio(r) -> float:
    """A planted cell's geometric-mean ratio to a baseline with r = 1: exp mean log((1 - 0.4 r) / 0.6)."""
    return math.exp(np.mean(np.log((1 - 0.4 * np.asarray(r)) / 0.6)))


def test_table_over_one_group_holm_and_seeds_reaching_uniform():
    cells = {("uniform",): planted_cell(np.ones(10)), ("var_opt",): planted_cell(1.5 * SPREAD), ("arcsine",): planted_cell(0.5 * SPREAD)}
    t = sr.table_over(grid(cells, ["sampler"]), "benchmark")  # benchmark is fixed, not an axis: the one group's table
    assert t.loc["var_opt", "ratio"].value == pytest.approx(_ratio(1.5 * SPREAD))
    # a seed reaches uniform's final 0.6 c only with r >= 1: every var_opt seed, no arcsine seed
    assert t.loc["var_opt", "reached"] == 10 and t.loc["arcsine", "reached"] == 0
    p = t["p"].sort_values()  # Holm over 2: the smaller times 2, the larger at least that
    assert t.loc[p.index[0], "p_holm"] == pytest.approx(min(1, 2 * p.iloc[0]))
    assert t.loc[p.index[1], "p_holm"] == pytest.approx(min(1, max(2 * p.iloc[0], p.iloc[1])))
    assert sr.table_over(grid({("uniform",): planted_cell(np.ones(10))}, ["sampler"]), "benchmark").empty


def test_table_over_a_swept_axis_and_an_axis_it_lacks():
    cells = {(sg, s): planted_cell(r) for sg in (0.0, 1.0) for s, r in (("uniform", np.ones(10)), ("var_opt", 1.2 * SPREAD))}
    ds = grid(cells, ["sigma", "sampler"])
    t = sr.table_over(ds, "sigma")
    assert t.index.names == ["sigma", "sampler"] and len(t) == 2 and list(t["reached"]) == [10, 10]
    with pytest.raises(ValueError, match=r"^axis='benchmark' is not allowed: .* 2 groups"):
        sr.table_over(ds, "benchmark")


def test_other_tables_keep_what_ran_with_a_comparison_and_holm_sums_per_table():
    toys = grid({("uniform",): planted_cell(np.ones(10)), ("var_opt",): planted_cell(1.5 * SPREAD)}, ["sampler"])
    alone = grid({("uniform",): planted_cell(np.ones(10))}, ["sampler"])
    got = sr.other_tables({"toys": toys, "gmm-d": alone, "sigma": toys})
    assert list(got) == ["toys"] and list(got["toys"].index) == ["var_opt"]
    with pytest.raises(ValueError, match=r"^names=\['weighting'\] is not allowed"):
        sr.other_tables({}, ["weighting"])

    def table(rows):  # (ratio, p_holm, unbiased) per row
        return pd.DataFrame({"ratio": [Estimate(r, r, r, 10) for r, _, _ in rows], "p_holm": [p for _, p, _ in rows],
                             "unbiased": [u for _, _, u in rows]})

    # table a: one better (0.8, p 0.01), one not significant; table b: one worse (1.3, p 0.001), a biased row not counted
    a, b = table([(0.8, 0.01, True), (0.9, 0.2, True)]), table([(1.3, 0.001, True), (0.5, 0.001, False)])
    assert sr.holm_total({"a": a, "b": b}) == (1, 1, 3) and sr.holm_total({}) == (0, 0, 0)


def test_final_gain_and_calibration_by_hand():
    pvm = pd.DataFrame({"ratio": [Estimate(0.8, 0.5, 1.0, 10)]})
    g = sr.with_final_gain(pvm)["final gain"].iloc[0]
    assert (g.value, g.lo, g.hi, g.n) == pytest.approx((1.25, 1.0, 2.0, 10))
    assert "final gain" not in pvm and sr.with_final_gain(pd.DataFrame()).empty
    # measured over predicted: 1.2 / 1 = 1.2, NaN (unidentified), 1.5 / 1.25 = 1.2, 2 / 1 = 2
    sp = pd.DataFrame({"speedup_steps": [Estimate(v, 0, 9, 10) for v in (1.2, math.nan, 1.5, 2.0)], "predicted": [1.0, 1.1, 1.25, 1.0]})
    assert sr.calibration_text(sp) == "1.20 (range 1.20 to 2.00, 3 points)"
    assert sr.calibration_text(sp.iloc[[1]]) == "n/a"


def _pvm() -> pd.DataFrame:
    """Four settings (one point each): final gain 1 / ratio = predicted x, so log-log Pearson and
    Spearman are 1; the measured step speed-up x^2 where identified (three points), NaN on the fourth."""
    x = np.array([1.1, 1.3, 1.6, 2.0])
    return pd.DataFrame({
        "dataset": "sigma", "benchmark": "gmm8", "benchmark_options": np.nan, "sigma": [0.0, 0.5, 1.0, 2.0], "steps": 1000.0,
        "sampler": "var_opt", "metric": ["integrated_excess_ema"] * 3 + ["heldout_objective_ema"],
        "gain": x, "B_noise / B": 1.0, "predicted": x, "predicted_R": [1.5, 1.7, 1.8, 2.4],
        "speedup_steps": [Estimate(v, 0, 9, 10) for v in (1.21, 1.69, 2.56, math.nan)],
        "ratio": [Estimate(1 / v, 1 / v, 1 / v, 10) for v in x], "n": 10,
    })


def test_prediction_summary_by_hand():
    s = sr.prediction_summary(_pvm())
    assert list(s) == list(sr.SUMMARY)
    assert {k: s[k] for k in ("pts", "sp_pts", "clusters", "sp_clusters", "or_pts")} == {
        "pts": (4, "d"), "sp_pts": (3, "d"), "clusters": (4, "d"), "sp_clusters": (3, "d"), "or_pts": (3, "d")}
    for k in ("ra_pearson", "ra_spearman", "sp_pearson", "or_pearson"):
        assert s[k][0].value == pytest.approx(1.0) and s[k][1] == ".2f"
    assert s["or_pearson"][0].n == 3 and s["ra_pearson"][0].n == 4
    # measured over predicted: 1.21 / 1.1 = 1.1, 1.69 / 1.3 = 1.3, 2.56 / 1.6 = 1.6
    assert s["calib"] == ("1.30 (range 1.10 to 1.60, 3 points)", ".3g")
    assert s["pred_max"] == (2.0, "#.3g") and s["ceiling_max"] == (2.4, "#.3g")
    # one point's median is not identified (the fourth, predicted 2.0: not below 1); no logit-normal point to leave out
    assert s["calib_out"] == (1, "d") and s["calib_out_below"] == (0, "d")
    assert s["wo_pts"] == (4, "d") and s["wo_out"] == (0, "d") and s["wo_pearson"][0].value == pytest.approx(1.0)
    assert sr.prediction_summary(_pvm().iloc[2:])["or_pearson"] == ("n/a", ".2f")  # one oracle point
    assert sr.prediction_summary(pd.DataFrame()) == {k: ("n/a", ".3g") for k in sr.SUMMARY}
    t = sr.pvm_table(_pvm())
    assert t.index.names == ["dataset", "sampler"]
    assert list(t.columns) == ["benchmark", "benchmark_options", "sigma", "steps", "r (gain)", "B_noise / B", "S(r) predicted",
                               "S(R) predicted", "speedup_steps [95% CI]", "ratio [95% CI]", "n", "above R's prediction"]
    # 3 significant figures with trailing zeros: 1 / 1.1 = 0.90909..., predicted 1.1 -> "1.10", S(R) 1.5 -> "1.50"
    assert t["ratio [95% CI]"].iloc[0] == "0.909 [0.909, 0.909]"
    assert list(t["S(r) predicted"]) == ["1.10", "1.30", "1.60", "2.00"] and list(t["S(R) predicted"]) == ["1.50", "1.70", "1.80", "2.40"]
    assert list(t["sigma"]) == ["0", "0.5", "1", "2"] and list(t["steps"]) == ["1,000"] * 4 and list(t["benchmark_options"]) == [""] * 4
    # measured 1.21, 1.69, 2.56 [0, 9], NaN against R's predicted 1.5, 1.7, 1.8, 2.4
    assert list(t["above R's prediction"]) == ["no", "no", "point estimate only", "n/a"]


def test_prediction_summary_without_the_logit_normal_cluster_and_the_calibrations_scope():
    # two logit-normal points far below (predicted 0.3, 0.5, never reaching uniform) join the four of _pvm
    ln = _pvm().iloc[:2].assign(sampler="logit_normal(reweight=True)", predicted=[0.3, 0.5], gain=[0.3, 0.5],
                                speedup_steps=[Estimate(math.nan, 0, 1, 10, below=1.0)] * 2,
                                ratio=[Estimate(v, v, v, 10) for v in (3.0, 1.5)])
    pvm = pd.concat([_pvm(), ln], ignore_index=True)
    s = sr.prediction_summary(pvm)
    # left out of the calibration: the two logit-normal points (both predicted below 1) and _pvm's fourth
    assert s["calib_out"] == (3, "d") and s["calib_out_below"] == (2, "d")
    assert s["calib"][0] == "1.30 (range 1.10 to 1.60, 3 points)"
    # without them: _pvm's four points, whose final gain is the prediction itself (Pearson 1); with them, scipy's on logs
    assert s["wo_out"] == (2, "d") and s["wo_pts"] == (4, "d") and s["wo_pearson"][0].value == pytest.approx(1.0)
    x = np.r_[[1.1, 1.3, 1.6, 2.0], [0.3, 0.5]]
    y = np.r_[[1.1, 1.3, 1.6, 2.0], [1 / 3.0, 1 / 1.5]]
    assert s["ra_pearson"][0].value == pytest.approx(stats.pearsonr(np.log(x), np.log(y)).statistic)


def test_pvm_parts_show_every_row_of_each_sub_grid_with_its_fixed_settings_in_the_title():
    budget = _pvm().iloc[:2].assign(dataset="budget", sigma=1.0, steps=[300.0, 3000.0])
    parts = sr.pvm_parts(pd.concat([_pvm(), budget], ignore_index=True))
    assert [title for title, _ in parts] == ["sigma (gmm8, 1,000 steps)", "budget (gmm8, σ = 1)"]
    sigma, bud = parts[0][1], parts[1][1]
    assert sigma.index.names == ["σ", "sampler"] and len(sigma) == 4 and "benchmark" not in sigma and "steps" not in sigma
    assert list(sigma.index) == [("0", "var_opt"), ("0.5", "var_opt"), ("1", "var_opt"), ("2", "var_opt")]
    assert bud.index.names == ["steps", "sampler"] and list(bud.index.get_level_values("steps")) == ["300", "3,000"]
    assert "R (ceiling)" not in sigma  # _pvm has no ceiling column; a real table has
    assert sr.pvm_parts(pd.DataFrame()) == []
    with_r = sr.pvm_table(_pvm().assign(ceiling=[1.25, 1.5, 2.0, 3.0]))
    assert list(with_r["R (ceiling)"]) == ["1.25", "1.50", "2.00", "3.00"]


def _real(axis: bool = True) -> xr.Dataset:
    """Digits at two sigmas (the last one is read): uniform's Fréchet distance 10..19 over the seeds;
    var_opt's 1 lower on seeds 0-6 and 1 higher on 7-9; its held-out objective 0.9 of uniform's;
    arcsine did not run. At the first sigma every distance is 1000 (never read)."""
    fd_u = np.arange(10.0, 20.0)
    fd_v = fd_u + np.where(np.arange(10) < 7, -1.0, 1.0)
    obj = np.linspace(1.0, 2.0, 10)

    def cell(fd, sw, scale, ran=True):
        return xr.Dataset({"sample_frechet": ("member", fd), "sample_sw": ("member", sw),
                           "heldout_objective_ema": (("member", "checkpoint"), np.stack([obj + 1, scale * obj], axis=1)),
                           "floor_frechet": ((), 8.0), "floor_sw": ((), 0.05), "cell_id": ((), "c" if ran else "")},
                          coords={"member": np.arange(10), "checkpoint": [0, 1000]})

    run = {"uniform": (fd_u, np.full(10, 0.2), 1.0), "var_opt": (fd_v, np.linspace(0.1, 0.3, 10), 0.9), "arcsine": (fd_u, fd_u, 1.0)}
    cells = {}
    for s, (fd, sw, scale) in run.items():
        cells[(0.0, s)] = cell(np.full(10, 1000.0), sw, scale, s != "arcsine")
        cells[(0.5, s)] = cell(fd, sw, scale, s != "arcsine")
    ds = xr.concat([xr.concat([cells[(sg, s)] for s in run], dim=pd.Index(list(run), name="sampler")) for sg in (0.0, 0.5)],
                   dim=pd.Index([0.0, 0.5], name="sigma"))
    ds.attrs["fixed"] = json.dumps({} if axis else {"benchmark": "digits"})
    return ds.expand_dims(benchmark=["digits"]) if axis else ds


def test_sample_quality_medians_sign_test_and_worst_seed():
    real, worst = sr.sample_quality(_real())
    assert list(real["sampler"]) == ["uniform", "var_opt"] and set(real["benchmark"]) == {"digits"}
    u, v = real.iloc[0], real.iloc[1]
    # uniform: median of 10..19 = 14.5, order statistics 2 and 9 at 10 seeds: [11, 18]
    assert u["Fréchet distance (median)"] == 14.5 and u["CI"] == "11 to 18" and u["seeds below uniform's"] == ""
    assert np.isnan(u["sign test p"]) and u["held-out objective ratio to uniform"] == pytest.approx(1.0)
    # var_opt: sorted 9..15, 18, 19, 20: median 13.5, [10, 19]; 7 of 10 below: p = 2 (1 + 10 + 45 + 120) / 1024
    assert v["Fréchet distance (median)"] == 13.5 and v["CI"] == "10 to 19" and v["seeds below uniform's"] == "7 of 10"
    assert v["sign test p"] == pytest.approx(2 * 176 / 1024) and v["held-out objective ratio to uniform"] == pytest.approx(0.9)
    assert v["floor"] == 8.0 and v["sliced W2 (median)"] == pytest.approx(0.2) and v["sliced W2 floor"] == 0.05
    assert worst == (20.0, "digits", "var_opt", 13.5)
    assert sr.fd_text(real, worst) == (
        "On digits the uniform schedule's samples sit at a median classifier Fréchet distance of 14.5 against a floor of 8; "
        "the largest single-seed distance is 20 (var_opt on digits, whose median is 13.5), which is why medians are shown. "
        "Differences between schedules are to be read against the gap to the floor and the seeds' intervals.")
    fixed, _ = sr.sample_quality(_real(axis=False))  # the benchmark from the grid's fixed parameters
    assert list(fixed["benchmark"]) == ["digits", "digits"] and list(fixed["CI"]) == ["11 to 18", "10 to 19"]
    empty, none = sr.sample_quality(None)
    assert empty.empty and none is None and sr.fd_text(empty, none) == "No real-data runs in this profile."

