"""The conclusions' sentences (fmstudy.conclusions, fmstudy.conclusions_sweeps) on hand-made
comparison tables and planted grids: Holm counts worked out by hand, spans, the weighting-vs-
allocation and stability sentences spelled out from the planted numbers, each cell counted once."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from planted import SPREAD, grid
from planted import cell as planted_cell
from scipy import stats

from fmstudy import conclusions as cc
from fmstudy import conclusions_sweeps as cs
from fmstudy.analysis import Estimate
from fmstudy.prediction import predicted_vs_measured


def E(value: float, lo: float = math.nan, hi: float = math.nan, n: int = 10, p: float = math.nan, below: float = math.nan) -> Estimate:
    return Estimate(value, lo, hi, n, p=p, below=below)


def table(rows: dict[str, tuple[Estimate, bool]]) -> pd.DataFrame:
    """An against_baseline-like table: sampler -> (ratio, unbiased)."""
    return pd.DataFrame([{"sampler": k, "ratio": r, "unbiased": u} for k, (r, u) in rows.items()]).set_index("sampler")


def planted_ratio(r: np.ndarray) -> float:
    """A planted cell's paired geometric-mean ratio to a baseline with r = 1: exp mean log((1 - 0.4 r) / 0.6)."""
    return math.exp(np.mean(np.log((1 - 0.4 * np.asarray(r)) / 0.6)))


def test_span_of_estimates_and_numbers():
    assert cc.span([0.9, math.nan, 0.8]) == "0.80–0.90"
    assert cc.span([E(0.951), 0.949]) == "0.95"  # equal once formatted: one value
    assert cc.span([E(1.5)]) == "1.50" and cc.span([]) == "n/a" and cc.span([math.nan, E(math.inf)]) == "n/a"
    assert cc.span(pd.Series([0.3, 0.1, 0.6]), "g") == "0.1–0.6"
    assert cc.base_name("arcsine(floor=0.05, reweight=True)") == "arcsine" and cc.base_name("var_opt") == "var_opt"
    with pytest.raises(ValueError, match=r"^fmt='q' is not allowed: it must be a float format"):
        cc.span([1.0], "q")


def compare() -> dict[float, pd.DataFrame]:
    """Two sigmas; the fixed family's rows have p = 0.01 (r 0.8), 0.03 (r 1.2), 0.04 (r 0.9) and one
    without seeds (p NaN); a biased row with a tiny p and an adaptive row are not of the family."""
    return {
        0.0: table(
            {
                "arcsine(floor=0.05)": (E(0.8, p=0.01), True),
                "logit_normal(reweight=False)": (E(0.5, p=1e-6), False),
                "var_opt": (E(0.85, 0.7, 0.99, p=0.02), True),
            }
        ),
        1.0: table(
            {
                "stratified": (E(1.2, p=0.03), True),
                "mode": (E(0.9, p=0.04), True),
                "beta": (E(0.1, n=0), True),
                "var_opt": (E(0.9, 0.8, 1.0, p=0.2), True),
                "learning_progress": (E(1.0), False),
            }
        ),
    }


def test_family_verdict_holm_by_hand():
    # Holm over the 3 finite p: sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    # so only the first (arcsine, r 0.8) is significant: 1 better, 0 worse; 4 compared (beta has no seeds: no p, still a row)
    better, worse, n, best = cc.family_verdict(compare(), cc.FIXED)
    assert (better, worse, n) == (1, 0, 4)
    assert best[:2] == ("arcsine(floor=0.05)", 0.0) and best[2].value == 0.8  # beta's 0.1 has no seeds
    assert cc.family_verdict(compare(), ("u_shaped",)) == (0, 0, 0, None)
    rows = cc.family_rows(compare(), cc.FIXED)
    assert list(rows.index) == [(0.0, "arcsine(floor=0.05)"), (1.0, "stratified"), (1.0, "mode"), (1.0, "beta")]
    with pytest.raises(ValueError, match=r"^names=\(\) is not allowed"):
        cc.family_rows(compare(), ())


def test_family_verdict_without_holm_would_count_three():
    # p = 0.001, 0.02, 0.04: Holm 0.003, 0.04, 0.04: all three significant, two better (r < 1) and one worse
    t = {1.0: table({"mode": (E(0.9, p=0.001), True), "beta": (E(1.1, p=0.02), True), "arcsine": (E(0.95, p=0.04), True)})}
    assert cc.family_verdict(t, cc.FIXED)[:3] == (2, 1, 3)


def test_loss_verdict_ours_and_signal():
    t = {0.0: table({"loss_second_moment": (E(1.56, p=0.02), True)}), 1.0: table({"loss_second_moment": (E(1.23, p=0.001), True)})}
    # Holm: 0.001 * 2 = 0.002, 0.02 * 1 -> max(0.002, 0.02) = 0.02: both worse
    assert cc.loss_verdict(t) == (
        "better than uniform in 0 and worse in 2 of 2 (sampler, σ) comparisons (family-wise 5%, Holm over these 2 rows), "
        "final ratio to uniform 1.23–1.56"
    )
    assert cc.loss_verdict(compare()) == "not run in this profile"
    assert cc.named_ratio_text(compare()) == "σ = 0: 0.85 (95% CI 0.7 to 0.99, 10 seeds); σ = 1: 0.9 (95% CI 0.8 to 1, 10 seeds)"
    assert cc.named_ratio_text(t) == "n/a"
    assert cc.signal_text(compare()) == (
        "ran in this profile's comparison (learning_progress) and are counted with the adaptive samplers above"
    )
    assert cc.signal_text(t) == "were not run in this profile, so it says nothing about them"


def test_weighting_against_the_best_unbiased_allocation():
    alloc = table(
        {
            "stratified": (E(1.2, 1.1, 1.3), True),
            "mode": (E(0.9, 0.78, 1.02), True),
            "var_opt": (E(0.9, 0.8, 1.0), True),
            "logit_normal(reweight=False)": (E(0.5, 0.4, 0.6), False),
        }
    )  # the biased row is no allocation of the question
    wt = table({"min_snr(gamma=5.0)": (E(1.24, 1.17, 1.32), True), "uncertainty": (E(0.75, 0.70, 0.79), True)})
    # best unbiased: mode, the first of the two at 0.9; its interval [0.78, 1.02] holds 0.79: they overlap
    # best unbiased: mode, the first of the two at 0.9
    assert cc.weighting_vs_text(wt, alloc) == (
        "below every unbiased allocation's at σ = 1 (point estimates): 0.75 against the best allocation, mode, at 0.9"
    )
    direct = Estimate(0.83, 0.78, 0.88, 10, p=0.0004)
    assert cc.weighting_vs_text(wt, alloc, direct).endswith(
        "at 0.9; paired by seed, uncertainty weighting / mode = 0.83 (95% CI 0.78 to 0.88, 10 seeds), p = 0.0004 (exploratory: mode "
        "was picked as the best allocation after the results were seen, and neither the interval nor p allows for that choice)")
    assert cc.best_allocation(alloc) == "mode" and cc.best_allocation(None) is None
    alloc = alloc.drop(index="mode")
    assert cc.weighting_vs_text(wt, alloc).endswith("the best allocation, var_opt, at 0.9")
    assert cc.best_allocation(alloc) == "var_opt"
    worse = table({"uncertainty": (E(0.95, 0.9, 1.0), True)})
    assert cc.weighting_vs_text(worse, alloc) == (
        "not below every unbiased allocation's at σ = 1 (point estimates): 0.95 against the best allocation, var_opt, at 0.9"
    )
    assert cc.weighting_vs_text(None, alloc) == "n/a (not run in this profile)"
    assert cc.weighting_vs_text(table({"min_snr": (E(1.0), True)}), alloc) == "n/a (not run in this profile)"
    assert cc.weighting_vs_text(wt, None) == "n/a (not run in this profile)"
    assert cc.ratios_text(None) == "not run in this profile"
    assert (
        cc.ratios_text(wt) == "min_snr(gamma=5.0): 1.24 (95% CI 1.17 to 1.32, 10 seeds); uncertainty: 0.75 (95% CI 0.7 to 0.79, 10 seeds)"
    )


def test_scale_sentence():
    assert cc.scale_text("smoke", 2, False, False) == (
        "This profile (smoke) compares samplers on 2 seeds per configuration, at one learning rate for every sampler (not tuned per "
        "sampler), at one budget. Intervals over 2 seeds are wide (a t-interval at 2 seeds has 1 degrees of freedom); the paper "
        "profile (10 seeds, tuned rates, budgets) is what the conclusions should rest on."
    )
    assert cc.scale_text("paper", 10, True, True) == (
        "This profile (paper) compares samplers on 10 seeds per configuration, each "
        "sampler at its own learning rate tuned on separate seeds, with budgets as separate runs."
    )
    with pytest.raises(ValueError, match=r"^seeds=-1 is not allowed"):
        cc.scale_text("paper", -1, True, True)


R = {"uniform": np.ones(10), "var_opt": 1.5 * SPREAD, "stratified": 0.5 * SPREAD}  # planted per-seed speed-ups


def compare_grid(ceilings=(2.0, 3.0)) -> xr.Dataset:
    cells = {(sg, s): planted_cell(r, ceiling=c) for sg, c in zip((0.0, 1.0), ceilings) for s, r in R.items()}
    return grid(cells, ["sigma", "sampler"], fixed={"benchmark": "gmm8", "batch_size": 64, "hidden": 16, "depth": 2, "lr": 0.01})


def test_compare_tables_and_family_counts_on_a_planted_grid():
    assert cc.compare_tables(None) == (None, {})
    no_uniform = compare_grid().sel(sampler=["var_opt"])
    assert cc.compare_tables(no_uniform)[0] is no_uniform and cc.compare_tables(no_uniform)[1] == {}
    ds, tables = cc.compare_tables(compare_grid())
    assert list(tables) == [0.0, 1.0]
    for t in tables.values():
        assert t.loc["var_opt", "ratio"].value == pytest.approx(planted_ratio(R["var_opt"]))  # 0.4 / 0.6 on average: better
        assert t.loc["stratified", "ratio"].value == pytest.approx(planted_ratio(R["stratified"]))  # 0.8 / 0.6: worse
    # each of the 2 x 2 comparisons: the paired t-test of the closed-form finals, far below Holm's 0.05 / 4
    for r in (R["var_opt"], R["stratified"]):
        assert stats.ttest_rel(np.log(1 - 0.4 * r), np.log(np.full(10, 0.6))).pvalue < 0.05 / 4
    assert cc.family_verdict(tables, ("var_opt", "stratified"))[:3] == (2, 2, 4)
    assert cc.family_verdict(tables, cc.ADAPTIVE)[3][:2] == ("var_opt", 0.0)  # equal at both sigmas: the first


def test_ceiling_at_the_last_checkpoint():
    ds = compare_grid()
    assert cc.ceiling_text(ds) == "σ = 0: R = 2.000 (s.e. 0); σ = 1: R = 3.000 (s.e. 0)"
    # seeds 1..10 at the last checkpoint: mean 5.5, s.e. sqrt(var(1..10, ddof=1) / 10) = sqrt(55 / 6 / 10) = 0.957
    ds["var_adam_ceiling"].loc[dict(sigma=1.0, sampler="uniform", checkpoint=1000)] = np.arange(1.0, 11.0)
    assert cc.ceiling_text(ds) == "σ = 0: R = 2.000 (s.e. 0); σ = 1: R = 5.500 (s.e. 0.96)"
    assert cc.ceiling_text(None) == "n/a" and cc.ceiling_text(ds.drop_vars("var_adam_ceiling")) == "n/a"


def test_vs_uniform_pairs_a_sigma_one_subgrid_with_compares_uniform(tmp_path, monkeypatch):
    monkeypatch.setenv("FMSTUDY_RESULTS", str(tmp_path))
    monkeypatch.setenv("FMSTUDY_PROFILE", "t")
    (tmp_path / "t" / "cells").mkdir(parents=True)
    weights = {"uncertainty": 1.5 * SPREAD, "min_snr(gamma=5.0)": 0.5 * SPREAD}
    for w in weights:  # the weightings' records name the sampler whose FLOPs they are charged
        (tmp_path / "t" / "cells" / f"{w}.json").write_text(json.dumps({"params": {"sampler": "uniform"}}))
    sub = grid({(w,): planted_cell(r) for w, r in weights.items()}, ["weighting"])
    ds = cc.compare_tables(compare_grid())[0]
    got = cc.vs_uniform(ds, sub, "weighting", " (w)")
    assert sorted(got.index) == ["min_snr(gamma=5.0) (w)", "uncertainty (w)"]
    for w, r in weights.items():
        assert got.loc[f"{w} (w)", "ratio"].value == pytest.approx(planted_ratio(r))
    assert cc.vs_uniform(None, sub, "weighting") is None and cc.vs_uniform(ds, None, "weighting") is None
    assert cc.vs_uniform(ds, sub, "target") is None and cc.vs_uniform(ds.sel(sigma=[0.0]), sub, "weighting") is None
    # directly against an allocation, paired by seed: finals 1 - 0.4 r, so (1 - 0.6 S) / (1 - 0.2 S) per seed
    direct = cc.head_to_head(ds, sub, "weighting", "uncertainty", "stratified")
    want = np.log((1 - 0.4 * 1.5 * SPREAD) / (1 - 0.4 * 0.5 * SPREAD))
    assert direct.value == pytest.approx(math.exp(want.mean())) and direct.n == 10
    assert direct.p == pytest.approx(stats.ttest_1samp(want, 0).pvalue)
    assert cc.head_to_head(ds, sub, "weighting", "nope", "stratified") is None and cc.head_to_head(ds, None, "weighting", "uncertainty", "var_opt") is None
    assert cc.head_to_head(ds, sub, "weighting", "uncertainty", "nope") is None


def row(ratio: float, speed: float, lo: float = math.nan) -> pd.Series:
    return pd.Series({"ratio": E(ratio), "speedup_steps": E(speed, lo, 9.0)})


def test_gain_over_the_top_samplers_of_a_setting():
    rows = [
        cs.SweepRow("sigma", {"sigma": 0.0, "sampler": "var_opt"}, row(0.92, 1.12, 0.0), (1, 0, 1)),
        cs.SweepRow("sigma", {"sigma": 1.0, "sampler": "oracle_qstar(k=8)"}, row(0.87, 1.28, 1.05), (1, 0, 1)),
        cs.SweepRow("sigma", {"sigma": 1.0, "sampler": "grad_norm"}, row(0.5, 3.0), (1, 0, 1)),  # not of TOP
        cs.SweepRow("sigma", {"sigma": 2.0, "sampler": "var_opt"}, row(0.6, 1.5, 1.2), (1, 0, 1)),
        cs.SweepRow("real", {"benchmark": "digits", "sampler": "var_opt"}, row(1.0, math.nan), (0, 0, 1)),
    ]
    # of the two speed-ups at sigma <= 1, one interval lies above 1 (oracle_qstar's, from 1.05), the other starts at 0
    assert cs.gain_text(rows, "sigma", "sigma", hi=1) == (
        "ratio 0.87–0.92 (better in 2 of 2, Holm); step speed-up 1.12–1.28, interval above 1 in 1 of 2 (medians 1.28)")
    assert cs.gain_text(rows, "sigma", "sigma", lo=2, hi=2) == "ratio 0.60 (better in 1 of 1, Holm); step speed-up 1.50, interval above 1 in 1 of 1"
    assert cs.gain_text(rows, "real", speed=False) == "ratio 1.00 (better in 0 of 1, Holm)"
    # per training FLOP too where the rows have it; a censored median reads as its bound
    censored = E(math.nan, below=1.02)
    flops = [cs.SweepRow("budget", {"steps": 3000, "sampler": s}, pd.Series({"ratio": E(r), "speedup_steps": sp, "speedup_flops": fl}), c)
             for s, r, sp, fl, c in (("var_opt", 0.99, E(1.11), E(1.05), (0, 0, 1)), ("oracle_qstar", 1.08, censored, censored, (0, 1, 1)))]
    assert cs.gain_text(flops, "budget", "steps", lo=3000, hi=3000) == (
        "ratio 0.99–1.08 (better in 0, worse in 1 of 2, Holm); step speed-up 1.11, and < 1.02 (1 censored median), interval above 1 in "
        "0 of 2; FLOP speed-up 1.05, and < 1.02 (1 censored median), interval above 1 in 0 of 2")
    assert cs.resolved_text([E(1.2, 1.1, 1.3), E(1.1, 0.9, 1.2), E(1.3, 1.2, 1.4)]) == "interval above 1 in 2 of 3 (medians 1.20–1.30)"
    assert cs.resolved_text([E(1.2, 1.0, 1.3)]) == "interval above 1 in 0 of 1"  # a lower end at 1 is not above it
    assert cs.speed_span([censored, E(math.nan, below=0.9)]) == "< 1.02 (2 censored medians)" and cs.speed_span([E(math.nan)]) == "n/a"
    assert cs.gain_text(rows, "budget", "steps", lo=300, hi=300) == "n/a"
    assert cs.variance_text(rows) == "4 better and 0 worse than uniform of 5 distinct cells"
    assert cs.variance_text([]) == "not run in this profile"
    with pytest.raises(ValueError, match=r"^lo=2, hi=1 is not allowed: lo must be <= hi"):
        cs.gain_text(rows, "sigma", "sigma", lo=2, hi=1)


SWEEP_R = {"uniform": np.ones(10), "var_opt": 1.5 * SPREAD, "stratified": 0.5 * SPREAD, "grad_norm": np.tile([0.9, 1.1], 5)}


def test_sweep_rows_count_each_cell_once():
    fixed = {"benchmark": "gmm8", "batch_size": 64, "hidden": 16, "depth": 2, "lr": 0.01}
    sigma = grid({(sg, s): planted_cell(r) for sg in (0.0, 1.0) for s, r in SWEEP_R.items()}, ["sigma", "sampler"], fixed=fixed)
    budget = grid({(b, s): planted_cell(r, budget=b) for b in (300, 1000) for s, r in SWEEP_R.items()}, ["steps", "sampler"], fixed=fixed)
    budget["cell_id"].loc[dict(steps=1000, sampler="var_opt")] = "1.0|var_opt"  # the same run as sigma's sigma = 1
    assert cs.cell_of(sigma, ["sigma", "sampler"], (1.0, "var_opt")) == "1.0|var_opt"
    assert cs.cell_of(sigma, ["sigma", "sampler"], (1.0, "nope")) is None
    # var_opt better and grad_norm neither at both budgets (worked out below); oracle_qstar not run
    assert cs.budget_text(budget, ("var_opt", "grad_norm", "oracle_qstar")) == (
        "300 steps: better in 1 of 2; 1,000 steps: better in 1 of 2 (Holm over the sweep's 6 rows)")
    assert cs.budget_text(budget, ("stratified",)) == (
        "300 steps: better in 0, worse in 1 of 1; 1,000 steps: better in 0, worse in 1 of 1 (Holm over the sweep's 6 rows)")
    assert cs.budget_text(None) == "not run in this profile" and cs.budget_text(sigma) == "not run in this profile"
    grids = {"compare": sigma, "sigma": sigma, "budget": budget, "toys": sigma}
    counts, rows = cs.sweep_rows(grids, {"compare": "sigma", "sigma": "sigma", "budget": "steps", "toys": "benchmark"})
    # var_opt: ratio 0.4 / 0.6 (better), stratified 0.8 / 0.6 (worse), grad_norm's log-ratios +-0.067 around 0 (neither)
    g = np.log((1 - 0.4 * SWEEP_R["grad_norm"]) / 0.6)
    assert stats.ttest_1samp(g, 0).pvalue > 0.5
    assert counts == ["gmm8 across σ = 0, 1: 2 better, 2 worse of 6", "gmm8 at σ = 1 across 300, 1,000 steps: 2 better, 2 worse of 6"]
    # sigma: var_opt and grad_norm at two sigmas; budget: the same minus var_opt at 1,000 steps (already counted)
    assert sorted((r.grid, r.labels[r.grid if r.grid == "sigma" else "steps"], r.labels["sampler"]) for r in rows) == [
        ("budget", 300, "grad_norm"),
        ("budget", 300, "var_opt"),
        ("budget", 1000, "grad_norm"),
        ("sigma", 0.0, "grad_norm"),
        ("sigma", 0.0, "var_opt"),
        ("sigma", 1.0, "grad_norm"),
        ("sigma", 1.0, "var_opt"),
    ]
    assert cs.variance_text(rows) == "3 better and 0 worse than uniform of 7 distinct cells"
    assert cs.variance_names(rows) == "grad_norm, var_opt (var_opt_neyman, oracle_qstar ran in none of these sweeps)"
    assert cs.variance_names(rows, ("var_opt",)) == "var_opt" and cs.variance_names([], ("var_opt",)).startswith("none (var_opt ran")
    # var_opt at sigma = 1 as the sigma table has it: its interval, the table's simultaneous interval (6 rows) and Holm p
    r = next(r for r in rows if r.grid == "sigma" and r.labels == {"sigma": 1.0, "sampler": "var_opt"}).row
    sim = r["ratio_simultaneous"]
    assert sim.level == pytest.approx(1 - 0.05 / 6)
    assert cs.holm_ratio_text(rows, "sigma", "sigma", "var_opt", [1.0, 5.0]) == (
        f"σ = 1: {r['ratio'].value:.3g} (95% CI {r['ratio'].lo:.3g} to {r['ratio'].hi:.3g}; simultaneous {100 * sim.level:.3g}% CI "
        f"{sim.lo:.3g} to {sim.hi:.3g}; p(Holm) = {r['p_holm']:.2g})")
    assert cs.holm_ratio_text(rows, "sigma", "sigma", "nope", [1.0]) == "n/a"


def test_correlation_sentence():
    fixed = {"benchmark": "gmm8", "batch_size": 64, "steps": 1000, "lr": 0.01}
    gains = {"arcsine(floor=0.05, reweight=True)": 1.5, "var_opt": 3.0, "grad_norm": 2.0}
    centre = {"arcsine(floor=0.05, reweight=True)": 1.1, "var_opt": 1.6, "grad_norm": 1.3}
    cells = {(sg, "uniform"): planted_cell(np.ones(10)) for sg in (0.0, 1.0)}
    cells.update({(sg, s): planted_cell((centre[s] + sg / 10) * SPREAD, gain=g) for sg in (0.0, 1.0) for s, g in gains.items()})
    text = cs.correlation_text(predicted_vs_measured({"sigma": grid(cells, ["sigma", "sampler"], fixed=fixed)}))
    # (4.6) with B_noise = B: S(r) = 2 / (1 + 1 / r); measured: the planted ratio, read as a gain 1 / ratio; Pearson on logs
    x = [math.log(2 / (1 + 1 / gains[s])) for sg in (0.0, 1.0) for s in gains]
    y = [-math.log(planted_ratio((centre[s] + sg / 10) * SPREAD)) for sg in (0.0, 1.0) for s in gains]
    rho = np.corrcoef(x, y)[0, 1]
    value, rest = text.split(" [", 1)
    lo, hi = (float(v) for v in rest.split("]")[0].split(", "))
    assert value == f"{rho:.2f}" and lo <= rho + 0.005 and rho - 0.005 <= hi
    assert rest.split("] ", 1)[1].startswith("over 6 sampler-settings: Pearson on log scale, 95% percentile bootstrap over the 2 settings")
    one = grid(
        {(1000, "uniform"): planted_cell(np.ones(10)), (1000, "var_opt"): planted_cell(1.5 * SPREAD, gain=2.0)},
        ["steps", "sampler"],
        fixed={"benchmark": "gmm8", "batch_size": 64, "sigma": 1.0},
    )
    assert cs.correlation_text(predicted_vs_measured({"budget": one})) == "not measured in this profile"  # one point
    assert cs.correlation_text(pd.DataFrame()) == "not measured in this profile"


def stab_tables(failed: dict, lrs=(0.1, 0.3, 0.6)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """stability_table / stability_summary by hand: failed seeds of 10 per (sampler, sigma) and rate;
    the largest stable rate S.1: the last rate of the leading run of zeros (NaN when it fails at once)."""
    t = pd.DataFrame(
        [{"sampler": s, "sigma": sg, "lr": lr, "failed": E(k / 10, 0, 1)} for (s, sg), ks in failed.items() for lr, k in zip(lrs, ks)]
    ).set_index(["sampler", "sigma", "lr"])
    stable = {key: ([lr for lr, k in zip(lrs, ks) if k == 0][-1] if ks[0] == 0 else math.nan) for key, ks in failed.items()}
    assert all(ks[: lrs.index(v) + 1] == [0] * (lrs.index(v) + 1) for ks, v in zip(failed.values(), stable.values()) if v == v)
    summ = pd.DataFrame([{"sampler": s, "sigma": sg, "largest_stable_lr": v} for (s, sg), v in stable.items()])
    return t, summ.set_index(["sampler", "sigma"])


# seeds failed of 10 per (sampler, sigma) at the swept rates 0.1, 0.3, 0.6: the stability tests' planted sweep
FAILED = {
    ("uniform", 0.0): [0, 6, 10],
    ("logit_normal(m=0)", 0.0): [2, 5, 10],
    ("var_opt", 0.0): [0, 0, 3],
    ("uniform", 1.0): [0, 0, 4],
    ("logit_normal(m=0)", 1.0): [0, 0, 5],
    ("var_opt", 1.0): [0, 0, 7],
}


def test_stability_sentence_by_hand():
    t, s = stab_tables(FAILED)
    assert cs.stability_sentence(t, s, [0.6, 0.1, 0.3]) == (
        "at σ = 0: uniform first fails at lr 0.3 (6 of 10 seeds); failing at a lower rate than uniform: logit_normal at lr 0.1 "
        "(2 of 10 seeds); largest stable rates 0.1–0.3 (logit_normal: none); "
        "at σ = 1: uniform first fails at lr 0.6 (4 of 10 seeds); no sampler fails at a lower rate than uniform; "
        "the largest stable rate is 0.3 for every sampler (swept rates 0.1, 0.3, 0.6)"
    )
    low = {("uniform", 0.0): [0, 6, 10], ("logit_normal", 0.0): [2, 5, 10], ("var_opt", 0.0): [0, 1, 3]}
    assert cs.stability_sentence(*stab_tables(low), [0.1, 0.3, 0.6]).endswith(
        "the largest stable rate is 0.1, the lowest swept, for every sampler but logit_normal (stable at no swept rate) "
        "(swept rates 0.1, 0.3, 0.6)"
    )
    never = {("uniform", 0.0): [0, 0, 0], ("var_opt", 0.0): [0, 0, 1]}
    t, s = stab_tables(never)
    assert cs.stability_sentence(t.droplevel("sigma"), s.droplevel("sigma"), [0.1, 0.3, 0.6]) == (
        "uniform never fails; failing at a lower rate than uniform: var_opt at lr 0.6 (1 of 10 seeds); largest stable rates 0.3–0.6 "
        "(swept rates 0.1, 0.3, 0.6)"
    )
    with pytest.raises(ValueError, match=r"^lrs=\[\] is not allowed"):
        cs.stability_sentence(t, s, [])


def _sweep_cell(k: int) -> xr.Dataset:
    """10 seeds over 5 checkpoints, the first k diverged (the metric decreasing for every seed)."""
    return xr.Dataset(
        {
            "train_loss_unweighted": (("member", "step"), np.tile(np.exp(-np.linspace(0, 1, 50)), (10, 1))),
            "diverged_step": (("member",), np.where(np.arange(10) < k, 20.0, -1.0)),
            "integrated_excess_ema": (("member", "checkpoint"), np.tile(np.linspace(3.0, 0.5, 5), (10, 1))),
            "cell_id": ((), "c"),
        },
        coords={"member": np.arange(10), "step": np.arange(50), "checkpoint": np.arange(5)},
    )


def test_stability_text_reads_the_largest_batch_of_the_sweep():
    diverged = {
        (64, "uniform"): [0, 0, 9],
        (64, "var_opt"): [0, 0, 9],  # the smaller batch: not read
        (256, "uniform"): [0, 6, 10],
        (256, "var_opt"): [0, 0, 2],
    }
    parts = [
        _sweep_cell(k).expand_dims(batch_size=[b], sampler=[s], lr=[lr])
        for (b, s), ks in diverged.items()
        for lr, k in zip((0.1, 0.3, 0.6), ks)
    ]
    sb = xr.merge(parts, join="outer", compat="no_conflicts")
    assert cs.stability_text(sb) == (
        "uniform first fails at lr 0.3 (6 of 10 seeds); no sampler fails at a lower rate than uniform; "
        "largest stable rates 0.1–0.3 (swept rates 0.1, 0.3, 0.6)"
    )
    assert cs.stability_text(None) == "not run in this profile"
    assert cs.stability_text(sb.isel(lr=0)) == "not run in this profile"


def test_sample_quality_sentence_per_benchmark():
    real = pd.DataFrame({"benchmark": ["digits", "digits", "mnist1d", "mnist1d"], "sampler": ["uniform", "var_opt(metric=adam)", "uniform", "var_opt"],
                         "Fréchet distance (median)": [15.16, 15.05, 61.2, 60.6], "seeds below uniform's": [None, "6 of 10", None, "7 of 10"],
                         "sign test p": [math.nan, 0.754, math.nan, 0.344], "floor": [13.5, 13.5, 45.7, 45.7]})
    assert cs.sample_quality_text(real) == (
        "digits: 15.1 against uniform's 15.2 (floor 13.5; 6 of 10 seeds below uniform's, sign test p = 0.75); "
        "mnist1d: 60.6 against uniform's 61.2 (floor 45.7; 7 of 10 seeds below uniform's, sign test p = 0.34)")
    assert cs.sample_quality_text(real[real.sampler == "uniform"]) == "not run in this profile"
    assert cs.sample_quality_text(pd.DataFrame()) == "not run in this profile"


def held_table() -> pd.DataFrame:
    """A chapter-7-like sweep table over real data: (benchmark, sampler) with ratio, p_holm and metric."""
    rows = [
        ("mnist1d", "var_opt", E(0.9968, 0.995, 0.9986), 0.00058, "heldout_objective_ema"),  # |log| 0.0032 < log 1.0076: not resolved
        ("digits", "var_opt", E(0.98, 0.97, 0.99), 0.01, "heldout_objective_ema"),  # |log| 0.020: resolved
        ("mnist1d", "grad_norm", E(1.005, 0.99, 1.02), 0.5, "heldout_objective_ema"),  # not significant
        ("digits", "logit_normal", E(1.003, 1.001, 1.005), 0.01, "integrated_excess_ema"),  # another metric
    ]
    return pd.DataFrame([{"benchmark": b, "sampler": s, "ratio": r, "p_holm": p, "metric": m, "unbiased": True} for b, s, r, p, m in rows]
                        ).set_index(["benchmark", "sampler"])


def test_unresolved_held_out_verdicts_are_named_in_the_counts():
    assert cs.unresolved_labels(held_table(), 1.0076) == {("mnist1d", "var_opt"): "var_opt on mnist1d"}
    assert cs.unresolved_labels(held_table(), 1.03) == {("mnist1d", "var_opt"): "var_opt on mnist1d", ("digits", "var_opt"): "var_opt on digits"}
    assert cs.unresolved_labels(held_table(), math.nan) == {} and cs.unresolved_labels(pd.DataFrame(), 1.0076) == {}
    assert cs.held_note([], 3, 1.0076) == ""
    note = "within the held-out set's 0.76% distortion and so not resolved"
    assert cs.held_note(["var_opt on mnist1d"], 20, 1.0076) == f" (1 of them, var_opt on mnist1d, {note})"
    assert cs.held_note(["var_opt on mnist1d"], 1, 1.0076) == f" (var_opt on mnist1d, {note})"
    assert cs.held_note(["a on x", "b on y"], 2, 1.0076) == f" (both of them, a on x and b on y, {note})"
    assert cs.held_note(["a on x", "b on y"], 5, 1.0076) == f" (2 of them, a on x and b on y, {note})"
    rows = [
        cs.SweepRow("real", {"benchmark": "mnist1d", "sampler": "var_opt"}, pd.Series({"ratio": E(0.9968)}), (1, 0, 1), "var_opt on mnist1d"),
        cs.SweepRow("real", {"benchmark": "digits", "sampler": "var_opt"}, pd.Series({"ratio": E(0.98)}), (1, 0, 1)),
        cs.SweepRow("sigma", {"sigma": 1.0, "sampler": "var_opt"}, pd.Series({"ratio": E(1.1)}), (0, 1, 1)),
    ]
    assert cs.variance_text(rows, 1.0076) == f"2 better (1 of them, var_opt on mnist1d, {note}) and 1 worse than uniform of 3 distinct cells"
    assert cs.variance_text(rows) == (
        "2 better (1 of them, var_opt on mnist1d, within the held-out set's distortion and so not resolved) and 1 worse than uniform of 3 distinct cells")
    assert cs.gain_text(rows, "real", speed=False, bound=1.0076) == (
        f"ratio 0.98–1.00 (better in 2 of 2, Holm; of the better, var_opt on mnist1d is {note})")


def test_held_unresolved_clause_reads_for_any_count():
    one = "var_opt on mnist1d (ratio 0.9968)"
    assert cs.held_unresolved_text([one], 5) == (
        "one of the 5 significant held-out verdicts, var_opt on mnist1d (ratio 0.9968), is closer to 1 than that and so is not resolved")
    assert cs.held_unresolved_text([one], 1) == (
        "the one significant held-out verdict, var_opt on mnist1d (ratio 0.9968), is closer to 1 than that and so is not resolved")
    assert cs.held_unresolved_text(["a", "b"], 5) == "2 of the 5 significant held-out verdicts, a and b, are closer to 1 than that and so are not resolved"
    assert cs.held_unresolved_text(["a", "b", "c"], 3) == (
        "all 3 of the 3 significant held-out verdicts, a, b and c, are closer to 1 than that and so are not resolved")
    assert cs.held_unresolved_text([], 5) == "none of the 5 significant held-out verdicts is closer to 1 than that"
    assert cs.held_unresolved_text([], 1) == "the one significant held-out verdict is not closer to 1 than that"
    assert cs.held_unresolved_text([], 0) == "no held-out verdict is significant"


def test_speed_up_intervals_below_one_are_counted():
    # chapter 7's 300-step FLOP speed-ups: both intervals end below 1
    assert cs.resolved_text([E(0.801, 0.791, 0.83), E(0.975, 0.961, 0.997)]) == "interval above 1 in 0 of 2, below 1 in 2 of 2"
    assert cs.resolved_text([E(1.2, 1.1, 1.3), E(0.9, 0.8, 0.95), E(1.0, 0.9, 1.1)]) == (
        "interval above 1 in 1 of 3 (medians 1.20), below 1 in 1 of 3")
    assert cs.resolved_text([E(0.9, 0.8, 1.0)]) == "interval above 1 in 0 of 1"  # an upper end at 1 is not below it


def test_stability_sentence_carries_the_failure_test():
    from fmstudy import stability

    t, s = stab_tables(FAILED)
    # logit_normal at sigma 0, lr 0.1: 2 of 10 against 0 of 10; Fisher two-sided p = (45 + 45) / C(20, 2) = 90 / 190 = 0.47;
    # var_opt at sigma 0, lr 0.3: 0 against 6 of 10, p = 2 C(10, 6) / C(20, 6) = 420 / 38760 = 0.0108, smallest of the 4 rows:
    # Holm 4 x 0.0108 = 0.043, then 3 x 0.47 > 1: logit_normal's Holm p is 1
    tests = stability.failure_tests(t)
    assert tests.loc[("var_opt", 0.0), "p_holm"] == pytest.approx(4 * 420 / 38760)
    assert cs.stability_sentence(t, s, [0.1, 0.3, 0.6], tests).startswith(
        "at σ = 0: uniform first fails at lr 0.3 (6 of 10 seeds); failing at a lower rate than uniform: logit_normal at lr 0.1 "
        "(2 of 10 seeds; against uniform's 0 of 10 there, Fisher p = 0.47, Holm p = 1: not distinguishable from uniform at 10 seeds); ")
    # one sampler, 8 of 10 failing where uniform fails none: p = 2 C(10, 8) / C(20, 8) = 90 / 125970 = 0.00071, one row, Holm the same
    t, s = stab_tables({("uniform", 0.0): [0, 6, 10], ("var_opt", 0.0): [8, 9, 10]})
    t, s = t.droplevel("sigma"), s.droplevel("sigma")
    assert cs.stability_sentence(t, s, [0.1, 0.3, 0.6], stability.failure_tests(t)).startswith(
        "uniform first fails at lr 0.3 (6 of 10 seeds); failing at a lower rate than uniform: var_opt at lr 0.1 "
        "(8 of 10 seeds; against uniform's 0 of 10 there, Fisher p = 0.00071, Holm p = 0.00071: more failures than uniform); ")
