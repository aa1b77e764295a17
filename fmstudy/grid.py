"""The grid runner's public entry point: expand a grid file into cells, execute each with
papermill, collect the results (``fmstudy.grid.load_grid``, ``run_grid``, ``collect``).

The work is done in three modules, one job each:

- :mod:`fmstudy.gridfile`: reading and validating a grid file (its keys are documented there)
  and the cells' ids, with :mod:`fmstudy.gridyaml` (strict, bounded YAML) and
  :mod:`fmstudy.gridcheck` (each cell's values built once, resource limits);
- :mod:`fmstudy.runner`: executing a grid (in this process, a local pool, or submitit), each
  cell by :mod:`fmstudy.cellrun` (claim, papermill, page, record);
- :mod:`fmstudy.store`: the results folder (cell files, records, which cells are finished,
  ``collect``), below :mod:`fmstudy.report`, which reads it without importing the runner.
"""

from __future__ import annotations

from .cellrun import run_cell
from .gridfile import Cell, Grid, cell_id, load_grid
from .runner import Summary, preflight, run_grid
from .store import GridError, collect, is_finished

__all__ = ["Cell", "Grid", "GridError", "Summary", "cell_id", "collect", "is_finished", "load_grid", "preflight", "run_cell", "run_grid"]
