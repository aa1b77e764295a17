"""Trimming shipped cells to what the book reads of them (issue 15, item 7: at most 50 MB).

A cell's netCDF file holds every measurement of its members: per-bin gradient diagnostics at
each checkpoint, the variance account, the generated samples, the losses of every step. The
book reads all of that for the evaluation sub-grids, but of a learning-rate tuning or a
stability sweep only the held-out objective, the integrated excess, the unweighted loss (its
spikes), divergence and the sample metrics. HDF5 spends about 0.9 KB on every variable of
every file, data aside, so a tuning cell's unread variables weigh more than what it is read
for. :func:`trim` rewrites such cells with

    kept = coordinates  +  every variable without a ``member`` dimension  +  ``keep``,

the kept variables bit for bit (verified on reading), the global attribute ``TRIM_ATTR`` and
the record's ``"trimmed"`` naming what was left out. Only cells all of whose sub-grids are
named are trimmed: a cell that an untrimmed sub-grid also reads stays whole. Recomputing the
cells (``python -m fmstudy grid FILE --force``) gives the whole files again.

``python -m fmstudy.trim RESULTS --grids NAME,... --keep VAR,...`` trims, prints what it saved
and adds it to the results' PROVENANCE.json (:func:`record_trim`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cellrun import claim
from .results import read_netcdf, write_netcdf
from .ship import same_bits
from .store import cell_result, ok_records, record_path, write_json

__all__ = ["TRIM_ATTR", "describe", "record_trim", "trim", "trimmed_dataset"]

# the global attribute of a trimmed cell's file: the variables left out, comma-separated
TRIM_ATTR = "trimmed_variables"


def trimmed_dataset(ds: Any, keep: Sequence[str]) -> tuple[Any, list[str]]:
    """``ds`` without its per-member data variables that are not in ``keep`` (coordinates and
    variables without a ``member`` dimension always stay), with ``TRIM_ATTR`` naming those left
    out (added to any a previous trim named); and the names left out now."""
    drop = [str(n) for n, v in ds.data_vars.items() if "member" in v.dims and str(n) not in set(keep)]
    out = ds.drop_vars(drop)
    before = [n for n in str(ds.attrs.get(TRIM_ATTR, "")).split(",") if n]
    if drop:
        out.attrs[TRIM_ATTR] = ",".join(before + drop)
    return out, drop


def _check(results: Path, grids: Sequence[str], keep: Sequence[str], records: list[dict[str, Any]]) -> None:
    """One-line ValueErrors for names that match nothing, before any file is touched."""
    known = sorted({g for rec in records for g in rec.get("grids") or []})
    unknown = [g for g in grids if g not in known]
    if not grids or unknown:
        raise ValueError(f"grids={list(grids)!r} is not allowed: name sub-grids of {results} ({', '.join(known) or 'none finished'})")
    if not keep or any(not isinstance(k, str) or not k for k in keep):
        raise ValueError(f"keep={list(keep)!r} is not allowed: name the per-member variables the trimmed cells keep")


def trim(results: str | os.PathLike, grids: Sequence[str], keep: Sequence[str]) -> dict[str, int]:
    """Trim every finished cell whose sub-grids are all in ``grids`` to :func:`trimmed_dataset`
    (``keep``): written beside it, read back and compared bit for bit with what it must hold,
    renamed over it; then its record gets ``"trimmed"`` (the names left out). A cell another
    process is running is left alone. Raises ``ValueError`` for a sub-grid these results do not
    have or an empty ``keep`` (before any change), and naming the cell if a rewrite reads
    differently (the original is kept). Returns counts and bytes before and after."""
    results = Path(results)
    records = ok_records(results)
    _check(results, grids, keep, records)
    out = {"cells": 0, "trimmed": 0, "bytes_before": 0, "bytes_after": 0}
    for rec in records:
        if not rec.get("grids") or not set(rec["grids"]) <= set(grids):
            continue
        cid = rec["id"]
        path = results / "cells" / f"{cid}.nc"
        with claim(results, cid) as mine:
            ds = cell_result(results, {**rec, "page_shipped": False})[0] if mine else None
            if ds is None:
                continue
            out["cells"] += 1
            before = after = path.stat().st_size
            small, dropped = trimmed_dataset(ds, keep)
            if dropped:
                tmp = results / "cells" / f".{cid}.trim.nc"
                try:
                    write_netcdf(small, tmp)
                    diff = same_bits(small, read_netcdf(tmp))
                    if diff:
                        raise ValueError(f"cell {cid}: its trimmed rewrite reads differently ({diff}): the original is kept")
                    after = tmp.stat().st_size
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                write_json(record_path(results, cid), {**rec, "trimmed": small.attrs[TRIM_ATTR].split(",")})
                out["trimmed"] += 1
            out["bytes_before"] += before
            out["bytes_after"] += after
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fmstudy.trim", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results folder (with cells/)")
    ap.add_argument("--grids", required=True, help="sub-grids whose cells are trimmed, comma-separated")
    ap.add_argument("--keep", required=True, help="per-member variables those cells keep, comma-separated")
    args = ap.parse_args(argv)
    if not (Path(args.results) / "cells").is_dir():
        print(f"python -m fmstudy.trim: results={args.results!r} is not allowed: it must be a results folder (with cells/)", file=sys.stderr)
        return 2
    grids, keep = [g for g in args.grids.split(",") if g], [k for k in args.keep.split(",") if k]
    try:
        done = trim(args.results, grids, keep)
    except ValueError as err:
        print(f"python -m fmstudy.trim: {err}", file=sys.stderr)
        return 2
    print("trim:", done)
    record_trim(args.results, grids, keep, done)
    return 0


def record_trim(results: str | os.PathLike, grids: Sequence[str], keep: Sequence[str], done: dict[str, int]) -> None:
    """Add what a trim did to the results' PROVENANCE.json (if it has one), under ``"trims"``:
    the sub-grids, the variables kept, the cells and bytes, and when."""
    path = Path(results) / "PROVENANCE.json"
    if not path.is_file():
        return
    prov = json.loads(path.read_text())
    entry = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "grids": list(grids), "keep": list(keep), **done}
    write_json(path, {**prov, "trims": [*prov.get("trims", []), entry]})


def describe(prov: dict[str, Any]) -> str:
    """One sentence for a page on what the trims a PROVENANCE.json records left out; "" if none."""
    trims = [t for t in prov.get("trims", []) if t.get("trimmed")]
    if not trims:
        return ""
    grids = sorted({g for t in trims for g in t["grids"]})
    keep = sorted({k for t in trims for k in t["keep"]})
    saved = sum(t["bytes_before"] - t["bytes_after"] for t in trims) / 1e6
    return (f"For shipping, the {sum(t['trimmed'] for t in trims)} cells of the sub-grids {', '.join(grids)} were trimmed "
            f"(fmstudy.trim) to what the book reads of them: the per-member variables {', '.join(keep)}, with the coordinates "
            f"and the settings' own variables; their other measurements were left out ({saved:.1f} MB), and each such "
            "cell's record names them. Recomputing the cells (--force) gives them whole.")


if __name__ == "__main__":
    sys.exit(main())
