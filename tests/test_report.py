"""The chapters' tables (fmstudy.report) on small synthetic grids shaped like collected results,
against closed forms, hand computations and scipy.stats."""

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from fmstudy import report
from fmstudy.flops import backward_flops, forward_flops
from fmstudy.models import MLPConfig
from fmstudy.tables import sampler_norms

T, B, SEEDS = 1000, 8, list(range(10))
STEPS = np.linspace(0, T, 11)  # linear checkpoints: linear curves are interpolated exactly
C = np.linspace(1.0, 2.0, 10)  # each seed's starting loss


def _cell(r: np.ndarray, extra_forward_per_sample: float = 0.0, lr: float | None = None) -> xr.Dataset:
    """One cell: loss c_s (1 - 0.4 r_s step / T) (the baseline has r = 1, final 0.6 c_s), so
    the schedule reaches the baseline's final value at T / r_s: a speed-up of exactly r_s."""
    curve = C[:, None] * (1 - 0.4 * np.asarray(r, float)[:, None] * STEPS / T)
    n_steps = 200
    loss = np.ones((10, n_steps))
    ds = xr.Dataset(
        {
            "integrated_excess_ema": (("member", "checkpoint"), curve),
            "heldout_objective_ema": (("member", "checkpoint"), curve + 1.0),
            "train_loss": (("member", "step"), loss),
            "train_loss_unweighted": (("member", "step"), loss.copy()),
            "diverged_step": (("member",), np.full(10, -1)),
            "extra_forward": (("checkpoint",), extra_forward_per_sample * STEPS * B),
            "extra_backward": (("checkpoint",), np.zeros(11)),
            "train_seconds": (("checkpoint",), STEPS / 100),
            "cell_id": ((), "id"),
            "unbiased": ((), 1.0),
        },
        coords={"member": SEEDS, "checkpoint": STEPS.astype(int), "step": np.arange(n_steps)},
    )
    return ds if lr is None else ds.expand_dims(lr=[lr])


def _grid(cells: dict[str, xr.Dataset]) -> xr.Dataset:
    return xr.concat([c.expand_dims(sampler=[s]) for s, c in cells.items()], dim="sampler")


R_A = np.linspace(1.8, 2.2, 10)  # always reaches: speed-up median 2
R_B = np.r_[np.full(3, 0.5), np.linspace(1.1, 1.5, 7)]  # 3 seeds never reach the target
R_C = np.r_[0.9, 1.05, 0.95, 1.0, 1.02, 0.98, 1.01, 0.97, 1.03, 0.99]


def test_comparison_table_against_scipy_holm_by_hand_and_closed_form_speedups():
    ds = _grid(
        {
            "uniform": _cell(np.ones(10)),
            "loss_second_moment": _cell(R_A, extra_forward_per_sample=0.5),
            "stratified": _cell(R_B),
            "arcsine": _cell(R_C),
        }
    )
    model = MLPConfig(dim=2, hidden=16, depth=2)
    tab = report.comparison_table(ds, "integrated_excess_ema", model=model, batch_size=B)
    assert list(tab.index) == ["loss_second_moment", "stratified", "arcsine"]
    base_final = 0.6 * C
    pvals = []
    for name, r in (("loss_second_moment", R_A), ("stratified", R_B), ("arcsine", R_C)):
        final = C * (1 - 0.4 * r)
        ref = stats.ttest_rel(np.log(final), np.log(base_final))
        ci = ref.confidence_interval(0.95)
        simultaneous = ref.confidence_interval(1 - 0.05 / 3)  # Bonferroni over the 3 rows
        row = tab.loc[name]
        assert row["n"] == 10 and row["p"] == pytest.approx(ref.pvalue)
        assert (row["ratio"].lo, row["ratio"].hi) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
        rs = row["ratio_simultaneous"]
        assert (rs.lo, rs.hi) == pytest.approx((math.exp(simultaneous.low), math.exp(simultaneous.high)))
        d = np.log(final / base_final)
        assert row["effect"] == pytest.approx(d.mean() / d.std(ddof=1))
        pvals.append(ref.pvalue)
    # Holm by hand: sorted p times 3, 2, 1, running maximum, capped at 1
    order = np.argsort(pvals)
    scaled = np.minimum(1, np.maximum.accumulate(np.array(pvals)[order] * [3, 2, 1]))
    want = np.empty(3)
    want[order] = scaled
    np.testing.assert_allclose(tab["p_holm"].to_numpy(dtype=float), want)
    # speed-ups per step: medians of r_s; stratified's 3 slow seeds are counted as censored
    sa, sb = tab.loc["loss_second_moment", "speedup_steps"], tab.loc["stratified", "speedup_steps"]
    assert sa.value == pytest.approx(np.median(R_A)) and sa.censored == 0
    assert sb.value == pytest.approx(np.median(R_B)) and sb.censored == 3 and sb.lo == 0.0
    # per FLOP: half a forward pass per training sample more costs (F + B + F/2) / (F + B)
    f, b = forward_flops(model), backward_flops(model)
    assert tab.loc["loss_second_moment", "speedup_flops"].value == pytest.approx(np.median(R_A) * (f + b) / (f + b + f / 2))
    assert tab.loc["stratified", "speedup_flops"].value == pytest.approx(np.median(R_B))
    assert bool(tab.loc["arcsine", "unbiased"]) and "lr" not in tab
    ds.attrs["fixed"] = '{"lr": 0.002}'
    assert (report.comparison_table(ds, "integrated_excess_ema")["lr"] == 0.002).all()
    text = report.as_text(tab)
    assert text.loc["loss_second_moment", "speedup_steps"] == f"{np.median(R_A):.3g} [{R_A[1]:.3g}, {R_A[8]:.3g}]"
    assert text.loc["stratified", "p_holm"] == f"{tab.loc['stratified', 'p_holm']:.2g}" and text.loc["arcsine", "n"] == 10


def test_comparison_table_reports_each_samplers_chosen_lr():
    ds = _grid({s: xr.concat([_cell(r, lr=lr) for lr in (0.001, 0.01)], dim="lr") for s, r in (("uniform", np.ones(10)), ("arcsine", R_A))})
    tuned = report.at_chosen_lr(ds, {"uniform": 0.01, "arcsine": 0.001})
    tab = report.comparison_table(tuned, "integrated_excess_ema")
    assert tab.loc["arcsine", "lr"] == 0.001 and "speedup_flops" not in tab


def _sweep(diverged: dict[tuple[str, float], list[int]], spikes: dict[tuple[str, float], int]) -> xr.Dataset:
    cells = {}
    for s in ("uniform", "info_snr"):
        per_lr = []
        for lr in (0.001, 0.01, 0.1):
            c = _cell(np.ones(10), lr=None)
            div = np.full(10, -1)
            div[diverged.get((s, lr), [])] = 50
            c["diverged_step"] = ("member", div)
            rng = np.random.default_rng(0)
            smooth = np.exp(-np.linspace(0, 1, 200))[None, :] * (1 + 0.01 * rng.normal(size=(10, 200)))
            c["train_loss_unweighted"] = (("member", "step"), smooth.copy())
            weighted = smooth.copy()
            weighted[:, 120] *= 20  # a rare large importance weight: a spike of the weighted loss only
            unweighted = c["train_loss_unweighted"].values
            unweighted[0, 150 : 150 + spikes.get((s, lr), 0)] *= 10
            c["train_loss"] = (("member", "step"), weighted)
            per_lr.append(c.expand_dims(lr=[lr], sigma=[0.5]))
        cells[s] = xr.concat(per_lr, dim="lr")
    return _grid(cells)


def test_stability_table_wilson_rates_spikes_on_the_unweighted_loss_and_largest_stable_lr():
    ds = _sweep({("uniform", 0.1): [0, 1, 2, 3, 4, 5], ("info_snr", 0.01): [0], ("info_snr", 0.1): list(range(10))}, {("uniform", 0.01): 3})
    tab = report.stability_table(ds)
    assert tab.index.names == ["sampler", "lr", "sigma"] and len(tab) == 6
    row = tab.xs(("uniform", 0.1, 0.5), level=("sampler", "lr", "sigma"))
    est = row["diverged"].iloc[0]
    ci = stats.binomtest(6, 10).proportion_ci(0.95, method="wilson")
    assert est.value == 0.6 and (est.lo, est.hi) == pytest.approx((ci.low, ci.high))
    assert (tab["spikes_on"] == "train_loss_unweighted").all()
    spikes = tab["spikes"].xs(("uniform", 0.01, 0.5), level=("sampler", "lr", "sigma")).iloc[0]
    assert spikes == pytest.approx(3 / 10)  # 3 planted on one of 10 seeds; the weighted one is not counted
    assert tab["spikes"].sum() == pytest.approx(3 / 10)
    stable = report.largest_stable_lr(tab)
    assert stable.loc[("uniform", 0.5)] == 0.01 and stable.loc[("info_snr", 0.5)] == 0.001
    fallback = report.stability_table(ds.drop_vars("train_loss_unweighted"))
    assert (fallback["spikes_on"] == "train_loss").all() and fallback["spikes"].sum() > 1  # weighted spikes counted
    assert report.spike_source(ds) == ("train_loss_unweighted", False)


def test_select_lr_follows_the_written_rule():
    """Held-out objective 1 + c_s (1 - 0.4 r) at the end: larger r is lower. uniform: lr 0.01
    and 0.1 tie (same r), so the smaller wins; info_snr: 0.1 is lowest but one seed diverged
    there, so 0.01 wins."""
    r = {
        ("uniform", 0.001): 1.0,
        ("uniform", 0.01): 1.5,
        ("uniform", 0.1): 1.5,
        ("info_snr", 0.001): 1.0,
        ("info_snr", 0.01): 1.2,
        ("info_snr", 0.1): 2.0,
    }
    cells = {}
    for s in ("uniform", "info_snr"):
        per_lr = []
        for lr in (0.001, 0.01, 0.1):
            c = _cell(np.full(10, r[(s, lr)]), lr=lr)
            if (s, lr) == ("info_snr", 0.1):
                c["diverged_step"] = c["diverged_step"].copy(data=np.r_[40, np.full(9, -1)][None, :])
            per_lr.append(c)
        cells[s] = xr.concat(per_lr, dim="lr")
    grid = _grid(cells)
    chosen, cand = report.select_lr(grid)
    assert chosen.to_dict() == {"uniform": 0.01, "info_snr": 0.01}
    tuned = report.at_chosen_lr(grid, chosen)
    assert tuned["lr"].values.tolist() == [0.01, 0.01] and "lr" not in tuned.dims
    assert cand["chosen"].sum() == 2 and not cand.loc[("info_snr", 0.1), "eligible"]
    want = 1 + C.mean() * (1 - 0.4 * 1.5)
    assert cand.loc[("uniform", 0.01), "mean"] == pytest.approx(want)
    assert "ties go to the smaller rate" in report.LR_RULE


def test_against_baseline_and_shown_keep_working_with_censored_speedups():
    ds = _grid({"uniform": _cell(np.ones(10)), "stratified": _cell(R_B)})
    tab = report.against_baseline(ds, "integrated_excess_ema", model=MLPConfig(dim=2, hidden=16, depth=2), batch_size=B)
    assert tab.loc["stratified", "reached"] == pytest.approx(0.7)
    assert tab.loc["stratified", "speedup"].censored == 3
    page = report.shown(tab, "speed-up")
    assert page.loc["stratified", ("speed-up (steps)", "median [97.9% CI]")].startswith(f"{np.median(R_B):.3g} [0, ")
    assert page.loc["uniform", ("speed-up (steps)", "median [97.9% CI]")] == "—"
    assert report.shown(tab, "final").loc["stratified", ("seeds", "")] == 10


def test_shown_on_a_grid_matches_scipys_paired_t_tests_holm_adjusted_by_hand():
    ds = _grid({"uniform": _cell(np.ones(10)), "stratified": _cell(R_B), "arcsine": _cell(R_C)})
    page = report.shown(report.against_baseline(ds, "integrated_excess_ema", model=MLPConfig(dim=2, hidden=16, depth=2), batch_size=B))
    p = [stats.ttest_rel(np.log(C * (1 - 0.4 * r)), np.log(0.6 * C)).pvalue for r in (R_B, R_C)]
    lo, hi = sorted(p)
    want = {p[0]: None, p[1]: None}
    want[lo], want[hi] = min(1, 2 * lo), min(1, max(2 * lo, hi))
    col = page[("p (Holm)", "over the table's 2 rows")]
    assert col["stratified"] == f"{want[p[0]]:.2g}" and col["arcsine"] == f"{want[p[1]]:.2g}" and col["uniform"] == "—"
    d = np.log((1 - 0.4 * R_C) / 0.6)
    assert page.loc["arcsine", ("d_z", "Cohen's, per-seed log-ratios")] == f"{d.mean() / d.std(ddof=1):.2f}"


@pytest.mark.parametrize(
    "label,norms",
    [
        ("uniform", ("none", "euclid")),
        ("logit_normal(floor=0.05, m=0.0, reweight=True, s=1.0)", ("none", "euclid")),
        ("grad_norm", ("euclid", "euclid")),
        ("var_opt(metric=adam)", ("adam", "euclid")),
        ("var_opt(metric=euclid, neyman=True)", ("euclid", "euclid")),
        ("oracle_qstar(metric=adam)", ("none", "adam")),
    ],
)
def test_sampler_norms_follow_what_the_sampler_requires(label, norms):
    assert sampler_norms(label) == norms


def test_sampler_norms_refuse_an_unknown_sampler():
    with pytest.raises(ValueError, match="no sampler is called 'nope'"):
        sampler_norms("nope(a=1)")


def test_model_of_reads_the_common_parameters_and_the_benchmarks_suggestion():
    from fmstudy.data import get_benchmark

    ds = _grid({"uniform": _cell(np.ones(10))})
    ds.attrs["fixed"] = '{"benchmark": "gmm8", "hidden": 64, "depth": 2, "batch_size": 256}'
    assert report.model_of(ds) == (MLPConfig(dim=2, hidden=64, depth=2), 256)
    ds.attrs["fixed"] = '{"benchmark": "gmm8", "hidden": null, "depth": null}'
    bench = get_benchmark("gmm8")
    with pytest.raises(ValueError, match="select one batch_size first"):
        report.model_of(ds)
    ds = ds.assign_coords(batch_size=128)
    assert report.model_of(ds) == (MLPConfig(dim=2, hidden=bench.model_hidden, depth=bench.model_depth), 128)

