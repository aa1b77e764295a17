"""The variance account's page functions (fmstudy.account_report) against closed forms."""

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fmstudy.account_report import (
    NO_SIGNAL,
    above_ceiling,
    ceiling_sentence,
    ceiling_table,
    draws_stratified,
    extremes_text,
    inversions_text,
    noise_scale,
    predicted_gains,
    predicted_speedup,
    probe_design,
    shown,
    span,
)
from fmstudy.analysis import Estimate


def test_predicted_speedup_limits_and_closed_form():
    # noise-dominated: the speed-up tends to the gain; no noise: nothing to gain
    assert predicted_speedup(2.0, 1e12, 256) == pytest.approx(2.0, rel=1e-6)
    assert predicted_speedup(2.0, 0.0, 256) == pytest.approx(1.0)
    assert predicted_speedup(3.0, np.inf, 64) == 3.0
    # B_noise = B: (1 + 1) / (1 + 1/r)
    r = 1.5
    assert predicted_speedup(r, 128.0, 128) == pytest.approx(2 / (1 + 1 / r))
    # never above the gain, never below 1 for a gain >= 1
    g = np.linspace(1, 5, 9)[:, None]
    bn = np.logspace(-2, 4, 13)[None, :]
    s = predicted_speedup(g, bn, 32)
    assert np.all(s <= g + 1e-12) and np.all(s >= 1 - 1e-12)
    # and it is the ratio of steps S = S_min (1 + B_noise / B) before and after dividing the noise by r
    def steps(noise):
        return 1 + noise / 32

    assert predicted_speedup(4.0, 100.0, 32) == pytest.approx(steps(100.0) / steps(25.0))


def _account(ceiling: np.ndarray, v_uniform: float, full_sq: np.ndarray) -> xr.Dataset:
    members, checkpoints = ceiling.shape
    dims = ("member", "checkpoint")
    data = {}
    for prefix in ("var_", "var_adam_"):
        data[prefix + "ceiling"] = (dims, ceiling)
        data[prefix + "ceiling_se"] = (dims, np.full_like(ceiling, 0.01))
        data[prefix + "ceiling_strat"] = (dims, ceiling * 1.1)
        data[prefix + "v_uniform"] = (dims, np.full_like(ceiling, v_uniform))
        data[prefix + "full_sq"] = (dims, full_sq)
        data[prefix + "gain_run"] = (dims, ceiling / 2)
    return xr.Dataset(data, coords={"member": np.arange(members), "checkpoint": np.arange(checkpoints) * 10})


def test_noise_scale_is_infinite_where_no_signal_is_resolved():
    ds = _account(np.ones((2, 3)), 4.0, np.array([[2.0, 0.0, -1.0], [4.0, 1.0, np.nan]]))
    bn = noise_scale(ds).values
    assert bn[0, 0] == 2.0 and np.isinf(bn[0, 1]) and np.isinf(bn[0, 2]) and bn[1, 1] == 4.0
    assert np.isnan(bn[1, 2])  # not measured: no noise scale, not an infinite one


def test_ceiling_table_means_errors_and_prediction():
    ceiling = np.array([[1.2, 1.4, 1.6], [1.4, 1.8, 2.0]])
    ds = xr.concat([_account(ceiling, 64.0, np.full((2, 3), 1.0)), _account(ceiling * 2, 64.0, np.full((2, 3), 1.0))], dim="sigma")
    ds = ds.assign_coords(sigma=[0.0, 1.0])
    table = ceiling_table(ds, batch=64)
    row = table.loc[(0.0, 10)]
    assert row["R"] == pytest.approx(1.6)
    # the members' spread plus their probe errors as if shared (0.01 each)
    assert row["R se"] == pytest.approx(np.sqrt(np.var([1.4, 1.8], ddof=1) / 2 + 0.01**2))
    assert table.loc[(1.0, 20), "R (Adam)"] == pytest.approx(2 * 1.8)
    # B_noise = 64 / 1 = 64 = B: predicted speed-up (1 + 1) / (1 + 1 / R) at the mean R (1.6 + 2.0) / 2 = 1.8
    assert table.loc[(0.0, 20), "predicted speed-up of R (Adam)"] == pytest.approx(2 / (1 + 1 / 1.8))
    assert table.loc[(0.0, 20), "B_noise / B (Adam)"] == pytest.approx(1.0)


def test_ceiling_table_prediction_is_r_itself_without_a_resolved_signal():
    # ||G||^2 estimates -1, 0, 2 at the last checkpoint: noise scales inf, inf, 32 = B / 2 -> median inf
    full_sq = np.array([[1.0, -1.0], [1.0, 0.0], [1.0, 2.0]])
    ds = _account(np.array([[1.1, 1.2], [1.1, 1.3], [1.1, 1.7]]), 64.0, full_sq).expand_dims(sigma=[0.0])
    row = ceiling_table(ds, batch=128).loc[(0.0, 10)]
    assert np.isinf(row["B_noise / B (Adam)"]) and row["predicted speed-up of R (Adam)"] == pytest.approx(1.4)  # the mean R
    assert shown(ceiling_table(ds, batch=128)).loc[(0.0, 10), "B_noise / B (Adam)"] == NO_SIGNAL


def test_inversions_name_where_stratified_falls_below_iid():
    idx = pd.MultiIndex.from_tuples([(0.0, 50), (0.0, 1000), (1.0, 1000)], names=["sigma", "step"])
    table = pd.DataFrame(
        {"R": [1.1, 1.190, 1.3], "R se": [0.01, 0.021, 0.02], "R stratified": [1.2, 1.186, 1.2], "R stratified se": [0.01, 0.020, 0.05],
         "R (Adam)": [1.1, 1.2, np.nan], "R stratified (Adam)": [1.15, 1.25, 1.3]}, index=idx)
    # 5 pairs with both values: (0, 1000) Euclidean by 0.004 < both errors; (1, 1000) Euclidean by 0.1 > 0.02
    assert inversions_text(table) == (
        "2 of the 5 pairs in the table: at σ = 0, step 1000 (Euclidean metric), R stratified 1.186 is below R 1.190, a difference"
        " of 0.004, smaller than either standard error (0.020, 0.021); at σ = 1, step 1000 (Euclidean metric), R stratified"
        " 1.200 is below R 1.300, a difference of 0.100, larger than both standard errors (0.050, 0.020)"
    )
    assert inversions_text(table.iloc[:1]) == "none of the 2 pairs in the table"
    one = table.iloc[2:].assign(**{"R stratified": 1.27})  # 0.03: below the stratified error 0.05, above the other 0.02
    assert inversions_text(one).endswith("a difference of 0.030, smaller than one standard error only (0.050, 0.020)")
    with pytest.raises(ValueError, match=r"^a table indexed by \['step'\] is not allowed"):
        inversions_text(table.droplevel("sigma"))


def test_shown_span_and_probe_design():
    t = pd.DataFrame({"B_noise / B": [np.inf, 3.0, np.nan], "x": [1.23456, -np.inf, 2.0], "draws": ["iid", "iid", "stratified"]})
    assert shown(t, ".3g").to_dict("list") == {"B_noise / B": [NO_SIGNAL, "3", "n/a"], "x": ["1.23", "∞", "2"],
                                               "draws": ["iid", "iid", "stratified"]}
    assert span([t, pd.DataFrame({"x": [0.5]})], "x") == "0.5 to 2" and span([t], "B_noise / B") == "3"
    assert span([t], "missing") == "n/a" and span([], "x") == "n/a"
    ds = _account(np.ones((3, 2)), 1.0, np.ones((3, 2)))
    ds.attrs["fixed"] = '{"variance_groups": 4, "probe_per_bin": 64}'
    assert probe_design(ds) == (3, 4.0, 16.0)
    members, groups, per = probe_design(_account(np.ones((2, 2)), 1.0, np.ones((2, 2))))
    assert members == 2 and np.isnan(groups) and np.isnan(per)


def test_one_member_takes_its_measurement_error():
    ds = _account(np.array([[1.2, 1.5]]), 1.0, np.ones((1, 2))).expand_dims(sigma=[0.5])
    assert ceiling_table(ds, batch=8).loc[(0.5, 10), "R se"] == pytest.approx(0.01)


def test_predicted_gains_average_after_step_zero():
    a = _account(np.array([[9.0, 2.0, 4.0]]), 8.0, np.full((1, 3), np.inf))
    ds = xr.concat([a, a * 0.5], dim="sampler").assign_coords(sampler=["var_opt", "uniform"])
    table = predicted_gains(ds, batch=8)
    assert table.loc["var_opt", "gain V(U)/V(q)"] == pytest.approx(1.5)  # (1 + 2) / 2, step 0 left out
    assert table.loc["var_opt", "ceiling R"] == pytest.approx(3.0)


def test_predicted_gains_read_stratified_draws_from_the_stratified_account_and_predict_r():
    """uniform (i.i.d.), stratified uniform and var_opt_neyman share V(uniform) = 8 and
    ||G||^2 = 1 (B_noise = 8 = B); V_strat(q) = 4 for the stratified ones, gain_run = 1.6 for
    all. Stratified draws must read V(U)/V_strat = 2, not gain_run; R = 3 predicts
    (1 + 1) / (1 + 1/3) = 1.5 for every sampler; a sampler with weights off has no row."""
    a = _account(np.full((2, 3), 3.0), 8.0, np.ones((2, 3)))
    for prefix in ("var_", "var_adam_"):
        a[prefix + "gain_run"] = a[prefix + "gain_run"] * 0 + 1.6
        a[prefix + "v_strat_run"] = a[prefix + "v_uniform"] * 0 + 4.0
    ds = xr.concat([a] * 4, dim="sampler").assign_coords(sampler=["uniform", "stratified", "var_opt_neyman", "logit_normal(reweight=False)"])
    ds["unbiased"] = ("sampler", [1.0, 1.0, 1.0, 0.0])
    table = predicted_gains(ds, batch=8)
    assert list(table.index) == ["uniform", "stratified", "var_opt_neyman"]
    assert table.loc["uniform", "gain V(U)/V(q)"] == pytest.approx(1.6) and table.loc["uniform", "draws"] == "iid"
    assert table.loc["stratified", "gain V(U)/V(q)"] == pytest.approx(2.0) and table.loc["var_opt_neyman", "draws"] == "stratified"
    assert table.loc["stratified", "predicted speed-up"] == pytest.approx(2 / (1 + 1 / 2.0))
    np.testing.assert_allclose(table["predicted speed-up of R"], 1.5)
    assert (table["B_noise / B"] == 1.0).all()
    assert draws_stratified("var_opt(neyman=True, stratified=True)") and not draws_stratified("var_opt(metric=adam)")
    with pytest.raises(ValueError, match="metric='l2' is not allowed"):
        predicted_gains(ds, batch=8, metric="l2")


def E(value: float, lo: float, hi: float, n: int = 10) -> Estimate:
    return Estimate(value, lo, hi, n)


def test_above_ceiling_flags_by_hand():
    table = pd.DataFrame(
        {
            "predicted speed-up of R": [1.12, 1.12, 1.12, 1.12, 1.12, 1.12, 1.12, math.nan],
            "measured speed-up": [
                E(1.28, 1.16, 1.30),  # lower bound 1.16 > 1.12: beyond its interval
                E(1.21, 1.10, 1.32),  # median above, lower bound not
                E(1.05, 0.9, 1.2),  # neither
                Estimate(math.nan, 0.0, 1.0, 10, censored=6, below=1.0),  # a censored median below 1 <= 1.12
                Estimate(math.nan, 0.0, 1.3, 10, censored=6, below=1.3),  # below 1.3: could be either side
                1.0,  # the baseline
                E(1.5, 1.3, 1.6, n=0),  # no seeds
                E(1.5, 1.3, 1.6),  # no prediction
            ],
        },
        index=list("abcdefgh"),
    )
    flags = above_ceiling(table)
    assert list(flags) == ["beyond its interval", "point estimate only", "no", "no", "n/a", "n/a", "n/a", "n/a"]
    with pytest.raises(ValueError, match=r"needs \['measured speed-up'\]$"):
        above_ceiling(table.drop(columns="measured speed-up"))


def test_ceiling_sentence_counts_the_flagged_settings():
    def table(*flags: str) -> pd.DataFrame:
        return pd.DataFrame({"above R's prediction": ["n/a", *flags]}, index=["uniform", "var_opt", "oracle_qstar"][: len(flags) + 1])

    both = {0.0: table("beyond its interval", "point estimate only"), 0.5: table("beyond its interval", "no")}
    assert ceiling_sentence(both) == (
        "in 2 of 4 settings (`var_opt` at σ = 0, `var_opt` at σ = 0.5) the measured speed-up exceeds even the ceiling's"
        " prediction, beyond its interval: allocation under Adam changes the step size too (chapter 4);"
        " in 1 more the point estimate alone exceeds it"
    )
    point = {1.0: table("no", "point estimate only")}
    assert ceiling_sentence(point) == (
        "in none of the 2 settings does the measured speed-up exceed the ceiling's prediction beyond its interval;"
        " its point estimate exceeds it in 1 (`oracle_qstar` at σ = 1), within its interval: above what the variance"
        " account predicts even for the best allocation, but not beyond chance"
    )
    assert ceiling_sentence({1.0: table("no")}).endswith("beyond its interval, nor in its point estimate")
    assert ceiling_sentence({1.0: table()}) == "no setting has a measured speed-up to hold against the ceiling's prediction"
    assert ceiling_sentence({}) == "no setting has a measured speed-up to hold against the ceiling's prediction"


def test_extremes_text_names_the_smallest_and_largest_at_a_checkpoint():
    index = pd.MultiIndex.from_product([[0.0, 0.5, 2.0], [50, 1000]], names=["sigma", "step"])
    table = pd.DataFrame({"R (Adam)": [1.5, 1.2, 1.1, 1.19, 3.0, 2.236], "B_noise / B (Adam)": [np.nan] * 5 + [np.inf]}, index=index)
    # at the last step (1000) the values are 1.2, 1.19, 2.236; at step 50 they are 1.5, 1.1, 3.0
    assert extremes_text(table, "R (Adam)") == "from 1.190 at σ = 0.5 to 2.236 at σ = 2"
    assert extremes_text(table, "R (Adam)", ".2g", step=50) == "from 1.1 at σ = 0.5 to 3 at σ = 2"
    assert extremes_text(table, "B_noise / B (Adam)") == "n/a" and extremes_text(table, "missing") == "n/a"
    with pytest.raises(ValueError, match="must be ceiling_table's"):
        extremes_text(table.droplevel("step"), "R (Adam)")
