"""The fast reading of results (fmstudy.ncread): ``read_netcdf`` returns exactly what
``xarray.open_dataset(path, engine="h5netcdf").load()`` returns, on files of the compact writer
and on files written before it, and ``collect`` returns exactly what xarray's reader and merge
give (``fast=False``), down to the order of the variables, their encodings and a NaN's bits.
How much faster: benchmarks/collect_speed.py (nothing is timed here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from fmstudy import ncread
from fmstudy.results import SCHEMA, build_dataset, read_netcdf, write_netcdf
from fmstudy.store import GridError, collect

NEG_NAN = np.copysign(np.nan, -1.0)  # a NaN with its sign bit set, as x86 makes 0/0


def cell_dataset(cid: str, seed: int = 0, steps: int = 40, checkpoints: int = 4, dim: int = 2, drop: tuple[str, ...] = ()) -> xr.Dataset:
    """A cell of every schema variable but ``drop`` (3 members), with a NaN, a negative NaN, an
    integer variable, float32 and float64, scalars, and samples of ``dim`` coordinates."""
    rng = np.random.default_rng(seed)
    sizes = {"member": 3, "step": steps, "checkpoint": checkpoints, "t_bin": 5}
    arrays = {}
    for name, (dims, _, _) in SCHEMA.items():
        if name in drop or "sample" in dims or name.startswith("member_"):
            continue
        value = rng.lognormal(size=tuple(sizes[d] for d in dims))
        arrays[name] = value.astype(np.float32) if "step" in dims else value
    arrays["loss"][0, 0, 0], arrays["loss"][1, 0, 0] = np.nan, NEG_NAN
    arrays["train_loss"][0, 1] = np.float32(NEG_NAN)
    arrays["diverged_step"] = np.array([-1, 3, -1], dtype=np.int64)
    attrs = {"cell_id": cid, "device": "cpu", "host": "hôte", "wall_seconds": 1.5 + seed, "tf32": 0, "unbiased": 1,
             "config": {"lr": 0.01, "seed": seed}, "seeds": [0, 1, 2]}
    ds = build_dataset(arrays, [0, 1, 2], steps, list(range(0, 10 * checkpoints, 10)), np.linspace(0, 1, 6), attrs)
    if "samples" not in drop:
        samples = rng.normal(size=(3, 4, dim)).astype(np.float32)
        samples[2, 0, 0] = np.float32(NEG_NAN)
        ds["samples"] = xr.Variable(("member", "sample", "coord"), samples, {"units": "1", "description": "samples"})
    return ds


def xarray_read(path: Path) -> xr.Dataset:
    """The reference: xarray's own reader."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type, NaN equal to NaN (attributes and encodings hold NaN fill values)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, np.generic, float)):
        return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind in "fc")
    return a == b


def assert_same(got: xr.Dataset, want: xr.Dataset) -> None:
    """Everything a Dataset holds is the same: names and their order, dimensions, indexes,
    attributes and encodings (with their types), dtypes and every byte of the data."""
    xr.testing.assert_identical(got, want)
    assert list(got.variables) == list(want.variables) and list(got.coords) == list(want.coords)
    assert list(got.sizes.items()) == list(want.sizes.items()) and list(got.xindexes) == list(want.xindexes)
    assert same_value(got.attrs, want.attrs) and same_value(got.encoding, want.encoding)
    for name, w in want.variables.items():
        g = got.variables[name]
        assert type(g) is type(w) and g.dims == w.dims and g.dtype == w.dtype, name
        assert same_value(g.attrs, w.attrs), (name, g.attrs, w.attrs)
        assert same_value(g.encoding, w.encoding), (name, g.encoding, w.encoding)
        if w.dtype == object:
            assert [(type(x), str(x)) for x in g.values.ravel()] == [(type(x), str(x)) for x in w.values.ravel()], name
        else:
            assert g.values.tobytes() == w.values.tobytes(), name  # NaN's bits included


@pytest.mark.parametrize("writer", ["compact", "before compaction"])
def test_the_fast_reader_reads_exactly_what_xarray_reads(tmp_path, writer):
    ds = cell_dataset("a" * 16)
    path = tmp_path / "cell.nc"
    if writer == "compact":
        write_netcdf(ds, path)
    else:
        ds.to_netcdf(path, engine="h5netcdf")  # xarray's default file, as cells were written first
    got = ncread.open_loaded(path)
    assert_same(got, xarray_read(path))
    assert_same(read_netcdf(path), xarray_read(path))
    assert np.signbit(got["loss"].values[1, 0, 0]) and got["diverged_step"].dtype == np.int64 and got.attrs["host"] == "hôte"


def test_a_file_outside_the_fast_readers_subset_is_read_by_xarray(tmp_path):
    ds = cell_dataset("b" * 16)
    strings = ds.assign(label=("member", np.array(["x", "y", "z"])))  # a string variable
    strings.to_netcdf(tmp_path / "strings.nc", engine="h5netcdf")
    ds.to_netcdf(tmp_path / "unlimited.nc", engine="h5netcdf", unlimited_dims=["step"])
    for name in ("strings.nc", "unlimited.nc"):
        with pytest.raises(ncread.Unsupported):
            ncread.open_loaded(tmp_path / name)
        assert_same(read_netcdf(tmp_path / name), xarray_read(tmp_path / name))


def write_cell(results: Path, cid: str, params: dict[str, Any], ds: xr.Dataset, compact: bool = True) -> None:
    """A finished cell of sub-grid ``g`` (axes sigma and sampler), shipped without its page."""
    cells = results / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    if compact:
        write_netcdf(ds, cells / f"{cid}.nc")
    else:
        ds.to_netcdf(cells / f"{cid}.nc", engine="h5netcdf")
    rec = {"id": cid, "status": "ok", "page_shipped": False, "params": {"seeds": [0, 1, 2], **params}, "grids": ["g"],
           "grid_axes": {"g": ["sigma", "sampler"]}, "grid_file": "x.yaml", "seconds": 2.0}
    (cells / f"{cid}.json").write_text(json.dumps(rec))


@pytest.fixture
def merged_fast(monkeypatch) -> list[Any]:
    """What the fast merge returned in each collect (None where it left the merge to xarray)."""
    seen: list[Any] = []
    merge_cells = ncread.merge_cells

    def spy(parts):
        seen.append(merge_cells(parts))
        return seen[-1]

    monkeypatch.setattr(ncread, "merge_cells", spy)
    return seen


def test_collect_gives_the_same_dataset_both_ways(tmp_path, merged_fast):
    """Cells that differ in their steps and checkpoints (indexes joined, the shorter padded),
    in their samples' dimension, in which variables they hold (one in one cell only), with
    NaNs of either sign, old and compact files, float32 and float64, a combination not run, an
    integer variable."""
    res = tmp_path / "results"
    cells = [
        ({"sigma": 0.0, "sampler": "uniform"}, {}),
        ({"sigma": 0.0, "sampler": {"name": "var_opt", "floor": 0.05}}, {"steps": 60, "checkpoints": 6, "dim": 3, "drop": ("sample_nll",)}),
        ({"sigma": 1.0, "sampler": "uniform"}, {"drop": ("excess", "irreducible", "sample_frechet", "sample_nll")}),
        ({"sigma": 2.0, "sampler": "uniform"}, {"drop": ("sample_frechet", "floor_sw", "sample_nll")}),
    ]
    for i, (params, shape) in enumerate(cells):
        cid = f"{i:016x}"
        ds = cell_dataset(cid, seed=i, **shape)
        if i == 0:  # measurements stored in float32 beside others' float64 (fmstudy.ship compacts so)
            ds = ds.assign({k: v.astype(np.float32) for k, v in ds.data_vars.items() if v.dtype == np.float64})
        write_cell(res, cid, params, ds, compact=i % 2 == 0)
    fast, slow = collect(res, "g"), collect(res, "g", fast=False)
    assert merged_fast[-1] is not None  # the fast merge did it, not xarray's behind it
    assert_same(fast, slow)
    assert fast.sizes["checkpoint"] == 6 and fast.sizes["coord"] == 3 and fast["diverged_step"].dtype == np.float64
    assert np.isnan(fast["loss"].sel(sigma=2.0, sampler="var_opt(floor=0.05)")).all()  # not run: NaN
    # a negative NaN stays where xarray's fillna keeps it (the last cell), elsewhere its fill NaN
    signs = np.signbit(fast["loss"].values[..., 1, 0, 0])
    assert signs.tolist() == np.signbit(slow["loss"].values[..., 1, 0, 0]).tolist() and signs.any() and not signs.all()


def test_what_the_fast_merge_leaves_to_xarray_comes_out_as_xarrays(tmp_path, merged_fast):
    """One cell; cells with other dimension coordinates (one without samples has no ``coord``);
    two cells at the same coordinates, which xarray compares and refuses: the fast merge leaves
    them to xarray, so the result, or the error, is xarray's."""
    res = tmp_path / "one"
    write_cell(res, "0" * 16, {"sigma": 0.0, "sampler": "uniform"}, cell_dataset("0" * 16))
    assert_same(collect(res, "g"), collect(res, "g", fast=False))
    res = tmp_path / "other"
    for i in range(2):
        write_cell(res, f"{i:016x}", {"sigma": float(i), "sampler": "uniform"}, cell_dataset(f"{i:016x}", seed=i, drop=("samples",) * i))
    assert_same(collect(res, "g"), collect(res, "g", fast=False))
    assert merged_fast == [None, None]
    res = tmp_path / "clash"
    for i in range(2):
        write_cell(res, f"{i:016x}", {"sigma": 0.0, "sampler": "uniform"}, cell_dataset(f"{i:016x}", seed=i))
    errors = []
    for fast in (True, False):
        with pytest.raises(GridError) as err:
            collect(res, "g", fast=fast)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "cannot be merged" in errors[0] and merged_fast[-1] is None
