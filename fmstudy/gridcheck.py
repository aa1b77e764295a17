"""Checks of one grid cell before anything runs: its values, by building what it will build
(benchmark, sampler, training options), and its resources against limits.

A grid file can ask for more than any machine has (10^8 cells, a billion steps, a 76 GB cell);
the grid runner refuses it in one line instead of starting. Each limit has a default that
suits this study's profiles with a wide margin and can be raised explicitly, in the grid file

    limits: {cells: 20000, memory_gb: 64}

or on the command line (``--limit memory_gb=64``, which wins over the file).

A cell's memory is an estimate (:func:`cell_memory_bytes`), an upper-bound sketch of the
largest buffers of one run, not a measurement: float32 model state (parameters, gradients,
Adam's two moments, the EMA copy, one spare) per member, activations kept for the backward pass
and the per-sample gradient norms over a training batch or a probe bin, the probe sets, the
per-step loss log, the result arrays and the evaluation's samples.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import check_int
from .gridyaml import short
from .store import GridError

__all__ = ["DEFAULT_LIMITS", "cell_memory_bytes", "check_cell", "data_bytes", "one_line", "read_limits"]

DEFAULT_LIMITS: dict[str, float] = {
    "cells": 5000,  # cells of one grid file (the full profile has 332)
    "members": 256,  # seeds per cell
    "steps": 1_000_000,
    "batch_size": 65_536,
    "n_bins": 1000,
    "probe_per_bin": 65_536,
    "hidden": 8192,
    "depth": 64,
    "eval_samples": 100_000,
    "ode_steps": 100_000,
    "memory_gb": 8.0,  # the estimate of one cell's memory, GiB
}


def read_limits(where: str, given: Any) -> dict[str, float]:
    """The defaults updated by ``given`` (a mapping name -> positive number); raises ValueError."""
    if given is None:
        return dict(DEFAULT_LIMITS)
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: must be a mapping of limit names to numbers, e.g. {{cells: 20000}}")
    out = dict(DEFAULT_LIMITS)
    for key, value in given.items():
        if key not in DEFAULT_LIMITS:
            raise ValueError(f"{where}: unknown limit {str(key)[:40]!r}: limits are {', '.join(DEFAULT_LIMITS)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 < value < float("inf") or (key != "memory_gb" and value != int(value)):
            kind = "a positive number" if key == "memory_gb" else "a positive integer"
            raise ValueError(f"{where}.{key}: {str(value)[:40]!r} is not allowed: a limit must be {kind}")
        out[key] = value
    return out


def data_bytes(options: Mapping[str, Any]) -> int:
    """What a benchmark's data could take before it is built, from the options that size it
    (held-out points, samples, dimension, mixture components); defaults where not given. An
    upper-bound sketch: float64 points of up to 64 dimensions (the largest built-in dataset),
    and for a random mixture its d x d covariances (three copies while they are made)."""
    def num(key: str, default: int) -> int:
        v = options.get(key, default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default

    dim = num("dim", 64)
    points = max(num("n_heldout", 5000), num("num_samples", 5000))
    return 8 * (points * dim + 3 * num("n_components", 8) * dim * dim)


def cell_memory_bytes(p: Mapping[str, Any], dim: int, hidden: int, depth: int) -> int:
    """The estimate described in the module's docstring, for cell parameters ``p`` on data of
    dimension ``dim`` with a ``depth`` x ``hidden`` MLP (bytes)."""
    members = len(p.get("seeds", [0]))
    n_in = dim + 1 + 2 * 8  # x and the time embedding (fmstudy.models.MLPConfig, 8 frequencies)
    n_params = n_in * hidden + hidden + (depth - 1) * (hidden * hidden + hidden) + hidden * dim + dim
    rows = max(p.get("batch_size", 256), p.get("probe_per_bin", 256))
    n_bins = p.get("n_bins", 20)
    state = 6 * members * n_params
    activations = 6 * members * rows * (hidden * depth + n_in + dim)
    probes = 4 * n_bins * p.get("probe_per_bin", 256) * (dim + 1)
    log = 2 * members * p.get("steps", 1000)
    results = 16 * members * p.get("n_checkpoints", 12) * n_bins
    evaluation = 6 * members * p.get("eval_samples", 1000) * (dim + hidden)
    return 4 * (state + activations + probes + log + results + evaluation)


def one_line(err: BaseException, limit: int = 240) -> str:
    """An error's message on one line, cut to ``limit`` characters (it may quote a long value)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _over(file: Path, where: str, name: str, value: Any, limits: Mapping[str, float]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limits[name]:
        raise GridError(
            f"{file}: {where}: {name}={short(value)} exceeds the limit {limits[name]:g}: raise it with 'limits: {{{name}: ...}}' "
            f"in the grid file or --limit {name}=... if you mean it")


def check_cell(file: Path, cell: Any, checked: dict[str, Any], limits: Mapping[str, float]) -> None:
    """Build what ``cell`` (a :class:`fmstudy.gridfile.Cell`) will build (benchmark, sampler,
    training options, evaluation settings) so bad values fail now, and check it against the
    resource limits; ``checked`` caches the benchmarks built so far. Raises :class:`GridError`."""
    from .benchmark_base import ORACLE_BENCHMARKS
    from .data import benchmark_names, get_benchmark
    from .samplers import make_sampler
    from .solvers import METHODS
    from .train import TrainConfig

    p, where = cell.params, f"cell {short(dict(cell.labels), 160)}"
    if "benchmark" in p and p["benchmark"] not in benchmark_names():
        raise GridError(f"{file}: benchmark: unknown benchmark {short(p['benchmark'])}: known benchmarks are {', '.join(benchmark_names())}")
    for name in ("steps", "batch_size", "n_bins", "probe_per_bin", "hidden", "depth", "eval_samples", "ode_steps"):
        _over(file, where, name, p.get(name), limits)
    if isinstance(p.get("seeds"), list):
        _over(file, where, "members", len(p["seeds"]), limits)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in p.items() if k in fields})  # TrainConfig makes seeds a tuple
        key = json.dumps([cfg.benchmark, cfg.benchmark_options], sort_keys=True)
        if key not in checked:
            need = data_bytes(cfg.benchmark_options)
            if need > limits["memory_gb"] * 2**30:
                raise GridError(
                    f"{file}: {where}: benchmark_options would make about {need / 2**30:.1f} GiB of data, over the limit "
                    f"{limits['memory_gb']:g} GiB: raise it with 'limits: {{memory_gb: ...}}' or --limit memory_gb=... if you mean it")
            checked[key] = get_benchmark(cfg.benchmark, **cfg.benchmark_options)
        bench = checked[key]
        spec = dict(cfg.sampler)
        sampler = make_sampler(spec, cfg.seeds, cfg.t_eps)
        if "n_bins" in spec and spec["n_bins"] != cfg.n_bins:
            raise ValueError(f"sampler n_bins={short(spec['n_bins'])} is not allowed: adaptive samplers use the run's n_bins={cfg.n_bins}")
        if "eval_samples" in p:
            n = len(bench.heldout)
            check_int("eval_samples", p["eval_samples"], 2, n, why=f" (benchmark {cfg.benchmark!r} has {n} held-out points)")
        if "ode_steps" in p:
            check_int("ode_steps", p["ode_steps"], 1)
        if "ode_method" in p and p["ode_method"] not in METHODS:
            raise ValueError(f"ode_method={short(p['ode_method'])} is not allowed: ode_method must be one of {', '.join(METHODS)}")
    except GridError:
        raise
    except (ValueError, TypeError, OverflowError) as err:
        raise GridError(f"{file}: {where}: {one_line(err)}") from None
    if "bin_excess" in sampler.requires and cfg.benchmark not in ORACLE_BENCHMARKS:
        raise GridError(
            f"{file}: sampler: {sampler.name!r} needs an oracle and benchmark {cfg.benchmark!r} has none: "
            f"oracle benchmarks are {', '.join(ORACLE_BENCHMARKS)}"
        )
    need = cell_memory_bytes(p, bench.dim, cfg.hidden or bench.model_hidden, cfg.depth or bench.model_depth)
    if need > limits["memory_gb"] * 2**30:
        raise GridError(
            f"{file}: {where}: this cell would need about {need / 2**30:.1f} GiB, over the limit {limits['memory_gb']:g} GiB "
            "(members x hidden x batch or probe sizes): raise it with 'limits: {memory_gb: ...}' or --limit memory_gb=... if you mean it")
