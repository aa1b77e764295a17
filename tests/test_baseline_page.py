"""Chapters 5 and 6's comparison tables for a page (fmstudy.baseline_page via report.shown) on
hand-made rows: Holm over the rows but the baseline's own, d_z, and each column's interval level
in its header, against values worked out by hand."""

import math

import pandas as pd
import pytest

from fmstudy import report
from fmstudy.analysis import Estimate


def _est(value, lo, hi, p=math.nan, effect=math.nan, n=10, level=0.95):
    return Estimate(value, lo, hi, n, level, p=p, effect=effect)


def test_shown_final_holm_over_the_rows_but_the_baselines_own_and_levels_in_the_header():
    # hand-made rows: Holm over the 3 comparisons (uniform's own row is no test):
    # sorted p 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    one = _est(1.0, 1.0, 1.0, p=1.0)
    tab = pd.DataFrame(
        {
            "final": [_est(2.0, 1.5, 2.5), _est(1.0, 0.8, 1.2), _est(3.0, 2.0, 4.0), _est(1.9, 1.5, 2.3)],
            "ratio": [one, _est(0.5, 0.4, 0.6, p=0.01, effect=-1.234), _est(1.5, 1.1, 2.0, p=0.04, effect=0.3),
                      _est(0.95, 0.9, 1.0, p=0.03, effect=-0.5)],
            "objective_ratio": [one, _est(0.99876, 0.9975, 1.0), _est(1.0, 0.99, 1.01), _est(1.02, 1.01, 1.03)],
            "unbiased": [True, True, False, True],
        },
        index=pd.Index(["uniform", "a", "b", "c"], name="sampler"),
    )
    page = report.shown(tab, "final")
    assert list(page[("p (Holm)", "over the table's 3 rows")]) == ["—", "0.03", "0.06", "0.06"]
    assert list(page[("d_z", "Cohen's, per-seed log-ratios")]) == ["—", "-1.23", "0.30", "-0.50"]
    assert list(page[("ratio to uniform", "geometric mean [95% CI]")]) == ["—", "0.5 [0.4, 0.6]", "1.5 [1.1, 2]", "0.95 [0.9, 1]"]
    # the objective's ratio keeps 4 significant digits, trailing zeros included
    assert page.loc["a", ("held-out objective ratio", "geometric mean [95% CI]")] == "0.9988 [0.9975, 1.000]"
    assert page.loc["uniform", ("final value", "mean [95% CI]")] == "2 [1.5, 2.5]"
    assert list(page[("seeds", "")]) == [10] * 4
    # a concatenated table (two sigmas): one Holm family of 6, uniform's rows left out at both
    both = pd.concat({0.0: tab, 1.0: tab}, names=["sigma"])
    held = report.shown(both, "final")[("p (Holm)", "over the table's 6 rows")]
    # sorted 0.01, 0.01, 0.03, 0.03, 0.04, 0.04 times 6, 5, ..., 1: 0.06, 0.05, 0.12, 0.09, 0.08, 0.04; running max 0.06, 0.06, 0.12 ...
    assert list(held.xs(0.0, level="sigma")) == ["—", "0.06", "0.12", "0.12"]


def test_shown_speedup_states_each_columns_level_and_refuses_an_unknown_part():
    sp = [_est(1.2, 1.0, 1.4, level=0.979), Estimate(math.nan, 0.0, 1.1, 10, 0.979, censored=6, below=0.95)]
    tab = pd.DataFrame({"speedup": sp, "speedup_flops": [sp[0], _est(1.1, 0.9, 1.3, n=9, level=0.961)], "reached": [1.0, 0.4]},
                       index=pd.Index(["a", "b"], name="sampler"))
    page = report.shown(tab, "speed-up")
    assert list(page[("speed-up (steps)", "median [97.9% CI]")]) == ["1.2 [1, 1.4]", "< 0.95 [0, 1.1]"]
    assert list(page[("speed-up (training FLOPs)", "median [96.1% or 97.9% CI]")]) == ["1.2 [1, 1.4]", "1.1 [0.9, 1.3]"]
    assert list(page[("seeds reaching", "uniform's final value")]) == ["100%", "40%"]
    assert report.level_text([Estimate(1.0, math.nan, math.nan, 1)]) == "no"
    with pytest.raises(ValueError, match="part='speed' is not allowed"):
        report.shown(tab, "speed")
