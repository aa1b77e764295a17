"""Running one grid cell: claim it, execute its notebook with papermill, give the page its
title and parameter table, record the outcome (see :mod:`fmstudy.grid`).

While a cell runs, ``cells/<id>.lock`` holds an ``flock`` (released by the kernel when the
process dies, so two grid commands on one folder never run the same cell and a killed one
leaves no stale claim); the file is removed when the cell is done. This module and
:mod:`fmstudy.runner` are the only ones that import papermill (and, for Slurm, submitit).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .gridfile import Cell, Grid
from .provenance import code_state, file_sha256
from .results import atomic_write
from .store import is_finished, record_path, write_json

__all__ = ["base_record", "claim", "clear_cell", "decorate_page", "kernel_manager", "run_cell", "silence_teardown"]


@contextlib.contextmanager
def claim(results: Path, cid: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the cell's lock file; yields False if another process holds it.

    The file is removed when the cell is done, while still locked. A process that opened it
    just before then holds a lock on a removed file: it sees that the path no longer names the
    file it locked and starts over on a new one, so two holders never coexist."""
    path = results / "cells" / f"{cid}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            mine = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            mine = False
        if mine:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} {os.getpid()} {time.time():.0f}\n".encode())
        # A run killed mid atomic_write leaves its temporary file (.<id>.nc.XXXX.tmp); with the
        # cell's lock held no one else writes this cell's files, so any such file is stale.
        for stale in path.parent.glob(f".{cid}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield True
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def clear_cell(grid: Grid, cid: str) -> None:
    """Before a (claimed) cell runs: remove its result, record and failed page, and what a
    killed run left (atomic_write's temporaries start with '.' + the final name, and the running
    page's own name starts with '.', hence '..<id>.running.json.*.tmp')."""
    cells_dir = grid.results / "cells"
    for folder, pattern in itertools.product((cells_dir, grid.pages), (f".{cid}.*", f"..{cid}.*")):
        for stale in folder.glob(pattern):
            stale.unlink(missing_ok=True)
    for old in (cells_dir / f"{cid}.nc", record_path(grid.results, cid), cells_dir / f"{cid}.failed.ipynb"):
        old.unlink(missing_ok=True)
    grid.pages.mkdir(parents=True, exist_ok=True)


def base_record(grid: Grid, cell: Cell) -> dict[str, Any]:
    """A cell's record before its outcome (status, seconds, error) is known."""
    page = grid.pages / f"{cell.id}.ipynb"
    return {
        "id": cell.id, "grid_file": str(grid.file), "grid": cell.grid, "notebook": grid.notebook.name,
        "params": dict(cell.params), "labels": dict(cell.labels),
        "grids": list(cell.grids), "grid_axes": {g: grid.grid_axes[g] for g in cell.grids},
        # relative to the results folder, so a moved checkout still finds it (fmstudy.store)
        "page": os.path.relpath(page, grid.results), "fmstudy_version": __version__, "host": os.uname().nodename,
        # what produced it: the code's commit and the grid file's bytes (a grid file edited
        # between stages of a study, or a checkout with local changes, shows here)
        "code": code_state(), "grid_file_sha256": file_sha256(grid.file),
    }


def _page_title(cell: Cell) -> str:
    labels = dict(cell.labels)
    if "benchmark" in cell.params and "benchmark" not in labels:  # always say what data it ran on
        labels = {"benchmark": cell.params["benchmark"], **labels}
    return "Run " + ", ".join(f"{k} = {v}" for k, v in labels.items())


def decorate_page(path: Path, cell: Cell, note: str = "") -> None:
    """Give the executed notebook a title of its own and a table of every parameter at the top
    (``note``: a paragraph after the table, e.g. that the page is a pack's)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    rows = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in cell.params.items())
    head = (
        f"# {_page_title(cell)}\n\nOne grid cell, executed by `python -m fmstudy grid` (cell id `{cell.id}`, "
        f"sub-grid `{cell.grid}`, fmstudy {__version__}). Parameters:\n\n| parameter | value |\n| --- | --- |\n{rows}\n"
        + (f"\n{note}\n" if note else "")
    )
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    for c in nb.cells[1:]:  # the notebook's own title would be a second h1 on the page
        if c.cell_type == "markdown" and c.source.startswith("# "):
            c.source = "#" + c.source
            break
    atomic_write(path, lambda tmp: nbformat.write(nb, tmp))


def kernel_manager(log: Any, results: Path | None = None) -> type:
    """A kernel manager whose kernel writes its own stderr into the cell's log. There its lines
    belong: ipykernel's warning on every start that its localhost TCP sockets are not encrypted,
    and the errors of a kernel whose client went away (Ctrl-C), which otherwise fill the
    terminal. (Its transport stays TCP: IPC broke parallel kernels.) With ``results``, the
    kernel's ``FMSTUDY_FLOOR_CACHE`` is ``results/floors`` unless set already: noise floors are
    computed once per benchmark and sample size and shared by the grid's cells (:mod:`fmstudy.evaluate`)."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            kw.setdefault("stderr", log)
            if results is not None:
                kw.setdefault("env", {"FMSTUDY_FLOOR_CACHE": str(results / "floors"), **os.environ})
            await super().start_kernel(**kw)

    return LoggedKernelManager


def run_cell(grid: Grid, cell: Cell, force: bool = False) -> dict[str, Any]:
    """Execute one cell unless it is finished or claimed; returns its record (``status`` is ok,
    failed, skipped or claimed). Never raises for a failure inside the notebook; an interrupt
    (Ctrl-C) leaves no page or record behind, so the cell simply runs again."""
    import papermill

    results, cells_dir = grid.results, grid.results / "cells"
    with claim(results, cell.id) as mine:
        if not mine:
            return {"id": cell.id, "status": "claimed"}
        if not force and is_finished(results, cell.id, grid.pages):
            return {"id": cell.id, "status": "skipped"}
        clear_cell(grid, cell.id)
        failed_page = cells_dir / f"{cell.id}.failed.ipynb"
        # the temporary page has no .ipynb suffix, so a book built meanwhile never picks it up
        page, tmp_page = grid.pages / f"{cell.id}.ipynb", grid.pages / f".{cell.id}.running.json"
        log = cells_dir / f"{cell.id}.log"
        record = base_record(grid, cell)
        tic = time.perf_counter()
        try:
            log.write_text("")
            with open(log, "a") as out:  # appending: the kernel process writes to it too
                papermill.execute_notebook(
                    str(grid.notebook), str(tmp_page),
                    parameters={**cell.params, "output": str(cells_dir / f"{cell.id}.nc"), "cell_id": cell.id},
                    progress_bar=False, log_output=True, stdout_file=out, stderr_file=out, cwd=str(grid.notebook.parent),
                    kernel_manager_class=kernel_manager(out, results),
                )
            decorate_page(tmp_page, cell)
            os.replace(tmp_page, page)
            record.update(status="ok", seconds=time.perf_counter() - tic)
        except Exception as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            record.update(status="failed", seconds=time.perf_counter() - tic, error=f"{type(err).__name__}: {lines[-1]}"[:500],
                          traceback=traceback.format_exc()[-4000:], log=str(log))
            try:  # keep the executed notebook for the post-mortem; pages may be on another filesystem (EXDEV)
                if tmp_page.exists():
                    shutil.move(tmp_page, failed_page)
                    record["failed_page"] = str(failed_page)
            except OSError as move_err:
                record["failed_page"] = f"not kept: {move_err}"
                tmp_page.unlink(missing_ok=True)
        except BaseException:  # Ctrl-C, SystemExit: no half-made page; the cell is simply not finished
            tmp_page.unlink(missing_ok=True)
            raise
        write_json(record_path(results, cell.id), record)
        return record


def silence_teardown(stderr: bool = False) -> None:
    """After Ctrl-C: what a kernel client still logs while it is torn down (a dead kernel,
    asyncio tasks never awaited) is noise on the user's terminal, so logging is switched off,
    and with ``stderr`` (a pool worker about to exit) this process's stderr too."""
    import logging
    import sys

    sys.stderr.flush()
    logging.disable(logging.CRITICAL)
    if stderr:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
