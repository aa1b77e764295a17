"""Executing a grid's cells: one cell with papermill, then all of them in this process, a local
process pool or a submitit job array (see :mod:`fmstudy.grid`).

While a cell runs, ``cells/<id>.lock`` holds an ``flock`` (released by the kernel when the
process dies, so two grid commands on one folder never run the same cell and a killed one
leaves no stale claim). This is the only module that imports papermill (and, for Slurm, submitit).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .checks import check_int
from .gridfile import Cell, Grid
from .results import atomic_write
from .store import GridError, is_finished, record_path, write_json

__all__ = ["Summary", "run_cell", "run_grid"]


@contextlib.contextmanager
def _claim(results: Path, cid: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the cell's lock file; yields False if another process holds it."""
    path = results / "cells" / f"{cid}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} {os.getpid()} {time.time():.0f}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _page_title(cell: Cell) -> str:
    labels = dict(cell.labels)
    if "benchmark" in cell.params and "benchmark" not in labels:  # always say what data it ran on
        labels = {"benchmark": cell.params["benchmark"], **labels}
    return "Run " + ", ".join(f"{k} = {v}" for k, v in labels.items())


def _decorate_page(path: Path, cell: Cell) -> None:
    """Give the executed notebook a title of its own and a table of every parameter at the top."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    rows = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in cell.params.items())
    head = (
        f"# {_page_title(cell)}\n\nOne grid cell, executed by `python -m fmstudy grid` (cell id `{cell.id}`, "
        f"sub-grid `{cell.grid}`, fmstudy {__version__}). Parameters:\n\n| parameter | value |\n| --- | --- |\n{rows}\n"
    )
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    for c in nb.cells[1:]:  # the notebook's own title would be a second h1 on the page
        if c.cell_type == "markdown" and c.source.startswith("# "):
            c.source = "#" + c.source
            break
    atomic_write(path, lambda tmp: nbformat.write(nb, tmp))


def run_cell(grid: Grid, cell: Cell, force: bool = False) -> dict[str, Any]:
    """Execute one cell unless it is finished or claimed; returns its record (``status`` is ok,
    failed, skipped or claimed). Never raises for a failure inside the notebook."""
    import papermill

    results, cells_dir = grid.results, grid.results / "cells"
    with _claim(results, cell.id) as mine:
        if not mine:
            return {"id": cell.id, "status": "claimed"}
        if not force and is_finished(results, cell.id):
            return {"id": cell.id, "status": "skipped"}
        for stale in itertools.chain(cells_dir.glob(f".{cell.id}.*"), grid.pages.glob(f".{cell.id}.*")):
            stale.unlink(missing_ok=True)  # temporary files of a killed run
        for old in (cells_dir / f"{cell.id}.nc", record_path(results, cell.id)):
            old.unlink(missing_ok=True)
        grid.pages.mkdir(parents=True, exist_ok=True)
        # the temporary page has no .ipynb suffix, so a book built meanwhile never picks it up
        page, tmp_page = grid.pages / f"{cell.id}.ipynb", grid.pages / f".{cell.id}.running.json"
        log = cells_dir / f"{cell.id}.log"
        record: dict[str, Any] = {
            "id": cell.id, "grid_file": str(grid.file), "grid": cell.grid, "notebook": grid.notebook.name,
            "params": dict(cell.params), "labels": dict(cell.labels),
            "grids": list(cell.grids), "grid_axes": {g: grid.grid_axes[g] for g in cell.grids},
            "page": str(page), "fmstudy_version": __version__, "host": os.uname().nodename,
        }
        tic = time.perf_counter()
        try:
            with open(log, "w") as out:
                papermill.execute_notebook(
                    str(grid.notebook), str(tmp_page),
                    parameters={**cell.params, "output": str(cells_dir / f"{cell.id}.nc"), "cell_id": cell.id},
                    progress_bar=False, log_output=True, stdout_file=out, stderr_file=out, cwd=str(grid.notebook.parent),
                )
            _decorate_page(tmp_page, cell)
            os.replace(tmp_page, page)
            record.update(status="ok", seconds=time.perf_counter() - tic)
        except BaseException as err:
            failed_page = cells_dir / f"{cell.id}.failed.ipynb"
            if tmp_page.exists():
                os.replace(tmp_page, failed_page)
            lines = str(err).strip().splitlines() or [type(err).__name__]
            record.update(status="failed", seconds=time.perf_counter() - tic, error=f"{type(err).__name__}: {lines[-1]}"[:500],
                          traceback=traceback.format_exc()[-4000:], log=str(log), failed_page=str(failed_page))
            if isinstance(err, KeyboardInterrupt):
                raise
        write_json(record_path(results, cell.id), record)
        return record


# -- executors ----------------------------------------------------------------------------------
@dataclass
class Summary:
    ran: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    claimed: int = 0
    seconds: float = 0.0

    def add(self, record: Mapping[str, Any]) -> None:
        status = record["status"]
        if status == "ok":
            self.ran += 1
        elif status == "skipped":
            self.skipped += 1
        elif status == "claimed":
            self.claimed += 1
        else:
            self.failed.append(dict(record))

    def text(self, grid: Grid) -> str:
        lines = [
            (f"{grid.file}: {len(grid.cells)} cells: {self.ran} ran, {self.skipped} already finished, "
             f"{len(self.failed)} failed, {self.claimed} running elsewhere ({self.seconds:.0f} s); results in {grid.results}")
        ]
        for rec in self.failed:
            lines.append(f"  FAILED {rec['id']} {rec.get('labels', '')}: {rec.get('error', '?')} (log: {rec.get('log', '?')})")
        return "\n".join(lines)


def _init_worker(counter: Any, gpus: list[str], threads: int) -> None:
    """Pin each pool worker to one GPU (round robin) and to its share of the CPU cores (so
    ``jobs`` kernels do not oversubscribe them); the papermill kernel inherits both settings."""
    if sys.platform.startswith("linux"):  # die with the grid command, not finish its queue unseen
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_grid(
    grid: Grid,
    executor: str = "local",
    jobs: int = 1,
    force: bool = False,
    slurm: Mapping[str, Any] | None = None,
    cluster: str | None = None,
    progress: bool = True,
) -> Summary:
    """Run every unfinished cell of ``grid`` and return the summary (see the module docstring).

    ``executor="local"`` runs cells in this process (``jobs=1``) or a pool of ``jobs`` worker
    processes, one GPU each when several are visible; ``"slurm"`` submits a submitit job array
    with the grid file's ``slurm`` resources updated by ``slurm`` (``cluster`` picks submitit's
    ``"local"`` or ``"debug"`` executor instead of Slurm, for tests) and waits for it."""
    from tqdm import tqdm

    if executor not in ("local", "slurm"):
        raise GridError(f"executor={executor!r} is not allowed: executor must be 'local' or 'slurm'")
    try:
        jobs = check_int("jobs", jobs, 1)
    except ValueError as err:
        raise GridError(str(err)) from None
    (grid.results / "cells").mkdir(parents=True, exist_ok=True)
    summary, tic = Summary(), time.perf_counter()
    todo = [c for c in grid.cells if force or not is_finished(grid.results, c.id)]
    summary.skipped = len(grid.cells) - len(todo)
    bar = tqdm(total=len(grid.cells), initial=summary.skipped, unit="cell", disable=not progress, desc=grid.file.name, file=sys.stderr)
    if executor == "local" and jobs == 1:
        for cell in todo:
            summary.add(run_cell(grid, cell, force))
            bar.update(1)
    elif executor == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(ctx.Value("i", 0), _visible_gpus(), max(1, (os.cpu_count() or 1) // jobs)))
        with pool:
            futures = [pool.submit(run_cell, grid, cell, force) for cell in todo]
            for fut in as_completed(futures):
                summary.add(fut.result())
                bar.update(1)
    else:
        import submitit

        ex = submitit.AutoExecutor(folder=grid.results / "slurm", cluster=cluster)
        params = {"name": f"fmstudy-{grid.file.stem}", **grid.slurm, **(slurm or {})}
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as err:
            raise GridError(f"{grid.file}: slurm: {' '.join(str(err).split())}") from None
        jobs_ = ex.map_array(run_cell, [grid] * len(todo), todo, [force] * len(todo)) if todo else []
        if jobs_:
            print(f"submitted {len(jobs_)} cells as job array {jobs_[0].job_id.split('_')[0]} (logs: {grid.results / 'slurm'})", file=sys.stderr)
        for cell, job in zip(todo, jobs_):
            try:
                summary.add(job.result())
            except Exception as err:  # noqa: BLE001 - the job itself died (time limit, node failure): record it
                last = (str(err).strip().splitlines() or [""])[-1]
                summary.add({"id": cell.id, "status": "failed", "labels": dict(cell.labels),
                             "error": f"slurm job {job.job_id}: {type(err).__name__}: {last}"[:500], "log": str(job.paths.stderr)})
            bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - tic
    log = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "grid_file": str(grid.file), "executor": executor, "jobs": jobs,
           "cells": len(grid.cells), "ran": summary.ran, "skipped": summary.skipped, "failed": len(summary.failed),
           "claimed": summary.claimed, "seconds": round(summary.seconds, 1), "host": os.uname().nodename, "cpus": os.cpu_count()}
    with open(grid.results / "runs.jsonl", "a") as out:  # the book quotes how long a profile took
        out.write(json.dumps(log) + "\n")
    return summary
