"""Running a pack of grid cells: the cells that differ only in sampler, learning rate and seeds
trained as one heterogeneous ensemble by one papermill execution (see :mod:`fmstudy.grid`).

Cells pack together when every other parameter is the same (:func:`pack_key`); a grid's
unfinished cells are cut into packs of at most ``size`` cells in the grid's order
(:func:`make_packs`). A pack runs the cell notebook's sibling ``<name>_pack.ipynb`` (for
``grid_cell.ipynb``, ``grid_pack.ipynb``), whose parameters are the cell notebook's plus
``cells``: one ``{"cell_id", "output", "sampler", "lr", "seeds"}`` per cell. It trains the
members as one run, splits it back into cells and writes each cell's own netCDF file under
the cell's own name, so each cell's files are those of a cell run alone (:mod:`fmstudy.store`).

The runner claims every cell of the pack (one ``flock`` each, as :func:`fmstudy.cellrun.run_cell`
does), runs only those neither finished nor claimed elsewhere, and then, per cell whose result
the notebook wrote: the pack's executed page, titled and tabled for that cell, as the cell's
page, and an ``ok`` record (its ``seconds`` the pack's time shared equally, ``pack_seconds``
the whole, ``pack`` the cells that ran together). Records are written last, so a pack killed
at any point leaves each cell finished or not, never half: a rerun runs each unfinished cell
exactly once. A cell without a result (the pack failed, or the notebook skipped it) is then
run alone by ``run_cell``, which records its own failure and log: one bad cell never costs
the others their results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .cellrun import base_record, claim, clear_cell, decorate_page, kernel_manager, run_cell
from .gridfile import Cell, Grid
from .results import read_netcdf
from .store import is_finished, record_path, write_json

__all__ = ["PER_PACK", "make_packs", "pack_key", "pack_notebook", "run_pack"]

PER_PACK = ("sampler", "lr", "seeds")  # the parameters in which the cells of one pack may differ


def pack_notebook(notebook: Path) -> Path | None:
    """The pack notebook beside a cell notebook ``<name>_cell.ipynb``: ``<name>_pack.ipynb``, if it exists."""
    if not notebook.stem.endswith("_cell"):
        return None
    path = notebook.with_name(notebook.stem.removesuffix("_cell") + "_pack.ipynb")
    return path if path.is_file() else None


def pack_key(cell: Cell) -> str:
    """Cells with one key can share an ensemble: every parameter but sampler, lr and seeds equal
    (and lr too under an objective-changing weighting, whose one optimiser has one rate: the
    engine refuses such packs)."""
    free = PER_PACK if not cell.params.get("weighting") else tuple(k for k in PER_PACK if k != "lr")
    return json.dumps({k: v for k, v in cell.params.items() if k not in free}, sort_keys=True, default=str)


def make_packs(cells: list[Cell], size: int) -> list[list[Cell]]:
    """``cells`` grouped by :func:`pack_key` (in order of first appearance) and cut into packs of
    at most ``size`` cells; ``size`` 1 gives one cell per pack (the runner's per-cell execution)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(pack_key(cell), []).append(cell)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def _written(path: Path, cid: str) -> bool:
    """Whether the notebook wrote the cell's result: it opens and carries the cell's id."""
    try:
        return read_netcdf(path).attrs.get("cell_id") == cid
    except Exception:  # noqa: BLE001 - missing or unreadable: not written
        return False


def run_pack(grid: Grid, cells: list[Cell], force: bool = False) -> list[dict[str, Any]]:
    """Run the pack ``cells`` (see the module docstring); one record per cell, as ``run_cell``'s.
    Without a pack notebook, or with one cell left to run, each cell runs alone."""
    notebook = pack_notebook(grid.notebook)
    if notebook is None or len(cells) < 2 or not all(k in c.params for c in cells for k in PER_PACK):
        return [run_cell(grid, c, force) for c in cells]
    import papermill

    records: dict[str, dict[str, Any]] = {}
    alone: list[Cell] = []
    with contextlib.ExitStack() as stack:
        todo = []
        for cell in cells:
            if not stack.enter_context(claim(grid.results, cell.id)):
                records[cell.id] = {"id": cell.id, "status": "claimed"}
            elif not force and is_finished(grid.results, cell.id, grid.pages):
                records[cell.id] = {"id": cell.id, "status": "skipped"}
            else:
                todo.append(cell)
        if len(todo) == 1:
            alone = todo  # run alone below, once its claim is released
        elif todo:
            alone = _execute(grid, notebook, todo, records, papermill)
    for cell in alone:
        records[cell.id] = run_cell(grid, cell, force)
    return [records[c.id] for c in cells]


def _execute(grid: Grid, notebook: Path, todo: list[Cell], records: dict[str, dict[str, Any]], papermill: Any) -> list[Cell]:
    """Execute the pack notebook on the claimed cells ``todo``; fill ``records`` for those it
    finished and return the others (to run alone)."""
    cells_dir = grid.results / "cells"
    name = "pack-" + hashlib.sha256(" ".join(c.id for c in todo).encode()).hexdigest()[:16]
    for cell in todo:
        clear_cell(grid, cell.id)
    # named after its first cell, so a killed pack's page goes with that cell's leftovers (clear_cell)
    tmp_page, log = grid.pages / f".{todo[0].id}.pack.running.json", cells_dir / f"{name}.log"
    outputs = {c.id: cells_dir / f"{c.id}.nc" for c in todo}
    members = [{"cell_id": c.id, "output": str(outputs[c.id]), **{k: c.params[k] for k in PER_PACK}} for c in todo]
    tic = time.perf_counter()
    error = ""
    try:
        log.write_text("")
        with open(log, "a") as out:  # appending: the kernel process writes to it too
            papermill.execute_notebook(
                str(notebook), str(tmp_page), parameters={**todo[0].params, "output": "", "cell_id": "", "cells": members},
                progress_bar=False, log_output=True, stdout_file=out, stderr_file=out, cwd=str(notebook.parent),
                kernel_manager_class=kernel_manager(out, grid.results),
            )
    except Exception as err:  # the cells it did not write run alone, each recording its own failure
        error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"[:500]
    except BaseException:  # Ctrl-C: no half-made page; the results written so far have no record, so they rerun
        tmp_page.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - tic
    done = [c for c in todo if _written(outputs[c.id], c.id)] if tmp_page.exists() else []
    try:
        note = (f"This cell ran in a pack of {len(todo)} cells trained as one ensemble (`{notebook.name}`): "
                f"{', '.join(f'`{c.id}`' for c in todo)}. The page below is the pack's; this cell's rows carry its id.")
        for cell in done:
            page, tmp = grid.pages / f"{cell.id}.ipynb", grid.pages / f".{cell.id}.running.json"
            shutil.copyfile(tmp_page, tmp)
            decorate_page(tmp, cell, note)
            os.replace(tmp, page)
        for cell in done:  # records last: a kill before here leaves these cells unfinished, to run again
            record = base_record(grid, cell)
            record.update(status="ok", seconds=seconds / len(todo), pack_seconds=seconds, pack=[c.id for c in todo],
                          pack_notebook=notebook.name, log=str(log))
            write_json(record_path(grid.results, cell.id), record)
            records[cell.id] = record
        if error and tmp_page.exists():  # the executed pack, kept for the post-mortem (pages may be on another filesystem)
            with contextlib.suppress(OSError):
                shutil.move(tmp_page, cells_dir / f"{name}.failed.ipynb")
    finally:
        tmp_page.unlink(missing_ok=True)
    if error:
        with open(log, "a") as out:
            out.write(f"\nfmstudy: the pack failed ({error}); its {len(todo) - len(done)} unfinished cells run alone\n")
    return [c for c in todo if c.id not in records]
