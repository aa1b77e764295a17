"""Chapter 5's sample metrics beside their noise floors and the speed-up target's step
(fmstudy.schedule_report) on hand-made cells, against values worked out by hand."""

import numpy as np
import pytest
import xarray as xr

from fmstudy import schedule_report as sch


def _floor_cell(sw: list, energy: list, ran: bool = True) -> xr.Dataset:
    return xr.Dataset(
        {"sample_sw": (("member",), np.asarray(sw, float)), "floor_sw": ((), 0.3), "floor_sw_std": ((), 0.05),
         "sample_energy": (("member",), np.asarray(energy, float)), "floor_energy": ((), 0.01), "floor_energy_std": ((), 0.002),
         "cell_id": ((), "c" if ran else "")},
        coords={"member": [0, 1, 2]},
    )


def test_sample_floor_table_medians_and_z_by_hand_rows_in_sigma_order():
    cells = {("uniform", 0.0): _floor_cell([0.31, 0.35, 0.29], [0.011, 0.02, 0.012]),
             ("uniform", 1.0): _floor_cell([0.5, 0.4, 0.45], [0.01, 0.01, 0.01]),
             ("arcsine", 0.0): _floor_cell([0.3, 0.3, 0.3], [0.01, 0.01, 0.01]),
             ("arcsine", 1.0): _floor_cell([0, 0, 0], [0, 0, 0], ran=False)}
    ds = xr.combine_nested([[cells[(s, g)].expand_dims(sampler=[s], sigma=[g]) for g in (0.0, 1.0)] for s in ("uniform", "arcsine")],
                           concat_dim=["sampler", "sigma"])
    tab = sch.sample_floor_table(ds)
    assert list(tab.index) == [(0.0, "uniform"), (0.0, "arcsine"), (1.0, "uniform")]  # by sigma, then sampler; the cell not run left out
    # uniform at sigma 0: sliced W2 median 0.31, z = (0.31 - 0.3) / 0.05 = 0.2; energy median 0.012, z = 0.002 / 0.002 = 1
    row = tab.loc[(0.0, "uniform")]
    assert row[("sliced W2", "median of seeds")] == pytest.approx(0.31) and row[("sliced W2", "z")] == pytest.approx(0.2)
    assert row[("energy distance", "z")] == pytest.approx(1.0) and row[("sliced W2", "floor ± sd")] == "0.3 ± 0.05"
    # uniform at sigma 1: median 0.45, z = 3 (beyond 2); energy at the floor, z = 0
    assert tab.loc[(1.0, "uniform"), ("sliced W2", "z")] == pytest.approx(3.0)
    assert sch.far_from_floor(tab) == ["uniform (sigma 1: sliced W2 z = 3.0)"]
    assert sch.far_from_floor(tab, z=5.0) == []
    assert sch.sample_floor_table(ds.drop_vars(["sample_sw", "sample_energy"])).empty
    with pytest.raises(ValueError, match=r"metrics=\['nll'\] is not allowed"):
        sch.sample_floor_table(ds, metrics=["nll"])
    with pytest.raises(ValueError, match="select them first"):
        sch.sample_floor_table(ds, by=("sampler",))


def test_last_step_share_counts_the_seeds_that_first_reach_their_own_final_value_at_the_end():
    steps = np.array([0, 500, 750, 1000])
    curves = np.array([[3.0, 2.0, 1.5, 1.0],  # decreasing: its final value first at 1000
                       [3.0, 1.0, 0.9, 1.0],  # below its final value at 500 already
                       [3.0, 2.0, 1.0, 1.0],  # equal at 750: reached there
                       [3.0, 2.0, 1.0, np.nan]])  # no final value: left out
    assert sch.last_step_share(curves, steps) == (1, 3)
    with pytest.raises(ValueError, match="must agree"):
        sch.last_step_share(curves, steps[:3])


def test_within_tuning_error_names_ratios_the_rules_cost_could_explain():
    import pandas as pd

    from fmstudy.analysis import Estimate
    from fmstudy.schedule_report import within_tuning_error

    cost = pd.Series({"uniform": 1.02, "a": 1.20, "b": 1.00, "c": 1.10})
    t = pd.DataFrame({"ratio": [Estimate(1.0, 1.0, 1.0, 10), Estimate(1.15, 1.05, 1.25, 10), Estimate(0.99, 0.985, 0.995, 10),
                                Estimate(1.3, 1.2, 1.4, 10), Estimate(1.05, 0.95, 1.15, 10), Estimate(1.1, 1.05, 1.2, 10)]},
                     index=["uniform", "a", "b", "c", "d", "e"])
    # cost ratios c_s = cost_s / 1.02: a 1.176 in [1.05, 1.25] -> within; b 0.980 not in [0.985, 0.995] -> not;
    # c 1.078 not in [1.2, 1.4] -> not; d: interval contains 1 -> not listed; e: no cost -> not listed
    assert within_tuning_error({0.0: t}, cost) == ["a at σ = 0 (ratio 1.15; cost ratio 1.18)"]
    b_wide = t.assign(ratio=[*t["ratio"][:2], Estimate(0.99, 0.97, 0.995, 10), *t["ratio"][3:]])
    assert "b at σ = 0 (ratio 0.99; cost ratio 0.98)" in within_tuning_error({0.0: b_wide}, cost)  # 0.980 in [0.97, 0.995]
    assert within_tuning_error({0.0: t}, cost.drop("uniform")) == []
