"""Chapter 7's page pieces (fmstudy.settings_report): the real-data sample-quality table as
shown (uniform's comparisons with itself a dash, not NaN) and what differs between the budgets
of the budget sweep besides the steps, on planted grids, against values worked out by hand."""

import pandas as pd
import pytest
from planted import cell as planted_cell
from planted import grid
from test_settings_report import _real

from fmstudy import settings_report as sr


def test_sample_quality_shown_puts_a_dash_in_uniforms_comparisons_with_itself():
    real, _ = sr.sample_quality(_real())
    page = sr.sample_quality_shown(real)
    u, v = page.loc[("digits", "uniform")], page.loc[("digits", "var_opt")]
    assert (u["held-out objective ratio to uniform"], u["seeds below uniform's"], u["sign test p"]) == ("—", "—", "—")
    # var_opt's p = 2 x 176 / 1024 = 0.34375, to 2 significant digits
    assert v["sign test p"] == "0.34" and v["seeds below uniform's"] == "7 of 10" and v["held-out objective ratio to uniform"] == pytest.approx(0.9)
    assert u["Fréchet distance (median)"] == 14.5 and "NaN" not in page.to_string()
    assert sr.sample_quality_shown(pd.DataFrame()).empty


def test_budget_setup_says_the_rates_and_the_feedback_interval_of_each_budget():
    cells = {}
    for steps, fe in ((300, 25), (1000, 50), (3000, 50)):
        for name in ("uniform", "var_opt"):
            cells[(steps, fe, name)] = planted_cell(1.0, budget=steps).assign(lr_used=((), 0.03))
    ds = grid(cells, ["steps", "feedback_every", "sampler"])
    assert sr.budget_setup(ds) == {"rates": "0.03 for every sampler at every budget",
                                   "feedback": "every 25 steps at 300 steps; every 50 steps at 1,000, 3,000 steps"}
    # var_opt at another rate at 3,000 steps: each sampler's rates are listed; a combination not run is not read
    cells[(3000, 50, "var_opt")] = cells[(3000, 50, "var_opt")].assign(lr_used=((), 0.01))
    cells[(300, 50, "uniform")] = planted_cell(1.0, budget=300).assign(lr_used=((), 0.1), cell_id=((), ""))
    setup = sr.budget_setup(grid(cells, ["steps", "feedback_every", "sampler"]))
    assert setup["rates"] == "uniform 0.03; var_opt 0.03, 0.01" and setup["feedback"].startswith("every 25 steps at 300 steps;")
    # feedback_every fixed for the grid, and the rate too (no lr_used): from the grid's parameters
    one = grid({(s, "uniform"): planted_cell(1.0, budget=s) for s in (300, 1000)}, ["steps", "sampler"], fixed={"feedback_every": 10, "lr": 0.01})
    assert sr.budget_setup(one) == {"rates": "0.01 for every sampler at every budget", "feedback": "every 10 steps at 300, 1,000 steps"}
    with pytest.raises(ValueError, match="a budget sweep has a 'steps' axis"):
        sr.budget_setup(grid({("uniform",): planted_cell(1.0)}, ["sampler"]))


def test_shown_names_each_interval_column_with_its_level():
    from fmstudy.analysis import Estimate

    table = pd.DataFrame({"ratio": [Estimate(0.9, 0.8, 1.0, 10), Estimate(1.1, 1.0, 1.2, 10)],
                          "ratio_simultaneous": [Estimate(0.9, 0.7, 1.1, 10, 0.99), Estimate(1.1, 0.9, 1.3, 10, 0.99)],
                          "speedup_steps": [Estimate(1.2, 1.0, 1.3, 10, 0.979), Estimate(float("nan"), 0.0, 1.0, 10, 0.979, below=1.0)],
                          "n": [10, 10], "p_holm": [0.04, 0.5]}, index=["a", "b"])
    page = sr.shown(table)
    assert list(page.columns) == ["ratio [95% CI]", "p_holm", "ratio_simultaneous [99% CI]", "n", "speedup_steps [97.9% CI]"]
    assert list(page["speedup_steps [97.9% CI]"]) == ["1.2 [1, 1.3]", "< 1 [0, 1]"] and list(page["p_holm"]) == ["0.04", "0.5"]
