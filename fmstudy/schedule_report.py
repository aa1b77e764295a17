"""Chapter 5's sample metrics beside their noise floors (the paper profile ships no run pages,
so the chapter shows them itself).

A cell's sample metric (``sample_<m>``, one value per seed: a distance between ODE samples and
held-out points) has a noise floor ``floor_<m>``: the same distance between those held-out
points and independent real sets of the same size, mean over repeats, with its standard
deviation ``floor_<m>_std``. Per cell and metric the table gives the median over seeds and

    z = (median - floor) / floor_std,

the distance of the median above the floor in units of the floor's own spread: where |z| is
about 1 or less the metric cannot tell the model's samples from real data of that size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import Estimate, steps_to_reach

__all__ = ["METRICS", "far_from_floor", "last_step_share", "sample_floor_table", "within_tuning_error"]

METRICS = {"sw": "sliced W2", "energy": "energy distance", "w2": "W2", "mmd": "MMD²"}


def sample_floor_table(ds: xr.Dataset, metrics: Sequence[str] = ("sw", "energy"), by: Sequence[str] = ("sigma", "sampler")) -> pd.DataFrame:
    """One row per cell of ``ds`` that ran (indexed by ``by``, its other axes selected), per
    metric the median over seeds, the floor as "mean ± sd" and z (module docstring); empty when
    ``ds`` has none of the metrics."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics={list(metrics)!r} is not allowed: {unknown} unknown (known: {sorted(METRICS)})")
    have = [m for m in metrics if f"sample_{m}" in ds and f"floor_{m}" in ds and f"floor_{m}_std" in ds]
    extra = [d for d in ds["cell_id"].dims if d not in by]
    if extra:
        raise ValueError(f"results with axes {extra} besides {list(by)} are not allowed: select them first")
    ids = ds["cell_id"].transpose(*[d for d in by if d in ds["cell_id"].dims])  # rows ordered by ``by``
    rows = []
    for idx in np.ndindex(ids.shape):
        at = dict(zip(ids.dims, idx))
        cell = ds.isel(at)
        if not str(cell["cell_id"].values) or not have:
            continue
        row = {d: cell[d].values.item() for d in by}
        for m in have:
            name = METRICS[m]
            values = cell[f"sample_{m}"].values.astype(float)
            med = float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() else np.nan
            floor, sd = float(cell[f"floor_{m}"]), float(cell[f"floor_{m}_std"])
            row[(name, "median of seeds")] = med
            row[(name, "floor ± sd")] = f"{floor:.3g} ± {sd:.2g}"
            row[(name, "z")] = round((med - floor) / sd, 2) if sd > 0 else np.nan
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows).set_index(list(by))
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def far_from_floor(table: pd.DataFrame, z: float = 2.0) -> list[str]:
    """The rows of :func:`sample_floor_table` with some metric's z above ``z``, as
    "sampler (sigma s: metric z=...)" in the table's order."""
    if not np.isfinite(z):
        raise ValueError(f"z={z!r} is not allowed: it must be a finite number")
    out = []
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        names = dict(zip(table.index.names, key))
        hits = [f"{m} z = {row[(m, 'z')]:.1f}" for m in dict.fromkeys(c[0] for c in table.columns) if row[(m, "z")] > z]
        if hits:
            where = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in names.items() if k != "sampler")
            out.append(f"{names.get('sampler', key[-1])} ({where + ': ' if where else ''}{'; '.join(hits)})")
    return out


def last_step_share(curves: np.ndarray, steps: np.ndarray) -> tuple[int, int]:
    """(k, n): of the n seeds with a finite final value (rows of ``curves`` [seed, checkpoint]
    at ``steps``), the k whose curve first reaches its own final value at the last checkpoint,
    i.e. the seeds on which a speed-up's target (the baseline's final value) is the baseline's
    own last step."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    steps = np.asarray(steps, dtype=float)
    if curves.shape[-1] != steps.size:
        raise ValueError(f"curves with {curves.shape[-1]} checkpoints and {steps.size} steps are not allowed: they must agree")
    ok = [c for c in curves if np.isfinite(c[-1])]
    return sum(steps_to_reach(c, steps, c[-1]) == steps[-1] for c in ok), len(ok)


def within_tuning_error(tables: dict[float, pd.DataFrame], cost: pd.Series, baseline: str = "uniform",
                        column: str = "ratio") -> list[str]:
    """The rows of chapter 5's tables (per sigma, ``report.against_baseline``) whose ratio to
    ``baseline`` the learning-rate rule's error could explain: with ``cost`` the rule's cost
    (``lr_tuning.rule_cost``, L.2; at least 1) per sampler, the comparison of s with the
    baseline can be biased by a factor ``c = cost_s / cost_baseline``; the ratio corrected
    for it, r / c, has an interval containing 1 exactly when c lies in the ratio's interval
    [lo, hi] (chapter 9's test). Returned as "s at σ = x (ratio r; cost ratio c)", in table
    order; rows without a cost, or whose interval already contains 1, are left out."""
    out = []
    if baseline not in cost.index:
        return out
    for sigma, table in tables.items():
        for name, e in table[column].items():
            if name == baseline or name not in cost.index or not isinstance(e, Estimate) or not np.isfinite(e.value):
                continue
            if e.lo <= 1 <= e.hi:
                continue
            c = float(cost[name]) / float(cost[baseline])
            if e.lo <= c <= e.hi:
                out.append(f"{name} at σ = {float(sigma):g} (ratio {e.value:.3g}; cost ratio {c:.3g})")
    return out
