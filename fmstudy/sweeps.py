"""Comparisons across a sweep (issue 15): the comparison against the baseline at each budget
(``steps``, separate runs, each with its own schedule and checkpoints) and at each sigma, as
one table per sweep with Holm's correction over all of its rows.

A sweep's collected grid has ``sampler`` (each at its tuned rate: a zipped ``sampler+lr`` axis
is collapsed first, ``lr_tuning.collapse_rate``), the swept axis and possibly others
(benchmark, benchmark_options). Each combination of the other axes is one group: its cells share
seeds, and the comparison of each sampler against the baseline is paired over them
(``tables.comparison_table``: analysis A.2-A.4, A.7, flops F.5). Over the m comparisons of the
whole table, p-values are Holm-adjusted (A.6) and the simultaneous intervals are at the
Bonferroni level 1 - (1 - level) / m. Budgets differ in their checkpoints: a collected grid
pads the shorter runs with NaN, so each group keeps only its own checkpoints (a budget's final
value is at its own last step).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import holm
from .lr_tuning import collapse_rate
from .tables import comparison_table, model_of

__all__ = ["budget_table", "comparison_groups", "convergence_of", "holm_counts", "holm_names", "sigma_table", "significant", "sweep_table"]


def convergence_of(ds: xr.Dataset) -> str:
    """The oracle's integrated excess (EMA weights) where it was measured, else the held-out
    objective (EMA weights): the metric a comparison ranks by."""
    ok = "integrated_excess_ema" in ds and bool(np.isfinite(ds["integrated_excess_ema"].values).any())
    return "integrated_excess_ema" if ok else "heldout_objective_ema"


def comparison_groups(ds: xr.Dataset, metric: str | None = None, baseline: str = "uniform") -> Iterator[tuple[dict[str, Any], xr.Dataset, str]]:
    """``(labels, group, metric)`` for every combination of ``ds``'s axes other than ``sampler``
    where anything ran (``lr`` collapsed first): ``group`` has a ``sampler`` axis and only its
    own checkpoints, ``metric`` is the given one or :func:`convergence_of` the group. A group
    where the baseline did not run is refused: its comparisons would have no pairs."""
    if "lr" in ds["cell_id"].dims:
        ds = collapse_rate(ds)
    if "sampler" not in ds["cell_id"].dims:
        raise ValueError(f"results with axes {list(ds['cell_id'].dims)} are not allowed: sampler must be an axis")
    if baseline not in [str(s) for s in ds.sampler.values]:
        raise ValueError(f"baseline={baseline!r} is not allowed: it is not a sampler of these results")
    others = [d for d in ds["cell_id"].dims if d != "sampler"]
    for idx in np.ndindex(*[ds.sizes[d] for d in others]):
        group = ds.isel(dict(zip(others, idx)))
        labels = {d: group[d].values.item() for d in others}
        if not (group["cell_id"] != "").any():
            continue
        if str(group["cell_id"].sel(sampler=baseline).values) == "":
            raise ValueError(f"a group {labels} without the baseline {baseline!r} is not allowed: its comparisons need it on the same seeds")
        m = metric or convergence_of(group)
        yield labels, group.dropna("checkpoint", how="all", subset=[m]), m


def sweep_table(
    ds: xr.Dataset, axis: str, metric: str | None = None, baseline: str = "uniform", level: float = 0.95, flops: bool = True
) -> pd.DataFrame:
    """``tables.comparison_table`` for every group of :func:`comparison_groups` in one table
    indexed by (``axis``, the other axes, sampler), with ``metric`` (the metric ranked by),
    ``p_holm`` and ``ratio_simultaneous`` over all of the table's rows, ``reached`` (seeds
    reaching the baseline's final value, beside ``n``) and, with ``flops``, the speed-up per
    training FLOP (``tables.model_of`` of each group)."""
    groups = list(comparison_groups(ds, metric, baseline))
    if not groups or axis not in groups[0][0]:
        raise ValueError(f"axis={axis!r} is not allowed: the swept axes of these results are {sorted(groups[0][0]) if groups else []}")
    family = sum(int(((g["cell_id"] != "") & (g["sampler"] != baseline)).sum()) for _, g, _ in groups)
    parts = []
    for labels, group, m in groups:
        model, batch = model_of(group) if flops else (None, None)
        table = comparison_table(group, m, baseline, model, batch, level, family=max(family, 1))
        if len(table):
            parts.append(table.reset_index().assign(metric=m, **labels))
    out = pd.concat(parts, ignore_index=True)
    out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    out["reached"] = out["speedup_steps"].map(lambda e: e.n - e.censored)
    others = [a for a in groups[0][0] if a != axis]
    return out.set_index([axis, *others, "sampler"]).sort_index(level=axis, sort_remaining=False)


def budget_table(ds: xr.Dataset, **options) -> pd.DataFrame:
    """:func:`sweep_table` over the budget (``steps``: separate runs of 300, 1000, 3000 steps)."""
    return sweep_table(ds, "steps", **options)


def sigma_table(ds: xr.Dataset, **options) -> pd.DataFrame:
    """:func:`sweep_table` over the bridge's diffusion level ``sigma``."""
    return sweep_table(ds, "sigma", **options)


def significant(table: pd.DataFrame) -> pd.Series:
    """Per unbiased row of a comparison table: -1 (better than uniform: ratio below 1), +1
    (worse) or 0, at family-wise level 5% over the table: ``p_holm`` (else ``p``) under 0.05. A
    table with neither column gets Holm's adjustment of its ratios' own p-values here, over the
    unbiased rows (the comparisons counted)."""
    t = table[table["unbiased"].astype(bool)] if "unbiased" in table else table
    if "p_holm" in t:
        p = t["p_holm"]
    elif "p" in t:
        p = t["p"]
    else:
        p = pd.Series(holm(np.array([e.p for e in t["ratio"]], dtype=float)), index=t.index)
    side = t["ratio"].map(lambda e: float(np.sign(e.value - 1)))
    return side.where(p < 0.05, 0.0).fillna(0.0).astype(int)  # a NaN ratio is neither


def holm_counts(table: pd.DataFrame) -> tuple[int, int, int]:
    """(better, worse, compared) among the unbiased rows of a comparison table (:func:`significant`)."""
    s = significant(table)
    return int((s < 0).sum()), int((s > 0).sum()), len(s)


def holm_names(table: pd.DataFrame, side: int) -> str:
    """The samplers (a row's last index level, options dropped) significantly better (``side``
    -1) or worse (+1) than uniform (:func:`significant`), each with its number of rows, most
    first: e.g. "oracle_qstar (3), var_opt (2)"; "none"."""
    s = significant(table)
    names = pd.Series([str(i[-1] if isinstance(i, tuple) else i).split("(")[0] for i in s.index[s == side]], dtype=object)
    return ", ".join(f"{k} ({v})" for k, v in names.value_counts().items()) or "none"
