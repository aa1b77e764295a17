"""The grid runner: validation, stable ids, resumption after a kill, failures, concurrency, Slurm via submitit.

Most tests use ``tests/data/tiny_cell.ipynb`` (no training, a deterministic dataset) so that a
cell costs only a kernel start; one test runs the real smoke grid end to end."""

from __future__ import annotations

import contextlib
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
from fmstudy.grid import GridError, cell_id, collect, is_finished, load_grid, run_grid
from fmstudy.results import read_netcdf

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_cell.ipynb"


def write_grid(tmp_path: Path, spec: dict, name: str = "grid.yaml") -> Path:
    spec = {"notebook": str(TINY), "results": str(tmp_path / "results"), "pages": str(tmp_path / "pages"), **spec}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


TINY_AXES = {"sampler": ["uniform", {"name": "logit_normal", "m": 0.0, "s": 1.0}], "sigma": [0.0, 1.0]}


# -- expansion and ids ----------------------------------------------------------------------------
def test_expansion_is_the_cross_product_and_ids_are_stable(tmp_path):
    g1 = load_grid(write_grid(tmp_path, {"axes": TINY_AXES, "fixed": {"steps": 3}}))
    assert len(g1.cells) == 4 and g1.axes == ("sampler", "sigma")
    assert {c.labels["sampler"] for c in g1.cells} == {"uniform", "logit_normal(m=0.0, s=1.0)"}
    # same grid written in another key order, with an int where the notebook has a float: same ids
    axes = {"sigma": [0, 1], "sampler": list(TINY_AXES["sampler"])}
    g2 = load_grid(write_grid(tmp_path, {"fixed": {"steps": 3}, "axes": axes}, "other.yaml"))
    assert {c.id for c in g1.cells} == {c.id for c in g2.cells}
    # the id is the hash the docstring promises: notebook name, complete parameters, version
    c = g1.cells[0]
    assert c.id == cell_id("tiny_cell.ipynb", dict(c.params)) and len(c.id) == 16
    assert "steps" in c.params and c.params["fail"] is False  # defaults are part of the parameters
    # a changed value changes the id
    g3 = load_grid(write_grid(tmp_path, {"axes": TINY_AXES, "fixed": {"steps": 4}}, "third.yaml"))
    assert not {c.id for c in g1.cells} & {c.id for c in g3.cells}


def test_sub_grids_share_cells_and_add_axes(tmp_path):
    spec = {"grids": [{"name": "a", "axes": {"sigma": [0.0, 1.0]}}, {"name": "b", "fixed": {"sigma": 1.0}, "axes": {"lr": [0.001, 0.01]}}]}
    g = load_grid(write_grid(tmp_path, spec))
    assert g.axes == ("sigma", "lr")
    assert len(g.cells) == 3  # (sigma=1, lr=0.001) is in both sub-grids and runs once
    assert {(c.labels["sigma"], c.labels["lr"]) for c in g.cells} == {(0.0, 0.001), (1.0, 0.001), (1.0, 0.01)}
    shared = next(c for c in g.cells if c.labels == {"sigma": 1.0, "lr": 0.001})
    assert shared.grids == ("a", "b")


def test_collect_by_sub_grid_and_extra_dimensions(tmp_path):
    spec = {"grids": [{"name": "a", "axes": {"sigma": [0.0, 1.0]}},
                      {"name": "b", "fixed": {"sigma": 1.0, "steps": 7}, "axes": {"lr": [0.001, 0.01]}}]}
    grid = load_grid(write_grid(tmp_path, spec))
    assert not run_grid(grid, progress=False).failed
    a = collect(grid.results, "a")
    assert dict(a.sizes)["sigma"] == 2 and "lr" not in a.dims and "steps" not in a.dims
    assert json.loads(a.attrs["fixed"])["lr"] == 0.001 and "sigma" not in json.loads(a.attrs["fixed"])
    b = collect(grid.results, "b")
    assert dict(b.sizes)["lr"] == 2 and "sigma" not in b.dims and b.sizes["step"] == 7
    both = collect(grid.results)  # steps differs between the sub-grids' cells: it becomes a dimension
    assert set(both.attrs["axes"][1:-1].replace('"', "").split(", ")) == {"sigma", "lr", "steps"}
    assert int(np.isfinite(both.train_loss.isel(member=0, step=0)).sum()) == 4


# -- bad input ------------------------------------------------------------------------------------
BAD = [
    ({"axes": {"sigma": [0.0]}, "colour": 1}, "unknown key 'colour'"),
    ({"axes": {"temperature": [1.0]}}, "unknown parameter 'temperature'"),
    ({"axes": {"sigma": []}}, "axes.sigma: must be a non-empty list"),
    ({"axes": {}}, "axes: empty"),
    ({"axes": {"sigma": ["high"]}}, "axes.sigma[0]: 'high' is str: it must be a number"),
    ({"axes": {"benchmark": ["gmm9"]}}, "unknown benchmark 'gmm9'"),
    ({"axes": {"sampler": ["uniform", "fancy"]}}, "unknown sampler 'fancy'"),
    ({"axes": {"sampler": [{"name": "beta", "alpha": 2}]}}, "unknown parameter 'alpha' for sampler 'beta'"),
    ({"axes": {"sigma": [-1.0]}}, "sigma"),
    ({"axes": {"sampler": ["oracle_excess"]}, "fixed": {"benchmark": "moons"}}, "needs an oracle"),
    ({"axes": {"sigma": [0.0]}, "fixed": {"output": "x.nc"}}, "'output' is set by the runner"),
    ({"axes": {"sigma": [0.0]}, "grids": []}, "exactly one of 'axes'"),
    ({"grids": [{"name": "a", "axes": {"sigma": [0.0]}, "extra": 1}]}, "grids[0]: unknown key 'extra'"),
    ({"axes": {"steps": [2.5]}}, "axes.steps[0]: 2.5 is float: it must be an integer"),
    ({"grids": [{"name": "a", "axes": {"sigma": [0.0]}}, {"name": "a", "axes": {"lr": [0.1]}}]}, "'a' names two sub-grids"),
]


@pytest.mark.parametrize("spec, message", BAD, ids=[m[:28] for _, m in BAD])
def test_bad_grid_files_are_refused_with_one_line(tmp_path, capsys, spec, message):
    path = write_grid(tmp_path, spec)
    with pytest.raises(GridError) as err:
        load_grid(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text
    # the command line says the same in one line, exits 2, and runs (writes) nothing
    assert main(["grid", str(path), "--quiet"]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and message in out.err
    assert not (tmp_path / "results").exists() and not (tmp_path / "pages").exists()


def test_missing_notebook_and_missing_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"notebook": "nowhere.ipynb", "axes": {"sigma": [0.0]}}))
    with pytest.raises(GridError, match=r"notebook: 'nowhere.ipynb' does not exist"):
        load_grid(path)
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "absent.yaml")
    path.write_text("axes: [unclosed")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(path)


def test_shipped_grid_files_are_valid():
    for name in ("smoke", "quick", "full"):
        grid = load_grid(ROOT / "papermill_params" / f"{name}.yaml")
        assert grid.cells and grid.notebook.name == "grid_cell.ipynb"
    full = load_grid(ROOT / "papermill_params" / "full.yaml")
    assert len(full.cells[0].params["seeds"]) == 10
    assert 0.0 in {c.params["sigma"] for c in full.cells}


# -- running --------------------------------------------------------------------------------------
def _values(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_netcdf(p).train_loss.values for p in sorted((folder / "cells").glob("*.nc"))}


def test_run_resume_noop_and_collect(tmp_path, capsys):
    path = write_grid(tmp_path, {"axes": TINY_AXES})
    assert main(["grid", str(path), "--quiet"]) == 0
    grid = load_grid(path)
    assert all(is_finished(grid.results, c.id) for c in grid.cells)
    assert sorted(p.stem for p in grid.pages.glob("*.ipynb")) == sorted(c.id for c in grid.cells)
    page = (grid.pages / f"{grid.cells[0].id}.ipynb").read_text()
    assert "| `sigma` |" in page  # every parameter shown at the top of the page
    stamps = {p: p.stat().st_mtime_ns for p in (grid.results / "cells").glob("*.nc")}
    capsys.readouterr()
    assert main(["grid", str(path), "--quiet"]) == 0  # a rerun is a no-op
    assert "0 ran, 4 already finished" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in (grid.results / "cells").glob("*.nc")}
    (grid.pages / f"{grid.cells[1].id}.ipynb").unlink()  # a lost page makes its cell unfinished
    assert not is_finished(grid.results, grid.cells[1].id)
    assert main(["grid", str(path), "--quiet"]) == 0
    assert "1 ran, 3 already finished" in capsys.readouterr().out

    ds = collect(grid.results)
    assert dict(ds.sizes)["sampler"] == 2 and dict(ds.sizes)["sigma"] == 2
    assert ds.sigma.dtype.kind == "f"
    one = grid.cells[3]
    expect = read_netcdf(grid.results / "cells" / f"{one.id}.nc").train_loss.values
    got = ds.train_loss.sel(sampler=one.labels["sampler"], sigma=one.labels["sigma"]).values
    np.testing.assert_array_equal(got, expect)
    assert main(["collect", str(grid.results)]) == 0
    assert (grid.results / "collected.nc").exists()


def test_kill_in_the_middle_then_resume_equals_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir()
    killed = write_grid(tmp_path / "a", {"axes": TINY_AXES, "fixed": {"sleep": 1.5}})
    proc = subprocess.Popen([sys.executable, "-m", "fmstudy", "grid", str(killed), "--quiet"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "a" / "results" / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, mid-grid
    proc.wait()
    done_before = len(list(cells.glob("*.json")))
    assert 1 <= done_before < 4
    # a crash that left a truncated result under a finished cell's name is not trusted
    grid = load_grid(killed)
    first = next(c for c in grid.cells if (cells / f"{c.id}.json").exists())
    (cells / f"{first.id}.nc").write_bytes(b"\x89HDF\r\n truncated")
    assert not is_finished(grid.results, first.id)
    summary = run_grid(grid, progress=False)
    assert not summary.failed and summary.ran == 4 - done_before + 1
    assert len(list(cells.glob("*.nc"))) == 4 and all(is_finished(grid.results, c.id) for c in grid.cells)
    assert not list(cells.glob(".*")) and not list(grid.pages.glob(".*"))  # no temporary leftovers

    (tmp_path / "b").mkdir()
    clean = load_grid(write_grid(tmp_path / "b", {"axes": TINY_AXES, "fixed": {"sleep": 1.5}}))
    assert not run_grid(clean, progress=False).failed
    a, b = _values(tmp_path / "a" / "results"), _values(tmp_path / "b" / "results")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_failing_cell_does_not_stop_the_others(tmp_path, capsys):
    path = write_grid(tmp_path, {"axes": {"fail": [False, True], "sigma": [0.0, 1.0]}})
    assert main(["grid", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "2 ran" in out and "2 failed" in out and out.count("FAILED") == 2 and "planted failure" in out
    grid = load_grid(path)
    ok = [c for c in grid.cells if not c.params["fail"]]
    bad = [c for c in grid.cells if c.params["fail"]]
    assert all(is_finished(grid.results, c.id) for c in ok)
    for c in bad:
        rec = yaml.safe_load((grid.results / "cells" / f"{c.id}.json").read_text())
        assert rec["status"] == "failed" and "planted failure" in rec["error"] and Path(rec["log"]).exists()
        assert Path(rec["failed_page"]).exists()
    assert dict(collect(grid.results).sizes)["fail"] == 1  # collect takes finished cells only


def test_two_grid_commands_on_one_folder(tmp_path):
    path = write_grid(tmp_path, {"axes": TINY_AXES, "fixed": {"sleep": 1.0}})
    cmd = [sys.executable, "-m", "fmstudy", "grid", str(path), "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    ran = sum(int(o.split(" ran,")[0].rsplit(" ", 1)[1]) for o in outs)
    assert ran == 4  # each cell executed exactly once between the two
    grid = load_grid(path)
    assert len(list((grid.results / "cells").glob("*.nc"))) == 4 and all(is_finished(grid.results, c.id) for c in grid.cells)


def test_local_process_pool(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"axes": TINY_AXES}))
    summary = run_grid(grid, jobs=2, progress=False)
    assert summary.ran == 4 and not summary.failed
    with pytest.raises(GridError, match="jobs=0 is not allowed"):
        run_grid(grid, jobs=0)


def test_submitit_executor_runs_a_grid(tmp_path):
    pytest.importorskip("submitit")
    grid = load_grid(write_grid(tmp_path, {"axes": {"sigma": [0.0, 1.0]}, "slurm": {"timeout_min": 5}}))
    summary = run_grid(grid, executor="slurm", cluster="local", progress=False)
    assert summary.ran == 2 and not summary.failed
    assert all(is_finished(grid.results, c.id) for c in grid.cells)


def test_smoke_grid_end_to_end(tmp_path):
    """The real notebook on the shipped smoke grid (two of its cells, to keep CI short)."""
    pytest.importorskip("fmstudy.evaluate")
    spec = yaml.safe_load((ROOT / "papermill_params" / "smoke.yaml").read_text())
    spec["notebook"] = str(ROOT / "papermill_params" / spec["notebook"])
    del spec["results"], spec["pages"]  # into tmp_path, not the repository's results
    spec["grids"] = [{"name": "compare", "axes": {"sampler": ["uniform", "info_snr"]}, "fixed": {"sigma": 1.0}}]
    path = write_grid(tmp_path, spec)
    assert main(["grid", str(path), "--quiet"]) == 0
    ds = collect(tmp_path / "results")
    assert set(ds.sampler.values) == {"uniform", "info_snr"}
    for var in ("integrated_excess", "grad_snr", "sample_sw", "floor_sw"):
        assert var in ds and np.isfinite(ds[var].values).all(), var
    assert int(ds.unbiased.sel(sampler="uniform")) == 1


def test_every_profile_has_the_sub_grids_the_chapters_read():
    """Every profile has the comparison all chapters start from; every other sub-grid a chapter
    loads exists in some profile (a typo would print 'not run in this profile' forever)."""
    import re

    from fmstudy import conclusions_sweeps, settings_report, settings_tuning

    wanted = set()
    # the names the chapters and the report modules under them load literally ...
    for path in [*(ROOT / "book" / "chapters").glob("*.md"), *(ROOT / "fmstudy").glob("*.py")]:
        text = path.read_text()
        wanted |= set(re.findall(r'\bload(?:_grid_results)?\("([^"]+)"', text))
        for names in re.findall(r'for (?:name|grid) in \(((?:"[^"]+", )+"[^"]+")\)', text) if path.suffix == ".md" else []:
            wanted |= set(re.findall(r'"([^"]+)"', names))
    # ... and those the chapters load through the modules' tables of sub-grids
    wanted |= {name for name, _ in conclusions_sweeps.SWEEPS} | set(settings_report.OTHERS)
    wanted |= set(settings_tuning.TUNED_BY) | set(settings_tuning.tuning_names())
    assert wanted >= {"compare", "robustness", "stability", "sigma", "budget", "real", "tune-gmm8"}
    names = {}
    for profile in ("smoke", "quick", "full", "paper"):
        spec = yaml.safe_load((ROOT / "papermill_params" / f"{profile}.yaml").read_text())
        names[profile] = {g["name"] for g in spec["grids"]}
        assert "compare" in names[profile], profile
    assert wanted <= set().union(*names.values()), wanted - set().union(*names.values())


# -- hardening: filesystems, interrupts, corrupt files ----------------------------------------------
def _other_filesystem(tmp_path: Path) -> Path | None:
    """A folder on another filesystem than ``tmp_path``: /dev/shm when it is one, else a tmpfs
    mounted for the test (root only); None when neither is possible."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        import tempfile

        return Path(tempfile.mkdtemp(dir=shm, prefix="fmstudy-test-"))
    where = tmp_path / "tmpfs"
    where.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)]).returncode == 0:
        return where
    return None


def test_a_failing_cell_with_pages_on_another_filesystem_is_recorded(tmp_path, capsys):
    """os.replace across filesystems raises EXDEV: the failed page is moved by copying, the
    failure is recorded and the other cells run."""
    import shutil

    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second filesystem (no /dev/shm, not root)")
    try:
        assert other.stat().st_dev != tmp_path.stat().st_dev
        path = write_grid(tmp_path, {"axes": {"fail": [True, False]}, "pages": str(other / "pages")})
        assert main(["grid", str(path), "--quiet"]) == 1
        out = capsys.readouterr().out
        assert "1 ran" in out and "1 failed" in out and "planted failure" in out
        grid = load_grid(path)
        bad = next(c for c in grid.cells if c.params["fail"])
        good = next(c for c in grid.cells if not c.params["fail"])
        rec = json.loads((grid.results / "cells" / f"{bad.id}.json").read_text())
        assert rec["status"] == "failed" and Path(rec["failed_page"]).is_file()
        assert is_finished(grid.results, good.id, grid.pages) and (other / "pages" / f"{good.id}.ipynb").is_file()
        assert not list((other / "pages").glob(".*"))  # the failed cell's temporary page is gone
    finally:
        if other.parent == Path("/dev/shm"):
            shutil.rmtree(other, ignore_errors=True)
        else:
            subprocess.run(["umount", str(other)], check=False)


def test_a_moved_checkout_still_finds_its_finished_cells(tmp_path, capsys):
    import shutil

    (tmp_path / "a").mkdir()
    spec = {"notebook": str(TINY), "axes": {"sigma": [0.0, 1.0]}, "results": "results", "pages": "book/pages"}
    (tmp_path / "a" / "grid.yaml").write_text(yaml.safe_dump(spec))
    assert main(["grid", str(tmp_path / "a" / "grid.yaml"), "--quiet"]) == 0
    shutil.move(tmp_path / "a", tmp_path / "b")  # the checkout is moved (or renamed)
    grid = load_grid(tmp_path / "b" / "grid.yaml")
    assert all(is_finished(grid.results, c.id, grid.pages) for c in grid.cells)
    assert all(is_finished(grid.results, c.id) for c in grid.cells)  # from the record alone too
    assert collect(grid.results).attrs["cells"] == 2
    capsys.readouterr()
    assert main(["grid", str(tmp_path / "b" / "grid.yaml"), "--quiet"]) == 0
    assert "0 ran, 2 already finished" in capsys.readouterr().out


def test_a_garbage_page_is_rerun(tmp_path, capsys):
    path = write_grid(tmp_path, {"axes": {"sigma": [0.0, 1.0]}})
    assert main(["grid", str(path), "--quiet"]) == 0
    grid = load_grid(path)
    page = grid.pages / f"{grid.cells[0].id}.ipynb"
    page.write_text("garbage, not a notebook")
    assert not is_finished(grid.results, grid.cells[0].id, grid.pages)
    assert not is_finished(grid.results, grid.cells[0].id)
    with pytest.warns(UserWarning, match=grid.cells[0].id):
        assert collect(grid.results).attrs["cells"] == 1
    capsys.readouterr()
    assert main(["grid", str(path), "--quiet"]) == 0
    assert "1 ran, 1 already finished" in capsys.readouterr().out
    import nbformat

    assert nbformat.read(page, as_version=4).cells  # a real notebook again


def test_collect_names_a_corrupt_cell_and_refuses_a_malformed_record(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"axes": {"sigma": [0.0, 1.0, 2.0]}}))
    assert not run_grid(grid, progress=False).failed
    cells = grid.results / "cells"
    corrupt = grid.cells[0].id
    (cells / f"{corrupt}.nc").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.warns(UserWarning, match=f"cell {corrupt} skipped: its result .* cannot be read"):
        ds = collect(grid.results)
    assert ds.attrs["cells"] == 2 and corrupt not in set(ds.cell_id.values)
    (cells / "0000000000000000.json").write_text("{not json")
    with pytest.warns(UserWarning) as caught:
        collect(grid.results)
    assert {"0000000000000000.json: skipped", f"cell {corrupt} skipped"} <= {w for c in caught for w in
                                                                          ("0000000000000000.json: skipped", f"cell {corrupt} skipped")
                                                                          if w in str(c.message)}
    rec = json.loads((cells / f"{grid.cells[1].id}.json").read_text())
    del rec["grid_axes"]
    (cells / f"{grid.cells[1].id}.json").write_text(json.dumps(rec))
    with pytest.raises(GridError, match=r"not a cell record of fmstudy \('grid_axes' missing") as err, pytest.warns(UserWarning):
        collect(grid.results)
    assert "\n" not in str(err.value) and grid.cells[1].id in str(err.value)


def test_leftovers_of_a_kill_are_removed_and_lock_files_go_with_their_cell(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"axes": {"sigma": [0.0]}}))
    cid = grid.cells[0].id
    grid.pages.mkdir(parents=True)
    (grid.results / "cells").mkdir(parents=True)
    # what a kill during the page's decoration leaves: atomic_write's temporary beside the running page
    leftovers = [grid.pages / f"..{cid}.running.json.abc123.tmp", grid.pages / f".{cid}.running.json",
                 grid.results / "cells" / f".{cid}.nc.x1y2.tmp", grid.results / "cells" / f"..{cid}.json.q.tmp"]
    for p in leftovers:
        p.write_text("partial")
    assert run_grid(grid, progress=False).ran == 1
    assert not [p for p in leftovers if p.exists()]
    assert not list((grid.results / "cells").glob("*.lock"))  # a lock only while its cell runs


def test_results_and_pages_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        grid = load_grid(write_grid(tmp_path, {"axes": {"sigma": [0.0]}}))
        assert run_grid(grid, progress=False).ran == 1
    finally:
        os.umask(old)
    cid = grid.cells[0].id
    for p in (grid.results / "cells" / f"{cid}.nc", grid.results / "cells" / f"{cid}.json", grid.pages / f"{cid}.ipynb"):
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))


def test_kernels_do_not_print_the_tcp_warning(tmp_path, capfd):
    assert main(["grid", str(write_grid(tmp_path, {"axes": {"sigma": [0.0]}})), "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "without encryption" not in err and "Traceback" not in err


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_leaves_no_traceback_no_failed_page_and_resumes(tmp_path, jobs):
    """Ctrl-C in a terminal reaches the whole process group: the runner and, with --jobs, its workers."""
    path = write_grid(tmp_path, {"axes": {"sigma": [0.0, 1.0, 2.0]}, "fixed": {"sleep": 6.0}})  # long enough to be interrupted on a busy machine
    # one execution per cell: with packing (the default) the first record appears only when the whole pack is done
    # as from a terminal: Ctrl-C not ignored, whatever the shell that started pytest (a background
    # or nohup'ed `make test` inherits SIGINT ignored, and so would the grid, which then runs to its end)
    proc = subprocess.Popen([sys.executable, "-m", "fmstudy", "grid", str(path), "--quiet", "--jobs", str(jobs), "--pack-size", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cells = tmp_path / "results" / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 1:
        time.sleep(0.2)
    time.sleep(1.0)  # into the next cell's sleep
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err
    assert not list(cells.glob("*.failed.ipynb")) and not list(cells.glob("*.lock"))
    assert not list((tmp_path / "pages").glob(".*"))
    grid = load_grid(path)
    summary = run_grid(grid, progress=False)
    assert not summary.failed and summary.ran + summary.skipped == 3 and summary.ran >= 1
    assert all(is_finished(grid.results, c.id, grid.pages) for c in grid.cells)
    assert not list(cells.glob("*.failed.ipynb"))


def test_a_later_success_removes_the_failed_page(tmp_path):
    path = write_grid(tmp_path, {"axes": {"sigma": [0.0]}, "fixed": {"fail": True}})
    grid = load_grid(path)
    assert len(run_grid(grid, progress=False).failed) == 1
    cid = grid.cells[0].id
    failed = grid.results / "cells" / f"{cid}.failed.ipynb"
    assert failed.exists()
    # the same cell made to succeed: the grid's notebook fails no more (a fixed bug), same id
    import shutil

    fixed_nb = tmp_path / "tiny_cell.ipynb"
    shutil.copy(TINY, fixed_nb)
    fixed_nb.write_text(fixed_nb.read_text().replace('raise RuntimeError(\\"planted failure\\")', "pass"))
    assert fixed_nb.read_text() != TINY.read_text()
    grid2 = load_grid(write_grid(tmp_path, {"notebook": str(fixed_nb), "axes": {"sigma": [0.0]}, "fixed": {"fail": True}}, "g2.yaml"))
    assert grid2.cells[0].id == cid
    assert run_grid(grid2, progress=False, force=True).ran == 1
    assert is_finished(grid.results, cid, grid.pages) and not failed.exists()


def test_limits_can_be_raised_in_the_file_or_on_the_command_line(tmp_path, capsys):
    axes = {"sigma": [0.1 * i for i in range(10)], "lr": [0.01 * (i + 1) for i in range(10)]}
    path = write_grid(tmp_path, {"axes": axes, "limits": {"cells": 50}})
    assert main(["grid", str(path), "--dry-run"]) == 2
    assert "more than 50 cells" in capsys.readouterr().err
    assert main(["grid", str(path), "--dry-run", "--limit", "cells=100"]) == 0
    assert "100 cells" in capsys.readouterr().out
    assert len(load_grid(write_grid(tmp_path, {"axes": axes, "limits": {"cells": 100}}, "g2.yaml")).cells) == 100
    big = write_grid(tmp_path, {"axes": {"steps": [2_000_000]}}, "g3.yaml")
    assert main(["grid", str(big), "--dry-run"]) == 2 and "--limit steps=" in capsys.readouterr().err
    assert main(["grid", str(big), "--dry-run", "--limit", "steps=3000000"]) == 0


def test_a_full_disk_gives_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        (full / "results" / "cells").mkdir(parents=True)
        with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):  # fill it
            while True:
                f.write(b"\0" * 4096)
        path = write_grid(tmp_path, {"axes": {"sigma": [0.0, 1.0]}, "results": str(full / "results")})
        proc = subprocess.run([sys.executable, "-m", "fmstudy", "grid", str(path), "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        if proc.returncode == 2:
            assert proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_run_that_only_finds_finished_cells_leaves_the_run_log_unchanged(tmp_path):
    """`make book` on shipped results runs the grid to check it: nothing ran, so the committed
    runs.jsonl must not grow (a fresh clone stays clean)."""
    grid = load_grid(write_grid(tmp_path, {"axes": {"sigma": [0.0]}, "fixed": {"steps": 3}}))
    assert run_grid(grid, progress=False).ran == 1
    before = (grid.results / "runs.jsonl").read_text()
    assert run_grid(grid, progress=False).ran == 0
    assert (grid.results / "runs.jsonl").read_text() == before and len(before.splitlines()) == 1
