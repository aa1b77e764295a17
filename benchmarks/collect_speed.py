"""Loading a grid's results: ``fmstudy.store.collect`` the old way (``fast=False``: xarray's
h5netcdf reader per cell, ``xarray.merge`` of the cells) against the new way (the default:
``fmstudy.ncread``'s reader and merge), in one process, on the same cells.

The cells of the chosen sub-grids (default ``compare`` and ``stability``) are first copied with
every record into a temporary results folder, so that a grid run writing into the results
meanwhile changes neither side. Shared machines are noisy, so the two ways alternate (old, new,
old, new, ...: A B A B) and the ratio is taken per round, over all the chosen sub-grids:

    ratio_r = T_old(r) / T_new(r),   printed as median_r ratio_r (min_r - max_r)

with wall seconds T (and the process's CPU seconds beside them, less sensitive to other load).
Every round checks that both ways return identical Datasets (``xarray.testing.assert_identical``,
plus every variable's dtype and order). Nothing is timed in the tests; this script is the measure.

    python benchmarks/collect_speed.py [--results results/paper] [--grids compare stability] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import xarray as xr

from fmstudy.store import collect

ROOT = Path(__file__).resolve().parents[1]


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def snapshot(results: Path, grids: list[str], into: Path) -> int:
    """Copy every record of ``results`` and the netCDF files of the cells of ``grids`` into
    ``into``; the number of cells copied with their file."""
    (into / "cells").mkdir(parents=True)
    n = 0
    for rec_path in sorted((results / "cells").glob("[0-9a-f]*.json")):
        shutil.copy2(rec_path, into / "cells" / rec_path.name)
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            continue
        nc = rec_path.with_suffix(".nc")
        if isinstance(rec, dict) and set(rec.get("grids") or []) & set(grids) and nc.exists():
            shutil.copy2(nc, into / "cells" / nc.name)
            n += 1
    return n


def load(folder: Path, grids: list[str], fast: bool) -> tuple[float, float, list[xr.Dataset]]:
    """Wall and CPU seconds to collect every grid of ``grids`` one way, and what it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = [collect(folder, g, fast=fast) for g in grids]
    return time.perf_counter() - wall, time.process_time() - cpu, out


def same(old: xr.Dataset, new: xr.Dataset) -> None:
    xr.testing.assert_identical(old, new)
    assert list(old.variables) == list(new.variables)
    assert all(old[k].dtype == new[k].dtype for k in old.variables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "paper")
    parser.add_argument("--grids", nargs="+", default=["compare", "stability"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collect_speed.") as tmp:
        folder = Path(tmp)
        cells = snapshot(args.results, args.grids, folder)
        print(f"{cells} cells of {', '.join(args.grids)} from {args.results}; {args.repeats} rounds of old, new")
        rounds = []
        for r in range(args.repeats):
            old = load(folder, args.grids, fast=False)
            new = load(folder, args.grids, fast=True)
            for a, b in zip(old[2], new[2]):
                same(a, b)
            rounds.append((old[0], new[0], old[1], new[1]))
            print(f"round {r + 1}: old {old[0]:.1f} s (CPU {old[1]:.1f} s), new {new[0]:.2f} s (CPU {new[1]:.2f} s), "
                  f"ratio {old[0] / new[0]:.1f} (CPU {old[1] / new[1]:.1f}); identical")
    ratios, cpu = [o / n for o, n, _, _ in rounds], [o / n for _, _, o, n in rounds]
    per_cell = [n / cells for _, n, _, _ in rounds], [o / cells for o, _, _, _ in rounds]
    print(f"wall ratio old/new: median {_median(ratios):.1f} (range {min(ratios):.1f} - {max(ratios):.1f}); "
          f"CPU ratio: median {_median(cpu):.1f} (range {min(cpu):.1f} - {max(cpu):.1f})")
    print(f"per cell: old {_median(per_cell[1]):.3f} s, new {_median(per_cell[0]):.3f} s (medians of wall time)")


if __name__ == "__main__":
    main()
