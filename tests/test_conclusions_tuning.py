"""Chapter 9's qualifications of its verdicts (fmstudy.conclusions, fmstudy.conclusions_sweeps):
the family's Holm p-values, which significant rows the learning-rate rule's cost could explain,
what the learned weighting adds to a step, and the correlation without the logit-normal cluster,
against values worked out by hand or by scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from planted import SPREAD, grid
from planted import cell as planted_cell
from scipy import stats
from test_conclusions import E, planted_ratio, table

from fmstudy import conclusions as cc
from fmstudy import conclusions_sweeps as cs
from fmstudy.flops import layer_widths
from fmstudy.prediction import predicted_vs_measured
from fmstudy.tables import model_of


def tables() -> dict[float, pd.DataFrame]:
    """The loss-based sampler at two sigmas (p 0.001 and 0.02: Holm 0.002, 0.02, both worse) and
    arcsine at sigma 0 (p 0.2, not significant); a biased row is no member of any family."""
    return {
        0.0: table({"loss_second_moment": (E(1.23, 1.10, 1.37, p=0.02), True), "arcsine(floor=0.05)": (E(1.05, 0.9, 1.2, p=0.2), True),
                    "logit_normal(reweight=False)": (E(3.0, 2.0, 4.0, p=1e-6), False)}),
        1.0: table({"loss_second_moment": (E(1.56, 1.44, 1.70, p=0.001), True)}),
    }


def test_family_holm_by_hand():
    p = cc.family_holm(tables(), cc.LOSS_BASED)
    # sorted 0.001, 0.02 times 2, 1: 0.002, 0.02 (running max)
    assert list(p.index) == [(0.0, "loss_second_moment"), (1.0, "loss_second_moment")]
    assert list(p) == pytest.approx([0.02, 0.002])
    both = cc.family_holm(tables(), ("loss_second_moment", "arcsine"))
    # three p: 0.001 x 3, 0.02 x 2, 0.2 x 1 -> 0.003, 0.04, 0.2
    assert both[(0.0, "arcsine(floor=0.05)")] == pytest.approx(0.2) and both[(0.0, "loss_second_moment")] == pytest.approx(0.04)
    assert cc.family_holm(tables(), ("u_shaped",)).empty


def test_tuning_error_names_the_rows_whose_interval_holds_the_cost_factor():
    factors = pd.Series({"loss_second_moment": 1.18, "arcsine(floor=0.05)": 1.15})
    # sigma 0: [1.10, 1.37] holds 1.18; sigma 1: [1.44, 1.70] does not
    assert cc.tuning_error_text(tables(), cc.LOSS_BASED, factors) == (
        "1 of the 2 significant rows (loss_second_moment at σ = 0: ratio 1.23 (95% CI 1.1 to 1.37), factor 1.18)")
    assert cc.tuning_error_text(tables(), cc.LOSS_BASED, pd.Series({"loss_second_moment": 2.0})) == "0 of the 2 significant rows"
    assert cc.tuning_error_text(tables(), cc.LOSS_BASED, {}) == "no cost factor for its samplers"
    # arcsine is not significant (p 0.2): nothing to explain in its family
    assert cc.tuning_error_text(tables(), ("arcsine",), factors) == "no significant row"
    one = {**tables(), 2.0: table({"loss_second_moment(k=2)": (E(1.3, 1.2, 1.4, p=0.001), True)})}
    assert cc.tuning_error_text(one, cc.LOSS_BASED, factors).endswith("factor 1.18), and 1 more without a cost factor")


def test_weighting_cost_against_the_mlps_flops_by_closed_form():
    w = grid({("uncertainty",): planted_cell(1.0)}, ["weighting"], fixed={"benchmark": "gmm8", "batch_size": 64, "hidden": 16, "depth": 2,
                                                                          "n_bins": 12})
    model, _ = model_of(w)
    widths = layer_widths(model)
    f = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))  # F.1
    b = 2 * f - 2 * widths[0] * widths[1]  # F.2
    text = cc.weighting_cost_text(w)
    assert text.startswith("a table of 12 log-variances per member (one per t-bin), not a network:")
    assert f"against the MLP's {f + b:,} FLOPs per sample forward and backward" in text
    assert cc.weighting_cost_text(None) == "n/a (not run in this profile)"


def test_correlation_without_the_logit_normal_points():
    fixed = {"benchmark": "gmm8", "batch_size": 64, "steps": 1000, "lr": 0.01}
    gains = {"logit_normal(reweight=True)": 0.3, "var_opt": 3.0, "grad_norm": 2.0, "arcsine": 1.5}
    centre = {"logit_normal(reweight=True)": 0.5, "var_opt": 1.6, "grad_norm": 1.3, "arcsine": 1.1}
    cells = {(sg, "uniform"): planted_cell(np.ones(10)) for sg in (0.0, 1.0)}
    cells.update({(sg, s): planted_cell((centre[s] + sg / 10) * SPREAD, gain=g) for sg in (0.0, 1.0) for s, g in gains.items()})
    pvm = predicted_vs_measured({"sigma": grid(cells, ["sigma", "sampler"], fixed=fixed)})
    text = cs.correlation_text(pvm)
    # (4.6) with B_noise = B: S(r) = 2 / (1 + 1 / r); the final gain 1 / the planted ratio; Pearson on logs, without logit_normal
    rest = [s for s in gains if not s.startswith("logit_normal")]
    x = [math.log(2 / (1 + 1 / gains[s])) for sg in (0.0, 1.0) for s in rest]
    y = [-math.log(planted_ratio((centre[s] + sg / 10) * SPREAD)) for sg in (0.0, 1.0) for s in rest]
    s_ln = 2 / (1 + 1 / 0.3)
    head, tail = text.split("; without the ")
    assert head.endswith("the points' own measurement errors are not propagated")
    assert tail.startswith(f"2 points of logit_normal (predicted {s_ln:.2f}), {stats.pearsonr(x, y).statistic:.2f} [")
    assert tail.endswith("over 6")
    # too few left
    small = pvm[pvm["sampler"].isin(["logit_normal(reweight=True)", "var_opt"])]
    assert cs.correlation_text(small).endswith("; without the 2 points of logit_normal, too few points to correlate")


def test_tuning_error_sentence_agrees_in_number():
    factors = pd.Series({"loss_second_moment": 1.18, "arcsine(floor=0.05)": 1.15})
    assert cc.tuning_error_sentence(tables(), cc.LOSS_BASED, factors) == (
        "1 of the 2 significant rows (loss_second_moment at σ = 0: ratio 1.23 (95% CI 1.1 to 1.37), factor 1.18): "
        "that verdict is within what the rule alone can cost")
    # 2.0 lies in neither interval ([1.10, 1.37], [1.44, 1.70]): no verdict to qualify
    assert cc.tuning_error_sentence(tables(), cc.LOSS_BASED, pd.Series({"loss_second_moment": 2.0})) == "0 of the 2 significant rows"
    assert cc.tuning_error_sentence(tables(), cc.LOSS_BASED, {}) == "no cost factor for its samplers"


def test_cost_factors_name_the_logit_normal_variant():
    factors = pd.Series({"logit_normal(m=0.0, reweight=False)": 0.985, "logit_normal(m=0.0, reweight=True)": 0.985, "arcsine(reweight=True)": 1.15,
                         "grad_norm": 0.99})
    keep = ["logit_normal(m=0.0, reweight=True)", "arcsine(reweight=True)", "grad_norm"]
    assert cc.factors_text(factors, keep) == "arcsine 1.15, grad_norm 0.99, logit_normal (reweighted) 0.985"
    assert cc.factors_text(factors) == "arcsine 1.15, grad_norm 0.99, logit_normal (not reweighted) 0.985, logit_normal (reweighted) 0.985"
    assert cc.factors_text(factors, ["nope"]) == "n/a"
    assert cc.variant_name("logit_normal(m=1)", ["logit_normal(m=1)", "logit_normal(m=2)"]) == "logit_normal(m=1)"  # no reweight option: the label
