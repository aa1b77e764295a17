"""Command line: ``python -m fmstudy grid FILE`` runs a grid, ``python -m fmstudy collect FOLDER``
merges its results (also installed as the ``fmstudy`` console script).

Bad input (a grid file, a flag) exits with status 2 and one line on stderr, before anything runs
or is written; a grid with failed cells exits 1; Ctrl-C exits 130 without a traceback (rerun the
same command to resume)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

MAX_MESSAGE = 400  # characters of an error line


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (as every other refusal here)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, _line(f"error: {self.prog}: {message} (see {self.prog} --help)"))


def _line(text: str) -> str:
    text = " ".join(str(text).split())
    return (text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 4] + " ...") + "\n"


def _pairs(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` flags as a mapping, each value read as YAML (60 -> int, gpu -> str, true -> bool)."""
    import yaml

    from .store import GridError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise GridError(f"{flag} {item[:60]!r} is not allowed: write KEY=VALUE, e.g. {flag} timeout_min=120")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise GridError(f"{flag} {item[:60]!r} is not allowed: its value is not a YAML scalar (quote it)") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="fmstudy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("grid", help="run every unfinished cell of a grid file")
    g.add_argument("file", help="grid file (YAML), e.g. papermill_params/quick.yaml")
    g.add_argument("--executor", choices=("local", "slurm"), default="local")
    g.add_argument("--jobs", type=int, default=1, help="local worker processes (one GPU each when several are visible)")
    g.add_argument("--pack-size", type=int, default=None, metavar="N",
                   help="run at most N cells that differ only in sampler, lr and seeds as one ensemble "
                        "(default 16 on a CPU, 64 with CUDA; 1: each cell in its own execution)")
    g.add_argument("--force", action="store_true", help="rerun finished cells too")
    g.add_argument("--results", help="results folder (default: the grid file's 'results')")
    g.add_argument("--pages", help="folder of executed notebooks (default: the grid file's 'pages')")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit parameter over the grid file's 'slurm' (repeatable), e.g. timeout_min=120 slurm_partition=gpu")
    g.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit backend for --executor slurm (default: Slurm; local/debug run on this machine)")
    g.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="raise a resource limit over the grid file's 'limits' (repeatable), e.g. cells=20000 memory_gb=64")
    g.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser("collect", help="merge a results folder's cells into one netCDF file")
    c.add_argument("folder")
    c.add_argument("-o", "--output", help="output file (default: FOLDER/collected.nc, or FOLDER/collected-NAME.nc)")
    c.add_argument("--grid", metavar="NAME", help="only the cells of this sub-grid")
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)

    from .store import GridError

    try:
        if args.command == "grid":
            from .gridfile import load_grid
            from .store import is_finished

            slurm = _pairs(args.slurm, "--slurm")
            limits = _pairs(args.limit, "--limit")
            grid = load_grid(args.file, args.results, args.pages, limits)
            from .runner import preflight, run_grid

            preflight(grid, args.executor, args.jobs, slurm, args.cluster, dry_run=args.dry_run, pack_size=args.pack_size)
            if args.dry_run:
                from .runner import plan_packs

                todo = []
                for cell in grid.cells:
                    finished = is_finished(grid.results, cell.id, grid.pages)
                    todo += [] if finished and not args.force else [cell]
                    print(cell.id, cell.grid, dict(cell.labels), "finished" if finished else "to run")
                packs = plan_packs(grid, todo, args.pack_size, args.executor, args.jobs)
                print(f"{args.file}: {len(grid.cells)} cells ({len(todo)} to run in {len(packs)} executions of at most "
                      f"{max(map(len, packs), default=0)} cells), results in {grid.results}, pages in {grid.pages}")
                return 0
            summary = run_grid(grid, args.executor, args.jobs, args.force, slurm, args.cluster, progress=not args.quiet,
                               pack_size=args.pack_size)
            print(summary.text(grid))
            return 1 if summary.failed else 0
        from .results import write_netcdf
        from .store import collect

        default = f"collected-{args.grid}.nc" if args.grid else "collected.nc"
        out = Path(args.output) if args.output else Path(args.folder) / default
        ds = collect(args.folder, args.grid)
        write_netcdf(ds, out)
        print(f"{args.folder}: {ds.attrs['cells']} cells over axes {ds.attrs['axes']} -> {out}")
        return 0
    except GridError as err:
        sys.stderr.write(_line(f"error: {err}"))
        return 2
    except OSError as err:  # a full disk, a folder that vanished: the filesystem's words, one line
        where = f": {err.filename}" if err.filename else ""
        what = f"{args.file}: " if args.command == "grid" else f"{args.folder}: "
        sys.stderr.write(_line(f"error: {what}{err.strerror or err}{where} (finished cells are kept)"))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished cells are kept; run the same command again to resume\n")
        if args.command == "grid":
            from .cellrun import silence_teardown

            silence_teardown()
        return 130


if __name__ == "__main__":
    sys.exit(main())
