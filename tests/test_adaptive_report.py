"""Chapter 6's analysis (fmstudy.adaptive_report, fmstudy.adaptive_stability) on planted grids and hand-made tables: speed-ups
and ratios known by construction, the largest speed-up with its ties and censored rows, the
stability counts and sentences worked out from the planted shares, and the figures' panels."""

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from planted import SPREAD, grid
from planted import cell as planted_cell
from scipy import stats

from fmstudy import adaptive_report as ar
from fmstudy import adaptive_stability as stab
from fmstudy.analysis import Estimate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = {"uniform": np.ones(10), "var_opt": 1.25 * SPREAD, "loss_second_moment": 0.5 * SPREAD, "stratified": 0.8 * SPREAD}


def E(value: float, lo: float = math.nan, hi: float = math.nan, n: int = 10) -> Estimate:
    return Estimate(value, lo, hi, n)


def planted_ratio(r: np.ndarray) -> float:
    """A planted cell's paired geometric-mean ratio to a baseline with r = 1: exp mean log((1 - 0.4 r) / 0.6)."""
    return math.exp(np.mean(np.log((1 - 0.4 * np.asarray(r)) / 0.6)))


def compare_grid() -> xr.Dataset:
    """sigma 0 and 1; var_opt 1.2 times less noisy (gain 1.2) and 1.25 times faster than uniform."""
    cells = {(sg, s): planted_cell(r, gain=1.2 if s == "var_opt" else 1.0) for sg in (0.0, 1.0) for s, r in R.items()}
    return grid(cells, ["sigma", "sampler"])


def test_comparison_keeps_uniform_and_the_adaptive_samplers_in_their_order():
    cmp = ar.comparison(compare_grid())
    assert cmp.names == ["loss_second_moment", "var_opt"]  # the order of ADAPTIVE; stratified is fixed, not adaptive
    assert list(cmp.ad.sampler.values) == ["uniform", "loss_second_moment", "var_opt"]
    assert cmp.sigmas == [0.0, 1.0] and cmp.metric == "integrated_excess_ema"
    assert ar.comparison(None) is None and ar.comparison(compare_grid().sel(sampler=["var_opt"])) is None
    assert ar.ran_text(cmp.names) == "`loss_second_moment`, `var_opt` beside `uniform`" and ar.ran_text([]) == "no adaptive sampler"
    assert ar.not_run_text(cmp.names) == "`grad_norm`, `var_opt_neyman`, `oracle_qstar`"
    assert ar.not_run_text(list(ar.DESCRIBED)) == "none" and "info_snr" not in ar.DESCRIBED
    # learning_progress and oracle_excess are described apart, as compared only where they ran
    assert not set(ar.EXTRA) & set(ar.DESCRIBED)
    assert ar.extra_text(cmp.names) == "neither was run in this profile, so this chapter does not compare them"
    assert ar.extra_text(["var_opt", *ar.EXTRA]) == "both were run in this profile and appear in the tables below"
    assert ar.extra_text(["oracle_excess"]) == (
        "`oracle_excess` was run in this profile and appears in the tables below; `learning_progress` was not")


def test_speed_table_best_speedup_and_the_last_sigma():
    cmp = ar.comparison(compare_grid())
    speed = ar.speed_table(cmp)
    assert list(zip(speed.sigma, speed.sampler)) == [
        (0.0, "loss_second_moment"),
        (0.0, "var_opt"),
        (1.0, "loss_second_moment"),
        (1.0, "var_opt"),
    ]
    vo = speed[speed.sampler == "var_opt"]
    # per seed 1.25 x SPREAD faster: the median of SPREAD is 1, so the median speed-up is 1.25
    assert [e.value for e in vo.speedup] == pytest.approx([1.25, 1.25])
    assert [e.value for e in vo.ratio] == pytest.approx([planted_ratio(R["var_opt"])] * 2)
    # loss_second_moment ends at c (1 - 0.2 r) > 0.6 c: no seed reaches uniform's final value
    assert all(e.censored == 10 for e in speed[speed.sampler == "loss_second_moment"].speedup)
    best = ar.best_speedup(speed)
    assert best[:2] == ("var_opt", 0.0) and best[2].value == pytest.approx(1.25)  # equal at both sigmas: the first
    assert ar.speed_table(None).empty


def test_headline_of_the_speed_table():
    speed = ar.speed_table(ar.comparison(compare_grid()))
    # each of the 4 paired t-tests of the closed-form finals is far below Holm's smallest threshold 0.05 / 4
    for r in (R["var_opt"], R["loss_second_moment"]):
        assert stats.ttest_rel(np.log(1 - 0.4 * r), np.log(np.full(10, 0.6))).pvalue < 0.05 / 4
    h = ar.headline(speed, 1.0)
    assert (h.better, h.worse, h.pairs) == (2, 2, 4)  # var_opt better at both sigmas, loss_second_moment worse
    assert h.best == "var_opt at σ = 0" and h.best_speedup.value == pytest.approx(1.25) and h.sigma == 1.0
    assert h.ours_speedup.value == pytest.approx(1.25) and h.ours_ratio.value == pytest.approx(planted_ratio(R["var_opt"]))
    other = ar.headline(speed, 1.0, "oracle_qstar")  # not run: its fields are NaN
    assert math.isnan(other.ours_speedup) and math.isnan(other.ours_ratio) and other.best == h.best
    empty = ar.headline(speed.iloc[:0], None)
    assert empty.best == "n/a" and all(math.isnan(v) for k, v in empty._asdict().items() if k != "best")


def test_best_speedup_skips_rows_without_seeds_or_a_median():
    speed = pd.DataFrame(
        {
            "sampler": ["a", "b", "c", "d"],
            "sigma": [0.0, 0.0, 1.0, 1.0],
            "speedup": [E(1.1), E(math.nan), E(1.9, n=0), E(1.3)],
            "ratio": [E(0.9, 0.8, 1.0), E(1.2), E(0.5), E(0.95)],
        }
    )
    assert ar.best_speedup(speed)[:2] == ("d", 1.0)  # c has no seeds, b no identified median
    assert ar.best_speedup(speed.iloc[1:3]) is None
    with pytest.raises(ValueError, match=r"^a speed table with columns \['sampler', 'sigma'\] is not allowed: it needs \['speedup'\]"):
        ar.best_speedup(speed[["sampler", "sigma"]])
    assert ar.row_at(speed, "a", 0.0)["ratio"].value == 0.9 and ar.row_at(speed, "a", 1.0) is None
    assert ar.row_at(speed, "a", None) is None and ar.row_at(speed.iloc[:0], "a", 0.0) is None
    assert (
        ar.ratio_sentence(speed, "a", "what it is", 0.0)
        == "`a` (what it is) has a final ratio to uniform of 0.9 (95% CI 0.8 to 1, 10 seeds) and a speed-up of 1.1 (no interval with 10 seeds) in steps"
    )
    assert ar.ratio_sentence(speed, "z", "what it is", 0.0) == "`z` (what it is) was not run in this profile"


def test_predicted_tables_put_the_measured_speedup_beside_the_prediction():
    cmp = ar.comparison(compare_grid())
    speed = ar.speed_table(cmp)
    tables = ar.predicted_tables(cmp, speed)
    assert list(tables) == [0.0, 1.0]
    t = tables[1.0]
    assert t.loc["var_opt", "gain V(U)/V(q)"] == pytest.approx(1.2) and t.loc["uniform", "gain V(U)/V(q)"] == pytest.approx(1.0)
    assert t.loc["uniform", "measured speed-up"] == 1.0  # its own baseline
    assert t.loc["var_opt", "measured speed-up"].value == pytest.approx(1.25)
    # planted R = 2 at B_noise = B: R predicts (1 + 1) / (1 + 1/2) = 4/3 > 1.25, so not above it
    assert t.loc["var_opt", "predicted speed-up of R"] == pytest.approx(4 / 3)
    assert t.loc["var_opt", "above R's prediction"] == "no" and t.loc["uniform", "above R's prediction"] == "n/a"
    assert ar.predicted_shown(t).loc["uniform", "above R's prediction"] == "—"  # the baseline: no "n/a" on the page
    no_vo = ar.predicted_tables(cmp, speed[speed.sampler != "var_opt"])[0.0]
    assert math.isnan(no_vo.loc["var_opt", "measured speed-up"])
    assert ar.predicted_tables(None, speed) == {}
    bare = cmp._replace(ad=cmp.ad.drop_vars([v for v in cmp.ad if str(v).startswith("var_adam_")]))
    assert ar.predicted_tables(bare, speed) == {}


def test_others_table_labels_each_subgrid_row_and_pairs_it_with_uniform(tmp_path, monkeypatch):
    monkeypatch.setenv("FMSTUDY_RESULTS", str(tmp_path))
    monkeypatch.setenv("FMSTUDY_PROFILE", "t")
    (tmp_path / "t" / "cells").mkdir(parents=True)
    rb_r = {"uniform": 1.5 * SPREAD, "var_opt": 2.0 * SPREAD}
    wt_r = {"uncertainty": 0.5 * SPREAD}
    for cid, sampler in (("uniform", "uniform"), ("var_opt", "var_opt"), ("uncertainty", "uniform")):  # the cells' records
        (tmp_path / "t" / "cells" / f"{cid}.json").write_text(json.dumps({"params": {"sampler": sampler}}))
    rb = grid({(s,): planted_cell(r) for s, r in rb_r.items()}, ["sampler"])
    wt = grid({(w,): planted_cell(r) for w, r in wt_r.items()}, ["weighting"])
    cmp = ar.comparison(compare_grid())
    got = ar.others_table(cmp, {"rb_target": (rb, "sampler"), "missing": (None, "sampler"), "weighting": (wt, "weighting")})
    assert list(got.index) == ["rb_target: uniform", "rb_target: var_opt", "weighting: uncertainty"]
    for label, r in (
        ("rb_target: uniform", rb_r["uniform"]),
        ("rb_target: var_opt", rb_r["var_opt"]),
        ("weighting: uncertainty", wt_r["uncertainty"]),
    ):
        assert got.loc[label, "ratio"].value == pytest.approx(planted_ratio(r))
    assert got.loc["rb_target: var_opt", "speedup"].value == pytest.approx(2.0)
    assert ar.others_table(None, {"rb_target": (rb, "sampler")}) is None
    assert ar.others_table(cmp._replace(ad=cmp.ad.sel(sigma=[0.0])), {"rb_target": (rb, "sampler")}) is None  # no sigma = 1


def test_load_sweep_prefers_stability_at_gmm8_and_the_largest_batch():
    def sweep(tag: float) -> xr.Dataset:
        x = np.array([[[tag, tag + 1], [tag + 2, tag + 3]]])  # (lr, benchmark, batch_size)
        return xr.Dataset(
            {"x": (("lr", "benchmark", "batch_size"), x)},
            coords={"lr": [0.1], "benchmark": ["checkerboard", "gmm8"], "batch_size": [64, 256]},
        )

    rb, name = stab.load_sweep({"stability": sweep(0.0), "robustness": sweep(10.0)}.get)
    assert name == "stability" and float(rb.x.squeeze()) == 3.0  # gmm8, batch 256
    rb, name = stab.load_sweep({"robustness": sweep(10.0)}.get)
    assert name == "robustness" and float(rb.x.squeeze()) == 13.0
    assert stab.load_sweep({}.get) == (None, "robustness")


def summary(stable: list[float], less: list[bool], sigma: bool = True) -> pd.DataFrame:
    """A stability summary of samplers a, b, uniform (at sigma 0 and 1 when ``sigma``): their largest
    stable rates and whether each is below uniform's; uniform breaks at 0.3 at sigma 0, not at sigma 1
    (at 0.6 without sigma)."""
    if sigma:
        idx = pd.MultiIndex.from_tuples([(s, g) for g in (0.0, 1.0) for s in ("a", "b", "uniform")], names=["sampler", "sigma"])
        breaks = [0.3] * 3 + [math.nan] * 3
    else:
        idx, breaks = pd.Index(["a", "b", "uniform"], name="sampler"), [0.6] * 3
    return pd.DataFrame({"largest_stable_lr": stable, "baseline_breaks_at": breaks, "less_stable": less}, index=idx)


def test_stability_sentences_by_hand():
    # below uniform's 0.3: a at both sigmas, b at sigma 0 (stable at no rate)
    s = summary([0.1, math.nan, 0.3, 0.1, 0.3, 0.3], [True, True, False, True, False, False])
    assert stab.breaks_text(s) == "σ = 0: 0.3; σ = 1: not reached"
    assert stab.less_stable_text(s) == "a at σ = 0, b at σ = 0, a at σ = 1"
    assert stab.at_lowest(s, [0.3, 0.1, 0.6]) == (2, 1)  # 0.1 twice; b stable at none
    assert stab.resolve_text(s, [0.3, 0.1, 0.6]) == "so the sweep resolves stable rates above its lowest rate"
    low = summary([0.1, math.nan, 0.1, 0.1, 0.1, math.nan], [False, True, False, False, False, False])
    assert stab.resolve_text(low, [0.1, 0.3]).startswith("so the sweep does not resolve differences in stable rate above its lowest")
    assert (
        stab.resolve_text(low, [0.1]) == "so the sweep resolves stable rates above its lowest rate"
    )  # one rate resolves nothing to compare
    flat = summary([0.3, 0.3, 0.6], [True, True, False], sigma=False)
    assert stab.breaks_text(flat) == "0.6" and stab.less_stable_text(flat) == "a, b"
    assert stab.less_stable_text(summary([0.6, 0.6, 0.6], [False] * 3, sigma=False)) == "none"
    assert stab.at_lowest(flat, []) == (0, 0)
    with pytest.raises(ValueError, match=r"^a stability summary with columns .* is not allowed: it needs \['less_stable'\]"):
        stab.less_stable_text(flat.drop(columns="less_stable"))


def test_failure_counts_swept_and_tuned_rates():
    table = pd.DataFrame(
        {"failed": [E(0.3, n=10), E(0.5, n=10), E(0.25, n=4)], "diverged": [E(0.1, n=10), E(0.0, n=10), E(0.25, n=4)], "n": [10, 10, 4]}
    )
    assert stab.failure_counts(table) == (3 + 5 + 1, 1 + 0 + 1, 24)
    with pytest.raises(ValueError, match=r"needs \['n'\]$"):
        stab.failure_counts(table.drop(columns="n"))
    assert stab.swept_rates(xr.Dataset(coords={"lr": [0.3, 0.1, 1.0]})) == [0.1, 0.3, 1.0]
    assert stab.swept_rates(xr.Dataset(coords={"sigma": [1.0]})) == []
    used = xr.Dataset({"lr_used": (("sampler", "sigma"), [[0.03, np.nan], [0.01, 0.03]])})
    assert stab.tuned_text(used) == "0.01, 0.03" and stab.tuned_text(None) == "not recorded in this profile"
    assert stab.tuned_text(used.drop_vars("lr_used")) == "not recorded in this profile"


def q_comparison() -> ar.Comparison:
    """Two adaptive samplers' proposal q over 4 t-bins and 3 checkpoints at sigma 0 and 1."""
    q = np.ones((3, 2, 2, 3, 4))  # sampler, sigma, member, checkpoint, t_bin
    coords = {
        "sampler": ["uniform", "var_opt", "grad_norm"],
        "sigma": [0.0, 1.0],
        "member": [0, 1],
        "checkpoint": [0, 10, 100],
        "t_lo": ("t_bin", np.arange(4) / 4),
        "t_hi": ("t_bin", np.arange(1, 5) / 4),
    }
    ad = xr.Dataset({"q": (("sampler", "sigma", "member", "checkpoint", "t_bin"), q)}, coords=coords)
    return ar.Comparison(ad, ad, ["var_opt", "grad_norm"], [0.0, 1.0], "integrated_excess_ema")


def test_figures_have_one_panel_per_sigma_or_sampler():
    fig = ar.curves_figure(ar.comparison(compare_grid()))
    assert [ax.get_title() for ax in fig.axes] == [
        "σ = 0: mean over seeds, 95% t band",
        "σ = 1: mean over seeds, 95% t band",
    ]
    fig = ar.q_figure(q_comparison())
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["var_opt, σ = 1", "grad_norm, σ = 1"]  # the last sigma
    with pytest.raises(ValueError, match=r"^a comparison with names=\[\] is not allowed"):
        ar.q_figure(q_comparison()._replace(names=[]))
    idx = pd.MultiIndex.from_tuples(
        [(s, g, lr) for s in ("uniform", "var_opt") for g in (0.0, 1.0) for lr in (0.1, 0.3)], names=["sampler", "sigma", "lr"]
    )
    table = pd.DataFrame({"failed": [E(k / 10, 0, 1) for k in range(8)]}, index=idx)
    fig = stab.stability_figure(xr.Dataset(coords={"sigma": [0.0, 1.0]}), table)
    assert [ax.get_title() for ax in fig.axes] == ["σ = 0", "σ = 1"]
    assert [len(ax.get_lines()) > 0 for ax in fig.axes] == [True, True]
    fig = stab.stability_figure(xr.Dataset(), table.xs(0.0, level="sigma"))
    assert [ax.get_title() for ax in fig.axes] == [""]
    plt.close("all")


def test_predicted_shown_gives_three_figures_and_names_infinity():
    table = pd.DataFrame({"predicted speed-up of R": [1.1234, 1.0], "B_noise / B": [math.inf, 3.14159],
                          "measured speed-up": [E(1.28, 1.16, 1.30), 1.0]}, index=["a", "uniform"])
    shown = ar.predicted_shown(table)
    assert list(shown["predicted speed-up of R"]) == ["1.12", "1"] and list(shown["measured speed-up"]) == ["1.28 [1.16, 1.3]", "1"]
    assert list(shown["B_noise / B"]) == ["∞ (no signal resolved)", "3.14"]


# -- the family of the tables: Holm's p and the simultaneous intervals ----------------------------
def test_simultaneous_widens_the_t_interval_to_the_bonferroni_level():
    d = np.log(np.linspace(0.8, 1.1, 10)) + 0.01 * np.sin(np.arange(10))  # per-seed log-ratios
    est = Estimate(math.exp(d.mean()), *np.exp(stats.t.interval(0.95, 9, d.mean(), stats.sem(d))), 10, p=0.2, method="t")
    wide = ar.simultaneous(est, 10)
    lo, hi = np.exp(stats.t.interval(1 - 0.05 / 10, 9, d.mean(), stats.sem(d)))  # by hand, at 99.5%
    assert (wide.lo, wide.hi) == pytest.approx((lo, hi)) and wide.level == pytest.approx(0.995) and wide.value == est.value
    same = ar.simultaneous(est, 1)  # m = 1: the interval itself
    assert (same.lo, same.hi, same.level) == pytest.approx((est.lo, est.hi, 0.95))
    one = Estimate(0.9, math.nan, math.nan, 1)
    assert ar.simultaneous(one, 5) is one  # no interval to widen
    with pytest.raises(ValueError, match="only a t-interval"):
        ar.simultaneous(Estimate(0.9, 0.8, 1.0, 10, method="bca"), 5)


def test_with_family_adjusts_over_the_table_and_leaves_the_baseline_out():
    def t(p: float) -> Estimate:
        return Estimate(0.9, 0.8, 1.0, 10, p=p, method="t")

    table = pd.DataFrame({"sampler": ["a", "b", "uniform", "c"], "ratio": [t(0.01), t(0.04), t(1.0), t(0.03)]})
    got = ar.with_family(table)
    # Holm by hand over the 3 comparisons: 3 x 0.01, then max(0.03, 2 x 0.03), then max(0.06, 1 x 0.04)
    assert list(got["p_holm"].iloc[[0, 1, 3]]) == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got["p_holm"].iloc[2])
    assert got["ratio_simultaneous"].iloc[2] is None
    assert [e.level for e in got["ratio_simultaneous"].iloc[[0, 1, 3]]] == pytest.approx([1 - 0.05 / 3] * 3)


def test_final_shown_puts_the_simultaneous_interval_beside_the_ratio():
    speed = ar.speed_table(ar.comparison(compare_grid()))
    shown = ar.final_shown(speed.set_index(["sigma", "sampler"]))
    heads = list(shown.columns)
    at = [h[0] for h in heads].index("ratio to uniform")
    assert heads[at + 1] == ("ratio, simultaneous over 4 rows", "[98.8% CI]")  # 4 rows: 1 - 0.05 / 4 = 98.75%
    e = speed["ratio_simultaneous"].iloc[1]
    assert list(shown.iloc[:, at + 1])[1] == f"{e.value:.3g} [{e.lo:.3g}, {e.hi:.3g}]"
    with_base = pd.DataFrame({"ratio": [Estimate(1.0, 1.0, 1.0, 10, p=1.0, method="t"), Estimate(0.9, 0.8, 1.0, 10, p=0.04, method="t")],
                              "final": [Estimate(1, 0.9, 1.1, 10)] * 2, "objective_ratio": [Estimate(1, 0.9, 1.1, 10)] * 2,
                              "unbiased": [True, True]}, index=pd.Index(["uniform", "a"], name="sampler"))
    shown = ar.final_shown(with_base)
    assert list(shown[("ratio, simultaneous over 1 rows", "[95% CI]")]) == ["—", "0.9 [0.8, 1]"]  # one comparison: 95%


def test_ratio_and_speedup_texts_quote_holm_the_simultaneous_interval_and_flops():
    row = pd.Series({"ratio": Estimate(0.9, 0.8, 0.99, 10, p=0.01, method="t"), "ratio_simultaneous": Estimate(0.9, 0.7, 1.1, 10, 0.995),
                     "p_holm": 0.08, "speedup": Estimate(1.2, 1.1, 1.3, 10, 0.979), "speedup_flops": Estimate(1.05, 0.95, 1.15, 10, 0.979)})
    assert ar.ratio_text(row) == ("0.9 (95% CI 0.8 to 0.99, 10 seeds; simultaneous 99.5% CI 0.7 to 1.1; "
                                  "p (Holm) 0.08: not resolved from uniform's at family-wise level 5%)")
    assert ar.ratio_text(row.copy().replace({0.08: 0.01})).endswith("p (Holm) 0.01: lower than uniform's at family-wise level 5%)")
    assert ar.speedup_text(row) == "1.2 (97.9% CI 1.1 to 1.3, 10 seeds) in steps, 1.05 (97.9% CI 0.95 to 1.15, 10 seeds) per training FLOP"
    assert ar.ratio_text(None) == "n/a" and ar.speedup_text(None) == "n/a"


# -- settings, costs and the fixed probes' noise ------------------------------------------------
def test_fixed_setting_and_flops_ratio_from_the_flop_model():
    from fmstudy import flops, report

    g = compare_grid()
    assert ar.fixed_setting(g, "norm_stride") == 8.0 and math.isnan(ar.fixed_setting(g, "probe_per_bin"))
    assert math.isnan(ar.fixed_setting(None, "norm_stride"))
    # loss_second_moment charged 1,000 extra forward and 500 extra backward samples (with their Euclidean norms)
    g["extra_forward"].loc[{"sampler": "loss_second_moment", "checkpoint": 1000}] = 1000.0
    g["extra_backward"].loc[{"sampler": "loss_second_moment", "checkpoint": 1000}] = 500.0
    cmp = ar.comparison(g)
    model, batch = report.model_of(g)
    f, b, n = flops.forward_flops(model), flops.backward_flops(model), flops.norm_flops(model, "euclid")
    base = 1000 * batch * (f + b)
    assert ar.flops_ratio(cmp, "loss_second_moment", 1.0) == pytest.approx((base + 1000 * f + 500 * (b + n)) / base)
    assert ar.flops_ratio(cmp, "uniform", 0.0) == pytest.approx(1.0)
    assert math.isnan(ar.flops_ratio(cmp, "oracle_qstar", 1.0)) and math.isnan(ar.flops_ratio(None, "var_opt", 1.0))


def test_negative_share_and_the_signal_noise_text():
    assert ar.negative_share(np.array([1.0, -1.0, 2.0, np.nan, -3.0])) == 0.5 and math.isnan(ar.negative_share(np.array([np.nan])))
    cmp = ar.comparison(compare_grid())
    shape = (2, len(cmp.ad.sampler), 10, 11, 4)  # sigma, sampler, member, checkpoint, t_bin
    signal = np.ones(shape)
    signal[:, :, :, :5, :] = -1.0  # before half the budget: not read
    signal[0, 0, :, 5:, 0] = -1.0  # uniform at sigma 0, late: one bin in 4 negative
    ad = cmp.ad.assign(grad_signal=(("sigma", "sampler", "member", "checkpoint", "t_bin"), signal))
    assert ar.signal_noise_text(cmp._replace(ad=ad)) == "25% at σ = 0; 0% at σ = 1"
    assert ar.signal_noise_text(cmp) == "n/a" and ar.signal_noise_text(None) == "n/a"


# -- oracle_qstar below its ceiling --------------------------------------------------------------
def gap_comparison(se: float = 0.0) -> ar.Comparison:
    """oracle_qstar at sigma 1 over 2 equal bins with S = (1, 4), ||G||^2 = 0 and per-bin standard
    errors ``se``; checkpoints 0, 50, 75, 100 with feedback every 50 steps; R and the run's gain planted."""
    n_ck = 4
    dims = ("sigma", "sampler", "member", "checkpoint")
    ceiling = np.broadcast_to(np.array([np.nan, 1.2, 1.3, 1.25]), (1, 2, 2, n_ck))
    gain = np.broadcast_to(np.array([np.nan, 1.1, 1.1, 1.15]), (1, 2, 2, n_ck))
    ad = xr.Dataset(
        {
            "bin_grad_sq_adam": ((*dims, "t_bin"), np.broadcast_to(np.array([1.0, 4.0]), (1, 2, 2, n_ck, 2))),
            "bin_grad_sq_adam_se": ((*dims, "t_bin"), np.full((1, 2, 2, n_ck, 2), se)),
            "var_adam_full_sq": (dims, np.zeros((1, 2, 2, n_ck))),
            "var_adam_ceiling": (dims, ceiling),
            "var_adam_ceiling_bias": (dims, np.full((1, 2, 2, n_ck), 0.02)),
            "var_adam_gain_run": (dims, gain),
        },
        coords={"sigma": [1.0], "sampler": ["uniform", "oracle_qstar"], "member": [0, 1], "checkpoint": [0, 50, 75, 100],
                "t_lo": ("t_bin", [0.0, 0.5]), "t_hi": ("t_bin", [0.5, 1.0])},
        attrs={"fixed": json.dumps({"feedback_every": 50, "probe_per_bin": 64})},
    )
    return ar.Comparison(ad, ad, ["oracle_qstar"], [1.0], "integrated_excess_ema")


def test_ceiling_gap_by_hand():
    got = ar.ceiling_gap(gap_comparison(), 1.0)
    # V(U) = sum_k p_k S_k = 2.5; q* = (1/3, 2/3) mixed with the 5% floor: q = 0.95 q* + 0.025
    q = 0.95 * np.array([1 / 3, 2 / 3]) + 0.025
    floored = 2.5 / (0.25 * (1 / q[0] + 4 / q[1]))
    assert got.floored == pytest.approx(floored) and got.redrawn == pytest.approx(floored)  # no probe error: the redraw is q* itself
    assert 2.5 / 2.25 > floored  # R of these moments (q* = (1/3, 2/3): V = 2.25) is above the floored gain
    assert got.ceiling == pytest.approx(1.25) and got.gain == pytest.approx((1.1 + 1.1 + 1.15) / 3) and got.bias == pytest.approx(0.02)
    # checkpoints 50 and 100 fall on a feedback (every 50 steps), 75 does not
    assert (got.fresh, got.stale) == (2, 1) and got.gap_fresh == pytest.approx(0.1) and got.gap_stale == pytest.approx(0.2)
    assert (got.floor, got.per_bin, got.every) == (0.05, 64.0, 50.0)
    noisy = ar.ceiling_gap(gap_comparison(se=1.0), 1.0, draws=400)
    assert noisy.redrawn < floored  # errors in S move q away from q*: the gain falls
    assert ar.ceiling_gap(gap_comparison(), 1.0, name="var_opt") is None and ar.ceiling_gap(None, 1.0) is None


def test_ceiling_gap_text_names_each_piece():
    gap = ar.CeilingGap(1.19, 0.017, 1.186, 1.144, 1.14, 0.047, 4, 0.044, 3, 0.05, 64.0, 50.0)
    gap1 = gap._replace(ceiling=1.18, bias=0.015, gain=1.141)
    text = ar.ceiling_gap_text({0.0: gap, 1.0: gap1})
    assert text.startswith("`oracle_qstar`'s gain in its own runs, 1.14 and 1.14, is below their ceiling R, 1.19 and 1.18 "
                           "(σ = 0 and 1 in this order). The 5% floor is not why")
    for piece in ("every 50 steps", "0.047 and 0.047 at the 4 checkpoints", "0.044 and 0.044 at the 3 others", "64 probes per bin",
                  "(jackknife bias estimate +0.017 and +0.015)", "gives 1.14 and 1.14", "not a measured decomposition"):
        assert piece in text, piece
    assert ar.ceiling_gap_text({0.0: None}) == "`oracle_qstar` was not run in this profile"


# -- the stability sweep's tests against uniform, as the page shows them -----------------------------
def wilson(k: int, n: int = 10) -> Estimate:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return Estimate(k / n, ci.low, ci.high, n)


def test_stability_tables_and_the_fisher_verdict():
    idx = pd.MultiIndex.from_tuples([(s, g, lr) for s in ("uniform", "a") for g in (0.0, 1.0) for lr in (0.1, 0.3)],
                                    names=["sampler", "sigma", "lr"])
    ks = [0, 6, 0, 5, 2, 6, 0, 7]  # uniform, then a: sigma 0 (0.1, 0.3), sigma 1 (0.1, 0.3)
    table = pd.DataFrame({"failed": [wilson(k) for k in ks]}, index=idx)
    shown = stab.counts_shown(table)
    assert list(shown.columns) == ["rate 0.1", "rate 0.3"] and shown.index.names == ["sigma", "sampler"]
    assert shown.loc[(0.0, "a"), "rate 0.1"] == f"2 of 10 [{wilson(2).lo:.2f}, {wilson(2).hi:.2f}]" == "2 of 10 [0.06, 0.51]"
    tests = pd.DataFrame({"lr": [0.1, 0.3], "failed": [wilson(2), wilson(7)], "baseline_failed": [wilson(0), wilson(5)],
                          "k": [2, 7], "n": [10, 10], "baseline_k": [0, 5], "baseline_n": [10, 10], "p": [2 * 45 / 190, 0.65],
                          "p_holm": [0.95, 0.95]}, index=pd.MultiIndex.from_tuples([("a", 0.0), ("a", 1.0)], names=["sampler", "sigma"]))
    s = summary([0.1, math.nan, 0.3, 0.1, 0.3, 0.3], [True, True, False, True, False, False])
    assert stab.less_stable_text(s, tests) == (
        "a at σ = 0 (at rate 0.1: 2 of 10 seeds failed against uniform's 0 of 10; Fisher's exact p = 0.47, Holm-adjusted 0.95), "
        "b at σ = 0, a at σ = 1 (at rate 0.3: 7 of 10 seeds failed against uniform's 5 of 10; Fisher's exact p = 0.65, Holm-adjusted 0.95)")
    assert stab.tests_text(tests) == ("none of the 2 (sampler, σ) rows differs from uniform in its failures at family-wise level 5% "
                                      "(Fisher's exact test, Holm over the rows): not distinguishable at 10 seeds")
    hit = tests.assign(p_holm=[0.01, 0.95])
    assert stab.tests_text(hit) == "1 of the 2 (sampler, σ) rows differ from uniform in their failures at family-wise level 5%: " \
                                   "a at σ = 0 (more failures; Holm p = 0.01)"
    assert stab.tests_text(tests.assign(p=math.nan)).startswith("no sampler or uniform failed a seed")
    full = s.assign(baseline_largest_stable_lr=[0.3] * 6, failed=[wilson(6)] * 6, diverged=[wilson(0)] * 6,
                    spikes_ci=[Estimate(3.6, 0.49, 6.7, 10)] * 6, max_failed=[0.9] * 6)
    page = stab.summary_shown(full, tests)
    assert page.loc[("a", 0.0), "failed there [95% CI]"] == "6 of 10 [0.31, 0.83]"
    assert page.loc[("b", 0.0), "largest stable rate"] == "none" and page.loc[("a", 1.0), "uniform breaks at"] == "not reached"
    assert page.loc[("a", 0.0), "spikes per seed there [95% CI]"] == "3.6 [0.49, 6.7]"
    assert list(page.loc[("a", 0.0), ["vs uniform: rate tested", "Fisher p", "p (Holm)"]]) == ["0.1", "0.47", "0.95"]
    assert list(page.loc[("uniform", 0.0), ["vs uniform: rate tested", "Fisher p", "p (Holm)"]]) == ["—"] * 3
