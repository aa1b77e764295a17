"""Chapter 8's compute per sampler: what each sampler costs in training FLOPs per member beside
uniform, and why (flops.py, F.5).

Per cell ``report.cell_costs`` gives the training FLOPs per member C and the sampler's extra
forward and backward samples per training sample. Per (sub-grid, sampler) the cost relative to
uniform is the ratio of the mean C over its cells to uniform's mean over the same sub-grid's
cells (the samplers of a sub-grid run the same settings). What a sampler adds to uniform's
forward and backward passes follows from what it asks of the trainer (``tables.sampler_norms``):
per-sample gradient norms of its training samples (Euclidean on every sample, F.3; or in Adam's
metric, F.4, about one forward pass each, on 1 in ``norm_stride`` samples) and the probe
measurements' extra forward and backward samples, each with its gradient norm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from . import plots, tables
from .frames import require_columns

__all__ = ["cost_sentence", "figure_subgrid", "flops_figure", "norm_stride", "relative_flops", "sampler_summary"]


def norm_stride(records: Iterable[dict[str, Any]]) -> str:
    """The ``norm_stride`` of the cells' records (their parameters; TrainConfig's default 8
    where a record has none) as text: one value, or several joined by " or "."""
    from .train import TrainConfig

    values = sorted({int(r.get("params", {}).get("norm_stride") or TrainConfig.norm_stride) for r in records})
    return " or ".join(map(str, values)) or "n/a"


def figure_subgrid(cost: pd.DataFrame) -> str:
    """The sub-grid :func:`flops_figure` shows: the one with the most samplers (the first in name order on a tie)."""
    require_columns(cost, ("sub-grid", "sampler"), "table of cell costs")
    if not len(cost):
        raise ValueError("an empty table of cell costs is not allowed: it needs at least one cell")
    return str(cost.groupby("sub-grid")["sampler"].nunique().idxmax())


def relative_flops(cost: pd.DataFrame) -> pd.Series:
    """Per (sub-grid, sampler): its mean training FLOPs per member over its cells divided by
    uniform's mean over the same sub-grid's cells (NaN where uniform did not run there); the
    samplers of a sub-grid run the same settings, so this is their cost at equal steps."""
    require_columns(cost, ("sub-grid", "sampler", "flops_per_member"), "table of cell costs")
    mean = cost.groupby(["sub-grid", "sampler"])["flops_per_member"].mean()
    base = mean[mean.index.get_level_values("sampler") == "uniform"].droplevel("sampler")
    return mean / base.reindex(mean.index.get_level_values("sub-grid")).to_numpy()


def _adds(label: str, extra_fwd: float, extra_bwd: float, stride: int | str, short: bool = False) -> str:
    """What a sampler adds to uniform's forward and backward passes: per-sample gradient norms on
    its training samples, extra probe samples (with their norms' metric), from
    ``tables.sampler_norms``; ``short`` for a table's cell (the amounts in their own columns)."""
    train, extra = tables.sampler_norms(label)
    if short:
        parts = {"euclid": ["Euclidean norms (every sample)"], "adam": [f"Adam-metric norms (1 in {stride} samples)"]}.get(train, [])
        if extra_fwd > 0 or extra_bwd > 0:
            parts.append(f"probe passes, {'Adam-metric' if extra == 'adam' else 'Euclidean'} norms")
        return " + ".join(parts) or "—"
    parts = {"euclid": ["Euclidean gradient norms of every training sample"],
             "adam": [f"gradient norms in Adam's metric of 1 in {stride} training samples"]}.get(train, [])
    if extra_fwd > 0 or extra_bwd > 0:
        metric = " (each with its norm in Adam's metric)" if extra == "adam" else ""
        parts.append(f"{extra_fwd:.2f} extra forward and {extra_bwd:.2f} extra backward samples per training sample{metric}")
    return " and ".join(parts) or "nothing"


def sampler_summary(cost: pd.DataFrame, stride: int | str = 8) -> pd.DataFrame:
    """One row per sampler of ``report.cell_costs``: its sub-grids and cells, what it adds to
    uniform's passes (:func:`_adds`, short; ``stride``: the profile's ``norm_stride``), the extra forward and backward samples per training sample (range over its
    cells) and its :func:`relative_flops` as "median (min-max)" over the sub-grids where uniform ran."""
    require_columns(cost, ("sub-grid", "sampler", "extra_forward_per_sample", "extra_backward_per_sample"), "table of cell costs")
    rel = relative_flops(cost)
    rows = {}
    for name, cells in cost.groupby("sampler", sort=False):
        ef, eb = cells["extra_forward_per_sample"], cells["extra_backward_per_sample"]
        r = rel.xs(name, level="sampler").dropna()
        rows[name] = {
            "sub-grids": cells["sub-grid"].nunique(), "cells": len(cells),
            "adds to uniform's passes": _adds(str(name), ef.mean(), eb.mean(), stride, short=True),
            "extra fwd / sample": f"{ef.min():.2f}" + (f"-{ef.max():.2f}" if ef.max() > ef.min() else ""),
            "extra bwd / sample": f"{eb.min():.2f}" + (f"-{eb.max():.2f}" if eb.max() > eb.min() else ""),
            "training FLOPs / uniform's": (f"{r.median():.3f}" + (f" ({r.min():.3f}-{r.max():.3f})" if r.max() > r.min() else "")) if len(r) else "n/a",
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("sampler").sort_index()


def cost_sentence(cost: pd.DataFrame, stride: int | str = 8) -> tuple[str, float, str]:
    """(sampler, ratio, sentence) in :func:`figure_subgrid`: the sampler with the most training
    FLOPs per member relative to uniform, that ratio, and every sampler that costs more than
    uniform there, most expensive first, as "name, r times uniform's: what it adds"."""
    sub = figure_subgrid(cost)
    rel = relative_flops(cost).xs(sub, level="sub-grid").drop("uniform", errors="ignore").dropna().sort_values(ascending=False)
    if not len(rel):
        return "n/a", float("nan"), f"In sub-grid '{sub}' no sampler ran beside uniform."
    cells = cost[cost["sub-grid"] == sub].groupby("sampler")[["extra_forward_per_sample", "extra_backward_per_sample"]].mean()
    more = [f"{name}, {r:.2f} times uniform's: {_adds(name, *cells.loc[name], stride)}" for name, r in rel.items() if r > 1.0005]
    text = f"In sub-grid '{sub}': " + "; ".join(more) + "." if more else f"In sub-grid '{sub}' no sampler costs more than uniform."
    return str(rel.index[0]), float(rel.iloc[0]), text


def flops_figure(cost: pd.DataFrame) -> plt.Figure:
    """Training GFLOPs per member (mean over the cells) per sampler of :func:`figure_subgrid`, smallest first."""
    require_columns(cost, ("sub-grid", "sampler", "flops_per_member"), "table of cell costs")
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    main = figure_subgrid(cost)
    g = cost[cost["sub-grid"] == main].groupby("sampler")["flops_per_member"].mean().sort_values() / 1e9
    ax.barh(g.index, g.values, color=[plots.sampler_color(s) for s in g.index])
    ax.set(xlabel="training GFLOPs per member (mean over the cells)", title=f"sub-grid '{main}'")
    return fig
