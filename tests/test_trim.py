"""Trimming shipped cells (fmstudy.trim): what stays is bit-equal, what goes is named, and only
cells that every sub-grid reading them lets go are trimmed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_store_ship import cell_dataset

from fmstudy import trim
from fmstudy.results import read_netcdf, write_netcdf
from fmstudy.store import is_finished

KEEP = ["heldout_objective", "train_loss_unweighted", "diverged_step"]


def write(results: Path, cid: str, grids: list[str], seed: int) -> None:
    cells = results / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    write_netcdf(cell_dataset(cid, seed), cells / f"{cid}.nc")
    rec = {"id": cid, "status": "ok", "page": f"../pages/{cid}.ipynb", "page_shipped": False, "grids": grids,
           "params": {"seeds": [0, 1, 2]}}
    (cells / f"{cid}.json").write_text(json.dumps(rec))


def test_trimmed_dataset_keeps_coordinates_shared_variables_and_the_named_ones():
    ds = cell_dataset("a" * 16)
    small, dropped = trim.trimmed_dataset(ds, KEEP)
    per_member = {str(n) for n, v in ds.data_vars.items() if "member" in v.dims}
    # worked out by hand from the definition: kept = coordinates + no-member variables + KEEP
    assert set(small.data_vars) == (set(ds.data_vars) - per_member) | set(KEEP)
    assert set(dropped) == per_member - set(KEEP) and "q" in dropped and "train_loss" in dropped
    assert set(small.coords) == set(ds.coords)
    for name in KEEP:
        np.testing.assert_array_equal(small[name].values, ds[name].values)
    assert small.attrs[trim.TRIM_ATTR].split(",") == dropped
    assert trim.TRIM_ATTR not in ds.attrs  # the input is not changed
    # a second trim names what both left out
    smaller, more = trim.trimmed_dataset(small, ["heldout_objective"])
    assert set(more) == {"train_loss_unweighted", "diverged_step"}
    assert smaller.attrs[trim.TRIM_ATTR].split(",") == dropped + more


def test_trim_rewrites_only_cells_all_of_whose_sub_grids_are_named(tmp_path):
    res = tmp_path / "results"
    write(res, "0" * 16, ["tune-x"], seed=0)
    write(res, "1" * 16, ["tune-x", "compare"], seed=1)  # read whole by compare: stays whole
    write(res, "2" * 16, ["compare"], seed=2)
    before = {p.name: p.read_bytes() for p in (res / "cells").iterdir()}
    whole = cell_dataset("0" * 16, 0)
    out = trim.trim(res, ["tune-x"], KEEP)
    assert out["cells"] == 1 and out["trimmed"] == 1 and out["bytes_after"] < out["bytes_before"] / 2
    for cid in ("1" * 16, "2" * 16):
        assert (res / "cells" / f"{cid}.nc").read_bytes() == before[f"{cid}.nc"]
        assert (res / "cells" / f"{cid}.json").read_bytes() == before[f"{cid}.json"]
    back = read_netcdf(res / "cells" / f"{'0' * 16}.nc")
    for name in KEEP:  # against the arrays written, not against the trimmed Dataset
        assert back[name].dtype == whole[name].dtype
        np.testing.assert_array_equal(back[name].values, whole[name].values)
    assert "q" not in back and "loss" not in back
    rec = json.loads((res / "cells" / f"{'0' * 16}.json").read_text())
    assert set(rec["trimmed"]) == {str(n) for n, v in whole.data_vars.items() if "member" in v.dims} - set(KEEP)
    assert back.attrs[trim.TRIM_ATTR].split(",") == rec["trimmed"]
    assert is_finished(res, "0" * 16)  # a fresh clone does not recompute it
    # trimming again changes nothing
    again = {p.name: p.read_bytes() for p in (res / "cells").iterdir()}
    assert trim.trim(res, ["tune-x"], KEEP)["trimmed"] == 0
    assert {p.name: p.read_bytes() for p in (res / "cells").iterdir()} == again


@pytest.mark.parametrize("grids, keep, says", [(["tune-y"], KEEP, "grids=['tune-y'] is not allowed"), ([], KEEP, "grids=[] is not allowed"),
                                               (["tune-x"], [], "keep=[] is not allowed")])
def test_bad_names_are_refused_in_one_line_before_any_change(tmp_path, grids, keep, says):
    res = tmp_path / "results"
    write(res, "0" * 16, ["tune-x"], seed=0)
    before = {p.name: p.read_bytes() for p in (res / "cells").iterdir()}
    with pytest.raises(ValueError, match=r"^" + says.replace("[", r"\[").replace("]", r"\]")) as err:
        trim.trim(res, grids, keep)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in (res / "cells").iterdir()} == before


def test_the_command_line_trims_and_refuses_a_folder_without_cells(tmp_path):
    res = tmp_path / "results"
    write(res, "0" * 16, ["tune-x"], seed=0)
    run = [sys.executable, "-m", "fmstudy.trim"]
    bad = subprocess.run([*run, str(tmp_path / "nowhere"), "--grids", "tune-x", "--keep", "q"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is not allowed" in bad.stderr
    (res / "PROVENANCE.json").write_text(json.dumps({"cells": 1, "note": "n"}))
    ok = subprocess.run([*run, str(res), "--grids", "tune-x", "--keep", ",".join(KEEP)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "'trimmed': 1" in ok.stdout and "q" not in read_netcdf(res / "cells" / f"{'0' * 16}.nc")
    prov = json.loads((res / "PROVENANCE.json").read_text())
    assert prov["note"] == "n" and len(prov["trims"]) == 1
    assert prov["trims"][0]["grids"] == ["tune-x"] and prov["trims"][0]["keep"] == KEEP and prov["trims"][0]["trimmed"] == 1


def test_describe_says_what_the_recorded_trims_left_out():
    assert trim.describe({"note": "n"}) == "" and trim.describe({"trims": [{"trimmed": 0, "grids": ["a"], "keep": ["x"]}]}) == ""
    prov = {"trims": [{"trimmed": 3, "grids": ["tune-b", "tune-a"], "keep": ["y", "x"], "bytes_before": 4_000_000, "bytes_after": 1_500_000},
                      {"trimmed": 2, "grids": ["stability"], "keep": ["x"], "bytes_before": 1_000_000, "bytes_after": 500_000}]}
    text = trim.describe(prov)
    assert text.startswith("For shipping, the 5 cells of the sub-grids stability, tune-a, tune-b were trimmed")
    assert "the per-member variables x, y," in text and "(3.0 MB)" in text  # 2.5 + 0.5 MB saved
