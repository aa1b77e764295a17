"""What the book reads of runs' cost (fmstudy.report, fmstudy.costs): benchmark ratios round by
round (the median of per-round ratios, not the ratio of medians), training FLOPs per cell
against the closed form F.5 with hand-counted layer widths, wall-clock per execution (a pack
counted once), and speed-ups in training FLOPs against a closed form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from fmstudy import report
from fmstudy.models import MLPConfig
from fmstudy.results import write_netcdf


def _rounds(rates: list[float], training_only: list[float] | None = None) -> list[dict]:
    return [{"model_steps_per_s": r, **({"model_steps_per_s_training_only": t} if training_only else {})}
            for r, t in zip(rates, training_only or rates)]


def test_throughput_table_gives_the_median_of_per_round_ratios_with_their_range():
    naive, engine, engine_train = [100.0, 200.0, 400.0], [300.0, 200.0, 1200.0], [600.0, 400.0, 800.0]
    record = {"rows": [
        {"configuration": "naive", "model_steps_per_s": 200.0, "model_steps_per_s_range": [100.0, 400.0], "peak_memory_mb": 1.0,
         "repeats": _rounds(naive)},
        {"configuration": "engine", "model_steps_per_s": 300.0, "model_steps_per_s_range": [200.0, 1200.0], "peak_memory_mb": 2.0,
         "model_steps_per_s_training_only": 600.0, "repeats": _rounds(engine, engine_train)},
        {"configuration": "old record", "model_steps_per_s": 500.0, "peak_memory_mb": 3.0},  # no rounds stored
    ]}
    tab = report.throughput_table(record)
    # per round 3, 1, 3: median 3 (range 1-3), where the ratio of the medians would be 300 / 200 = 1.5
    assert (tab.loc["engine", "x naive"], tab.loc["engine", "x naive min"], tab.loc["engine", "x naive max"]) == (3.0, 1.0, 3.0)
    # training only, per round 6, 2, 2: median 2 (range 2-6)
    assert tab.loc["engine", ["training only x naive", "training only x naive min", "training only x naive max"]].tolist() == [2.0, 2.0, 6.0]
    assert tab.loc["naive", ["x naive", "x naive min", "x naive max"]].tolist() == [1.0, 1.0, 1.0]
    assert tab.loc["engine", "model-steps/s"] == 300.0 and tab.loc["engine", "model-steps/s max"] == 1200.0
    assert tab.loc["old record", "x naive"] == 2.5 and np.isnan(tab.loc["old record", "x naive min"])


def test_grid_throughput_table_reads_the_rounds():
    rounds = [{"per cell": {"seconds": s, "executions": 6}, "packed": {"seconds": p, "executions": 2}}
              for s, p in ((100.0, 40.0), (90.0, 20.0), (130.0, 45.0))]
    tab, (ratio, lo, hi) = report.grid_throughput_table({"model_steps": 1800, "rounds": rounds})
    # per-round ratios 2.5, 4.5, 2.889: median 2.889 (the ratio of the median seconds would be 2.5)
    assert (ratio, lo, hi) == pytest.approx((130 / 45, 2.5, 4.5))
    assert tab.loc["per cell", ["wall s", "wall s min", "wall s max"]].tolist() == [100.0, 90.0, 130.0]
    assert tab.loc["packed", "model-steps/s"] == pytest.approx(1800 / 40) and tab.loc["packed", "model-steps/s max"] == pytest.approx(90.0)
    assert tab.loc["per cell", "executions"] == 6 and tab.loc["packed", "executions"] == 2


WIDTHS = [2 + 1 + 2 * 8, 32, 32, 2]  # gmm8 at hidden 32, depth 2: input x (2), t (1) and 8 Fourier pairs (M.3)


def _flops_by_hand(steps: int, batch: int, ef: float, eb: float, adam: bool = False) -> float:
    """F.5 from the layer widths: a multiply-add is 2 FLOPs; extra backward samples carry the
    Euclidean norm, plus Adam's (one more matrix product per layer) when ``adam``."""
    pairs = list(zip(WIDTHS[:-1], WIDTHS[1:]))
    f = 2 * sum(a * b for a, b in pairs)
    b = 2 * f - 2 * WIDTHS[0] * WIDTHS[1]  # no input gradient in the first layer
    n_e = sum(2 * (a + b_ + 1) for a, b_ in pairs)
    return steps * batch * (f + b) + ef * f + eb * (b + n_e + (f if adam else 0))


def _write_cell(folder, cid, sampler, seeds, steps, ef, eb, train_s, **record):
    cps = np.array([0, steps // 2, steps])
    ds = xr.Dataset({"extra_forward": ("checkpoint", ef * cps / steps), "extra_backward": ("checkpoint", eb * cps / steps),
                     "samples_seen": ("checkpoint", cps * 16.0), "train_seconds": ("checkpoint", train_s * cps / steps),
                     "loss": (("member", "checkpoint"), np.zeros((len(seeds), 3)))},
                    coords={"member": seeds, "checkpoint": cps}, attrs={"cell_id": cid})
    write_netcdf(ds, folder / f"{cid}.nc")
    params = {"benchmark": "gmm8", "benchmark_options": {}, "hidden": 32, "depth": 2, "batch_size": 16, "sampler": sampler,
              "seeds": seeds, "steps": steps, "norm_stride": 8}
    rec = {"id": cid, "status": "ok", "grids": ["compare"], "labels": {}, "params": params, "page_shipped": False, **record}
    (folder / f"{cid}.json").write_text(json.dumps(rec))


def test_cell_flops_and_wall_clock_per_execution(tmp_path):
    from fmstudy.flops import forward_flops
    from fmstudy.models import MLPConfig

    assert forward_flops(MLPConfig(dim=2, hidden=32, depth=2)) == 2 * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    cells = tmp_path / "cells"
    cells.mkdir()
    pack = ["a", "b"]
    _write_cell(cells, "a", {"name": "uniform"}, [0, 1, 2], 100, 0, 0, 8.0, seconds=25.0, pack_seconds=50.0, pack=pack)
    _write_cell(cells, "b", {"name": "oracle_qstar"}, [0, 1, 2], 100, 320, 160, 8.0, seconds=25.0, pack_seconds=50.0, pack=pack)
    _write_cell(cells, "e", {"name": "loss_second_moment"}, [5], 100, 320, 160, 9.0, seconds=9.5)
    _write_cell(cells, "c", {"name": "uniform"}, [0, 1], 60, 0, 0, 3.0, seconds=12.0)
    (cells / "d.json").write_text(json.dumps({"id": "d", "status": "failed"}))  # not finished: not counted
    (cells / "f.json").write_text(json.dumps({"id": "f", "status": "ok", "page_shipped": False}))  # its result is missing
    with pytest.warns(UserWarning, match="cell f is left out"):
        costs = report.cell_costs(tmp_path).set_index("id")
    assert list(costs.index) == ["a", "b", "c", "e"]
    assert costs.loc["a", "flops_per_member"] == _flops_by_hand(100, 16, 0, 0)
    assert costs.loc["b", "flops_per_member"] == _flops_by_hand(100, 16, 320, 160, adam=True)  # oracle_qstar asks for Adam's metric
    assert costs.loc["e", "flops_per_member"] == _flops_by_hand(100, 16, 320, 160)
    assert costs.loc["c", "flops"] == 2 * _flops_by_hand(60, 16, 0, 0)
    assert costs.loc["b", "extra_backward_per_sample"] == 160 / (100 * 16)
    ex = report.executions(costs.reset_index())
    assert len(ex) == 3  # the pack once, each lone cell once
    p, c = ex.loc["a+b"], ex.loc["c"]
    assert (p["cells"], p["members"], p["model_steps"], p["wall_seconds"]) == (2, 6, 600, 50.0)
    assert p["model_steps_per_s"] == 600 / 50.0 and p["train_share"] == 8.0 / 50.0
    assert (c["cells"], c["model_steps"], c["wall_seconds"], c["model_steps_per_s"]) == (1, 120, 12.0, 10.0)
    assert report.executions(costs.iloc[:0]).empty


def test_speedup_in_training_flops_scales_the_step_speedup_by_the_cost_per_step(tmp_path, monkeypatch):
    """Loss c_s (1 - 0.4 r step / T): the schedule reaches the baseline's final value at T / r,
    a step speed-up of r. Training FLOPs are linear in steps, C(s) = k s with k = b (F + B)
    for uniform and k' = k + e (B + N_e) with e extra backward samples per step, so the FLOPs
    speed-up is r k / k' exactly (linear interpolation between checkpoints)."""
    T, b, r, e = 1000, 16, 2.0, 4.0
    steps = np.linspace(0, T, 11)
    c = np.linspace(1.0, 2.0, 5)

    def cell(rate: float, extra: float) -> xr.Dataset:
        curve = c[:, None] * (1 - 0.4 * rate * steps / T)
        return xr.Dataset({"m": (("member", "checkpoint"), curve), "heldout_objective_ema": (("member", "checkpoint"), curve),
                           "extra_forward": ("checkpoint", 0 * steps), "extra_backward": ("checkpoint", extra * steps),
                           "cell_id": ((), "x"), "unbiased": ((), 1.0)}, coords={"member": range(5), "checkpoint": steps.astype(int)})

    ds = xr.concat([cell(1.0, 0.0).expand_dims(sampler=["uniform"]), cell(r, e).expand_dims(sampler=["loss_second_moment"])], dim="sampler")
    ds["cell_id"] = ("sampler", ["u", "l"])
    ds.attrs["fixed"] = json.dumps({"benchmark": "gmm8", "hidden": 32, "depth": 2, "batch_size": b})
    tab = report.against_baseline(ds, "m")
    k = _flops_by_hand(1, b, 0, 0)
    k_extra = _flops_by_hand(1, b, 0, e)
    assert tab.loc["loss_second_moment", "speedup"].value == pytest.approx(r)
    assert tab.loc["loss_second_moment", "speedup_flops"].value == pytest.approx(r * k / k_extra, rel=1e-9)
    assert tab.loc["uniform", "speedup_flops"].value == pytest.approx(1.0)
    same = report.against_baseline(ds, "m", model=MLPConfig(dim=2, hidden=32, depth=2), batch_size=b)
    assert same.loc["loss_second_moment", "speedup_flops"].value == tab.loc["loss_second_moment", "speedup_flops"].value
    assert "speed-up (training FLOPs)" in report.shown(tab, "speed-up").columns

    # a row named by something else than its sampler (chapter 6's "rb_target: var_opt") is charged
    # its cell's sampler: from the record of its cell, or as the caller says
    other = ds.assign_coords(sampler=["uniform", "weighting: min_snr"])
    with pytest.raises(ValueError, match="samplers="):
        report.against_baseline(other, "m")
    named = report.against_baseline(other, "m", samplers={"weighting: min_snr": "loss_second_moment"})
    assert named.loc["weighting: min_snr", "speedup_flops"].value == tab.loc["loss_second_moment", "speedup_flops"].value
    monkeypatch.setenv("FMSTUDY_RESULTS", str(tmp_path))
    monkeypatch.setenv("FMSTUDY_PROFILE", "p")
    (tmp_path / "p" / "cells").mkdir(parents=True)
    (tmp_path / "p" / "cells" / "l.json").write_text(json.dumps({"params": {"sampler": {"name": "loss_second_moment"}}}))
    found = report.against_baseline(other, "m")
    assert found.loc["weighting: min_snr", "speedup_flops"].value == tab.loc["loss_second_moment", "speedup_flops"].value
