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
    assert ar.not_run_text(cmp.names) == "`grad_norm`, `var_opt_neyman`, `oracle_qstar`, `learning_progress`, `oracle_excess`"
    assert ar.not_run_text(list(ar.DESCRIBED)) == "none" and "info_snr" not in ar.DESCRIBED


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
        == "`a` (what it is) has a final ratio to uniform of 0.9 (95% CI 0.8 to 1, 10 seeds)"
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
        "σ = 0: mean over seeds, 95% bootstrap band",
        "σ = 1: mean over seeds, 95% bootstrap band",
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
