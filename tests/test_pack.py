"""Packed grid runs (``fmstudy grid --pack-size N``): cells that differ only in sampler, lr and
seeds run as one ensemble and still give each cell its own result, record and page, equal to
the cell run alone; failures stay per cell; a killed pack resumes to the uninterrupted numbers.

The runner's plumbing is tested on ``tests/data/tiny_cell.ipynb`` / ``tiny_pack.ipynb`` (no
training); one test runs the real ``grid_cell`` / ``grid_pack`` notebooks at smoke size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("papermill")

from fmstudy.__main__ import main
from fmstudy.grid import Cell, collect, is_finished, load_grid, run_grid
from fmstudy.packrun import make_packs
from fmstudy.results import read_netcdf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
AXES = {"sampler": ["uniform", {"name": "logit_normal", "m": 0.0, "s": 1.0}], "lr": [0.001, 0.002]}


def write_grid(folder: Path, spec: dict, notebook: Path = DATA / "tiny_cell.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"notebook": str(notebook), "results": str(folder / "results"), "pages": str(folder / "pages"), **spec}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def values(results: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_netcdf(p).train_loss.values for p in sorted((results / "cells").glob("*.nc"))}


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "cells").glob("*.json")}


def test_cells_pack_when_only_sampler_lr_and_seeds_differ(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"axes": {**AXES, "sigma": [0.0, 1.0]}, "fixed": {"steps": 3}}))
    packs = make_packs(grid.cells, 3)
    # two sigmas: two groups of 4 cells, each cut into 3 + 1
    assert sorted(len(p) for p in packs) == [1, 1, 3, 3]
    for pack in packs:
        assert len({c.params["sigma"] for c in pack}) == 1
    assert sorted(c.id for p in packs for c in p) == sorted(c.id for c in grid.cells)
    assert [len(p) for p in make_packs(grid.cells, 1)] == [1] * 8
    assert main(["grid", str(tmp_path / "grid.yaml"), "--pack-size", "0", "--dry-run"]) == 2
    # under a weighting the engine refuses several learning rates in one run: lr splits packs
    weighted = [Cell(f"c{i}", {"sampler": {"name": "uniform"}, "lr": lr, "seeds": [0], "weighting": w}, {}, ("g",))
                for i, (lr, w) in enumerate([(1e-3, {}), (2e-3, {}), (1e-3, {"name": "min_snr"}), (2e-3, {"name": "min_snr"})])]
    assert [[c.id for c in p] for p in make_packs(weighted, 4)] == [["c0", "c1"], ["c2"], ["c3"]]


def test_a_pack_gives_each_cell_its_own_files_equal_to_per_cell_execution(tmp_path, capsys):
    packed = write_grid(tmp_path / "packed", {"axes": AXES})
    assert main(["grid", str(packed), "--quiet", "--pack-size", "4"]) == 0
    assert "4 ran" in capsys.readouterr().out
    grid = load_grid(packed)
    recs = records(grid.results)
    assert all(is_finished(grid.results, c.id, grid.pages) for c in grid.cells)
    assert all(sorted(r["pack"]) == sorted(c.id for c in grid.cells) for r in recs.values())  # one execution
    page = (grid.pages / f"{grid.cells[2].id}.ipynb").read_text()
    assert grid.cells[2].id in page and "in a pack of 4 cells" in page and "| `lr` |" in page
    single = load_grid(write_grid(tmp_path / "single", {"axes": AXES}))
    assert not run_grid(single, progress=False, pack_size=1).failed
    assert not any("pack" in r for r in records(single.results).values())
    a, b = values(grid.results), values(single.results)
    assert a.keys() == b.keys() == {c.id for c in grid.cells}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ca, cb = collect(grid.results), collect(single.results)
    np.testing.assert_array_equal(ca.train_loss.values, cb.train_loss.values)
    # a rerun is a no-op; a cell made unfinished is the only one to run again, alone
    assert main(["grid", str(packed), "--quiet", "--pack-size", "4"]) == 0
    assert "0 ran, 4 already finished" in capsys.readouterr().out
    (grid.pages / f"{grid.cells[1].id}.ipynb").unlink()
    (grid.results / "cells" / f"{grid.cells[3].id}.json").unlink()
    stamp = (grid.results / "cells" / f"{grid.cells[0].id}.nc").stat().st_mtime_ns
    assert main(["grid", str(packed), "--quiet", "--pack-size", "4"]) == 0
    assert "2 ran, 2 already finished" in capsys.readouterr().out
    assert (grid.results / "cells" / f"{grid.cells[0].id}.nc").stat().st_mtime_ns == stamp
    assert sorted(records(grid.results)[grid.cells[1].id]["pack"]) == sorted([grid.cells[1].id, grid.cells[3].id])
    assert values(grid.results).keys() == a.keys() and all(np.array_equal(values(grid.results)[k], a[k]) for k in a)


def test_packing_is_the_default_and_pack_size_1_runs_each_cell_alone(tmp_path, capsys, monkeypatch):
    import torch

    from fmstudy.runner import CPU_PACK_SIZE, GPU_PACK_SIZE, default_pack_size

    for cuda, size in ((False, CPU_PACK_SIZE), (True, GPU_PACK_SIZE)):
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
            assert default_pack_size() == size > 1
    default, alone = (write_grid(tmp_path / name, {"axes": AXES}) for name in ("default", "alone"))
    assert main(["grid", str(default), "--dry-run"]) == 0
    assert "(4 to run in 1 executions of at most 4 cells)" in capsys.readouterr().out
    assert main(["grid", str(alone), "--dry-run", "--pack-size", "1"]) == 0
    assert "(4 to run in 4 executions of at most 1 cells)" in capsys.readouterr().out
    assert main(["grid", str(default), "--quiet"]) == 0 and main(["grid", str(alone), "--quiet", "--pack-size", "1"]) == 0
    d, a = load_grid(default), load_grid(alone)
    assert [len(r["pack"]) for r in records(d.results).values()] == [4] * 4  # one execution of the four cells
    assert not any("pack" in r for r in records(a.results).values())
    logs = [json.loads((g.results / "runs.jsonl").read_text().splitlines()[-1]) for g in (d, a)]
    assert [(log["pack_size"], log["packs"]) for log in logs] == [(default_pack_size(), 1), (1, 4)]
    assert values(d.results).keys() == values(a.results).keys()
    assert all(np.array_equal(values(d.results)[k], values(a.results)[k]) for k in values(d.results))


def test_packs_shrink_to_keep_every_worker_busy(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"axes": AXES}))
    assert not run_grid(grid, progress=False, jobs=2, pack_size=4).failed
    assert sorted(len(r["pack"]) for r in records(grid.results).values()) == [2, 2, 2, 2]  # two packs of 2, not one of 4
    assert json.loads((grid.results / "runs.jsonl").read_text().splitlines()[-1])["packs"] == 2


def test_a_planted_failure_in_a_pack_keeps_the_others(tmp_path, capsys):
    """A cell the pack cannot run (lr = 0.5 fails, in the pack and alone): the pack fails, its
    other cells run alone and finish; the bad one is recorded failed; fixed, only it reruns."""
    nbs = tmp_path / "nb"
    nbs.mkdir()

    def plant(on: bool) -> None:
        for name, cond in (("tiny_cell", "lr == 0.5"), ("tiny_pack", "any(c['lr'] == 0.5 for c in cells)")):
            text = (DATA / f"{name}.ipynb").read_text()
            if on:
                assert text.count("if fail:") == 1
                text = text.replace("if fail:", f"if fail or {cond}:")
            (nbs / f"{name}.ipynb").write_text(text)

    plant(True)
    path = write_grid(tmp_path, {"axes": {"sampler": AXES["sampler"], "lr": [0.001, 0.5]}}, nbs / "tiny_cell.ipynb")
    assert main(["grid", str(path), "--quiet", "--pack-size", "4"]) == 1
    out = capsys.readouterr().out
    assert "2 ran" in out and "2 failed" in out and "planted failure" in out
    grid = load_grid(path)
    for c in grid.cells:
        rec = records(grid.results)[c.id]
        if c.params["lr"] == 0.5:
            assert rec["status"] == "failed" and "planted failure" in rec["error"] and Path(rec["log"]).exists()
            assert not is_finished(grid.results, c.id, grid.pages)
        else:
            assert is_finished(grid.results, c.id, grid.pages)
    assert "the pack failed" in next((grid.results / "cells").glob("pack-*.log")).read_text()
    assert "planted failure" in next((grid.results / "cells").glob("pack-*.failed.ipynb")).read_text()
    assert not list(grid.pages.glob(".*"))
    plant(False)
    assert main(["grid", str(path), "--quiet", "--pack-size", "4"]) == 0
    assert "2 ran, 2 already finished" in capsys.readouterr().out
    assert all(is_finished(grid.results, c.id, grid.pages) for c in grid.cells)


def test_sigkill_of_a_running_pack_then_rerun_equals_uninterrupted(tmp_path):
    path = write_grid(tmp_path / "a", {"axes": AXES, "fixed": {"sleep": 1.0}})
    proc = subprocess.Popen([sys.executable, "-m", "fmstudy", "grid", str(path), "--quiet", "--pack-size", "2"], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "a" / "results" / "cells"
    deadline = time.time() + 180
    # the first pack recorded and the second one's first result written: kill inside the second pack
    while time.time() < deadline and not (len(list(cells.glob("*.json"))) >= 2 and len(list(cells.glob("*.nc"))) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, mid-pack
    proc.wait()
    assert len(list(cells.glob("*.json"))) == 2 and len(list(cells.glob("*.nc"))) == 3
    grid = load_grid(path)
    summary = run_grid(grid, progress=False, pack_size=2)
    assert not summary.failed and summary.ran == 2 and summary.skipped == 2  # each cell exactly once
    assert all(is_finished(grid.results, c.id, grid.pages) for c in grid.cells)
    assert not list(cells.glob(".*")) and not list(grid.pages.glob(".*"))  # no temporary leftovers
    clean = load_grid(write_grid(tmp_path / "b", {"axes": AXES, "fixed": {"sleep": 0.0}}, DATA / "tiny_cell.ipynb"))
    # sleep is a parameter (other ids): compare by labels
    assert not run_grid(clean, progress=False, pack_size=4).failed
    by_label = {json.dumps(dict(c.labels), sort_keys=True): c.id for c in clean.cells}
    a, b = values(grid.results), values(clean.results)
    for c in grid.cells:
        np.testing.assert_array_equal(a[c.id], b[by_label[json.dumps(dict(c.labels), sort_keys=True)]])


SMOKE = dict(benchmark="gmm8", seeds=[0, 1], steps=12, batch_size=32, hidden=16, depth=2, n_bins=4, probe_per_bin=8,
             n_checkpoints=2, feedback_every=4, variance_groups=2, eval_samples=40, ode_steps=3, device="cpu")


def test_the_real_pack_notebook_equals_the_cell_notebook(tmp_path):
    """Mixed samplers (fixed, adaptive, unweighted) and two learning rates in one pack of the
    real notebooks: every cell's netCDF equals that cell run alone (timing aside)."""
    axes = {"sampler": ["uniform", {"name": "grad_norm"}, {"name": "logit_normal", "reweight": False}], "lr": [0.002, 0.004]}
    spec = {"grids": [{"name": "s", "axes": {"sampler": axes["sampler"]}}, {"name": "l", "axes": {"lr": axes["lr"], "sampler": ["grad_norm"]}}],
            "fixed": SMOKE}
    nb = ROOT / "book" / "notebooks" / "grid_cell.ipynb"
    packed = load_grid(write_grid(tmp_path / "p", spec, nb))
    assert len(packed.cells) == 4 and len(make_packs(packed.cells, 8)) == 1
    summary = run_grid(packed, progress=False, pack_size=8)
    assert summary.ran == 4 and not summary.failed, summary.failed
    assert all(len(r["pack"]) == 4 for r in records(packed.results).values())  # one execution, one ensemble
    single = load_grid(write_grid(tmp_path / "s", spec, nb))
    assert not run_grid(single, progress=False, pack_size=1).failed
    timing = {"wall_seconds", "setup_seconds"}
    for c in packed.cells:
        p, s = (read_netcdf(g.results / "cells" / f"{c.id}.nc") for g in (packed, single))
        assert set(p.data_vars) == set(s.data_vars) and "sample_sw" in p
        for name in s.data_vars:
            if "adam" in name:  # float32 sums blocked by the number of members (see tests/test_train.py)
                scale = np.nanmax(np.abs(s[name.removesuffix("_bias").removesuffix("_se")].values))
                np.testing.assert_allclose(p[name].values, s[name].values, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
            elif name != "train_seconds":
                np.testing.assert_array_equal(p[name].values, s[name].values, err_msg=name)
        assert {k: v for k, v in p.attrs.items() if k not in timing} == {k: v for k, v in s.attrs.items() if k not in timing}
    for g in (packed, single):  # one benchmark, one sample size: the noise floors computed once, on disk
        assert len(list((g.results / "floors").glob("*.json"))) == 1
    ca, cb = collect(packed.results), collect(single.results)
    for name in ("sample_sw", "final_loss" if "final_loss" in ca else "train_loss"):
        np.testing.assert_array_equal(ca[name].values, cb[name].values)


def test_the_quick_profile_runs_ten_seeds_in_a_few_packs_and_smoke_stays_tiny():
    from fmstudy.runner import plan_packs

    quick = load_grid(ROOT / "papermill_params" / "quick.yaml")
    assert {tuple(c.params["seeds"]) for c in quick.cells} == {tuple(range(10))}
    packs = plan_packs(quick, quick.cells, 16, "local", jobs=2)
    assert len(quick.cells) == 38 and len(packs) == 7  # as its header says
    assert sorted(c.id for p in packs for c in p) == sorted(c.id for c in quick.cells)
    smoke = load_grid(ROOT / "papermill_params" / "smoke.yaml")
    assert max(len(c.params["seeds"]) for c in smoke.cells) <= 2 and max(c.params["steps"] for c in smoke.cells) <= 60


def test_a_claim_removes_the_cells_stale_temporary_files_only(tmp_path):
    from fmstudy.cellrun import claim

    cells = tmp_path / "cells"
    cells.mkdir()
    stale, other = cells / ".abc.nc.x1y2.tmp", cells / ".def.nc.x3y4.tmp"
    stale.write_text("half a file"), other.write_text("another cell's")
    with claim(tmp_path, "abc") as mine:
        assert mine and not stale.exists() and other.exists()
