"""What a profile's runs cost, as the book reports it: compute per cell in training FLOPs, and
wall-clock per execution only (re-exported by :mod:`fmstudy.report`).

Cells of one pack (:mod:`fmstudy.packrun`) are trained as one ensemble and share one clock:
their netCDF ``train_seconds`` is the pack's, and their record's ``seconds`` is the pack's
wall time shared equally. Seconds therefore cannot compare cells. Cells are compared by their
training FLOPs per member (flops.py, F.5: the steps' forward and backward passes, the samplers'
extra passes and gradient norms), which do not depend on what ran beside them; wall-clock is
given per execution (a pack, or a cell run alone), with its model-steps per second

    rate = sum_cells members x steps / W_execution.

Throughput benchmarks (``benchmarks/throughput.py``, ``benchmarks/grid_throughput.py``) are
read round by round: a ratio is the median over rounds of the per-round ratio, with its range.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .flops import training_flops
from .store import cell_result, label, ok_records
from .tables import model_of, sampler_norms

__all__ = ["cell_costs", "executions", "grid_throughput_table", "median_range"]


def median_range(values: Any) -> tuple[float, float, float]:
    """(median, min, max) of ``values`` (NaN for none)."""
    v = np.asarray(list(values), dtype=float)
    return (float(np.median(v)), float(v.min()), float(v.max())) if v.size else (np.nan, np.nan, np.nan)


def _cell_flops(rec: dict[str, Any], ds: xr.Dataset) -> float:
    """Training FLOPs per member of the cell at its last checkpoint (F.5)."""
    params = rec["params"]
    model, batch = model_of(xr.Dataset(attrs={"fixed": json.dumps(params, default=str)}))
    train, extra = sampler_norms(str(label(params["sampler"])))
    stride = int(params.get("norm_stride") or 8)
    c = training_flops(model, ds.checkpoint.values[-1:], batch, np.nan_to_num(ds["extra_forward"].values[-1:]),
                       np.nan_to_num(ds["extra_backward"].values[-1:]), train, extra, norm_fraction=1.0 / stride if train == "adam" else 1.0)
    return float(c[-1])


def cell_costs(results: Path) -> pd.DataFrame:
    """One row per finished cell of ``results`` (``store.cell_result``; a damaged one is left
    out with a warning naming it): its sub-grid (the first it belongs to),
    benchmark, sampler, ``members`` (seeds), ``steps``, ``batch``, ``flops_per_member`` (training
    FLOPs per member, F.5) and ``flops`` (times the members), the samplers' extra forward and
    backward samples per training sample, and ``execution`` (its pack's cells joined by '+', or
    its own id) with ``execution_cells``."""
    rows = []
    for rec in ok_records(results):
        ds, why = cell_result(Path(results), rec)
        if ds is None:  # as collect does: a damaged cell is named and left out
            warnings.warn(f"cell {rec.get('id')} is left out of the costs: {why}", stacklevel=2)
            continue
        members, seen = ds.sizes["member"], max(float(ds.samples_seen.values[-1]), 1.0)
        per_member = _cell_flops(rec, ds)
        pack = sorted(rec.get("pack") or [rec["id"]])
        rows.append({
            "id": rec["id"], "sub-grid": rec["grids"][0] if rec.get("grids") else rec.get("grid", ""),
            "benchmark": rec["params"].get("benchmark"), "sampler": str(rec["labels"].get("sampler", label(rec["params"]["sampler"]))),
            "members": members, "steps": int(ds.checkpoint.values[-1]), "batch": rec["params"].get("batch_size"),
            "flops_per_member": per_member, "flops": per_member * members,
            "extra_forward_per_sample": float(np.nan_to_num(ds.extra_forward.values[-1])) / seen,
            "extra_backward_per_sample": float(np.nan_to_num(ds.extra_backward.values[-1])) / seen,
            "execution": "+".join(pack), "execution_cells": len(pack),
            "train_seconds": float(ds.train_seconds.values[-1]),
            "wall_seconds": float(rec.get("pack_seconds", rec.get("seconds", np.nan))),
        })
    return pd.DataFrame(rows)


def executions(costs: pd.DataFrame) -> pd.DataFrame:
    """One row per execution (a pack, or a cell run alone) of :func:`cell_costs`'s table:
    ``cells``, ``members`` and ``model_steps`` (summed over its cells), ``wall_seconds`` (the
    execution's: kernel, training, evaluation, page), ``train_seconds`` (its training clock,
    shared by a pack's cells), ``model_steps_per_s`` (model-steps / wall seconds) and
    ``train_share`` (training seconds / wall seconds)."""
    if costs.empty:
        return pd.DataFrame(columns=["cells", "members", "model_steps", "wall_seconds", "train_seconds", "model_steps_per_s", "train_share"])
    c = costs.assign(model_steps=costs["members"] * costs["steps"])
    ex = c.groupby("execution", sort=False).agg(cells=("id", "size"), members=("members", "sum"), model_steps=("model_steps", "sum"),
                                                 wall_seconds=("wall_seconds", "max"), train_seconds=("train_seconds", "max"))
    ex["model_steps_per_s"] = ex["model_steps"] / ex["wall_seconds"]
    ex["train_share"] = ex["train_seconds"] / ex["wall_seconds"]
    return ex


def grid_throughput_table(record: dict[str, Any]) -> tuple[pd.DataFrame, tuple[float, float, float]]:
    """A ``benchmarks/grid_throughput.py --json`` record read from its rounds: per way (per
    cell, packed) the wall seconds and model-steps/s as median, min and max over the rounds;
    and (median, min, max) of the per-round ratio per-cell seconds / packed seconds."""
    rounds = record["rounds"]
    rows = {}
    for way in ("per cell", "packed"):
        secs = median_range(r[way]["seconds"] for r in rounds)
        rate = median_range(record["model_steps"] / r[way]["seconds"] for r in rounds)
        rows[way] = {"wall s": secs[0], "wall s min": secs[1], "wall s max": secs[2],
                     "model-steps/s": rate[0], "model-steps/s min": rate[1], "model-steps/s max": rate[2],
                     "executions": int(np.median([r[way]["executions"] for r in rounds]))}
    ratio = median_range(r["per cell"]["seconds"] / r["packed"]["seconds"] for r in rounds)
    return pd.DataFrame(rows).T, ratio
