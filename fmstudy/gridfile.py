"""Reading and validating grid files: expand a grid file into cells (see :mod:`fmstudy.grid`).

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

A cell's id hashes the notebook's name, its complete parameters and fmstudy's version.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .store import GridError, label

__all__ = ["Cell", "Grid", "cell_id", "load_grid", "notebook_parameters"]

GRID_KEYS = ("notebook", "description", "fixed", "axes", "grids", "results", "pages", "slurm")
SUBGRID_KEYS = ("name", "fixed", "axes")
RUNNER_PARAMS = ("output", "cell_id")  # injected by the runner into every cell, never set by a grid file


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
            cell = Cell(cid, params, {k: label(params[k]) for k in axis_names}, (name,))
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
