"""The store of a grid's results: cell files, records, which cells are finished, and ``collect``.

A cell's files in the results folder are ``cells/<id>.nc`` (written by the notebook, atomically),
``cells/<id>.json`` (its record: status, parameters, labels, timing, error) and, while it runs,
``cells/<id>.lock``. A cell is finished only when its record says so, its page reads as a
notebook and its netCDF file opens with its id: a partly written or foreign file is never
trusted and the cell runs again. Records name the page relative to the results folder, so a
checkout that is moved or renamed still finds its finished cells. Results shipped with the
repository without their pages (:mod:`fmstudy.ship`) say so in their records
(``"page_shipped": false``): such a cell is finished without its page.

This module sits below the runner and below :mod:`fmstudy.report`: reading results needs
neither papermill nor the grid file's validation.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .results import atomic_write, read_netcdf

__all__ = ["GridError", "cell_result", "collect", "is_finished", "label", "ok_records", "page_path", "record_path", "write_json"]


class GridError(ValueError):
    """A grid file that cannot run; its message is one line naming the file and the key."""


def label(value: Any) -> Any:
    """A coordinate label: numbers and strings stay; a mapping (a sampler) reads name(k=v, ...)."""
    if isinstance(value, dict):
        rest = ", ".join(f"{k}={label(v)}" for k, v in sorted(value.items()) if k != "name")
        if "name" not in value:
            return rest
        return f"{value['name']}({rest})" if rest else str(value["name"])
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(label(v)) for v in value) + "]"
    return value


def record_path(results: Path, cid: str) -> Path:
    return results / "cells" / f"{cid}.json"


def ok_records(results: Path) -> list[dict[str, Any]]:
    """The records of the cells whose record says ok (in id order)."""
    out = []
    for path in sorted((Path(results) / "cells").glob("[0-9a-f]*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("id") == path.stem:
            out.append(rec)
    return out


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str)))


def page_path(results: Path, rec: Mapping[str, Any], pages: Path | None = None) -> Path:
    """The cell's page: in ``pages`` when the caller knows the folder (the runner, from the grid
    file), else where its record says, relative to ``results`` (so a moved or renamed checkout
    still finds it; records of older versions hold an absolute path)."""
    if pages is not None:
        return Path(pages) / f"{rec['id']}.ipynb"
    page = Path(str(rec["page"]))
    return page if page.is_absolute() else Path(results) / page


def _readable_notebook(path: Path) -> bool:
    """Whether ``path`` reads as a Jupyter notebook (nbformat when installed, else its JSON shape)."""
    try:
        import nbformat
    except ImportError:
        nbformat = None
    try:
        if nbformat is not None:
            return isinstance(nbformat.read(path, as_version=4).cells, list)
        nb = json.loads(Path(path).read_bytes())
        return isinstance(nb, dict) and isinstance(nb.get("cells"), list)
    except Exception:  # noqa: BLE001 - missing, truncated, not JSON, not a notebook: not a page
        return False


def cell_result(results: Path, rec: Mapping[str, Any], pages: Path | None = None, *, fast: bool = True) -> tuple[Any, str]:
    """``(Dataset, "")`` if the cell is finished, else ``(None, why)``; ``why`` is empty when the
    record itself does not claim the cell is finished (running, failed). Finished = its record
    says ok, its page reads as a notebook (unless the record says its results were shipped
    without it: ``"page_shipped": false``), and its netCDF file opens and carries its id.
    ``fast``: as :func:`fmstudy.results.read_netcdf`."""
    if rec.get("status") != "ok":
        return None, ""
    if rec.get("page_shipped") is not False:
        try:
            page = page_path(results, rec, pages)
        except (KeyError, TypeError, ValueError):
            return None, "its record names no page"
        if not _readable_notebook(page):
            return None, f"its page {page} is missing or not a readable notebook"
    path = Path(results) / "cells" / f"{rec['id']}.nc"
    try:
        ds = read_netcdf(path, fast=fast)
    except Exception as err:  # noqa: BLE001 - missing, truncated or foreign: never trusted, the cell runs again
        return None, f"its result {path} cannot be read ({type(err).__name__})"
    if ds.attrs.get("cell_id") != rec["id"]:
        return None, f"its result {path} belongs to another cell"
    return ds, ""


def is_finished(results: Path, cid: str, pages: Path | None = None) -> bool:
    """Whether cell ``cid`` has finished (see :func:`cell_result`); a partial or foreign file has not.
    ``pages``: the folder its page must be in (default: where its record says)."""
    try:
        rec = json.loads(record_path(results, cid).read_text())
        return isinstance(rec, dict) and rec.get("id") == cid and cell_result(results, rec, pages)[0] is not None
    except (OSError, ValueError):
        return False


_RECORD_KEYS = {"id": str, "params": dict, "grids": list, "grid_axes": dict, "grid_file": str}


def _check_record(path: Path, rec: Any) -> None:
    """Refuse (one line) a record that claims a finished cell but lacks what collect reads."""
    for key, kind in _RECORD_KEYS.items():
        if not isinstance(rec.get(key), kind):
            raise GridError(f"{path}: not a cell record of fmstudy ({key!r} missing or not a {kind.__name__}): remove it and rerun its grid")
    if rec["id"] != path.stem:
        raise GridError(f"{path}: its record is of cell {str(rec['id'])[:40]!r}, not {path.stem!r}: remove it and rerun its grid")
    for g in rec["grids"]:
        if not isinstance(rec["grid_axes"].get(g), list):
            raise GridError(f"{path}: grid_axes has no list of axes for sub-grid {str(g)[:40]!r}: remove it and rerun its grid")


# -- collecting ---------------------------------------------------------------------------------
# a merged grid may hold at most this many combinations per cell run (a full factorial
# sub-grid holds 1; zipped axes and a few extra parameters, a few)
MAX_HOLES = 64


def collect(folder: str | os.PathLike, grid: str | None = None, *, fast: bool = True) -> Any:
    """Merge the finished cells in ``folder`` (those of sub-grid ``grid``, or all) into one
    ``xarray.Dataset`` whose dimensions are the sub-grids' axes, plus any other parameter that
    differs between the collected cells (so no two cells ever share coordinates). Numeric axes
    keep numeric coordinates; samplers are labelled ``name(k=v, ...)``; a combination that was
    not run is NaN. Per-cell facts (id, wall time, device, whether the sampler's estimate is
    unbiased) become variables over the axes; the parameters common to all cells are the
    attribute ``fixed`` (JSON). ``fast`` False: xarray's own reader and merge, the reference the
    default (:mod:`fmstudy.ncread`, same Dataset, several times faster) is tested against."""
    import numpy as np
    import xarray as xr

    from .ncread import merge_cells

    folder = Path(folder)
    records, datasets = [], []
    for path in sorted((folder / "cells").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"collect: {path}: skipped, not a readable cell record ({type(err).__name__})", stacklevel=2)
            continue
        if not isinstance(rec, dict):
            warnings.warn(f"collect: {path}: skipped, not a cell record", stacklevel=2)
            continue
        if rec.get("status") != "ok":
            continue
        _check_record(path, rec)
        if grid is not None and grid not in rec["grids"]:
            continue
        ds, why = cell_result(folder, rec, fast=fast)
        if ds is None:  # a corrupt cell is named, never silently dropped
            warnings.warn(f"collect: cell {rec['id']} skipped: {why}; rerun its grid to redo it", stacklevel=2)
            continue
        records.append(rec)
        datasets.append(ds)
    if not records:
        what = f"of sub-grid {grid!r} " if grid else ""
        raise GridError(f"{folder}: no finished cells {what}to collect (run `python -m fmstudy grid FILE` first)")
    axes: list[str] = []
    for rec in records:
        for g in [grid] if grid else rec["grids"]:
            axes += [a for a in rec["grid_axes"][g] if a not in axes]
    labels = [{k: label(v) for k, v in rec["params"].items()} for rec in records]
    axes += [k for k in labels[0] if k not in axes and len({json.dumps(lab.get(k), sort_keys=True) for lab in labels}) > 1]
    numeric = {a: all(isinstance(lab.get(a), (int, float)) and not isinstance(lab.get(a), bool) for lab in labels) for a in axes}
    # what is not an axis is the same in every collected cell (else it would be one): record it
    fixed = {k: v for k, v in records[0]["params"].items() if k not in axes}
    # cells of unrelated sub-grids merged into one array are mostly holes (the paper profile's
    # 261 cells would need a 172 GiB grid): refuse before allocating it
    size = math.prod(len({json.dumps(lab.get(a), sort_keys=True) for lab in labels}) for a in axes)
    if size > MAX_HOLES * len(records):
        grids = sorted({g for rec in records for g in rec["grids"]})
        raise GridError(f"{folder}: its {len(records)} cells span sub-grids {', '.join(grids)}; merged they would make a grid of "
                        f"{size:,} combinations, {len(records)} of them run: collect one sub-grid at a time (collect --grid NAME)")

    parts = []
    for rec, lab, ds in zip(records, labels, datasets):
        extra = {
            "cell_id": rec["id"],
            "wall_seconds": float(ds.attrs.get("wall_seconds", np.nan)),
            "cell_seconds": float(rec.get("seconds", np.nan)),
            "device": str(ds.attrs.get("device", "")),
            "unbiased": float(ds.attrs.get("unbiased", np.nan)),
        }
        ds = ds.assign({k: xr.Variable((), v) for k, v in extra.items()})
        # index-less dimensions whose size differs between cells (a sample's coordinates in d = 8
        # and d = 32) get an index, so that the outer join pads the smaller ones with NaN
        ds = ds.assign_coords({d: np.arange(ds.sizes[d]) for d in ("coord",) if d in ds.dims and d not in ds.coords})
        ds.attrs = {}
        parts.append(ds.expand_dims({a: [float(lab[a]) if numeric[a] else str(lab[a])] for a in axes}))
    try:
        merged = merge_cells(parts) if fast else None
        if merged is None:
            merged = xr.merge(parts, join="outer", combine_attrs="drop", compat="no_conflicts")
    except (ValueError, TypeError) as err:  # xarray's MergeError is a ValueError
        raise GridError(f"{folder}: its cells cannot be merged ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    for name in ("cell_id", "device"):  # a combination not run is "" (NaN cannot live in a string variable)
        merged[name] = merged[name].fillna("").astype(str)
    merged.attrs = {
        "axes": json.dumps(axes),
        "fixed": json.dumps(fixed, sort_keys=True),
        "grid": grid or "",
        "cells": len(records),
        "grid_files": json.dumps(sorted({r["grid_file"] for r in records})),
        "fmstudy_version": __version__,
    }
    return merged
