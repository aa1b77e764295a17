"""Shipping a profile's results with the repository (issue 15, item 7).

A fresh clone builds the book from committed results without recomputing. What is shipped of a
results folder (``SHIPPED``, mirrored by ``.gitignore``): the cells' netCDF files and records,
``runs.jsonl``, ``throughput.json`` and ``PROVENANCE.json``; not the executed pages (about
0.5 MB each, every cell of a pack a copy of the pack's), nor logs, locks or the floors cache.

- :func:`compact` rewrites finished cells' netCDF files in the compact encoding of
  :func:`fmstudy.results.write_netcdf`, atomically, each verified on reading: bit-equal, or
  (``float32``) equal to the cell rounded to float32 (:func:`to_float32`), which says so in the file;
- :func:`mark_shipped` writes ``"page_shipped": false`` into finished cells' records, so
  :func:`fmstudy.store.is_finished` counts them finished without their pages;
- :func:`unfinished` lists the cells of a grid file that a fresh clone would recompute (none,
  for results ready to ship);
- :func:`fmstudy.provenance.write_provenance` records what produced the results, and
  :func:`fmstudy.provenance.write_cells_page` writes the book's table of the cells' records.

``python -m fmstudy.ship prepare RESULTS --command CMD --code DIR --grid FILE`` does the first
four and prints the sizes; ``python -m fmstudy.ship page RESULTS PAGES`` the table (``make book``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .cellrun import claim
from .provenance import CELLS_PAGE, write_cells_page, write_provenance
from .results import read_netcdf, write_netcdf
from .store import cell_result, is_finished, ok_records, record_path, write_json

__all__ = ["SHIPPED", "CELLS_PAGE", "FLOAT32_NOTE", "PRECISION_ATTR", "compact", "to_float32", "mark_shipped", "same_bits", "shipped_files", "shipped_size", "unfinished",
           "write_cells_page", "write_provenance"]

# glob patterns, relative to a results folder, of what is committed (.gitignore says the same);
# cell ids are 16 hex digits, so hidden temporaries (".<id>...") never match
SHIPPED = ("cells/[0-9a-f]*.nc", "cells/[0-9a-f]*.json", "runs.jsonl", "throughput.json", "PROVENANCE.json")


def same_bits(a: Any, b: Any) -> str:
    """"" when Datasets ``a`` and ``b`` read the same: variables in the same order with the same
    dims, dtype, attributes and bytes (NaNs included, bit for bit), the same attributes; else
    what differs (one line)."""
    if list(a.variables) != list(b.variables):
        return f"variables differ: {list(a.variables)} against {list(b.variables)}"
    for name in a.variables:
        x, y = a[name].variable, b[name].variable
        if x.dims != y.dims or x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: dims, dtype or shape differ ({x.dims} {x.dtype} {x.shape} against {y.dims} {y.dtype} {y.shape})"
        if x.dtype.kind in "fiucb":
            if np.ascontiguousarray(x.values).tobytes() != np.ascontiguousarray(y.values).tobytes():
                return f"{name}: values differ"
        elif not np.array_equal(x.values, y.values):
            return f"{name}: values differ"
        if _attrs_key(x.attrs) != _attrs_key(y.attrs):
            return f"{name}: attributes differ"
    if _attrs_key(a.attrs) != _attrs_key(b.attrs):
        return "global attributes differ"
    return ""


def _attrs_key(attrs: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """Attributes as (name, type, bytes): order, type and value (NaN included) compared exactly."""
    return [(k, type(v).__name__, np.asarray(v).tobytes() if not isinstance(v, str) else v.encode()) for k, v in attrs.items()]


# the global attribute a cell's file carries once its measurements were rounded for shipping
PRECISION_ATTR = "stored_precision"
FLOAT32_NOTE = ("float32: the float64 measurements rounded to float32 when shipped (fmstudy.ship.compact), "
                "except variables holding finite values beyond float32's range (kept in float64)")


def to_float32(ds: Any) -> Any:
    """``ds`` with every float64 data variable rounded to float32 (relative error at most
    2**-24, far below any effect the book reads; coordinates and integers kept) and the global
    attribute ``PRECISION_ATTR`` saying so. A variable with a finite value beyond float32's
    range (e.g. the sample distance of a diverged run, 1e54) stays float64, unrounded: a
    diverging run is data, and infinity would say less than the number."""
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if var.dtype != np.float64:
            continue
        x = var.values
        with np.errstate(over="ignore"):
            y = x.astype(np.float32)
        if not np.any(np.isfinite(x) & ~np.isfinite(y)):
            out[name] = var.copy(data=y)
    out.attrs[PRECISION_ATTR] = FLOAT32_NOTE
    return out


def compact(results: str | os.PathLike, float32: bool = False) -> dict[str, int]:
    """Rewrite every finished cell's netCDF file (record ok, file readable with its id) in the
    compact encoding (:func:`fmstudy.results.compact_encoding`): written beside it, read back,
    compared bit for bit (:func:`same_bits`) with what it must hold, then renamed over it; a
    cell another process is running (it holds the cell's lock) is left alone, and so is a file the rewrite would not
    shrink. With ``float32`` what it must hold is :func:`to_float32` of the cell (halves what
    shipped results weigh: their float64 noise does not compress). Raises ``ValueError`` naming
    the cell if a rewrite reads differently (the original is kept). Returns counts and bytes
    before and after."""
    results = Path(results)
    out = {"cells": 0, "rewritten": 0, "skipped": 0, "bytes_before": 0, "bytes_after": 0}
    for rec in ok_records(results):
        cid = rec["id"]
        path = results / "cells" / f"{cid}.nc"
        # the grid runner's claim: a cell another process is running is left alone; a lock file
        # a killed run left behind (nobody holds it) does not stop the rewrite
        with claim(results, cid) as mine:
            ds, why = cell_result(results, {**rec, "page_shipped": False}) if mine else (None, "running")
            if ds is None:
                out["skipped"] += 1
                continue
            out["cells"] += 1
            before = path.stat().st_size
            tmp = results / "cells" / f".{cid}.compact.nc"
            try:
                if float32:
                    ds = to_float32(ds)
                write_netcdf(ds, tmp)
                diff = same_bits(ds, read_netcdf(tmp))
                if diff:
                    raise ValueError(f"cell {cid}: its compact rewrite reads differently ({diff}): the original is kept")
                after = tmp.stat().st_size
                if after < before:
                    os.replace(tmp, path)
                    out["rewritten"] += 1
                else:
                    after = before
            finally:
                tmp.unlink(missing_ok=True)
            out["bytes_before"] += before
            out["bytes_after"] += after
    return out


def mark_shipped(results: str | os.PathLike) -> int:
    """Write ``"page_shipped": false`` into the record of every finished cell (its netCDF file
    readable with its id), atomically; returns how many records say so now."""
    results = Path(results)
    n = 0
    for rec in ok_records(results):
        if cell_result(results, {**rec, "page_shipped": False})[0] is None:
            continue
        if rec.get("page_shipped") is not False:
            write_json(record_path(results, rec["id"]), {**rec, "page_shipped": False})
        n += 1
    return n


def regroup(grid_file: str | os.PathLike, results: str | os.PathLike) -> int:
    """Give every finished cell's record the sub-grids, axes and labels of ``grid_file`` as it is
    now (atomically): a cell that a sub-grid added later also holds (the budget sweep's 1,000-step
    cells are the comparison's) ran under an older file and its record names only the sub-grids
    of that file, so ``collect`` would leave it out of the new ones. Returns the records changed."""
    from .gridfile import load_grid

    results = Path(results)
    grid = load_grid(grid_file, results=results)
    n = 0
    for cell in grid.cells:
        path = record_path(results, cell.id)
        if not path.is_file():
            continue
        rec = json.loads(path.read_text())
        new = {"grids": list(cell.grids), "grid_axes": {g: grid.grid_axes[g] for g in cell.grids}, "labels": dict(cell.labels)}
        if any(rec.get(k) != v for k, v in new.items()):
            write_json(path, {**rec, **new})
            n += 1
    return n


def unfinished(grid_file: str | os.PathLike, results: str | os.PathLike) -> list[str]:
    """The ids of the cells of ``grid_file`` that are not finished in ``results`` without their
    pages: what ``fmstudy grid`` would recompute on a fresh clone (none when the results
    shipped match the grid file committed with them)."""
    from .gridfile import load_grid

    grid = load_grid(grid_file, results=results)
    return [c.id for c in grid.cells if not is_finished(Path(results), c.id, Path(os.devnull) / "no-pages")]


def shipped_files(results: str | os.PathLike) -> list[Path]:
    """The files of ``results`` that are shipped (``SHIPPED``), sorted."""
    return sorted({p for pattern in SHIPPED for p in Path(results).glob(pattern) if p.is_file()})


def shipped_size(results: str | os.PathLike, git: bool = False) -> dict[str, int]:
    """Files and bytes shipped; with ``git``, also the bytes of a git pack holding them (what a
    clone downloads: git compresses each file and stores similar files as deltas)."""
    files = shipped_files(results)
    out = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    if git:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"}

            def git_run(*args: str) -> None:
                subprocess.run(["git", *args], cwd=tmp, env=env, check=True, capture_output=True)

            git_run("init", "-q")
            for p in files:
                dest = Path(tmp) / p.relative_to(results)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(p.read_bytes())
            git_run("add", ".")
            git_run("commit", "-q", "-m", "size")
            git_run("gc", "-q")
            out["git_pack_bytes"] = sum(p.stat().st_size for p in (Path(tmp) / ".git" / "objects" / "pack").glob("*.pack"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fmstudy.ship", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="(compact,) regroup and mark records, write PROVENANCE.json, print sizes")
    p.add_argument("results")
    p.add_argument("--command", required=True, help="the command that produced the results")
    p.add_argument("--code", action="append", help="the checkout that produced them (repeatable; default this one)")
    p.add_argument("--note", default="")
    p.add_argument("--grid", help="the grid file shipped with them: regroup the records by it, say which of its cells a fresh clone would recompute")
    p.add_argument("--compact", action="store_true", help="rewrite the netCDF files compactly first (slow: minutes per hundred cells)")
    p.add_argument("--float32", action="store_true", help="with --compact: round the float64 measurements to float32 (halves the size)")
    p = sub.add_parser("page", help="write PAGES/cells.md when cells have no page")
    p.add_argument("results")
    p.add_argument("pages")
    p = sub.add_parser("size", help="files and bytes shipped (--git: and a git pack's size)")
    p.add_argument("results")
    p.add_argument("--git", action="store_true")
    args = ap.parse_args(argv)
    if not (Path(args.results) / "cells").is_dir():
        print(f"python -m fmstudy.ship: results={args.results!r} is not allowed: it must be a results folder (with cells/)", file=sys.stderr)
        return 2
    if args.what == "prepare":
        if args.compact:
            print("compact:", compact(args.results, float32=args.float32))
        if args.grid:
            print("records regrouped by the grid file:", regroup(args.grid, args.results))
        print("records marked as shipped without pages:", mark_shipped(args.results))
        prov = write_provenance(args.results, args.command, args.code, args.note)
        print("provenance:", [c["commit"][:12] for c in prov["produced_by"]], prov["devices"], prov["date"])
        print("shipped:", shipped_size(args.results, git=True))
        if args.grid:
            todo = unfinished(args.grid, args.results)
            print(f"{args.grid}: {len(todo)} cells a fresh clone would recompute" + (f": {', '.join(todo[:10])}" if todo else ""))
            return 1 if todo else 0
    elif args.what == "page":
        page = write_cells_page(args.results, args.pages)
        print(f"cells page: {page}" if page else "every finished cell has its page: no cells page")
    else:
        print(shipped_size(args.results, git=args.git))
    return 0


if __name__ == "__main__":
    sys.exit(main())
