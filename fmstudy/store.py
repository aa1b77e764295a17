"""The store of a grid's results: cell files, records, which cells are finished, and ``collect``.

A cell's files in the results folder are ``cells/<id>.nc`` (written by the notebook, atomically),
``cells/<id>.json`` (its record: status, parameters, labels, timing, error) and, while it runs,
``cells/<id>.lock``. A cell is finished only when its record says so, its page exists and its
netCDF file opens with its id: a partly written or foreign file is never trusted and the cell
runs again.

This module sits below the runner and below :mod:`fmstudy.report`: reading results needs
neither papermill nor the grid file's validation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .results import atomic_write, read_netcdf

__all__ = ["GridError", "collect", "is_finished", "label", "record_path", "write_json"]


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


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str)))


def _finished_result(results: Path, rec: Mapping[str, Any]) -> Any:
    """The cell's Dataset if it is finished, else None. Finished = its record says ok, its page
    exists, and its netCDF file opens and carries its id."""
    try:
        if rec.get("status") != "ok" or not Path(rec["page"]).is_file():
            return None
        ds = read_netcdf(results / "cells" / f"{rec['id']}.nc")
        return ds if ds.attrs.get("cell_id") == rec["id"] else None
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: never trusted, the cell runs again
        return None


def is_finished(results: Path, cid: str) -> bool:
    """Whether cell ``cid`` has finished (see :func:`_finished_result`); a partial or foreign file has not."""
    try:
        rec = json.loads(record_path(results, cid).read_text())
    except (OSError, ValueError):
        return False
    return _finished_result(results, rec) is not None


# -- collecting ---------------------------------------------------------------------------------
def collect(folder: str | os.PathLike, grid: str | None = None) -> Any:
    """Merge the finished cells in ``folder`` (those of sub-grid ``grid``, or all) into one
    ``xarray.Dataset`` whose dimensions are the sub-grids' axes, plus any other parameter that
    differs between the collected cells (so no two cells ever share coordinates). Numeric axes
    keep numeric coordinates; samplers are labelled ``name(k=v, ...)``; a combination that was
    not run is NaN. Per-cell facts (id, wall time, device, whether the sampler's estimate is
    unbiased) become variables over the axes; the parameters common to all cells are the
    attribute ``fixed`` (JSON)."""
    import numpy as np
    import xarray as xr

    folder = Path(folder)
    records, datasets = [], []
    for path in sorted((folder / "cells").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if grid is not None and grid not in rec.get("grids", ()):
            continue
        ds = _finished_result(folder, rec)
        if ds is not None:
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
        ds.attrs = {}
        parts.append(ds.expand_dims({a: [float(lab[a]) if numeric[a] else str(lab[a])] for a in axes}))
    merged = xr.merge(parts, join="outer", combine_attrs="drop", compat="no_conflicts")
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
