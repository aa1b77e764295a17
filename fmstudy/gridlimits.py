"""Resource limits of a grid, checked in the dry run before anything runs.

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

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_LIMITS", "cell_memory_bytes", "data_bytes", "read_limits"]

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
