"""Executing a grid: its unfinished cells, one by one (:func:`fmstudy.cellrun.run_cell`) or in
packs that share one ensemble (:func:`fmstudy.packrun.run_pack`, ``pack_size`` cells at most), in this
process, a local process pool (one GPU per worker when several are visible) or a submitit job
array, after checks of the run's settings that write nothing (:func:`preflight`, which the dry
run makes too); a summary, and a line per run in ``runs.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cellrun import silence_teardown
from .checks import check_int
from .gridfile import Cell, Grid
from .packrun import make_packs, pack_notebook, run_pack
from .store import GridError, is_finished

__all__ = ["Summary", "default_pack_size", "plan_packs", "preflight", "run_grid"]

# Packing is the default. It was opt-in while the chapters read seconds per cell: a pack's
# cells share one clock (their train_seconds is the pack's; a record's seconds is the pack's
# wall time shared equally), so per-cell seconds could not compare cells. The book now
# compares cells by training FLOPs (fmstudy.flops) and shows wall-clock per execution (a pack
# or a lone cell) and per model-step only, so a pack costs it nothing.
# CPU: 16 cells. What packing saves is each execution's fixed cost (kernel start and imports,
# noise floors, evaluation set-up: about half of a quick-profile cell's 15-35 s on the 2-core
# machine) and the per-step fixed cost (a few hundred operators a step, paid once for all the
# members of a run); measured, 4 cells of 3 seeds ran 1.5-2.0x faster packed (3 interleaved
# runs; benchmarks/grid_throughput.py measures a whole sub-grid). On a CPU a step's cost
# grows linearly in the members beyond M ~ 64 (matmul-bound: benchmarks/throughput.py gains
# nothing at M = 64), so packs of more than ~16 cells of 10 seeds add nothing but a larger loss
# when one fails (its cells rerun alone) and coarser progress; a quick-profile sub-grid of 11
# samplers per sigma fits one pack.
# GPU: 64 cells (640 members at 10 seeds): a 10-member cell cannot fill a GPU, and the
# engine's GPU measurement uses 1,024 members; the largest model here (digits, hidden 256)
# needs about 2 GB for 640 members' weights, gradients, Adam moments and EMA.
# Local packs are cut further so that every --jobs worker gets one (plan_packs).
GPU_PACK_SIZE = 64
CPU_PACK_SIZE = 16


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


def default_pack_size() -> int:
    """Cells per pack when ``--pack-size`` is not given: ``GPU_PACK_SIZE`` (64) when CUDA is
    available, else ``CPU_PACK_SIZE`` (16); why these, see their comment."""
    import torch

    return GPU_PACK_SIZE if torch.cuda.is_available() else CPU_PACK_SIZE


def plan_packs(grid: Grid, todo: list[Cell], pack_size: int | None, executor: str = "local", jobs: int = 1) -> list[list[Cell]]:
    """The executions that run ``todo``: packs of at most ``pack_size`` cells (None: the device's
    default; 1 without a pack notebook), and locally no larger than a worker's share of the
    cells, so that every one of ``jobs`` workers has a pack."""
    size = default_pack_size() if pack_size is None else int(pack_size)
    size = size if pack_notebook(grid.notebook) is not None else 1
    if executor == "local" and todo:
        size = min(size, -(-len(todo) // jobs))
    return make_packs(todo, size)


def _pool_pack(grid: Grid, cells: list[Cell], force: bool) -> list[dict[str, Any]]:
    """:func:`run_pack` in a pool worker: Ctrl-C interrupts the cell it runs (which cleans up
    after itself), while an idle worker ignores it (no traceback from a worker waiting for work)."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_pack(grid, cells, force)
    except KeyboardInterrupt:
        silence_teardown(stderr=True)  # the worker is done
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
              cluster: str | None = None, dry_run: bool = False, pack_size: int | None = 1) -> Any:
    """Every check of a run's settings that needs no cell to run (the dry run makes them too):
    executor, jobs, pack size, papermill installed (not for a dry run), submitit's parameters, results and
    pages folders writable. Writes nothing; returns the Slurm executor's factory (or None)."""
    if executor not in ("local", "slurm"):
        raise GridError(f"executor={str(executor)[:40]!r} is not allowed: executor must be 'local' or 'slurm'")
    try:
        check_int("jobs", jobs, 1)
        if pack_size is not None:
            check_int("pack_size", pack_size, 1, why=" (cells per pack)")
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
    pack_size: int | None = None,
) -> Summary:
    """Run every unfinished cell of ``grid`` and return the summary (see the module docstring).

    ``executor="local"`` runs cells in this process (``jobs=1``) or a pool of ``jobs`` worker
    processes, one GPU each when several are visible; ``"slurm"`` submits a submitit job array
    with the grid file's ``slurm`` resources updated by ``slurm`` (``cluster`` picks submitit's
    ``"local"`` or ``"debug"`` executor instead of Slurm, for tests) and waits for it.
    ``pack_size``: at most this many cells that differ only in sampler, lr and seeds run as one
    ensemble (:mod:`fmstudy.packrun`; None, the default: :func:`default_pack_size`, 16 cells on
    a CPU and 64 with CUDA; 1: each cell alone, in its own execution); a notebook without a
    ``*_pack.ipynb`` sibling runs each cell alone."""
    from tqdm import tqdm

    make_executor = preflight(grid, executor, jobs, slurm, cluster, pack_size=pack_size)
    jobs = int(jobs)
    size = default_pack_size() if pack_size is None else int(pack_size)  # for the log
    try:
        (grid.results / "cells").mkdir(parents=True, exist_ok=True)
        grid.pages.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GridError(f"{grid.file}: results or pages folder cannot be created: {err.strerror}: {err.filename}") from None
    summary, tic = Summary(), time.perf_counter()
    todo = [c for c in grid.cells if force or not is_finished(grid.results, c.id, grid.pages)]
    summary.skipped = len(grid.cells) - len(todo)
    packs = plan_packs(grid, todo, pack_size, executor, jobs)
    bar = tqdm(total=len(grid.cells), initial=summary.skipped, unit="cell", disable=not progress, desc=grid.file.name, file=sys.stderr)
    if executor == "local" and jobs == 1:
        for pack in packs:
            for record in run_pack(grid, pack, force):
                summary.add(record)
            bar.update(len(pack))
    elif executor == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(ctx.Value("i", 0), _visible_gpus(), max(1, (os.cpu_count() or 1) // jobs)))
        try:
            futures = [pool.submit(_pool_pack, grid, pack, force) for pack in packs]
            for fut in as_completed(futures):
                for record in fut.result():
                    summary.add(record)
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
        jobs_ = ex.map_array(run_pack, [grid] * len(packs), packs, [force] * len(packs)) if packs else []
        if jobs_:
            print(f"submitted {len(todo)} cells in {len(jobs_)} jobs as job array {jobs_[0].job_id.split('_')[0]} "
                  f"(logs: {grid.results / 'slurm'})", file=sys.stderr)
        for pack, job in zip(packs, jobs_):
            try:
                for record in job.result():
                    summary.add(record)
            except Exception as err:  # noqa: BLE001 - the job itself died (time limit, node failure): record it
                last = (str(err).strip().splitlines() or [""])[-1]
                for cell in pack:
                    summary.add({"id": cell.id, "status": "failed", "labels": dict(cell.labels),
                                 "error": f"slurm job {job.job_id}: {type(err).__name__}: {last}"[:500], "log": str(job.paths.stderr)})
            bar.update(len(pack))
    bar.close()
    summary.seconds = time.perf_counter() - tic
    log = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "grid_file": str(grid.file), "executor": executor, "jobs": jobs,
           "cells": len(grid.cells), "pack_size": size, "packs": len(packs), "ran": summary.ran, "skipped": summary.skipped, "failed": len(summary.failed),
           "claimed": summary.claimed, "seconds": round(summary.seconds, 1), "host": os.uname().nodename, "cpus": os.cpu_count()}
    if summary.ran or summary.failed:  # the book quotes how long a profile took; a run that only checked
        with open(grid.results / "runs.jsonl", "a") as out:  # finished cells leaves shipped results untouched
            out.write(json.dumps(log) + "\n")
    return summary
