"""Reading and validating grid files: expand a grid file into cells (see :mod:`fmstudy.grid`).

A grid file (YAML, in ``papermill_params/``) names one parameterised notebook and the cells to
run it on. Its keys:

- ``notebook``: the notebook, relative to the grid file's folder;
- ``fixed``: parameter values shared by every cell;
- ``axes``: parameter -> list of values; the grid is their cross product; or ``grids``: a list of
  sub-grids, each with optional ``name``, ``fixed`` (over the top-level ones) and ``axes``, so
  one profile can hold, e.g., a sampler comparison and a learning-rate sweep. Cells that two
  sub-grids share run once (a cell's id depends only on what it computes). An axis named
  ``a+b`` is zipped: each of its values is a list ``[va, vb]`` setting both parameters, so a
  sub-grid can run each sampler at its own tuned rate (``sampler+lr: [[uniform, 0.03], ...]``);
- ``results`` and ``pages`` (optional): the results folder and the folder of executed notebooks
  (the book's run pages), relative to the grid file's folder;
- keys starting with ``x-``: ignored, a place for YAML anchors (``&name``) that axes reuse; a
  list inside an axis's list (an alias ``*name``) is spliced into it;
- ``slurm`` (optional): submitit parameters for ``--executor slurm`` (``timeout_min``,
  ``slurm_partition``, ``gpus_per_node``, ...); ``description`` (optional): free text;
- ``limits`` (optional): resource limits raised over their defaults (:mod:`fmstudy.gridcheck`).

Every parameter must exist in the notebook's ``parameters`` cell and have the type of its
default there; benchmarks, samplers and training options are checked by building them. A
bad file is refused with one line naming the file, the key and what is allowed, before
anything runs; so is a file that would exceed a resource limit (cells, steps, sizes, a cell's
memory). The YAML itself is read with bounds (:mod:`fmstudy.gridyaml`: no alias bombs, no
duplicate keys).

A cell's id hashes the notebook's name, its complete parameters and fmstudy's version.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .gridcheck import check_cell, one_line, read_limits
from .gridyaml import MAX_FILE_BYTES, float_hint, load_yaml, short
from .store import GridError, label

__all__ = ["Cell", "Grid", "cell_id", "load_grid", "notebook_parameters"]

GRID_KEYS = ("notebook", "description", "fixed", "axes", "grids", "results", "pages", "slurm", "limits")
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
    try:
        nb = json.loads(notebook.read_bytes())
        cells = nb["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise GridError(f"{notebook}: not a readable Jupyter notebook (JSON with a list of cells)") from None
    if not tagged:
        raise GridError(f"{notebook}: no cell tagged 'parameters': a grid notebook needs one")
    source = "".join(tagged[0]["source"]) if isinstance(tagged[0].get("source"), list) else str(tagged[0].get("source", ""))
    out = {}
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError):
        raise GridError(f"{notebook}: its parameters cell is not valid Python") from None
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                raise GridError(
                    f"{notebook}: parameters cell: {node.targets[0].id} is not a literal: a grid notebook's parameters are "
                    "plain values (numbers, strings, lists, mappings, None)") from None
    return out


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def _coerce(where: str, value: Any, default: Any) -> Any:
    """``value`` in the type of the notebook's default (an int is a float; a sampler's bare name
    is its mapping; a list's items have the type of the default's items, e.g. integer seeds)."""
    if default is None:
        return value
    if isinstance(default, dict) and isinstance(value, str):
        return {"name": value}
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, float) and not math.isfinite(value):
        raise GridError(f"{where}: {value!r} is not allowed: it must be a finite number")
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        kinds = {type(d) for d in default}
        if len(kinds) == 1 and default:
            for j, item in enumerate(value):
                if type(item) is not type(default[0]):
                    raise GridError(f"{where}[{j}]: {short(item)} is {type(item).__name__}: it must be {_type_name(default[0])}"
                                    f"{float_hint(item)}")
        return list(value)
    if type(value) is type(default):
        return value
    hint = float_hint(value) if isinstance(default, float) else ""
    raise GridError(f"{where}: {short(value)} is {type(value).__name__}: it must be {_type_name(default)}{hint}")


def cell_id(notebook: str, params: Mapping[str, Any]) -> str:
    """Stable id: a hash of the notebook's file name, the complete parameters and fmstudy's version."""
    blob = json.dumps({"notebook": notebook, "params": params, "fmstudy": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mapping(file: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{file}: {key}: must be a mapping of parameter names to values, not {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise GridError(f"{file}: {key}: {short(k)} is not allowed as a name: names are strings")
        if len(k) > 64:  # no parameter is named so; the name would fill every message that quotes it
            raise GridError(f"{file}: {key}: unknown parameter {short(k)}: a name of {len(k)} characters (names are short)")
    return value


def _zipped(where: str, key: str, values: Any, check: Any) -> list[tuple[Any, ...]]:
    """The values of a zipped axis ``a+b``: lists ``[va, vb]`` that set ``a`` and ``b`` together (e.g.
    each sampler at its own tuned rate), each checked as the parameter it sets."""
    names = key.split("+")
    if len(set(names)) != len(names) or not all(names):
        raise GridError(f"{where}: {short(key)} is not allowed: a zipped axis names distinct parameters joined by '+', e.g. sampler+lr")
    if not isinstance(values, list) or not values:
        raise GridError(f"{where}: must be a non-empty list of [{', '.join(names)}] lists, not {short(values)}")
    out = []
    for j, item in enumerate(values):
        if not isinstance(item, list) or len(item) != len(names):
            raise GridError(f"{where}[{j}]: {short(item)} is not allowed: give a list of {len(names)} values [{', '.join(names)}]")
        out.append(tuple(check(f"{where}[{j}].{n}", n, v) for n, v in zip(names, item)))
    return out


def _read(file: Path) -> dict[str, Any]:
    """The grid file's YAML mapping (bounded: see :mod:`fmstudy.gridyaml`)."""
    try:
        if not file.is_file():
            raise GridError(f"{file}: no such grid file")
        if file.stat().st_size > MAX_FILE_BYTES:
            raise GridError(f"{file}: {file.stat().st_size} bytes: a grid file is at most {MAX_FILE_BYTES} bytes")
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GridError(f"{file}: not UTF-8 text (byte {err.start}): a grid file is a UTF-8 YAML file") from None
    except OSError as err:
        raise GridError(f"{file}: cannot be read: {err.strerror}") from None
    try:
        spec = load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GridError(f"{file}: not valid YAML: {one_line(err.problem or err.context or err, 160)}{at}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise GridError(f"{file}: not valid YAML: {one_line(err, 160)}") from None
    if not isinstance(spec, dict):
        raise GridError(f"{file}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
    for key in spec:
        if not isinstance(key, str) or (key not in GRID_KEYS and not key.startswith("x-")):
            raise GridError(f"{file}: unknown key {short(key)}: allowed keys are {', '.join(GRID_KEYS)} (and x-... for YAML anchors)")
    return spec


def load_grid(file: str | os.PathLike, results: str | os.PathLike | None = None, pages: str | os.PathLike | None = None,
              limits: Mapping[str, Any] | None = None) -> Grid:
    """Read, validate and expand a grid file (see the module's docstring); raises :class:`GridError`.
    ``limits`` raises resource limits over the file's own ``limits`` (the command line's ``--limit``)."""
    file = Path(file)
    spec = _read(file)
    try:
        lim = read_limits(f"{file}: limits", spec.get("limits"))
        lim = read_limits("--limit", {**{k: v for k, v in lim.items()}, **(limits or {})})
    except ValueError as err:
        raise GridError(str(err)) from None
    if "notebook" not in spec or not isinstance(spec["notebook"], str):
        raise GridError(f"{file}: notebook: missing: name the parameterised notebook (a path relative to the grid file)")
    here = file.parent
    try:
        notebook = (here / spec["notebook"]).resolve()
        found = notebook.is_file()
    except (OSError, ValueError, RuntimeError):
        found = False
    if not found:
        raise GridError(f"{file}: notebook: {short(spec['notebook'])} does not exist (looked in {here})")
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
            raise GridError(f"{file}: {where}: unknown parameter {short(name)}: {notebook.name} takes {allowed}")
        return _coerce(f"{file}: {where}", value, defaults[name])

    fixed0 = {k: check_param(f"fixed.{k}", k, v) for k, v in top_fixed.items()}
    axis_names: list[str] = []
    grid_axes: dict[str, list[str]] = {}
    cells: dict[str, Cell] = {}
    expanded: list[tuple[str, dict[str, Any], list[tuple[str, list[Any]]]]] = []
    total = 0
    for i, sub in enumerate(subgrids):
        if not isinstance(sub, dict):
            raise GridError(f"{file}: grids[{i}]: must be a mapping with keys {', '.join(SUBGRID_KEYS)}")
        for key in sub:
            if key not in SUBGRID_KEYS:
                raise GridError(f"{file}: grids[{i}]: unknown key {short(key)}: allowed keys are {', '.join(SUBGRID_KEYS)}")
        if not isinstance(sub.get("name", ""), (str, int)):
            raise GridError(f"{file}: grids[{i}].name: must be a short string, not {type(sub['name']).__name__}")
        name = str(sub.get("name", f"grid{i}"))
        prefix = "" if "axes" in spec else f"grids[{i}]."
        if len(name) > 64:
            raise GridError(f"{file}: {prefix}name: {short(name)} is too long: a sub-grid's name is at most 64 characters")
        fixed = dict(fixed0)
        fixed.update({k: check_param(f"{prefix}fixed.{k}", k, v) for k, v in _mapping(file, f"{prefix}fixed", sub.get("fixed")).items()})
        axes = _mapping(file, f"{prefix}axes", sub.get("axes"))
        if not axes:
            raise GridError(f"{file}: {prefix}axes: empty: give at least one parameter with a list of values")
        lists = []
        named: list[str] = []
        for k, values in axes.items():
            twice = [n for n in str(k).split("+") if n in named]
            if twice:  # the later axis would silently overwrite the earlier one's values
                raise GridError(f"{file}: {prefix}axes.{k}: {twice[0]!r} is set by two axes of this sub-grid, which is not allowed: name it in one")
            named += str(k).split("+")
            if "+" in k:  # a zipped axis: its values set several parameters together
                lists.append((k, _zipped(f"{prefix}axes.{k}", k, values, check_param)))
                axis_names.extend(n for n in k.split("+") if n not in axis_names)
                continue
            if isinstance(values, list) and not isinstance(defaults.get(k), list):  # a nested list (a YAML alias) is spliced in
                values = [v for item in values for v in (item if isinstance(item, list) else [item])]
            if not isinstance(values, list) or not values:
                raise GridError(f"{file}: {prefix}axes.{k}: must be a non-empty list of values, not {short(values)}")
            lists.append((k, [check_param(f"{prefix}axes.{k}[{j}]", k, v) for j, v in enumerate(values)]))
            if k not in axis_names:
                axis_names.append(k)
        if name in grid_axes:
            raise GridError(f"{file}: {prefix}name: {short(name)} names two sub-grids: give each its own name")
        total += math.prod(len(vals) for _, vals in lists)  # counted before any product is built
        if total > lim["cells"]:
            raise GridError(f"{file}: {prefix}axes: the grid has more than {lim['cells']:g} cells ({total} so far): raise the limit "
                            "with 'limits: {cells: ...}' in the grid file or --limit cells=... if you mean it")
        grid_axes[name] = [n for k, _ in lists for n in k.split("+")]
        expanded.append((name, fixed, lists))
    nb_name = notebook.name
    checked: dict[str, Any] = {}
    for name, fixed, lists in expanded:
        for combo in itertools.product(*(vals for _, vals in lists)):
            params = {k: v for k, v in defaults.items() if k not in RUNNER_PARAMS}
            params.update(fixed)
            for (k, _), v in zip(lists, combo):
                params.update(zip(k.split("+"), v) if "+" in k else [(k, v)])
            cid = cell_id(nb_name, params)
            if cid in cells:  # the same computation in two sub-grids runs once and belongs to both
                if name not in cells[cid].grids:
                    cells[cid] = dataclasses.replace(cells[cid], grids=(*cells[cid].grids, name))
                continue
            # labels over every axis of the file (an axis of one sub-grid is a fixed value in another)
            cell = Cell(cid, params, {k: label(params[k]) for k in axis_names}, (name,))
            check_cell(file, cell, checked, lim)
            cells[cid] = cell
    for key in ("results", "pages"):
        if key in spec and not isinstance(spec[key], str):
            raise GridError(f"{file}: {key}: must be a folder path relative to the grid file")
    if not isinstance(spec.get("description", ""), str):
        raise GridError(f"{file}: description: must be text")
    res = Path(results) if results is not None else here / spec.get("results", f"../results/{file.stem}")
    pag = Path(pages) if pages is not None else here / spec.get("pages", f"../book/runs/{file.stem}")
    slurm = _mapping(file, "slurm", spec.get("slurm"))
    return Grid(file, notebook, res.resolve(), pag.resolve(), tuple(axis_names), list(cells.values()), grid_axes, slurm,
                str(spec.get("description", "")))
