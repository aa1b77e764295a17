"""The variance account's page functions (fmstudy.account_report) against closed forms."""

import numpy as np
import pytest
import xarray as xr

from fmstudy.account_report import ceiling_table, draws_stratified, noise_scale, predicted_gains, predicted_speedup


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
    ds = _account(np.ones((2, 3)), 4.0, np.array([[2.0, 0.0, -1.0], [4.0, 1.0, 8.0]]))
    bn = noise_scale(ds).values
    assert bn[0, 0] == 2.0 and np.isinf(bn[0, 1]) and np.isinf(bn[0, 2]) and bn[1, 2] == 0.5


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
    # B_noise = 64 / 1 = 64 = B: predicted speed-up (1 + 1) / (1 + 1 / R), median over members
    expect = np.median([2 / (1 + 1 / 1.6), 2 / (1 + 1 / 2.0)])
    assert table.loc[(0.0, 20), "predicted speed-up of q* (Adam)"] == pytest.approx(expect)
    assert table.loc[(0.0, 20), "B_noise / B (Adam)"] == pytest.approx(1.0)


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
