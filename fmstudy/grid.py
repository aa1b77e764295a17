"""The grid runner: expand a grid file into cells, execute each with papermill, collect the results.

A grid file (YAML, in ``papermill_params/``) names one parameterised notebook and the cells to
run it on. Its keys:

- ``notebook``: the notebook, relative to the grid file's folder;
- ``fixed``: parameter values shared by every cell;
- ``axes``: parameter -> list of values; the grid is their cross product; or ``grids``: a list of
  sub-grids, each with optional ``name``, ``fixed`` (over the top-level ones) and ``axes``, so
  one profile can hold, e.g., a sampler comparison and a learning-rate sweep. Cells that two
  sub-grids share run once (a cell's id depends only on what it computes);
- ``results`` and ``pages`` (optional): the results folder and the folder of executed notebooks
  (the book's run pages), relative to the grid file's folder;
- keys starting with ``x-``: ignored, a place for YAML anchors (``&name``) that axes reuse; a
  list inside an axis's list (an alias ``*name``) is spliced into it;
- ``slurm`` (optional): submitit parameters for ``--executor slurm`` (``timeout_min``,
  ``slurm_partition``, ``gpus_per_node``, ...); ``description`` (optional): free text.

Every parameter must exist in the notebook's ``parameters`` cell and have the type of its
default there; benchmarks, samplers and training options are checked by building them. A
bad file is refused with one line naming the file, the key and what is allowed, before
anything runs.

A cell's id hashes the notebook's name, its complete parameters and fmstudy's version. Its
files in the results folder are ``cells/<id>.nc`` (written by the notebook, atomically),
``cells/<id>.json`` (its record: status, parameters, labels, timing, error) and, while it runs,
``cells/<id>.lock`` (an ``flock``, released by the kernel when the process dies, so two grid
commands on one folder never run the same cell and a killed one leaves no stale claim). A cell
is finished only when its record says so and its netCDF file opens with its id: a partly
written or foreign file is never trusted and the cell runs again.

This is the only module that imports papermill (and, for Slurm, submitit).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
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

import yaml

from . import __version__
from .checks import check_int
from .results import atomic_write, read_netcdf

__all__ = ["Cell", "Grid", "GridError", "Summary", "cell_id", "collect", "load_grid", "run_grid"]

GRID_KEYS = ("notebook", "description", "fixed", "axes", "grids", "results", "pages", "slurm")
SUBGRID_KEYS = ("name", "fixed", "axes")
RUNNER_PARAMS = ("output", "cell_id")  # injected by the runner into every cell, never set by a grid file


class GridError(ValueError):
    """A grid file that cannot run; its message is one line naming the file and the key."""


@dataclass(frozen=True)
class Cell:
    """One notebook execution: its id, its complete parameters and the labels of the grid's axes."""

    id: str
    params: Mapping[str, Any]
    labels: Mapping[str, Any]
    grids: tuple[str, ...]  # every sub-grid that holds this cell, the first one that listed it first

    @property
    def grid(self) -> str:
        return self.grids[0]


@dataclass
class Grid:
    file: Path
    notebook: Path
    results: Path
    pages: Path
    axes: tuple[str, ...]
    cells: list[Cell]
    grid_axes: dict[str, list[str]] = field(default_factory=dict)  # sub-grid name -> its axes
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# -- reading and validating a grid file ---------------------------------------------------------
def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """Names and default values of the notebook's cell tagged ``parameters`` (literals only)."""
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            out = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise GridError(f"{notebook}: no cell tagged 'parameters': a grid notebook needs one")


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def _coerce(where: str, value: Any, default: Any) -> Any:
    """``value`` in the type of the notebook's default (an int is a float; a sampler's bare name is its mapping)."""
    if default is None:
        return value
    if isinstance(default, dict) and isinstance(value, str):
        return {"name": value}
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is type(default):
        return value
    raise GridError(f"{where}: {value!r} is {type(value).__name__}: it must be {_type_name(default)}")


def _label(value: Any) -> Any:
    """A coordinate label: numbers and strings stay; a mapping (a sampler) reads name(k=v, ...)."""
    if isinstance(value, dict):
        rest = ", ".join(f"{k}={_label(v)}" for k, v in sorted(value.items()) if k != "name")
        if "name" not in value:
            return rest
        return f"{value['name']}({rest})" if rest else str(value["name"])
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_label(v)) for v in value) + "]"
    return value


def cell_id(notebook: str, params: Mapping[str, Any]) -> str:
    """Stable id: a hash of the notebook's file name, the complete parameters and fmstudy's version."""
    blob = json.dumps({"notebook": notebook, "params": params, "fmstudy": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_domain(file: Path, cell: Cell, checked: set[str]) -> None:
    """Build what the cell will build (benchmark, sampler, training options) so bad values fail now."""
    from .data import ORACLE_BENCHMARKS, benchmark_names, get_benchmark
    from .samplers import make_sampler
    from .train import TrainConfig

    p, where = cell.params, f"{file}: cell {dict(cell.labels)}"
    if "benchmark" in p and p["benchmark"] not in benchmark_names():
        raise GridError(f"{file}: benchmark: unknown benchmark {p['benchmark']!r}: known benchmarks are {', '.join(benchmark_names())}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in p.items() if k in fields})  # TrainConfig makes seeds a tuple
        key = json.dumps([cfg.benchmark, cfg.benchmark_options], sort_keys=True)
        if key not in checked:
            get_benchmark(cfg.benchmark, **cfg.benchmark_options)
            checked.add(key)
        sampler = make_sampler(cfg.sampler, cfg.seeds, cfg.t_eps)
    except (ValueError, TypeError) as err:
        raise GridError(f"{where}: {err}") from None
    if "bin_excess" in sampler.requires and cfg.benchmark not in ORACLE_BENCHMARKS:
        raise GridError(
            f"{file}: sampler: {sampler.name!r} needs an oracle and benchmark {cfg.benchmark!r} has none: "
            f"oracle benchmarks are {', '.join(ORACLE_BENCHMARKS)}"
        )


def _mapping(file: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{file}: {key}: must be a mapping of parameter names to values, not {type(value).__name__}")
    return value


def load_grid(file: str | os.PathLike, results: str | os.PathLike | None = None, pages: str | os.PathLike | None = None) -> Grid:
    """Read, validate and expand a grid file (see the module's docstring); raises :class:`GridError`."""
    file = Path(file)
    if not file.is_file():
        raise GridError(f"{file}: no such grid file")
    try:
        spec = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"{file}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(spec, dict):
        raise GridError(f"{file}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
    for key in spec:
        if key not in GRID_KEYS and not str(key).startswith("x-"):
            raise GridError(f"{file}: unknown key {key!r}: allowed keys are {', '.join(GRID_KEYS)} (and x-... for YAML anchors)")
    if "notebook" not in spec or not isinstance(spec["notebook"], str):
        raise GridError(f"{file}: notebook: missing: name the parameterised notebook (a path relative to the grid file)")
    here = file.parent
    notebook = (here / spec["notebook"]).resolve()
    if not notebook.is_file():
        raise GridError(f"{file}: notebook: {spec['notebook']!r} does not exist (looked for {notebook})")
    defaults = notebook_parameters(notebook)
    if ("axes" in spec) == ("grids" in spec):
        raise GridError(f"{file}: give exactly one of 'axes' (one grid) or 'grids' (a list of sub-grids)")
    subgrids = [{"name": "main", "axes": spec["axes"]}] if "axes" in spec else spec["grids"]
    if not isinstance(subgrids, list) or not subgrids:
        raise GridError(f"{file}: grids: must be a non-empty list of sub-grids with keys {', '.join(SUBGRID_KEYS)}")
    top_fixed = _mapping(file, "fixed", spec.get("fixed"))

    def check_param(where: str, name: str, value: Any) -> Any:
        if name in RUNNER_PARAMS:
            raise GridError(f"{file}: {where}: {name!r} is set by the runner, not by a grid file")
        if name not in defaults:
            allowed = ", ".join(k for k in defaults if k not in RUNNER_PARAMS)
            raise GridError(f"{file}: {where}: unknown parameter {name!r}: {notebook.name} takes {allowed}")
        return _coerce(f"{file}: {where}", value, defaults[name])

    fixed0 = {k: check_param(f"fixed.{k}", k, v) for k, v in top_fixed.items()}
    axis_names: list[str] = []
    grid_axes: dict[str, list[str]] = {}
    cells: dict[str, Cell] = {}
    expanded: list[tuple[str, dict[str, Any], list[tuple[str, list[Any]]]]] = []
    for i, sub in enumerate(subgrids):
        if not isinstance(sub, dict):
            raise GridError(f"{file}: grids[{i}]: must be a mapping with keys {', '.join(SUBGRID_KEYS)}")
        for key in sub:
            if key not in SUBGRID_KEYS:
                raise GridError(f"{file}: grids[{i}]: unknown key {key!r}: allowed keys are {', '.join(SUBGRID_KEYS)}")
        name = str(sub.get("name", f"grid{i}"))
        prefix = "" if "axes" in spec else f"grids[{i}]."
        fixed = dict(fixed0)
        fixed.update({k: check_param(f"{prefix}fixed.{k}", k, v) for k, v in _mapping(file, f"{prefix}fixed", sub.get("fixed")).items()})
        axes = _mapping(file, f"{prefix}axes", sub.get("axes"))
        if not axes:
            raise GridError(f"{file}: {prefix}axes: empty: give at least one parameter with a list of values")
        lists = []
        for k, values in axes.items():
            if isinstance(values, list) and not isinstance(defaults.get(k), list):  # a nested list (a YAML alias) is spliced in
                values = [v for item in values for v in (item if isinstance(item, list) else [item])]
            if not isinstance(values, list) or not values:
                raise GridError(f"{file}: {prefix}axes.{k}: must be a non-empty list of values, not {values!r}")
            lists.append((k, [check_param(f"{prefix}axes.{k}[{j}]", k, v) for j, v in enumerate(values)]))
            if k not in axis_names:
                axis_names.append(k)
        if name in grid_axes:
            raise GridError(f"{file}: {prefix}name: {name!r} names two sub-grids: give each its own name")
        grid_axes[name] = [k for k, _ in lists]
        expanded.append((name, fixed, lists))
    nb_name = notebook.name
    checked: set[str] = set()
    for name, fixed, lists in expanded:
        for combo in itertools.product(*(vals for _, vals in lists)):
            params = {k: v for k, v in defaults.items() if k not in RUNNER_PARAMS}
            params.update(fixed)
            params.update({k: v for (k, _), v in zip(lists, combo)})
            cid = cell_id(nb_name, params)
            if cid in cells:  # the same computation in two sub-grids runs once and belongs to both
                if name not in cells[cid].grids:
                    cells[cid] = dataclasses.replace(cells[cid], grids=(*cells[cid].grids, name))
                continue
            # labels over every axis of the file (an axis of one sub-grid is a fixed value in another)
            cell = Cell(cid, params, {k: _label(params[k]) for k in axis_names}, (name,))
            _check_domain(file, cell, checked)
            cells[cid] = cell
    for key in ("results", "pages"):
        if key in spec and not isinstance(spec[key], str):
            raise GridError(f"{file}: {key}: must be a folder path relative to the grid file")
    res = Path(results) if results is not None else here / spec.get("results", f"../results/{file.stem}")
    pag = Path(pages) if pages is not None else here / spec.get("pages", f"../book/runs/{file.stem}")
    slurm = _mapping(file, "slurm", spec.get("slurm"))
    return Grid(file, notebook, res.resolve(), pag.resolve(), tuple(axis_names), list(cells.values()), grid_axes, slurm,
                str(spec.get("description", "")))


# -- running one cell ---------------------------------------------------------------------------
def _record_path(results: Path, cid: str) -> Path:
    return results / "cells" / f"{cid}.json"


def _write_json(path: Path, obj: Any) -> None:
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
        rec = json.loads(_record_path(results, cid).read_text())
    except (OSError, ValueError):
        return False
    return _finished_result(results, rec) is not None


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
        for old in (cells_dir / f"{cell.id}.nc", _record_path(results, cell.id)):
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
        _write_json(_record_path(results, cell.id), record)
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
    labels = [{k: _label(v) for k, v in rec["params"].items()} for rec in records]
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
