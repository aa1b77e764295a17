"""The noise scale's standard error (fmstudy.noise_scale.noise_scale_se) against closed forms
and a Monte Carlo of the estimator it describes."""

import numpy as np
import pytest
import xarray as xr

from fmstudy.account_report import ceiling_table
from fmstudy.noise_scale import noise_scale_se


def _checkpoint(v: np.ndarray, g: np.ndarray, se_v: np.ndarray, se_g: np.ndarray) -> xr.Dataset:
    """One checkpoint's account in Adam's metric, one value per member."""
    dims = ("member",)
    return xr.Dataset({"var_adam_v_uniform": (dims, v), "var_adam_full_sq": (dims, g),
                       "var_adam_v_uniform_se": (dims, se_v), "var_adam_full_sq_se": (dims, se_g)},
                      coords={"member": np.arange(len(v))})


def test_identical_members_give_the_worst_case_delta_method():
    # no spread between members: only the probe part, B (se_V / V + se_G / G) = 40 (0.1 + 0.25) = 14
    n = np.ones(6)
    at = _checkpoint(80.0 * n, 2.0 * n, 8.0 * n, 0.5 * n)
    assert noise_scale_se(at) == pytest.approx(40 * (0.1 + 0.25))
    # without stored errors: the members' part alone, here nothing
    assert noise_scale_se(at.drop_vars(["var_adam_v_uniform_se", "var_adam_full_sq_se"])) == pytest.approx(0.0, abs=1e-12)


def test_no_resolved_signal_or_no_measurement_gives_nan():
    n = np.ones(4)
    # ||G||^2 not positive for 3 of 4 members: the median is infinite, so is no error
    at = _checkpoint(80.0 * n, np.array([-1.0, 0.0, -2.0, 2.0]), n, n)
    assert np.isnan(noise_scale_se(at))
    assert np.isnan(noise_scale_se(_checkpoint(np.full(3, np.nan), np.full(3, np.nan), n[:3], n[:3])))


@pytest.mark.parametrize("rho", [-1.0, 0.0, 1.0])
def test_the_error_covers_the_medians_monte_carlo_spread(rho):
    # Members' true log B ~ N(log 50, 0.3^2); each checkpoint's estimates V (1 + e_V), G (1 + e_G) with
    # relative probe errors of 5%, shared by all members (one probe set), correlated rho. Over many
    # replications the standard deviation of log(median estimate) is the truth the error must cover:
    # the members' part is estimated, the probe part bounded (exact at rho = -1), so the mean error
    # on the log scale must not fall short of the truth and not exceed it grossly.
    rng = np.random.default_rng(7)
    n, reps, rel = 10, 600, 0.05
    logs, errors = [], []
    for _ in range(reps):
        true_b = np.exp(rng.normal(np.log(50.0), 0.3, n))
        g = np.full(n, 2.0)
        z = rng.normal(size=2)
        e_v = rel * z[0]
        e_g = rel * (rho * z[0] + np.sqrt(1 - rho**2) * z[1])
        v_hat, g_hat = true_b * g * (1 + e_v), g * (1 + e_g)
        at = _checkpoint(v_hat, g_hat, rel * v_hat, rel * g_hat)
        med = np.median(v_hat / g_hat)
        logs.append(np.log(med))
        errors.append(noise_scale_se(at, n_boot=400, seed=len(errors)) / med)
    truth, claimed = np.std(logs, ddof=1), np.mean(errors)
    assert 0.85 * truth <= claimed <= 1.5 * truth, (truth, claimed)


def test_ceiling_table_shows_the_noise_scales_error():
    n = np.ones((3, 2))
    dims = ("member", "checkpoint")
    ds = xr.Dataset({"var_adam_ceiling": (dims, 1.5 * n), "var_adam_v_uniform": (dims, 64.0 * n), "var_adam_full_sq": (dims, n),
                     "var_adam_v_uniform_se": (dims, 6.4 * n), "var_adam_full_sq_se": (dims, 0.2 * n)},
                    coords={"member": [0, 1, 2], "checkpoint": [0, 10]}).expand_dims(sigma=[1.0])
    row = ceiling_table(ds, batch=32).loc[(1.0, 10)]
    assert row["B_noise / B (Adam)"] == pytest.approx(2.0)
    assert row["B_noise / B (Adam) se"] == pytest.approx(2.0 * (0.1 + 0.2))


def test_noise_scale_text_says_when_it_is_not_resolved():
    from fmstudy.noise_scale import NO_SIGNAL, noise_scale_text

    assert noise_scale_text(3.21, 0.4) == "3.21 (s.e. 0.4)"
    assert noise_scale_text(211.0, np.nan).startswith("211, not resolved")
    assert noise_scale_text(2.0, 2.0).startswith("2, not resolved")  # an error as large as the value resolves nothing
    assert noise_scale_text(np.inf, np.nan) == NO_SIGNAL and noise_scale_text(np.nan, 1.0) == "n/a"
