"""Reading a cell's netCDF file fast, with exactly what ``xarray.open_dataset(path,
engine="h5netcdf").load()`` returns (:func:`open_loaded`, which
:func:`fmstudy.results.read_netcdf` uses), and merging a grid's cells as ``xarray.merge`` does
(:func:`merge_cells`, which :func:`fmstudy.store.collect` uses).

Why: through xarray's h5netcdf backend a cell of ~120 variables took about a second, nearly all
of it in h5netcdf looking each HDF5 object up again by its path whenever it asks about it (its
dimensions, their sizes, its shape: 350,000 lookups for 68 cells); the data themselves load in
milliseconds. Here h5py opens each variable once, reads each attribute once, matches dimension
scales by object, not by name, and hands the raw variables to xarray's own decoding
(``StoreBackendEntrypoint``, the step the h5netcdf backend ends with), so masking, coordinates,
indexes and encodings are xarray's own.

Only the netCDF-4 subset that :func:`fmstudy.results.write_netcdf` (and xarray's default writer
before it) produces is read here: one group of numeric variables with named, fixed-size
dimensions. Anything else (groups, user types, strings, unlimited or unnamed dimensions, other
filters) raises :class:`Unsupported`, and the caller reads the file with xarray instead.
Some names used here are private to h5netcdf and xarray (the hidden attributes, xarray's
attribute reading and fill values): used so that those rules stay theirs, and
tests/test_collect_fast.py compares with xarray's own reader and merge, so a change shows there.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np
import xarray as xr
from h5netcdf.attrs import _HIDDEN_ATTRS, Attributes
from h5netcdf.core import NOT_A_VARIABLE
from xarray.backends import AbstractDataStore
from xarray.backends.h5netcdf_ import _read_attributes
from xarray.backends.store import StoreBackendEntrypoint

__all__ = ["Unsupported", "merge_cells", "open_loaded"]


class Unsupported(ValueError):
    """The file uses a netCDF feature this reader leaves to xarray."""


class _Named:
    """What xarray's ``_read_attributes`` reads of an h5netcdf object: its attributes and name."""

    def __init__(self, attrs: Attributes, name: str) -> None:
        self.attrs, self.name = attrs, name


def _attributes(obj: h5py.HLObject, name: str) -> dict[str, Any]:
    """``obj``'s netCDF attributes as xarray's h5netcdf backend reads them. The kinds our files
    hold (a variable-length string, numbers) are converted here as h5netcdf converts them (a
    one-element array becomes its element; xarray then leaves them be), each read once, where
    h5netcdf reads a value twice and its type a third time; any other kind (fixed-length or
    array strings, empty) goes through h5netcdf's and xarray's own code."""
    attrs, out, other = obj.attrs, {}, None
    for key in attrs:
        if key in _HIDDEN_ATTRS:
            continue
        value = attrs[key]
        if isinstance(value, str) or (isinstance(value, np.generic) and value.dtype.kind in "fiu"):
            out[key] = value
        elif isinstance(value, np.ndarray) and value.dtype.kind in "fiu" and value.ndim == 1:
            out[key] = value[0] if len(value) == 1 else value
        else:
            other = other or _read_attributes(_Named(Attributes(attrs, None, h5py), name))
            out[key] = other[key]
    return out


def _encoding(var: h5py.Dataset, dims: tuple[str, ...], path: str) -> dict[str, Any]:
    """The encoding xarray's ``H5NetCDFStore.open_store_variable`` gives a numeric variable whose
    only filters are zlib, shuffle and fletcher32 (others raise :class:`Unsupported`)."""
    filters = var._filters  # read once: each of h5py's filter properties reads the list again
    if not set(filters) <= {"gzip", "shuffle", "fletcher32"}:
        raise Unsupported(f"variable {var.name!r} has filters {sorted(filters)}")
    enc: dict[str, Any] = {"dtype": var.dtype}
    chunks = var.chunks if var.shape != () else None
    if chunks:
        enc.update(contiguous=False, chunksizes=chunks, preferred_chunks=dict(zip(dims, chunks, strict=True)))
    else:
        enc.update(contiguous=True, chunksizes=None)
    enc.update(zlib="gzip" in filters, szip=False, bzip2=False, blosc=False, zstd=False, shuffle="shuffle" in filters,
               fletcher32="fletcher32" in filters)
    if "gzip" in filters:
        enc["complevel"] = filters["gzip"]
    enc.update(source=path, original_shape=var.shape)
    return enc


class _Store(AbstractDataStore):
    """An xarray data store over an open h5py file: everything read into memory at once."""

    def __init__(self, f: h5py.File) -> None:
        self._f, self._path = f, f.filename

    def get_variables(self) -> dict[str, xr.Variable]:
        f = self._f
        objects = {name: f[name] for name in f}
        scales = {}  # a dimension scale's HDF5 object -> its name and size
        for name, obj in objects.items():
            if not isinstance(obj, h5py.Dataset):
                raise Unsupported(f"{name!r} is a group or a named type")
            if name.startswith("_nc4_non_coord_"):
                raise Unsupported(f"{name!r} is a renamed non-coordinate variable")
            if "CLASS" in obj.attrs and obj.attrs["CLASS"] == b"DIMENSION_SCALE":  # `in` first: .get finds a missing one by a costly error
                if obj.ndim != 1 or obj.maxshape != obj.shape:
                    raise Unsupported(f"dimension {name!r} is not one fixed-size axis")
                scales[obj.id] = (name, obj.shape[0])
        out = {}
        for name, obj in objects.items():
            if obj.id in scales:
                if NOT_A_VARIABLE in obj.attrs.get("NAME", b""):
                    continue  # a dimension without a coordinate variable
                coords = obj.attrs.get("_Netcdf4Coordinates")
                if coords is not None and list(coords) != [obj.attrs.get("_Netcdf4Dimid")]:
                    raise Unsupported(f"coordinate {name!r} names other dimensions")
                dims: tuple[str, ...] = (name,)
            elif obj.ndim == 0:
                dims = ()
            else:
                refs = obj.attrs.get("DIMENSION_LIST")
                if refs is None or len(refs) != obj.ndim or any(len(r) == 0 for r in refs):
                    raise Unsupported(f"variable {name!r} has unnamed dimensions")
                # the last scale attached to an axis names it, as in h5netcdf and netCDF-C
                found = [scales.get(h5py.h5r.dereference(r[-1], f.id)) for r in refs]
                if None in found or tuple(size for _, size in found) != obj.shape:
                    raise Unsupported(f"variable {name!r} has dimensions that are not the file's")
                dims = tuple(dim for dim, _ in found)
            if obj.dtype.kind not in "fiu":
                raise Unsupported(f"variable {name!r} is of type {obj.dtype}")
            data = obj[()]
            out[name] = xr.Variable(dims, data, _attributes(obj, name), _encoding(obj, dims, self._path))
        return out

    def get_attrs(self) -> dict[str, Any]:
        return _attributes(self._f, "/")

    def get_encoding(self) -> dict[str, Any]:
        return {"unlimited_dims": set()}  # files with unlimited dimensions are xarray's to read


def open_loaded(path: str | os.PathLike) -> xr.Dataset:
    """The file at ``path`` loaded into memory as ``xarray.open_dataset(path, engine="h5netcdf")
    .load()`` gives it (variables, coordinates, indexes, attributes, encodings); the file is
    closed on return. Raises :class:`Unsupported` for a file outside the subset read here."""
    path = os.path.abspath(os.path.expanduser(path))  # as xarray names the source
    with h5py.File(path, "r") as f:
        ds = StoreBackendEntrypoint().open_dataset(_Store(f))
        # as open_dataset: an index for every dimension coordinate, and the file as the source
        ds = ds.assign_coords(xr.Coordinates({k: v.variable for k, v in ds.coords.items() if v.dims == (k,) and k not in ds.xindexes}))
        ds.encoding["source"] = path
        return ds.load()


# -- merging cells ------------------------------------------------------------------------------
def merge_cells(parts: list[xr.Dataset]) -> xr.Dataset | None:
    """``xarray.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")`` for
    the cells of a grid (each part one cell, its grid coordinates as dimensions of size 1, on
    every data variable), built without xarray's per-part reindexing; None where ``parts`` are
    not of that form (then the caller merges with xarray, which also names any conflict).

    Why: xarray reindexes every part to the whole grid and folds them together with ``fillna``,
    so merging n cells costs n whole grids per variable. The coordinates (small) are still
    merged by xarray; each data variable is one array of the promoted dtype filled once, each
    cell written at its own position, which gives the same values since no two cells share one.
    """
    from xarray.core.dtypes import maybe_promote  # the fill xarray's reindexing uses

    if len(parts) < 2:
        return None
    index_names = list(parts[0].xindexes)
    first = [v for k, v in parts[0].variables.items() if k not in parts[0].coords]
    axes = [d for d in index_names if parts[0].sizes[d] == 1 and all(d in v.dims for v in first)]
    keys = set()
    for p in parts:
        if list(p.xindexes) != index_names or any(not p.indexes[d].is_unique for d in index_names):
            return None
        keys.add(tuple(p.indexes[a][0] for a in axes) if all(p.sizes[a] == 1 for a in axes) else None)
    if None in keys or len(keys) != len(parts) or not axes:
        return None  # two cells at one position would be compared: xarray does that
    try:
        skeleton = xr.merge([p.coords.to_dataset() for p in parts], join="outer", compat="no_conflicts", combine_attrs="drop")
    except ValueError:  # conflicting coordinates: xarray's merge of the whole cells names them
        return None
    joined = {d: skeleton.indexes[d] for d in index_names}
    plain: dict[str, int] = {}  # sizes of dimensions without an index: equal in every part, or xarray refuses
    found: dict[Any, list[tuple[dict[str, Any], xr.Variable]]] = {}
    for p in parts:
        where = {}  # where the part's labels lie on each joined index: a slice where they run on
        for d, index in p.indexes.items():
            pos = joined[d].get_indexer(index)
            if (pos < 0).any():
                return None
            run = len(pos) and np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos)))
            where[d] = slice(int(pos[0]), int(pos[0]) + len(pos)) if run else pos
        for d in p.dims:
            if d not in joined:
                if plain.setdefault(d, p.sizes[d]) != p.sizes[d]:
                    return None
                where[d] = slice(None)
        coords = set(p.coords)
        for name, var in p.variables.items():
            if name not in coords:
                found.setdefault(name, []).append((where, var))
    data = {}
    for name, elements in found.items():
        dims, kinds = elements[0][1].dims, {v.dtype.kind for _, v in elements}
        if not (kinds <= set("fiu") or kinds == {"U"}) or not set(axes) <= set(dims) or any(v.dims != dims for _, v in elements):
            return None
        # each part reindexed takes the dtype that holds its fill, and fillna the common one
        # (cells compacted to float32 beside float64 ones merge in float64)
        dtype = np.result_type(*(maybe_promote(v.dtype)[0] for _, v in elements))
        fill = maybe_promote(dtype)[1]
        out = np.full(tuple(len(joined[d]) if d in joined else plain[d] for d in dims), fill, dtype=dtype)
        for i, (where, var) in enumerate(elements):
            values = var.values
            if values.dtype.kind == "f" and i < len(elements) - 1 and np.isnan(values).any():
                # xarray's fillna chain leaves a NaN only where no later part has a value:
                # there the later parts' fill, whatever bits the NaN had
                values = np.where(np.isnan(values), fill, values)
            at = tuple(where[d] for d in dims)
            if all(isinstance(w, slice) for w in at):
                out[at] = values
            else:
                out[np.ix_(*(np.arange(out.shape[k])[w] for k, w in enumerate(at)))] = values
        # one part: xarray keeps that part's (reindexed) variable and its encoding; more: fillna's new one
        data[name] = xr.Variable(dims, out, {}, dict(elements[0][1].encoding) if len(elements) == 1 else {})
    merged = skeleton.assign(data)
    # xarray's order: the indexes (as aligned), then every other variable where it first appears
    rest = [k for p in parts for k in p.variables if k not in joined]
    return merged[[k for k in skeleton.variables if k in joined] + list(dict.fromkeys(rest))]
