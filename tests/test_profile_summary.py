"""The first chapter's account of what a profile ran (fmstudy.profile_summary), on hand-made
records, cost tables, run logs and provenance, each expectation worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fmstudy import profile_summary as ps


def rec(cid: str, grids: list[str], seeds: int, commit: str | None = None, dirty: bool = False) -> dict:
    out = {"id": cid, "grids": grids, "params": {"seeds": list(range(seeds)), "benchmark": "gmm8", "steps": 1000, "batch_size": 256}}
    if commit:
        out["code"] = {"commit": commit, "uncommitted_changes": dirty}
    return out


CELLS = [rec("a", ["compare", "sigma"], 10, "1234567890"), rec("b", ["compare"], 10, "1234567890"), rec("c", ["tune"], 3)]
# cells a and b ran as one pack (120 s), c alone (60 s)
COST = pd.DataFrame({"id": ["a", "b", "c"], "execution": ["a+b", "a+b", "c"], "members": [10, 10, 3], "steps": [1000] * 3,
                     "wall_seconds": [120.0, 120.0, 60.0], "train_seconds": [100.0, 100.0, 50.0], "flops": [2e12, 3e12, 5e11]})


def test_scale_counts_cells_flops_and_executions_a_pack_once():
    s = ps.scale(CELLS, COST)
    assert s["n_cells"] == 3 and s["total_tflops"] == pytest.approx(5.5)
    assert s["n_executions"] == "2 executions (1 of them a pack of cells trained as one ensemble)"
    assert s["total_minutes"] == pytest.approx(3.0)  # (120 + 60) s: the pack's clock once
    assert s["n_seeds"] == "3, 10"
    empty = ps.scale([], COST.iloc[:0])
    assert empty["n_executions"] == "n/a" and math.isnan(empty["total_tflops"]) and empty["n_seeds"] == "n/a"


def test_grid_run_text_names_the_run_that_ran_most():
    log = [{"ran": 0}, {"ran": 5, "seconds": 600, "jobs": 2, "packs": 2, "pack_size": 20, "cpus": 2, "executor": "local"},
           {"ran": 3, "seconds": 60, "jobs": 1, "cpus": 2, "executor": "local"}]
    assert ps.grid_run_text(log) == ("5 cells in 10.0 minutes of wall-clock time with 2 executions at a time (2 executions, "
                                     "packs of at most 20 cells) on 2 CPU cores (local executor)")
    assert ps.grid_run_text(log[2:]) == "3 cells in 1.0 minutes of wall-clock time with 1 cells at a time on 2 CPU cores (local executor)"
    assert ps.grid_run_text(log[:1]) == ps.grid_run_text([]) == "n/a"


def test_read_runs_log_skips_blank_lines(tmp_path):
    assert ps.read_runs_log(tmp_path) == []
    (tmp_path / "runs.jsonl").write_text('{"ran": 1}\n\n{"ran": 2}\n')
    assert ps.read_runs_log(tmp_path) == [{"ran": 1}, {"ran": 2}]


def test_provenance_text_names_checkouts_commits_and_unnamed_records():
    prov = {"produced_by": [{"commit": "abcdef0123456789", "subject": "s", "uncommitted_changes": True}], "record_commits": ["1234567890"],
            "fmstudy_versions": ["0.1.0"], "torch_versions": ["2.13.0"], "devices": ["cpu"], "grid_runs": {"last": "2026-12-02T07:35:08"},
            "note": "N."}
    text = ps.provenance_text(prov, CELLS, "paper")
    assert text.startswith("According to results/paper/PROVENANCE.json, these results were produced by 1 checkout: "
                           "commit abcdef012345 (s, with uncommitted changes); fmstudy 0.1.0, torch 2.13.0, on cpu;")
    # the checkout abcdef0 is named by no record; the records' 1234567 is no checkout; tune's one cell names no commit
    assert "name the commits 1234567 (1234567: 2 cells; 1 records name no commit). The two accounts disagree: " in text
    assert ("the records name 1234567 (2 cells), not among the checkouts; no record names the checkout abcdef0. "
            "The 1 records that name no commit are all 1 of tune (a cell of several sub-grids counted in each): "
            "only PROVENANCE.json's note below ties them to a checkout. Its note: N." in text)
    assert ps.provenance_text(None, CELLS, "quick").startswith("These results were computed by this checkout")


def test_provenance_text_says_where_checkouts_and_records_disagree_on_uncommitted_changes():
    base = {"record_commits": [], "fmstudy_versions": ["0.1.0"], "torch_versions": ["2.13.0"], "devices": ["cpu"],
            "grid_runs": {"last": None}, "note": ""}
    cells = [rec("a", ["compare"], 2, "1111111aaa"), rec("b", ["compare", "sigma"], 2, "1111111aaa"),
             rec("c", ["sigma"], 2, "2222222bbb", dirty=True), rec("d", ["stability"], 2), rec("e", ["stability"], 2, "2222222bbb")]
    prov = {**base, "produced_by": [{"commit": "1111111aaa", "subject": "x", "uncommitted_changes": True},
                                    {"commit": "2222222bbb", "subject": "y", "uncommitted_changes": False}]}
    text = ps.provenance_text(prov, cells, "paper")
    # 1111111's two records both say clean: a disagreement; 2222222's records are mixed (c dirty, e clean): none is claimed
    assert ("The two accounts disagree: PROVENANCE.json says 1111111 had uncommitted changes, their records say not (2 cells; "
            "its flag is a checkout's state when PROVENANCE.json was written, a record's that of its checkout when the cell ran). ") in text
    assert "2222222 had none" not in text
    # d names no commit: the one record of stability's two; without a note nothing ties it to a checkout
    assert "The 1 records that name no commit are 1 of the 2 of stability (a cell" in text and "nothing ties them to a checkout. Its note: none" in text
    prov["produced_by"][0]["uncommitted_changes"] = False
    agree = [cells[0], cells[1], rec("c", ["sigma"], 2, "2222222bbb")]
    assert "The two accounts agree. Its note: none" in ps.provenance_text(prov, agree, "paper")
    dirty = [cells[0], cells[1], cells[2]]  # 2222222's only record says it had uncommitted changes, PROVENANCE.json says not
    assert "PROVENANCE.json says 2222222 had none, their records say it had (1 cells;" in ps.provenance_text(prov, dirty, "paper")
    prov["produced_by"][1]["uncommitted_changes"] = True
    assert "PROVENANCE.json says 2222222 had uncommitted changes, their records say not (1 cells;" in ps.provenance_text(prov, agree, "paper")


def test_links_lead_to_pages_unless_results_shipped_without_them():
    assert ps.links_text(None, "quick") == "the quick profile's links lead to each cell's executed notebook"
    assert ps.links_text({"pages_shipped": False}, "paper").endswith("(book/runs/paper/cells.md); the cells' pages are not shipped")


def test_subgrid_rows_count_a_shared_cell_in_each_sub_grid_and_once_distinct():
    rows = ps.subgrid_rows(CELLS, COST)
    assert list(rows["sub-grid"]) == ["compare", "sigma", "compare", "tune"]
    assert len(rows.drop_duplicates("id")) == 3
    summary = ps.subgrid_summary(rows)
    assert summary.loc[("compare", "gmm8"), "cells"] == 2
    assert summary.loc[("compare", "gmm8"), "training TFLOPs"] == pytest.approx(5.0)  # a (2) + b (3)
    assert summary.loc[("tune", "gmm8"), "seeds"] == 3 and summary.loc[("tune", "gmm8"), "steps (largest)"] == 1000
    assert ps.subgrid_rows([], COST.iloc[:0]).empty


def test_samplers_run_reads_the_records_of_the_sub_grid():
    cells = [rec("a", ["compare"], 10), rec("b", ["compare", "sigma"], 10), rec("c", ["tune"], 3)]
    cells[0]["params"]["sampler"] = "uniform"
    cells[1]["params"]["sampler"] = {"name": "oracle_excess", "floor": 0.1}
    cells[2]["params"]["sampler"] = "learning_progress"  # ran, but not in compare
    assert ps.samplers_run(cells, ("learning_progress", "oracle_excess")) == ["oracle_excess"]
    assert ps.samplers_run(cells, ("learning_progress",), grid="tune") == ["learning_progress"]
    assert ps.samplers_run(cells, ("uniform",), grid="nowhere") == []
