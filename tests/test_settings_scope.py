"""Chapter 7's and 9's statements of scope and uncertainty (fmstudy.settings_report,
fmstudy.settings_tuning), on planted grids against values worked out by hand: the rule's cost
factors and rate choices, where the rates were tuned, the benchmarks not run, the runs two
sub-grids share, the budgets' spread over seeds, the worst real-data seed, and the quadrature the
integrated excess is computed on."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from planted import SPREAD, C, grid
from planted import cell as planted_cell
from test_settings_report import BY, _evaluation, _real, _tune

from fmstudy import data
from fmstudy import settings_report as sr
from fmstudy import settings_tuning as st


def test_rule_costs_are_check_tunings_without_the_evaluation_grids():
    tune = {"tune-a": _tune(), "tune-b": None}
    _, _, cost = st.check_tuning({"compare": _evaluation({"uniform": 0.01, "arcsine": 0.03})}, tune, BY)
    pd.testing.assert_frame_equal(st.rule_costs(tune, ["tune-a", "tune-b"]), cost)
    assert st.rule_costs({"tune-a": None}, ["tune-a"]).empty


def test_cost_factor_rate_choice_and_factors_by_hand():
    cost = st.rule_costs({"tune-a": _tune()}, ["tune-a"])
    # planted (test_settings_report): uniform's rule rate 0.01 has excess 0.3 against its best 0.2 (cost 1.5); arcsine's cost is 1
    assert st.cost_factor(cost, "arcsine", "tune-a") == pytest.approx(1 / 1.5)
    assert st.cost_factor(cost, "uniform", "tune-a") == pytest.approx(1.0)
    assert math.isnan(st.cost_factor(cost, "nope", "tune-a")) and math.isnan(st.cost_factor(cost, "arcsine", "tune-b"))
    f = st.cost_factors(cost, "tune-a")
    assert list(f.index) == ["arcsine"] and f["arcsine"] == pytest.approx(1 / 1.5)
    assert st.factors_text(f) == "arcsine 0.667" and st.factors_text(f, keep=["uniform"]) == "n/a"
    assert st.cost_factors(cost, "tune-b").empty
    # the rule chose 0.01 (uniform) and 0.03 (arcsine); the excess ranks 0.003 (uniform) and 0.03 (arcsine) best: ties keep their order
    assert st.rate_choice_text(cost, "tune-a", "samplers") == (
        "the rule chose 0.01 for 1 of the 2 samplers (0.03 for 1); ranked by the integrated excess on the same tuning runs, "
        "it would have been 0.003 for 1 of the 2 (0.03 for 1)")
    assert st.rate_choice_text(cost, "tune-b") == "n/a" and st.rate_choice_text(pd.DataFrame()) == "n/a"
    # by hand: three samplers, the factor of each to uniform's cost 1.25, largest first, options dropped
    hand = pd.DataFrame({"cost": [1.25, 1.5, 1.0], "tuning": "t", "lr_rule": 0.03, "lr_best": [0.01, 0.01, 0.03]},
                        index=["uniform", "loss_second_moment(k=2)", "var_opt"])
    assert st.factors_text(st.cost_factors(hand, "t")) == "loss_second_moment 1.2, var_opt 0.8"
    assert st.rate_choice_text(hand, "t") == ("the rule chose 0.03 for 3 of the 3 gmm8 samplers; ranked by the integrated excess on the "
                                              "same tuning runs, it would have been 0.01 for 2 of the 3 (0.03 for 1)")


def test_where_the_rates_were_tuned_and_the_edges_in_words():
    gmm8 = _tune()
    gmm8.attrs["fixed"] = json.dumps({"benchmark": "gmm8", "sigma": 1.0, "steps": 1000})
    digits = _tune()
    digits.attrs["fixed"] = json.dumps({"benchmark": "digits", "sigma": 0.5, "steps": 1000})
    toy = _tune()
    toy.attrs["fixed"] = json.dumps({"benchmark": "checkerboard", "sigma": 1.0, "steps": 1000})
    assert st.tuning_setting_text({"a": gmm8, "b": digits, "c": toy, "d": None}) == (
        "σ = 1 and 1,000 steps (gmm8, checkerboard) or σ = 0.5 and 1,000 steps (digits)")
    assert st.tuning_setting_text({}) == "n/a"
    tuned = st.tuned_rates({"tune-a": _tune(), "tune-b": None})
    assert list(tuned) == ["tune-a"]
    # arcsine's rate 0.03 is the largest of 0.003, 0.01, 0.03
    assert st.edge_words(st.edge_rates(tuned), tuned) == "arcsine on a at 0.03 (the highest of its candidates)"
    assert st.edge_words([], tuned) == "none"


def test_scope_lists_the_benchmarks_of_each_kind_that_did_not_run():
    assert set(data.benchmark_names()) == {"gmm8", *(b for kind in sr.KINDS.values() for b in kind)}  # every benchmark has a kind
    toys = grid({("checkerboard", "uniform"): planted_cell(1.0)}, ["benchmark", "sampler"])
    options = ["dim=8, seed=0", "dim=8, seed=1", "dim=32, seed=0", "dim=32, seed=1"]
    gmmd = grid({(o, "uniform"): planted_cell(1.0) for o in options}, ["benchmark_options", "sampler"], fixed={"benchmark": "gmm-d"})
    ran, missing = sr.scope_text({"toys": toys, "gmm-d": gmmd})
    assert ran == "`gmm-d`: gmm-d at d = 8, 32 (2 instances each); `toys`: checkerboard"
    assert missing == "`toys`: moons, spirals; `real` (digits, mnist1d)"
    assert sr.scope_text({}, names=()) == ("none", "none")


def test_shared_cells_count_the_runs_two_sub_grids_hold():
    a = grid({(s,): planted_cell(1.0) for s in ("uniform", "var_opt")}, ["sampler"])
    b = a.copy()
    b["cell_id"] = xr.DataArray(["uniform", "other"], dims="sampler", coords={"sampler": a.sampler})
    assert sr.shared_cells(a, a) == 2 and sr.shared_cells(a, b) == 1 and sr.shared_cells(a, None) == 0


def test_budget_spread_is_the_seeds_spread_of_logs_and_log_ratios():
    r = {"uniform": np.ones(10), "var_opt": 1.5 * SPREAD, "grad_norm": np.tile([0.9, 1.1], 5)}
    ds = grid({(b, s): planted_cell(v, budget=b) for b in (300, 1000) for s, v in r.items()}, ["steps", "sampler"])
    ds["diverged_step"].loc[dict(steps=1000, sampler="grad_norm")] = np.where(np.arange(10) < 2, 40.0, -1.0)
    spread = sr.budget_spread(ds)
    assert list(spread.index) == [300.0, 1000.0] and set(spread["metric"]) == {"integrated_excess_ema"}
    # a planted seed ends at C_s (1 - 0.4 r_s): uniform's log final is log 0.6 + log C_s, a log-ratio log((1 - 0.4 r_s) / 0.6)
    assert spread.loc[300.0, "sd_log_baseline"] == pytest.approx(np.std(np.log(C), ddof=1))
    sds = [np.std(np.log((1 - 0.4 * v) / 0.6), ddof=1) for v in (r["var_opt"], r["grad_norm"])]
    assert (spread.loc[1000.0, "sd_log_ratio_lo"], spread.loc[1000.0, "sd_log_ratio_hi"]) == pytest.approx((min(sds), max(sds)))
    assert list(spread["diverged"]) == [0, 2] and list(spread["runs"]) == [30, 30]
    text = sr.budget_spread_text(spread)
    assert text.startswith("the standard deviation over seeds of uniform's log final integrated excess, and that of the samplers'")
    assert f"300 steps: {np.std(np.log(C), ddof=1):.2f} and " in text and text.endswith("; 2 of 60 member runs diverged")
    assert sr.budget_spread_text(pd.DataFrame()) == "n/a"
    with pytest.raises(ValueError, match="a budget sweep has a 'steps' axis"):
        sr.budget_spread(grid({("uniform",): planted_cell(1.0)}, ["sampler"]))


def _outlier_real() -> xr.Dataset:
    """_real's digits with uniform's seed 3 at a Fréchet distance of 1e4 (sliced W2 50), its MMD and
    held-out objective like its other seeds', no divergence."""
    ds = _real()
    sel = dict(benchmark="digits", sigma=0.5, sampler="uniform", member=3)
    ds["sample_frechet"].loc[sel] = 1e4
    ds["sample_sw"].loc[sel] = 50.0
    ds["sample_mmd"] = xr.full_like(ds["sample_frechet"], 0.02)
    ds["diverged_step"] = xr.full_like(ds["sample_frechet"], -1.0)
    return ds


def test_the_worst_seed_is_named_with_what_the_records_show():
    ds = _outlier_real()
    real, worst = sr.sample_quality(ds)
    assert worst[:3] == (1e4, "digits", "uniform")
    o = sr.outlier_seed(ds, worst)
    assert o["member"] == 3 and o["frechet"] == 1e4 and not o["diverged"] and o["mmd"] == 0.02 and o["mmd_others"] == (0.02, 0.02)
    # uniform's distances 10..19 with seed 3 (13) replaced by 1e4: median of 10, 11, 12, 14, ..., 19, 1e4 = (15 + 16) / 2
    assert o["frechet_median"] == 15.5 and o["sw"] == 50.0 and o["sw_median"] == pytest.approx(0.2)
    # held-out objective: linspace(1, 2, 10) at the last checkpoint for uniform; var_opt's is 0.9 of it at every seed
    obj = np.linspace(1.0, 2.0, 10)
    assert o["heldout"] == pytest.approx(obj[3]) and o["heldout_others"] == pytest.approx((obj[0], obj[-1]))
    assert o["ratio_at"]["var_opt"] == pytest.approx(0.9) and o["ratio_all"]["var_opt"] == pytest.approx(0.9)
    assert o["high"] == [("uniform", 3, 1e4)] and o["ode"] == "n/a"
    text = sr.outlier_text(o)
    assert text.startswith("The seed with the largest distance (1e+04) is seed 3 of uniform on digits. That run did not diverge;")
    assert "So it is a failure of that seed's samples" in text and "var_opt's at seed 3 is 0.9, against 0.9 over all seeds" in text
    # it diverged: no longer a failure of its samples only
    ds["diverged_step"].loc[dict(benchmark="digits", sigma=0.5, sampler="uniform", member=3)] = 40.0
    text = sr.outlier_text(sr.outlier_seed(ds, worst))
    assert "That run diverged." in text and "failure of that seed's samples" not in text
    # _real's worst seed (20, var_opt) lies within twice its median (13.5): nothing stands out
    plain, w = sr.sample_quality(_real())
    assert sr.outlier_text(sr.outlier_seed(_real(), w)) == (
        "The seed with the largest distance (20, seed 9 of var_opt on digits) lies within twice its sampler's median (13.5): "
        "no seed stands out.")
    assert sr.outlier_seed(None, w) is None and sr.outlier_text(None) == ""


def test_the_quadrature_is_read_off_the_meter():
    import torch

    from fmstudy.meter import CheckpointMeter
    from fmstudy.paths import BrownianBridge

    nodes, draws = sr.quadrature_design()
    bench = data.get_benchmark("gmm8")
    path = BrownianBridge(1.0, 1e-3)
    quad = CheckpointMeter(bench, path, None, bench.oracle(path), torch.device("cpu"))._quadrature
    # its times: the Gauss-Legendre nodes of that order on [0, 1], each with that many draws
    t, counts = np.unique(quad.t.numpy(), return_counts=True)
    np.testing.assert_allclose(t, (np.polynomial.legendre.leggauss(nodes)[0] + 1) / 2, rtol=1e-6)
    assert set(counts) == {draws}
    assert sr.quadrature_text(16, 512).startswith("a fixed 16-node Gauss-Legendre quadrature over t with 512 draws of x_t per node "
                                                 "(8,192 points,")
    with pytest.raises(ValueError, match="no oracle"):
        sr.quadrature_design("checkerboard")
