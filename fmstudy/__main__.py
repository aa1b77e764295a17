"""Command line: ``python -m fmstudy grid FILE`` runs a grid, ``python -m fmstudy collect FOLDER``
merges its results (also installed as the ``fmstudy`` console script)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmstudy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="run every unfinished cell of a grid file")
    g.add_argument("file", help="grid file (YAML), e.g. papermill_params/quick.yaml")
    g.add_argument("--executor", choices=("local", "slurm"), default="local")
    g.add_argument("--jobs", type=int, default=1, help="local worker processes (one GPU each when several are visible)")
    g.add_argument("--force", action="store_true", help="rerun finished cells too")
    g.add_argument("--results", help="results folder (default: the grid file's 'results')")
    g.add_argument("--pages", help="folder of executed notebooks (default: the grid file's 'pages')")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit parameter over the grid file's 'slurm' (repeatable), e.g. timeout_min=120 slurm_partition=gpu")
    g.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit backend for --executor slurm (default: Slurm; local/debug run on this machine)")
    g.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser("collect", help="merge a results folder's cells into one netCDF file")
    c.add_argument("folder")
    c.add_argument("-o", "--output", help="output file (default: FOLDER/collected.nc)")
    args = parser.parse_args(argv)

    import yaml

    from .grid import GridError, collect, is_finished, load_grid, run_grid
    from .results import write_netcdf

    try:
        if args.command == "grid":
            slurm = {}
            for item in args.slurm:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise GridError(f"--slurm {item!r} is not allowed: write KEY=VALUE, e.g. timeout_min=120")
                slurm[key] = yaml.safe_load(value)  # 60 -> int, 'gpu' -> str, true -> bool
            grid = load_grid(args.file, args.results, args.pages)
            if args.dry_run:
                for cell in grid.cells:
                    state = "finished" if is_finished(grid.results, cell.id) else "to run"
                    print(cell.id, cell.grid, dict(cell.labels), state)
                print(f"{args.file}: {len(grid.cells)} cells, results in {grid.results}, pages in {grid.pages}")
                return 0
            summary = run_grid(grid, args.executor, args.jobs, args.force, slurm, args.cluster, progress=not args.quiet)
            print(summary.text(grid))
            return 1 if summary.failed else 0
        out = Path(args.output) if args.output else Path(args.folder) / "collected.nc"
        ds = collect(args.folder)
        write_netcdf(ds, out)
        print(f"{args.folder}: {ds.attrs['cells']} cells over axes {ds.attrs['axes']} -> {out}")
        return 0
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
