"""Tuned learning rates (fmstudy.lr_tuning) on synthetic collected grids whose answer is planted:
the rule's choice, the check that evaluation cells ran at it, and zipped grids collapsed."""

import json

import numpy as np
import pytest
import xarray as xr

from fmstudy.lr_tuning import check_tuned, collapse_rate, rule_cost, same_family, tuned_rates

SEEDS = np.arange(10)
STEPS = np.array([0, 500, 1000])
NOISE = np.linspace(-0.05, 0.05, 10)  # seed-to-seed spread with mean 0: a cell's mean is its level


def _cell(level: float, diverged: int = 0, ran: bool = True) -> xr.Dataset:
    """One collected cell: the held-out objective falls from 2 to ``level`` + seed noise;
    ``diverged`` seeds diverged (step 40); a cell that did not run is NaN with an empty id."""
    curve = np.stack([np.full(10, 2.0), np.full(10, (2 + level) / 2), level + NOISE], axis=1)
    div = np.where(np.arange(10) < diverged, 40.0, -1.0)
    ds = xr.Dataset(
        {
            "heldout_objective_ema": (("member", "checkpoint"), curve),
            "diverged_step": (("member",), div),
            "cell_id": ((), "c"),
            "unbiased": ((), 1.0),
        },
        coords={"member": SEEDS, "checkpoint": STEPS},
    )
    if not ran:  # collect's fill for a combination that was not run
        ds = xr.full_like(ds[["heldout_objective_ema", "diverged_step", "unbiased"]], np.nan).assign(cell_id=((), ""))
    return ds


def _grid(cells: dict[tuple, xr.Dataset], axes: dict[str, list], fixed: dict) -> xr.Dataset:
    """Cells keyed by their labels in the order of ``axes`` into one Dataset over those axes."""
    parts = [c.expand_dims({a: [v] for a, v in zip(axes, key)}) for key, c in cells.items()]
    ds = xr.merge(parts, join="outer", compat="no_conflicts")
    ds["cell_id"] = ds["cell_id"].fillna("").astype(str)
    ds.attrs["fixed"] = json.dumps(fixed)
    return ds.reindex({a: v for a, v in axes.items()})


RATES = [0.003, 0.01, 0.03]
# planted final objective per (sampler, lr): uniform is best at 0.01; arcsine is best at 0.03
# but one seed diverged there, so the rule must pick 0.01 for it too; var_opt ties at 0.01
# and 0.03 (the smaller wins); loss_second_moment diverges everywhere (no choice)
LEVELS = {
    "uniform": {0.003: 1.0, 0.01: 0.5, 0.03: 0.8},
    "arcsine": {0.003: 1.0, 0.01: 0.7, 0.03: 0.4},
    "var_opt": {0.003: 1.0, 0.01: 0.6, 0.03: 0.6},
    "loss_second_moment": {0.003: 1.0, 0.01: 0.9, 0.03: 0.8},
}
DIVERGED = {("arcsine", 0.03): 1, **{("loss_second_moment", lr): 2 for lr in RATES}}


def _tune() -> xr.Dataset:
    cells = {(s, lr): _cell(LEVELS[s][lr], DIVERGED.get((s, lr), 0)) for s in LEVELS for lr in RATES}
    return _grid(cells, {"sampler": list(LEVELS), "lr": RATES}, {"benchmark": "gmm8", "sigma": 1.0, "steps": 1000})


def test_tuned_rates_follow_the_rule_on_planted_objectives():
    table = tuned_rates(_tune())
    assert table.index.names == ["sampler", "benchmark"]
    lr = table["lr"].droplevel("benchmark")
    assert lr["uniform"] == 0.01 and lr["arcsine"] == 0.01 and lr["var_opt"] == 0.01
    assert np.isnan(lr["loss_second_moment"]) and table["eligible"].droplevel(1)["loss_second_moment"] == 0
    est = table["heldout_objective_ema"].droplevel(1)["arcsine"]
    assert est.value == pytest.approx(0.7) and est.n == 10 and (table["n"] == 10).all()  # the noise has mean 0
    assert table["rates"].iloc[0] == tuple(RATES) and table["eligible"].droplevel(1)["arcsine"] == 2


def _evaluation(rates: dict[str, float], benchmark: str = "gmm8", sigmas=(0.0, 1.0)) -> xr.Dataset:
    """A zipped sampler+lr grid over sigma: each sampler ran at ``rates[sampler]`` only, its final
    objective planted as 10 lr + sigma (so the collapsed values identify the cell)."""
    cells = {}
    for s, run in rates.items():
        for lr in sorted(set(rates.values())):
            for sg in sigmas:
                cells[(s, lr, sg)] = _cell(10 * run + sg) if lr == run else _cell(0.0, ran=False)
    return _grid(cells, {"sampler": list(rates), "lr": sorted(set(rates.values())), "sigma": list(sigmas)}, {"benchmark": benchmark})


def test_check_tuned_is_empty_when_every_cell_ran_at_the_rule_and_names_the_others():
    tune = _tune()
    good = _evaluation({"uniform": 0.01, "arcsine": 0.01, "var_opt": 0.01})
    assert check_tuned(good, tune).empty
    bad = check_tuned(_evaluation({"uniform": 0.01, "arcsine": 0.03}), tune)
    assert list(bad["sampler"]) == ["arcsine", "arcsine"] and list(bad["sigma"]) == [0.0, 1.0]
    assert (bad["lr_run"] == 0.03).all() and (bad["lr_rule"] == 0.01).all()
    assert (bad["why"] == "ran at another rate than the rule's choice").all()
    # a sampler with no eligible rate, and a benchmark the rates were not tuned on, are refused too
    none = check_tuned(_evaluation({"uniform": 0.01, "loss_second_moment": 0.01}), tune)
    assert list(none["sampler"].unique()) == ["loss_second_moment"] and (none["why"] == "no tuned rate for this cell").all()
    other = check_tuned(_evaluation({"uniform": 0.01}, benchmark="checkerboard"), tune)
    assert len(other) == 2 and (other["why"] == "no tuned rate for this cell").all()


def test_check_tuned_reuses_a_rate_across_instances_of_a_family_only_when_asked():
    cells = {(s, opt, lr): _cell(LEVELS[s][lr]) for s in ("uniform", "arcsine") for opt in ("dim=8, seed=0",) for lr in RATES}
    tune = _grid(cells, {"sampler": ["uniform", "arcsine"], "benchmark_options": ["dim=8, seed=0"], "lr": RATES}, {"benchmark": "gmm-d"})
    # no divergence planted here: uniform's rule picks 0.01, arcsine's 0.03
    evals = {(s, opt, lr): _cell(0.5) for s, lr in (("uniform", 0.01), ("arcsine", 0.03)) for opt in ("dim=8, seed=0", "dim=8, seed=2")}
    ev = _grid(evals, {"sampler": ["uniform", "arcsine"], "benchmark_options": ["dim=8, seed=0", "dim=8, seed=2"], "lr": [0.01, 0.03]},
               {"benchmark": "gmm-d"})
    assert len(check_tuned(ev, tune)) == 2  # instance 2 was not tuned
    assert check_tuned(ev, tune, key=same_family).empty
    assert same_family("benchmark_options", "dim=8, seed=2") == "dim=8" and same_family("benchmark_options", "seed=1, dim=32") == "dim=32"
    assert same_family("sampler", "seed=1") == "seed=1"


def test_collapse_rate_keeps_each_samplers_run_cell_and_its_rate():
    ev = _evaluation({"uniform": 0.01, "arcsine": 0.03, "var_opt": 0.003})
    out = collapse_rate(ev)
    assert "lr" not in out.dims and "lr" not in out.coords
    for s, run in (("uniform", 0.01), ("arcsine", 0.03), ("var_opt", 0.003)):
        for sg in (0.0, 1.0):
            cell = out.sel(sampler=s, sigma=sg)
            assert float(cell["lr_used"]) == run and str(cell["cell_id"].values) == "c"
            np.testing.assert_allclose(cell["heldout_objective_ema"].isel(checkpoint=-1).values, 10 * run + sg + NOISE)


def test_collapse_rate_refuses_two_rates_in_one_cell_and_marks_cells_not_run():
    ev = _evaluation({"uniform": 0.01, "arcsine": 0.03})
    twice = ev.copy(deep=True)
    twice["cell_id"].loc[{"sampler": "uniform", "lr": 0.03, "sigma": 1.0}] = "x"
    with pytest.raises(ValueError, match=r"ran at learning rates \[0.01, 0.03\], which is not allowed") as err:
        collapse_rate(twice)
    assert "\n" not in str(err.value)
    gap = ev.copy(deep=True)
    gap["cell_id"].loc[{"sampler": "arcsine", "lr": 0.03, "sigma": 0.0}] = ""
    out = collapse_rate(gap)
    assert np.isnan(float(out["lr_used"].sel(sampler="arcsine", sigma=0.0))) and str(out["cell_id"].sel(sampler="arcsine", sigma=0.0).values) == ""
    one = collapse_rate(ev.sel(lr=0.01, sampler=["uniform"]).drop_vars("lr").assign_attrs(fixed=json.dumps({"lr": 0.01})))
    assert float(one["lr_used"].sel(sampler="uniform", sigma=0.0)) == 0.01


def test_tuned_rates_refuse_results_without_a_rate_axis():
    with pytest.raises(ValueError, match="lr must be an axis"):
        tuned_rates(_tune().sel(lr=0.01))
    with pytest.raises(ValueError, match="lr as their only axis"):
        tuned_rates(_tune().sel(sampler="uniform"))


def test_a_rate_is_the_rule_only_for_the_problem_it_was_tuned_on():
    """Tuned at batch 256 with the benchmark's default width (None) and the plain target: an
    evaluation at batch 256 (an axis there, so 256.0) and the same width matches at every
    sigma; one at batch 64 or with the Rao-Blackwellised target has no tuned rate."""
    cells = {(s, lr): _cell(LEVELS[s][lr]) for s in ("uniform", "var_opt") for lr in RATES}
    context = {"benchmark": "gmm8", "batch_size": 256, "hidden": None, "target": "plain", "sigma": 1.0}
    tune = _grid(cells, {"sampler": ["uniform", "var_opt"], "lr": RATES}, context)
    table = tuned_rates(tune)
    assert table.index.names == ["sampler", "benchmark", "target", "batch_size", "hidden"]
    evals = {(s, b, sg): _cell(0.5) for s in ("uniform", "var_opt") for b in (64, 256) for sg in (0.0, 2.0)}
    ev = _grid(evals, {"sampler": ["uniform", "var_opt"], "batch_size": [64, 256], "sigma": [0.0, 2.0]},
               {"benchmark": "gmm8", "hidden": None, "target": "plain", "lr": 0.01})
    bad = check_tuned(ev, table)
    assert len(bad) == 4 and (bad["batch_size"] == 64).all() and (bad["why"] == "no tuned rate for this cell").all()
    rb = ev.assign_attrs(fixed=json.dumps({"benchmark": "gmm8", "hidden": None, "target": "rb", "lr": 0.01}))
    assert len(check_tuned(rb, table)) == 8


def test_rule_cost_is_the_judges_value_at_the_rules_rate_over_its_best():
    # the exact metric (planted): uniform's best is 0.003 (0.2) while the rule picks 0.01 (0.3 there): cost 1.5;
    # var_opt's best is the rule's 0.01: cost 1; arcsine's exact best 0.03 diverged a seed: not eligible
    judge = {"uniform": {0.003: 0.2, 0.01: 0.3, 0.03: 0.5}, "arcsine": {0.003: 0.9, 0.01: 0.6, 0.03: 0.1},
             "var_opt": {0.003: 0.8, 0.01: 0.4, 0.03: 0.5}, "loss_second_moment": {0.003: 1.0, 0.01: 1.0, 0.03: 1.0}}
    cells = {}
    for s in LEVELS:
        for lr in RATES:
            c = _cell(LEVELS[s][lr], DIVERGED.get((s, lr), 0))
            exact = np.stack([np.full(10, 2.0), np.full(10, 1.0), judge[s][lr] + NOISE], axis=1)
            cells[(s, lr)] = c.assign(integrated_excess_ema=(("member", "checkpoint"), exact))
    tune = _grid(cells, {"sampler": list(LEVELS), "lr": RATES}, {"benchmark": "gmm8"})
    cost = rule_cost(tune).droplevel("benchmark") if "benchmark" in rule_cost(tune).index.names else rule_cost(tune)
    assert "loss_second_moment" not in cost.index  # the rule chose nothing there
    assert cost.loc["uniform", "lr_rule"] == 0.01 and cost.loc["uniform", "lr_best"] == 0.003
    assert cost.loc["uniform", "cost"] == pytest.approx(0.3 / 0.2)
    assert cost.loc["var_opt", "cost"] == pytest.approx(1.0) and cost.loc["var_opt", "lr_best"] == 0.01
    assert cost.loc["arcsine", "lr_best"] == 0.01 and cost.loc["arcsine", "cost"] == pytest.approx(1.0)
