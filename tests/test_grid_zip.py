"""Zipped axes in grid files (``sampler+lr``): each value sets several parameters together."""

from __future__ import annotations

import pytest

pytest.importorskip("papermill")

from test_grid import write_grid

from fmstudy.grid import GridError, load_grid


def test_a_zipped_axis_sets_its_parameters_together_and_crosses_the_others(tmp_path):
    spec = {"axes": {"sampler+lr": [["uniform", 0.03], [{"name": "logit_normal", "m": 0.0, "s": 1.0}, 0.01]], "sigma": [0.0, 1.0]}}
    grid = load_grid(write_grid(tmp_path, spec))
    got = sorted((c.labels["sampler"], c.params["lr"], c.params["sigma"]) for c in grid.cells)
    assert got == [("logit_normal(m=0.0, s=1.0)", 0.01, 0.0), ("logit_normal(m=0.0, s=1.0)", 0.01, 1.0),
                   ("uniform", 0.03, 0.0), ("uniform", 0.03, 1.0)]
    assert grid.axes == ("sampler", "lr", "sigma") and grid.grid_axes["main"] == ["sampler", "lr", "sigma"]
    # the same cells written as single-sampler sub-grids: the same ids (a cell is what it computes)
    alone = {"grids": [{"name": "u", "fixed": {"sampler": "uniform", "lr": 0.03}, "axes": {"sigma": [0.0, 1.0]}},
                       {"name": "l", "fixed": {"sampler": {"name": "logit_normal", "m": 0.0, "s": 1.0}, "lr": 0.01},
                        "axes": {"sigma": [0.0, 1.0]}}]}
    assert {c.id for c in load_grid(write_grid(tmp_path, alone, "alone.yaml")).cells} == {c.id for c in grid.cells}


@pytest.mark.parametrize("axes, needle", [
    ({"sampler+lr": [["uniform"]]}, "give a list of 2 values [sampler, lr]"),
    ({"sampler+lr": ["uniform"]}, "give a list of 2 values"),
    ({"sampler+lr": []}, "must be a non-empty list"),
    ({"sampler+sampler": [["uniform", "uniform"]]}, "names distinct parameters"),
    ({"sampler+": [["uniform", 1]]}, "names distinct parameters"),
    ({"sampler+lr": [["uniform", "fast"]]}, "lr"),
    ({"sampler+bogus": [["uniform", 1]]}, "unknown parameter"),
    ({"lr": [0.01, 0.1], "sampler+lr": [["uniform", 0.03]]}, "'lr' is set by two axes"),
    ({"sampler+lr": [["uniform", 0.03]], "lr+sigma": [[0.1, 1.0]]}, "'lr' is set by two axes"),
])
def test_a_bad_zipped_axis_is_refused_in_one_line(tmp_path, axes, needle):
    with pytest.raises(GridError) as err:
        load_grid(write_grid(tmp_path, {"axes": axes}))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and len(msg) < 400


def test_the_paper_profile_expands():
    from pathlib import Path
    grid = load_grid(Path(__file__).resolve().parents[1] / "papermill_params" / "paper.yaml")
    assert len(grid.cells) > 100  # the shipped profile's file is valid as it stands
