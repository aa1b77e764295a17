"""Chapter 8's analysis (fmstudy.cost_report) on hand-made benchmark records and cost tables:
ranges and ratios worked out round by round, the packing sentence and verdicts, the shipped
measurements' captions, and the per-execution table computed by hand (per-sampler costs:
tests/test_sampler_costs.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from fmstudy import cost_report as cr
from fmstudy import report


def _rounds(rates: list[float]) -> list[dict]:
    return [{"model_steps_per_s": r, "model_steps_per_s_training_only": 2 * r} for r in rates]


RECORD = {
    "benchmark": "gmm8",
    "device": "H200",
    "members": 1024,
    "steps": 200,
    "batch": 256,
    "torch": "2.5.0",
    "fmstudy": "0.1.0",
    "date": "2026-12-01",
    "rows": [
        {
            "configuration": "naive eager loop, 1 model",
            "model_steps_per_s": 100.0,
            "model_steps_per_s_range": [90.0, 110.0],
            "peak_memory_mb": 310.4,
            "repeats": [{"model_steps_per_s": r} for r in (100.0, 90.0, 110.0)],
        },
        {
            "configuration": "engine M=1024 var_opt + diagnostics",
            "model_steps_per_s": 5000.0,
            "model_steps_per_s_range": [4500.0, 6600.0],
            "peak_memory_mb": 2047.6,
            "repeats": _rounds([5000.0, 4500.0, 6600.0]),
        },
    ],
}


def test_with_range_and_the_rates_table():
    tab = pd.DataFrame({"r": [2.0, 1.5], "r min": [1.0, np.nan], "r max": [3.456, np.nan]})
    assert cr.with_range(tab, "r") == ["2.00 (1.00-3.46)", "1.50"]  # no range known: the median alone
    assert cr.with_range(tab, "r", ".0f") == ["2 (1-3)", "2"]
    with pytest.raises(ValueError, match=r"^fmt='d' is not allowed: it must be a float format"):
        cr.with_range(tab, "r", "d")
    with pytest.raises(ValueError, match=r"^a throughput table with columns \['r', 'r min', 'r max'\] is not allowed: it needs \['x'"):
        cr.with_range(tab, "x")
    shown = cr.rates_shown(report.throughput_table(RECORD))
    # per round 5000 / 100 = 50, 4500 / 90 = 50, 6600 / 110 = 60: median 50, range 50-60; training only twice that
    assert list(shown.columns) == ["model-steps/s", "training only x naive", "whole run x naive", "peak memory (MB)"]
    assert shown.loc["engine M=1024 var_opt + diagnostics"].tolist() == [
        "5000 (4500-6600)",
        "100.00 (100.00-120.00)",
        "50.00 (50.00-60.00)",
        2048.0,
    ]
    assert shown.loc["naive eager loop, 1 model"].tolist() == ["100 (90-110)", "1.00 (1.00-1.00)", "1.00 (1.00-1.00)", 310.0]
    assert cr.configuration_sampler("engine M=1024 var_opt + diagnostics") == "var_opt"
    assert cr.configuration_sampler("engine M=32 uniform") == "uniform"
    with pytest.raises(ValueError, match=r"^configuration=' \+ diagnostics' is not allowed"):
        cr.configuration_sampler(" + diagnostics")


def test_shipped_measurements_in_file_order_with_their_captions(tmp_path):
    older = {**RECORD, "device": "A100"}
    del older["fmstudy"], older["date"]
    (tmp_path / "throughput_b.json").write_text(json.dumps(RECORD))
    (tmp_path / "throughput_a.json").write_text(json.dumps(older))
    (tmp_path / "grid_throughput.json").write_text("{}")  # not a throughput_*.json: not read
    got = cr.shipped_measurements(tmp_path)
    assert [c for c, _ in got] == [
        "**gmm8** on A100: 1024 members, 200 steps, batch 256, torch 2.5.0, fmstudy ?, measured ? (`throughput_a.json`)",
        "**gmm8** on H200: 1024 members, 200 steps, batch 256, torch 2.5.0, fmstudy 0.1.0, measured 2026-12-01 (`throughput_b.json`)",
    ]
    assert got[1][1].loc["engine M=1024 var_opt + diagnostics", "whole run x naive"] == "50.00 (50.00-60.00)"
    assert cr.shipped_measurements(tmp_path / "none") == []
    assert cr.read_record(tmp_path / "throughput_b.json") == RECORD and cr.read_record(tmp_path / "absent.json") is None


GT = {
    "device": "cpu (2 cores)",
    "date": "2026-12-01",
    "fmstudy": "0.1.0",
    "subgrid": "compare",
    "grid_file": "papermill_params/quick.yaml",
    "cells": 6,
    "seeds": 10,
    "steps": 300,
    "model_steps": 18000,
    "jobs": 2,
    "pack_size": 16,
    "rounds": [
        {"per cell": {"seconds": s, "executions": 6}, "packed": {"seconds": p, "executions": 2}}
        for s, p in ((100, 40), (90, 20), (130, 45))
    ],
}


def test_packing_sentence_and_table_by_hand():
    assert cr.packing_verdict(1.2, 3.0) == "packed was faster in every round"
    assert cr.packing_verdict(0.5, 0.9) == "per cell was faster in every round"
    assert cr.packing_verdict(0.9, 1.1) == "the rounds disagree on which way is faster, so no ratio is claimed"
    with pytest.raises(ValueError, match=r"^lo=2, hi=1 is not allowed: lo must be <= hi"):
        cr.packing_verdict(2, 1)
    # per-round ratios 2.5, 4.5, 2.889: median 2.89, range 2.50-4.50; median seconds 100 per cell and 40 packed
    assert cr.grid_throughput_text(GT, "quick") == (
        "Measured on cpu (2 cores) (2026-12-01, fmstudy 0.1.0): the `compare` sub-grid of `papermill_params/quick.yaml`, 6 cells of "
        "10 seeds and 300 steps (18,000 model-steps), `--jobs 2`, packs of at most 16 cells, 3 interleaved rounds. The whole grid took "
        "100 s per cell and 40 s packed (medians over rounds); per-cell seconds over packed seconds, round by round, 2.89 "
        "(range 2.50-4.50): packed was faster in every round."
    )
    absent = cr.grid_throughput_text(None, "smoke")
    assert absent.startswith("This profile has no such measurement (`results/smoke/grid_throughput.json` is absent)")
    assert "--json results/smoke/grid_throughput.json` makes one" in absent
    shown = cr.grid_throughput_shown(GT)
    # model-steps/s per round: 18000 / (100, 90, 130) = 180, 200, 138.5; 18000 / (40, 20, 45) = 450, 900, 400
    assert shown.loc["per cell"].tolist() == [6, "100 (90-130)", "180 (138-200)"]
    assert shown.loc["packed"].tolist() == [2, "40 (20-45)", "450 (400-900)"]


def runs_table() -> pd.DataFrame:
    """Four executions: packs of 3 and 2 cells, two cells alone."""
    return pd.DataFrame(
        {
            "cells": [3, 1, 1, 2],
            "wall_seconds": [300.0, 50.0, 70.0, 200.0],
            "train_seconds": [150.0, 10.0, 30.0, 130.0],
            "model_steps_per_s": [100.0, 20.0, 40.0, 60.0],
            "train_share": [0.5, 0.2, 30 / 70, 0.66],
        }
    )


def test_executions_and_their_wall_clock():
    runs = runs_table()
    assert cr.executions_text(runs) == "4 executions: 2 packs of 5 cells in all, and 2 cells alone"
    assert cr.executions_text(runs.iloc[[0, 1]]) == "2 executions: 1 pack of 3 cells in all, and 1 cell alone"
    assert cr.train_share(runs) == pytest.approx(100 * 320 / 620)
    wall = cr.wall_table(runs)
    assert list(wall.index) == ["cell alone", "pack"]
    # alone: walls 50, 70 (median 60), rates 20, 40 (30), shares 0.2, 0.4286 (0.314); packs: 300, 200 (250), 100, 60 (80), 0.5, 0.66 (0.58)
    assert wall.loc["cell alone"].tolist() == [2, 2, 60.0, 30.0, 0.31]
    assert wall.loc["pack"].tolist() == [2, 5, 250.0, 80.0, 0.58]
    assert list(wall.columns) == [
        "executions",
        "cells",
        "wall s per execution (median)",
        "model-steps/s (median)",
        "training share of wall (median)",
    ]
    with pytest.raises(ValueError, match=r"it needs \['wall_seconds'\]$"):
        cr.train_share(runs.drop(columns="wall_seconds"))

