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
import shutil
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

__all__ = ["Summary", "preflight", "run_cell", "run_grid"]


@contextlib.contextmanager
def _claim(results: Path, cid: str) -> Iterator[bool]:
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
        yield True
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
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


def _kernel_manager(log: Any) -> type:
    """A kernel manager whose kernel writes its own stderr into the cell's log. There its lines
    belong: ipykernel's warning on every start that its localhost TCP sockets are not encrypted,
    and the errors of a kernel whose client went away (Ctrl-C), which otherwise fill the
    terminal. (Its transport stays TCP: IPC broke parallel kernels.)"""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            kw.setdefault("stderr", log)
            await super().start_kernel(**kw)

    return LoggedKernelManager


def run_cell(grid: Grid, cell: Cell, force: bool = False) -> dict[str, Any]:
    """Execute one cell unless it is finished or claimed; returns its record (``status`` is ok,
    failed, skipped or claimed). Never raises for a failure inside the notebook; an interrupt
    (Ctrl-C) leaves no page or record behind, so the cell simply runs again."""
    import papermill

    results, cells_dir = grid.results, grid.results / "cells"
    with _claim(results, cell.id) as mine:
        if not mine:
            return {"id": cell.id, "status": "claimed"}
        if not force and is_finished(results, cell.id, grid.pages):
            return {"id": cell.id, "status": "skipped"}
        # temporary files of a killed run: atomic_write's names start with '.' + the final name,
        # and the running page's own name starts with '.', hence '..<id>.running.json.*.tmp'
        for folder, pattern in itertools.product((cells_dir, grid.pages), (f".{cell.id}.*", f"..{cell.id}.*")):
            for stale in folder.glob(pattern):
                stale.unlink(missing_ok=True)
        failed_page = cells_dir / f"{cell.id}.failed.ipynb"
        for old in (cells_dir / f"{cell.id}.nc", record_path(results, cell.id), failed_page):
            old.unlink(missing_ok=True)
        grid.pages.mkdir(parents=True, exist_ok=True)
        # the temporary page has no .ipynb suffix, so a book built meanwhile never picks it up
        page, tmp_page = grid.pages / f"{cell.id}.ipynb", grid.pages / f".{cell.id}.running.json"
        log = cells_dir / f"{cell.id}.log"
        record: dict[str, Any] = {
            "id": cell.id, "grid_file": str(grid.file), "grid": cell.grid, "notebook": grid.notebook.name,
            "params": dict(cell.params), "labels": dict(cell.labels),
            "grids": list(cell.grids), "grid_axes": {g: grid.grid_axes[g] for g in cell.grids},
            # relative to the results folder, so a moved checkout still finds it (fmstudy.store)
            "page": os.path.relpath(page, results), "fmstudy_version": __version__, "host": os.uname().nodename,
        }
        tic = time.perf_counter()
        try:
            log.write_text("")
            with open(log, "a") as out:  # appending: the kernel process writes to it too
                papermill.execute_notebook(
                    str(grid.notebook), str(tmp_page),
                    parameters={**cell.params, "output": str(cells_dir / f"{cell.id}.nc"), "cell_id": cell.id},
                    progress_bar=False, log_output=True, stdout_file=out, stderr_file=out, cwd=str(grid.notebook.parent),
                    kernel_manager_class=_kernel_manager(out),
                )
            _decorate_page(tmp_page, cell)
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
    import signal

    if sys.platform.startswith("linux"):  # die with the grid command, not finish its queue unseen
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the grid command's to handle (no traceback per worker)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def _pool_cell(grid: Grid, cell: Cell, force: bool) -> dict[str, Any]:
    """:func:`run_cell` in a pool worker: Ctrl-C interrupts the cell it runs (which cleans up
    after itself), while an idle worker ignores it (no traceback from a worker waiting for work)."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_cell(grid, cell, force)
    except KeyboardInterrupt:
        # The worker is done. What its kernel client still logs while being torn down (a dead
        # kernel, asyncio tasks never awaited) is noise on the user's terminal: silence it.
        import logging

        logging.disable(logging.CRITICAL)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _need(module: str, extra: str) -> None:
    """A one-line refusal when an optional dependency is missing (not an import traceback)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise GridError(f"fmstudy grid needs {module}, which is not installed: pip install 'fmstudy[{extra}]' (or make install)")


def _check_folder(grid: Grid, what: str, folder: Path) -> None:
    """Refuse, before anything is written, a results or pages folder that is a file or cannot be written."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise GridError(f"{grid.file}: {what}: {probe} is a file, not a folder: give a folder path (--{what} or '{what}:' in the grid file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GridError(f"{grid.file}: {what}: {probe} cannot be written (permissions or a read-only filesystem): give another folder")


def _slurm_executor(grid: Grid, slurm: Mapping[str, Any] | None, cluster: str | None) -> Any:
    """Check the submitit parameters now (in a scratch folder: submitit creates its folder) and
    return a function that makes the real executor."""
    import tempfile

    _need("submitit", "slurm")
    import submitit

    params = {"name": f"fmstudy-{grid.file.stem}", **grid.slurm, **(slurm or {})}

    def make(folder: Path) -> Any:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError, KeyError, NameError) as err:  # submitit: NameError for an unknown name
            raise GridError(f"{grid.file}: slurm: {' '.join(str(err).split())[:300]}") from None
        return ex

    with tempfile.TemporaryDirectory() as scratch:
        make(Path(scratch) / "slurm")
    return lambda: make(grid.results / "slurm")


def preflight(grid: Grid, executor: str = "local", jobs: int = 1, slurm: Mapping[str, Any] | None = None,
              cluster: str | None = None, dry_run: bool = False) -> Any:
    """Every check of a run's settings that needs no cell to run (the dry run makes them too):
    executor, jobs, papermill installed (not for a dry run), submitit's parameters, results and
    pages folders writable. Writes nothing; returns the Slurm executor's factory (or None)."""
    if executor not in ("local", "slurm"):
        raise GridError(f"executor={str(executor)[:40]!r} is not allowed: executor must be 'local' or 'slurm'")
    try:
        check_int("jobs", jobs, 1)
    except ValueError as err:
        raise GridError(str(err)) from None
    if not dry_run:
        _need("papermill", "book")
    make_executor = _slurm_executor(grid, slurm, cluster) if executor == "slurm" else None
    for what, folder in (("results", grid.results), ("pages", grid.pages)):
        _check_folder(grid, what, folder)
    return make_executor


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

    make_executor = preflight(grid, executor, jobs, slurm, cluster)
    jobs = int(jobs)
    try:
        (grid.results / "cells").mkdir(parents=True, exist_ok=True)
        grid.pages.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GridError(f"{grid.file}: results or pages folder cannot be created: {err.strerror}: {err.filename}") from None
    summary, tic = Summary(), time.perf_counter()
    todo = [c for c in grid.cells if force or not is_finished(grid.results, c.id, grid.pages)]
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
        try:
            futures = [pool.submit(_pool_cell, grid, cell, force) for cell in todo]
            for fut in as_completed(futures):
                summary.add(fut.result())
                bar.update(1)
        except BaseException:  # Ctrl-C: queued cells are cancelled, running ones interrupted (and cleaned up)
            import signal

            for proc in list((getattr(pool, "_processes", None) or {}).values()):  # private, the only handle on the workers
                with contextlib.suppress(OSError, AttributeError):
                    os.kill(proc.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        ex = make_executor()
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
