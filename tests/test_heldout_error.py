"""The held-out set's distortion (fmstudy.heldout_error) on planted offsets and by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fmstudy.analysis import Estimate
from fmstudy.heldout_error import distortion_bound, distortion_table, unresolved


def _grid(heldout: dict[str, np.ndarray], excess: dict[str, np.ndarray], unbiased: dict[str, bool]) -> xr.Dataset:
    names = list(heldout)
    dims = ("sampler", "member", "checkpoint")
    stack = lambda d: np.stack([np.stack([np.full_like(d[n], np.nan), d[n]], -1) for n in names])  # noqa: E731 (2 checkpoints)
    return xr.Dataset({"heldout_objective_ema": (dims, stack(heldout)), "integrated_excess_ema": (dims, stack(excess)),
                       "unbiased": (("sampler",), [unbiased[n] for n in names])},
                      coords={"sampler": names, "member": np.arange(10), "checkpoint": [0, 100]})


def test_a_sampler_whose_set_offset_is_the_baselines_is_not_distorted():
    rng = np.random.default_rng(0)
    c = 7.4 + 0.02 * rng.standard_normal(10)  # the set's irreducible estimate, per seed (one set, so shared)
    e = {"uniform": 0.1 + 0.01 * rng.random(10), "same": 0.08 + 0.01 * rng.random(10), "shifted": 0.12 + 0.01 * rng.random(10)}
    h = {"uniform": c + e["uniform"], "same": c + e["same"], "shifted": 1.01 * (c + e["shifted"])}
    table = distortion_table(_grid(h, e, {"uniform": True, "same": True, "shifted": False}))
    same, shifted = table.loc["same", "distortion"], table.loc["shifted", "distortion"]
    assert same.value == pytest.approx(1.0, abs=1e-12) and same.n == 10
    assert shifted.value == pytest.approx(1.01) and shifted.lo == pytest.approx(1.01) and shifted.hi == pytest.approx(1.01)
    assert not table.loc["shifted", "unbiased"] and "uniform" not in table.index


def test_the_distortion_is_the_geometric_mean_of_heldout_over_corrected_by_hand():
    rng = np.random.default_rng(1)
    h_u, e_u, e_a = 7 + rng.random(10), 0.1 * rng.random(10) + 0.05, 0.1 * rng.random(10) + 0.05
    h_a = 7 + rng.random(10)
    table = distortion_table(_grid({"uniform": h_u, "a": h_a}, {"uniform": e_u, "a": e_a}, {"uniform": True, "a": True}))
    logs = [math.log(h_a[s] / (h_u[s] - e_u[s] + e_a[s])) for s in range(10)]
    got = table.loc["a", "distortion"]
    assert got.value == pytest.approx(math.exp(sum(logs) / 10))
    half = 2.2621571627409915 * np.std(logs, ddof=1) / math.sqrt(10)  # t(0.975, 9)
    assert got.lo == pytest.approx(math.exp(np.mean(logs) - half)) and got.hi == pytest.approx(math.exp(np.mean(logs) + half))


def test_no_oracle_gives_no_table_and_a_missing_baseline_one_line():
    ds = _grid({"uniform": np.ones(10)}, {"uniform": np.ones(10)}, {"uniform": True})
    assert distortion_table(ds.drop_vars("integrated_excess_ema")).empty
    with pytest.raises(ValueError, match=r"^baseline='nope' is not allowed"):
        distortion_table(ds, baseline="nope")


def test_the_bound_takes_the_farthest_interval_end_of_the_unbiased_rows():
    t1 = pd.DataFrame({"distortion": [Estimate(1.001, 0.997, 1.004, 10), Estimate(1.05, 1.03, 1.07, 10)], "unbiased": [True, False]},
                      index=["a", "b"])
    t2 = pd.DataFrame({"distortion": [Estimate(0.998, 0.995, 1.002, 10)], "unbiased": [True]}, index=["c"])
    assert distortion_bound([t1, t2]) == pytest.approx(1 / 0.995)  # |log 0.995| > |log 1.004|
    assert distortion_bound([t1], unbiased_only=False) == pytest.approx(1.07)
    assert math.isnan(distortion_bound([pd.DataFrame()]))
    assert unresolved(Estimate(0.997, 0.995, 0.998, 10), 1.005) and not unresolved(Estimate(0.984, 0.98, 0.986, 10), 1.005)
    assert not unresolved(Estimate(math.nan, math.nan, math.nan, 0), 1.005) and not unresolved(Estimate(0.99, 0.9, 1.1, 10), math.nan)


def test_one_run_against_the_baselines_runs_and_unpaired_seeds_refused():
    from fmstudy.heldout_error import distortion

    rng = np.random.default_rng(2)
    c, e_u, e_w = 7 + rng.random(10), 0.1 + 0.01 * rng.random(10), 0.12 + 0.01 * rng.random(10)
    ds = _grid({"uniform": c + e_u, "w": 0.99 * (c + e_w)}, {"uniform": e_u, "w": e_w}, {"uniform": True, "w": False})
    got = distortion(ds.sel(sampler="w"), ds.sel(sampler="uniform"))
    assert got.value == pytest.approx(0.99) and got.n == 10
    with pytest.raises(ValueError, match=r"^members .* are not allowed: pairs need the same seeds"):
        distortion(ds.sel(sampler="w").assign_coords(member=np.arange(10) + 1), ds.sel(sampler="uniform"))


def test_the_comparison_bound_runs_over_its_sigmas():
    from fmstudy.heldout_error import comparison_bound

    rng = np.random.default_rng(3)
    parts = []
    for factor in (1.002, 0.99):  # sigma 0: a distorted by 0.2%; sigma 1: by 1% (no spread: the interval is the point)
        c, e_u, e_a = 7 + rng.random(10), 0.1 * rng.random(10), 0.1 * rng.random(10)
        parts.append(_grid({"uniform": c + e_u, "a": factor * (c + e_a)}, {"uniform": e_u, "a": e_a}, {"uniform": True, "a": True}))
    ds = xr.concat(parts, dim="sigma").assign_coords(sigma=[0.0, 1.0])
    assert comparison_bound(ds) == pytest.approx(1 / 0.99)
    assert comparison_bound(ds.sel(sigma=0.0)) == pytest.approx(1.002) and math.isnan(comparison_bound(None))


def test_unresolved_verdicts_are_the_significant_held_out_rows_within_the_bound():
    from fmstudy.heldout_error import unresolved_verdicts

    idx = pd.MultiIndex.from_tuples([("digits", "var_opt"), ("mnist1d", "var_opt"), ("mnist1d", "ln"), ("gmm", "var_opt")],
                                    names=["benchmark", "sampler"])
    t = pd.DataFrame({"ratio": [Estimate(0.984, 0.98, 0.986, 10), Estimate(0.9968, 0.995, 0.998, 10), Estimate(1.002, 0.99, 1.01, 10),
                                Estimate(0.999, 0.998, 0.9995, 10)],
                      "p_holm": [1e-7, 6e-4, 0.6, 1e-3],
                      "metric": ["heldout_objective_ema"] * 3 + ["integrated_excess_ema"]}, index=idx)
    # digits: |log .984| > log 1.0076 -> resolved; mnist1d var_opt: within; ln: not significant; gmm: another metric
    assert unresolved_verdicts({"real": t}, 1.0076) == (["var_opt on mnist1d (ratio 0.9968)"], 2)
