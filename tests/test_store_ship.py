"""Shipping results (fmstudy.ship, the compact writer, shipped cells in the store, run links):
the compact files read back bit for bit as written before, a shipped cell without its page is
finished, the provenance names the commit git names, the book's links never break, and
.gitignore ships exactly what fmstudy.ship.SHIPPED says."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from fmstudy import report, ship
from fmstudy.results import SCHEMA, build_dataset, read_netcdf, write_netcdf
from fmstudy.store import cell_result, is_finished

ROOT = Path(__file__).resolve().parents[1]


def cell_dataset(cid: str, seed: int = 0, members: int = 3, steps: int = 1000):
    """A cell's Dataset of the schema's per-member variables, values as the engine's (float32
    losses; float64 measurements, some rounded from float32), a NaN and a -1 among them."""
    rng = np.random.default_rng(seed)
    sizes = {"member": members, "step": steps, "checkpoint": 8, "t_bin": 20}
    arrays = {}
    for name, (dims, _, _) in SCHEMA.items():
        if not dims or dims[0] != "member" or any(d not in sizes for d in dims):
            continue
        shape = tuple(sizes[d] for d in dims)
        value = rng.lognormal(size=shape)
        arrays[name] = value.astype(np.float32) if dims[-1] == "step" else value
    arrays["q"] = arrays["q"].astype(np.float32).astype(np.float64)  # float32-valued, as some engine outputs are
    arrays["loss"][0, 0, 0] = np.nan
    arrays["diverged_step"] = np.array([-1] + [7] * (members - 1), dtype=np.int64)
    attrs = {"cell_id": cid, "device": "cpu", "torch_version": "2.x", "fmstudy_version": "0.1.0", "host": "h", "wall_seconds": 1.5,
             "config": {"lr": 0.01}}
    return build_dataset(arrays, list(range(members)), steps, list(range(0, 8 * 100, 100)), np.linspace(0, 1, 21), attrs)


def old_write(ds, path: Path) -> None:
    """The writer before compaction: xarray's default netCDF4 file."""
    ds.to_netcdf(path, engine="h5netcdf")


def assert_reads_as(path: Path, ds) -> None:
    """``path`` reads as ``ds``, checked variable by variable against the in-memory arrays."""
    back = read_netcdf(path)
    assert list(back.variables) == list(ds.variables)
    for name, var in ds.variables.items():
        got = back[name]
        assert got.dtype == var.dtype and got.dims == var.dims, name
        np.testing.assert_array_equal(got.values, var.values, err_msg=name)
        assert got.attrs == var.attrs, name
    assert back.attrs == ds.attrs


def test_the_compact_writer_is_lossless_smaller_and_old_files_read_the_same(tmp_path):
    ds = cell_dataset("a" * 16)
    old_write(ds, tmp_path / "old.nc")
    write_netcdf(ds, tmp_path / "new.nc")
    assert_reads_as(tmp_path / "old.nc", ds)
    assert_reads_as(tmp_path / "new.nc", ds)
    assert ship.same_bits(read_netcdf(tmp_path / "old.nc"), read_netcdf(tmp_path / "new.nc")) == ""
    old, new = (tmp_path / "old.nc").stat().st_size, (tmp_path / "new.nc").stat().st_size
    assert new < 0.9 * old, (old, new)
    with h5py.File(tmp_path / "new.nc") as f:
        assert f["train_loss"].compression == "gzip" and f["train_loss"].shuffle  # 12 KB: compressed
        assert f["diverged_step"].compression is None  # 24 bytes: not worth a filter


def test_same_bits_sees_a_single_bit_an_attribute_and_the_order():
    ds = cell_dataset("b" * 16)
    assert ship.same_bits(ds, ds.copy(deep=True)) == ""
    other = ds.copy(deep=True)
    x = other["loss"].values.view(np.uint64)
    x[1, 2, 3] ^= 1  # one ulp
    assert "loss" in ship.same_bits(ds, other)
    other = ds.copy(deep=True)
    other["q"].attrs["units"] = "2"
    assert "q" in ship.same_bits(ds, other)
    other = ds.copy(deep=True)
    other.attrs["wall_seconds"] = np.float32(1.5)  # same value, another type
    assert "global" in ship.same_bits(ds, other)
    assert "variables differ" in ship.same_bits(ds, ds[list(reversed(list(ds.data_vars)))])


def write_cell(results: Path, cid: str, status: str = "ok", nc_id: str | None = None, seed: int = 0) -> None:
    cells = results / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    old_write(cell_dataset(nc_id or cid, seed), cells / f"{cid}.nc")
    rec = {"id": cid, "status": status, "page": f"../pages/{cid}.ipynb", "params": {"seeds": [0, 1, 2], "sampler": {"name": "uniform"}},
           "labels": {"sampler": "uniform", "lr": 0.01}, "grids": ["g"], "grid_axes": {"g": ["sampler"]}, "grid_file": "x.yaml",
           "seconds": 2.0}
    (cells / f"{cid}.json").write_text(json.dumps(rec))


IDS = ["0" * 16, "1" * 16, "2" * 16, "3" * 16, "4" * 16]


def shipped_results(tmp_path: Path) -> Path:
    """Two finished cells, one running (lock), one failed, one whose file is another cell's."""
    res = tmp_path / "results"
    write_cell(res, IDS[0], seed=0)
    write_cell(res, IDS[1], seed=1)
    write_cell(res, IDS[2], seed=2)
    (res / "cells" / f"{IDS[2]}.lock").write_text("")
    write_cell(res, IDS[3], status="failed")
    write_cell(res, IDS[4], nc_id="f" * 16)
    return res


def held(lock: Path):
    """Hold an exclusive flock on ``lock`` (as a running grid process holds its cell's)."""
    import contextlib
    import fcntl
    import os

    @contextlib.contextmanager
    def hold():
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    return hold()


def test_compact_rewrites_finished_cells_bit_equal_and_leaves_the_rest(tmp_path):
    res = shipped_results(tmp_path)
    before = {cid: (res / "cells" / f"{cid}.nc").read_bytes() for cid in IDS}
    with held(res / "cells" / f"{IDS[2]}.lock"):  # the third cell is running in another process
        out = ship.compact(res)
    # the failed cell is not counted (its record claims nothing); the locked and the foreign one are skipped
    assert out["rewritten"] == 2 and out["skipped"] == 2 and out["bytes_after"] < 0.9 * out["bytes_before"]
    for cid, seed in ((IDS[0], 0), (IDS[1], 1)):
        assert (res / "cells" / f"{cid}.nc").read_bytes() != before[cid]
        assert_reads_as(res / "cells" / f"{cid}.nc", cell_dataset(cid, seed))
    for cid in IDS[2:]:
        assert (res / "cells" / f"{cid}.nc").read_bytes() == before[cid]
    assert not list((res / "cells").glob(".*"))  # no temporary left
    with held(res / "cells" / f"{IDS[2]}.lock"):
        again = ship.compact(res)  # idempotent: a compact file is not rewritten larger
    assert again["rewritten"] == 0 and again["bytes_after"] == out["bytes_after"]
    # a lock file that nobody holds (a killed run's) does not stop the rewrite, and is gone after it
    third = ship.compact(res)
    assert third["rewritten"] == 1 and not (res / "cells" / f"{IDS[2]}.lock").exists()
    assert_reads_as(res / "cells" / f"{IDS[2]}.nc", cell_dataset(IDS[2], 2))


def test_compact_keeps_the_original_when_the_rewrite_reads_differently(tmp_path, monkeypatch):
    res = tmp_path / "results"
    write_cell(res, IDS[0])
    before = (res / "cells" / f"{IDS[0]}.nc").read_bytes()
    monkeypatch.setattr(ship, "same_bits", lambda a, b: "loss: values differ")
    with pytest.raises(ValueError, match=f"cell {IDS[0]}: its compact rewrite reads differently"):
        ship.compact(res)
    assert (res / "cells" / f"{IDS[0]}.nc").read_bytes() == before and not list((res / "cells").glob(".*"))


def test_a_shipped_cell_is_finished_without_its_page(tmp_path):
    res = shipped_results(tmp_path)
    pages = tmp_path / "pages"
    assert not is_finished(res, IDS[0]) and not is_finished(res, IDS[0], pages)  # a lost page: unfinished, as before
    assert ship.mark_shipped(res) == 3  # the two finished cells and the locked one (its files are whole)
    assert is_finished(res, IDS[0]) and is_finished(res, IDS[0], pages) and is_finished(res, IDS[1], pages)
    rec = json.loads((res / "cells" / f"{IDS[0]}.json").read_text())
    assert rec["page_shipped"] is False and rec["status"] == "ok" and rec["params"]["seeds"] == [0, 1, 2]
    for cid in IDS[3:]:  # failed, foreign file: not marked, not finished
        assert "page_shipped" not in json.loads((res / "cells" / f"{cid}.json").read_text()) and not is_finished(res, cid)
    (res / "cells" / f"{IDS[1]}.nc").unlink()  # a shipped cell still needs its result
    assert not is_finished(res, IDS[1], pages)
    assert cell_result(res, {**rec, "id": IDS[1]})[1].startswith("its result")


def test_provenance_names_the_commit_git_names(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = shipped_results(tmp_path)
    (res / "runs.jsonl").write_text('{"time": "2026-01-01T00:00:00", "seconds": 10}\n{"time": "2026-01-02T00:00:00", "seconds": 5.5}\n')
    prov = ship.write_provenance(res, "python -m fmstudy grid papermill_params/paper.yaml", [ROOT])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert prov["produced_by"][0]["commit"] == head and re.fullmatch(r"[0-9a-f]{40}", head)
    assert prov["devices"] == ["cpu"] and prov["cells"] == 4  # the records that say ok
    assert prov["grid_runs"] == {"first": "2026-01-01T00:00:00", "last": "2026-01-02T00:00:00", "seconds": 15.5}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["date"]) and prov["command"].endswith("paper.yaml")
    assert json.loads((res / "PROVENANCE.json").read_text()) == json.loads(json.dumps(prov))
    with pytest.raises(ValueError, match="is not allowed: it must be a git checkout"):
        ship.write_provenance(res, "x", [tmp_path])


def test_the_cells_page_and_the_run_links_never_break(tmp_path, monkeypatch):
    res = shipped_results(tmp_path)
    ship.mark_shipped(res)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setenv("FMSTUDY_PROFILE", "p")
    runs = tmp_path / "book" / "runs" / "p"
    assert report.run_link(IDS[0], "page", 2) == f"<code>{IDS[0]}</code>"  # no page, no table: text, not a link
    page = ship.write_cells_page(res, runs)
    anchors = re.findall(r'<tr id="(cell-[0-9a-f]{16})">', page.read_text())
    assert sorted(anchors) == [f"cell-{c}" for c in IDS[:3] + IDS[4:]]  # every record that says ok and has its file
    link = report.run_link(IDS[1], "record", 1)
    assert link == f'<a href="../runs/p/cells.html#cell-{IDS[1]}">record</a>' and link.split("#")[1].split('"')[0] in anchors
    (runs / f"{IDS[1]}.ipynb").write_text("{}")
    assert report.run_link(IDS[1], "page", 2) == f'<a href="../../runs/p/{IDS[1]}.html">page</a>'
    for cid in IDS[:3] + IDS[4:]:
        (runs / f"{cid}.ipynb").write_text("{}")
    assert ship.write_cells_page(res, runs) is None and not page.exists()  # every page there: no stale table
    monkeypatch.delenv("FMSTUDY_PROFILE")
    assert report.profile() == "paper"


def test_gitignore_ships_exactly_what_ship_says():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    cid = "0123456789abcdef"
    candidates = [f"cells/{cid}.nc", f"cells/{cid}.json", f"cells/{cid}.log", f"cells/{cid}.lock", f"cells/{cid}.failed.ipynb",
                  f"cells/.{cid}.compact.nc", f"cells/.{cid}.json.x.tmp", "runs.jsonl", "throughput.json", "PROVENANCE.json",
                  "floors/abc.json", "other.json"]
    for profile in ("paper", "quick", "smoke"):
        for rel in candidates:
            path = f"results/{profile}/{rel}"
            ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path]).returncode == 0
            shipped = profile == "paper" and any(fnmatch.fnmatchcase(rel, p) for p in ship.SHIPPED)
            assert ignored != shipped, path
    page = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", f"book/runs/paper/{cid}.ipynb"]).returncode
    assert page == 0  # pages are not shipped


def test_make_book_builds_the_paper_profile_by_default():
    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "book"], capture_output=True, text=True).stdout
    assert "grid papermill_params/paper.yaml" in dry and "FMSTUDY_PROFILE=paper" in dry and "fmstudy.ship page" in dry
    assert "'smoke', 'quick', 'full', 'paper'" in dry
    quick = subprocess.run(["make", "-n", "-C", str(ROOT), "book", "PROFILE=quick"], capture_output=True, text=True).stdout
    assert "grid papermill_params/quick.yaml" in quick and "throughput.py --steps 100 --members 32" in quick


def test_unfinished_names_the_cells_a_fresh_clone_would_recompute(tmp_path):
    import yaml

    from fmstudy.gridfile import load_grid

    res = tmp_path / "results"
    spec = {"notebook": str(ROOT / "tests" / "data" / "tiny_cell.ipynb"), "results": str(res), "pages": str(tmp_path / "pages"),
            "axes": {"sigma": [0.0, 1.0, 2.0]}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    ids = [c.id for c in load_grid(tmp_path / "g.yaml").cells]
    for cid in ids[:2]:
        write_cell(res, cid)
    assert ship.unfinished(tmp_path / "g.yaml", res) == ids  # with records and results but no pages: all of them
    ship.mark_shipped(res)
    assert ship.unfinished(tmp_path / "g.yaml", res) == ids[2:]


def test_collect_pads_cells_whose_samples_have_other_dimensions(tmp_path):
    """gmm-d in d = 8 and d = 32 in one sub-grid: the cells' samples differ in their coordinate
    dimension; collect pads the smaller with NaN instead of refusing the sub-grid."""
    from fmstudy.store import collect

    res = tmp_path / "results"
    for cid, dim, sampler in ((IDS[0], 2, "uniform"), (IDS[1], 5, "var_opt")):
        write_cell(res, cid)
        path = res / "cells" / f"{cid}.nc"
        ds = read_netcdf(path).load()
        ds["samples"] = (("member", "sample", "coord"), np.full((3, 4, dim), float(dim)))
        path.unlink()
        old_write(ds, path)
        rec = json.loads((res / "cells" / f"{cid}.json").read_text())
        rec.update(params={"seeds": [0, 1, 2], "sampler": {"name": sampler}}, labels={"sampler": sampler}, page_shipped=False)
        (res / "cells" / f"{cid}.json").write_text(json.dumps(rec))
    merged = collect(res, "g")
    assert merged.sizes["coord"] == 5
    small = merged["samples"].sel(sampler="uniform").values
    assert (small[..., :2] == 2.0).all() and np.isnan(small[..., 2:]).all()
    assert (merged["samples"].sel(sampler="var_opt").values == 5.0).all()


def test_regroup_gives_old_records_the_sub_grids_a_later_file_adds(tmp_path):
    """A cell run under a file with sub-grid 'a' is also sub-grid 'b''s once 'b' is added (the
    same parameters, the same id): regroup writes 'b' into its record, so collect('b') finds it."""
    import yaml

    from fmstudy.gridfile import load_grid

    tiny = ROOT / "tests" / "data" / "tiny_cell.ipynb"
    spec = {"notebook": str(tiny), "results": str(tmp_path / "results"), "grids": [{"name": "a", "axes": {"sigma": [0.0, 1.0]}}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    old = load_grid(tmp_path / "g.yaml")
    res = tmp_path / "results"
    for cell in old.cells:
        write_cell(res, cell.id)
        rec = json.loads((res / "cells" / f"{cell.id}.json").read_text())
        rec.update(grids=list(cell.grids), grid_axes={"a": ["sigma"]}, labels=dict(cell.labels))
        (res / "cells" / f"{cell.id}.json").write_text(json.dumps(rec))
    spec["grids"].append({"name": "b", "fixed": {"sigma": 1.0}, "axes": {"lr": [0.001, 0.01]}})  # 0.001 is the default: shared
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    assert ship.regroup(tmp_path / "g.yaml", res) == 2  # both records gain the axis lr in their labels; one gains 'b'
    shared = next(c for c in load_grid(tmp_path / "g.yaml").cells if len(c.grids) == 2)
    rec = json.loads((res / "cells" / f"{shared.id}.json").read_text())
    assert rec["grids"] == ["a", "b"] and rec["grid_axes"] == {"a": ["sigma"], "b": ["lr"]} and rec["status"] == "ok"
    assert ship.regroup(tmp_path / "g.yaml", res) == 0  # idempotent


def test_a_cells_record_names_the_commit_and_the_grid_files_bytes(tmp_path):
    if shutil.which("git") is None or shutil.which("sha256sum") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and sha256sum")
    import yaml

    from fmstudy.cellrun import base_record
    from fmstudy.gridfile import load_grid

    spec = {"notebook": str(ROOT / "tests" / "data" / "tiny_cell.ipynb"), "results": str(tmp_path / "r"), "pages": str(tmp_path / "p"),
            "axes": {"sigma": [0.0, 1.0]}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    grid = load_grid(tmp_path / "g.yaml")
    rec = base_record(grid, grid.cells[0])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    digest = subprocess.run(["sha256sum", str(tmp_path / "g.yaml")], capture_output=True, text=True, check=True).stdout.split()[0]
    assert rec["code"]["commit"] == head and isinstance(rec["code"]["uncommitted_changes"], bool)
    assert rec["grid_file_sha256"] == digest and json.loads(json.dumps(rec)) == rec  # a record is plain JSON


def test_compact_in_float32_rounds_measurements_only_and_says_so(tmp_path):
    res = shipped_results(tmp_path)
    lossless = shutil.copytree(res, tmp_path / "lossless")
    out = ship.compact(res, float32=True)
    assert out["rewritten"] == 3 and out["bytes_after"] < 0.9 * ship.compact(lossless)["bytes_after"]  # float64 noise does not compress (the per-step losses, already float32, dominate these test cells)
    for cid, seed in ((IDS[0], 0), (IDS[1], 1)):
        want, back = cell_dataset(cid, seed), read_netcdf(res / "cells" / f"{cid}.nc")
        assert list(back.variables) == list(want.variables) and back.attrs[ship.PRECISION_ATTR] == ship.FLOAT32_NOTE
        for name, var in want.variables.items():
            got = back[name]
            if name in want.data_vars and var.dtype == np.float64:
                assert got.dtype == np.float32, name
                # round to nearest: within half a float32 ulp, i.e. relative 2**-24; NaN stays NaN
                np.testing.assert_allclose(got.values.astype(np.float64), var.values, rtol=2.0**-24, atol=0, equal_nan=True, err_msg=name)
            else:  # coordinates, integers and float32 losses untouched
                assert got.dtype == var.dtype, name
                np.testing.assert_array_equal(got.values, var.values, err_msg=name)
        assert back["q"].values.astype(np.float64).tobytes() == want["q"].values.tobytes()  # float32-valued: exact
    again = ship.compact(res, float32=True)
    assert again["rewritten"] == 0  # idempotent
    ds = cell_dataset(IDS[0])
    ds["loss"][0, 0, 1] = 1e39  # beyond float32 (a diverged run's sample distance reached 1e54)
    small = ship.to_float32(ds)
    assert small["loss"].dtype == np.float64 and small["loss"].values.tobytes() == ds["loss"].values.tobytes()
    assert small["excess"].dtype == np.float32


def test_a_fresh_clone_recomputes_nothing_of_the_paper_profile():
    """The shipped results hold every cell of the committed paper grid file, finished without
    pages, so `make book` on a fresh clone only checks them (a grid file edited without its
    results shipped would send a new user into hours of computing)."""
    grid, res = ROOT / "papermill_params" / "paper.yaml", ROOT / "results" / "paper"
    if not (res / "cells").is_dir():
        pytest.skip("no shipped paper results in this checkout")
    assert ship.unfinished(grid, res) == []
    prov = json.loads((res / "PROVENANCE.json").read_text())
    assert prov["cells"] == len(list((res / "cells").glob("[0-9a-f]*.nc")))  # provenance written after the last cell


def test_file_attrs_reads_a_cells_attributes_as_xarray_does(tmp_path):
    from fmstudy.provenance import file_attrs

    res = shipped_results(tmp_path)
    path = res / "cells" / f"{IDS[0]}.nc"
    want = read_netcdf(path).attrs
    got = file_attrs(path, ["device", "host", "absent"])
    assert got == {"device": str(want["device"]), "host": str(want["host"])}
    assert file_attrs(tmp_path / "none.nc", ["device"]) is None
    (tmp_path / "text.nc").write_text("not HDF5")
    assert file_attrs(tmp_path / "text.nc", ["device"]) is None


def test_code_state_ignores_what_the_grid_writes(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    from fmstudy.provenance import code_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x",
                            "PATH": "/usr/bin:/bin"})

    (tmp_path / "results" / "p").mkdir(parents=True)
    (tmp_path / "results" / "p" / "runs.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    (tmp_path / "results" / "p" / "runs.jsonl").write_text("{}\n{}\n")  # a grid run appends its line
    assert code_state(str(tmp_path))["uncommitted_changes"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    code_state.cache_clear()
    assert code_state(str(tmp_path))["uncommitted_changes"] is True
