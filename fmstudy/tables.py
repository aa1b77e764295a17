"""The book's result tables over collected grids (``fmstudy.store.collect``): comparisons
against a baseline per step and per training FLOP and the learning-rate rule (stability over a
learning-rate sweep is in :mod:`fmstudy.stability`). Re-exported by :mod:`fmstudy.report`; statistics from
:mod:`fmstudy.analysis`, FLOPs from :mod:`fmstudy.flops`.

A collected Dataset has the grid's axes (sampler, sigma, lr, ...), ``member`` (seeds),
``checkpoint`` (its coordinate the step) and ``step``; ``cell_id`` is "" where a combination
was not run.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from .analysis import Estimate, bonferroni_level, holm, mean_estimate, paired_ratio, speedup
from .flops import training_flops
from .models import MLPConfig

__all__ = [
    "LR_RULE",
    "as_text",
    "at_chosen_lr",
    "comparison_table",
    "label_spec",
    "model_of",
    "run_flops",
    "sampler_norms",
    "select_lr",
]

LR_RULE = (
    "per sampler (and every other axis but the learning rate), the learning rate with the lowest mean "
    "final {metric} over seeds, among those at which no seed diverged; ties go to the smaller rate"
)
_SEEDS = ("member", "checkpoint", "step", "t_bin", "sample", "coord")


def _cells(ds: xr.Dataset):
    """(labels, cell) for every cell of ``ds`` that was run, over the axes of ``cell_id``."""
    ids = ds["cell_id"]
    for idx in np.ndindex(ids.shape):
        at = dict(zip(ids.dims, idx))
        if str(ids.values[idx]):
            yield {d: getattr(ds[d].values[i], "item", lambda v=ds[d].values[i]: v)() for d, i in at.items()}, ds.isel(at)


def label_spec(label: str) -> dict:
    """The parameters behind a coordinate label (``store.label``): ``name(k=v, ...)`` reads
    ``{"name": name, k: v, ...}`` and a nameless ``k=v, ...`` (benchmark options) ``{k: v, ...}``,
    each value parsed as YAML."""
    text = str(label)
    name, paren, rest = text.partition("(")
    if not paren and "=" in text:  # no name: the options themselves
        name, rest = "", text + ")"
    spec = {"name": name.strip()} if name.strip() else {}
    for key, value in re.findall(r"(\w+)=([^=]*?)(?=, \w+=|\)$)", rest):
        spec[key] = yaml.safe_load(value)
    return spec


def sampler_norms(label: str) -> tuple[str, str]:
    """(norm per training sample, norm per extra backward sample) of ``flops.training_flops``
    for the sampler labelled ``label`` (``name(k=v, ...)``), from the feedback it requires: a
    per-sample ``grad_norm`` is Euclidean, ``grad_sq_adam`` Adam's, on every training sample;
    the probes' extra backward samples carry the Euclidean norm, and Adam's too when a
    ``bin_*_adam`` is required (the trainer computes what the sampler asks for, no more)."""
    from .samplers import SAMPLERS, make_sampler

    spec = label_spec(label)
    name = spec.get("name", "")
    try:
        requires = make_sampler(spec, [0]).requires
    except (ValueError, TypeError):  # one that needs more than a spec to build: its class's needs
        if name not in SAMPLERS:
            raise ValueError(f"sampler label {label!r} is not allowed: no sampler is called {name!r}") from None
        requires = SAMPLERS[name].requires
    train = "adam" if "grad_sq_adam" in requires else "euclid" if "grad_norm" in requires else "none"
    extra = "adam" if any(r.startswith("bin_") and r.endswith("_adam") for r in requires) else "euclid"
    return train, extra


def model_of(ds: xr.Dataset) -> tuple[MLPConfig, int]:
    """The velocity MLP and batch size of the cells of ``ds`` (a collected grid with one
    benchmark, width, depth and batch size: select them first where they are axes), from its
    scalar coordinates and the parameters common to its cells (attribute ``fixed``); a width or
    depth left at None is the benchmark's suggestion, as in training."""
    from .data import get_benchmark

    fixed = json.loads(ds.attrs.get("fixed") or "{}")

    def get(key: str):
        if key in ds.coords and ds[key].ndim == 0:
            return ds[key].values.item()
        if key in fixed:
            return fixed[key]
        raise ValueError(f"{key} is not one value in these results, which is not allowed: select one {key} first")

    hidden, depth = get("hidden"), get("depth")
    options = fixed.get("benchmark_options") or {}
    if "benchmark_options" in ds.coords and ds["benchmark_options"].ndim == 0:  # an axis, selected: its label
        options = label_spec(ds["benchmark_options"].values.item())
    bench = get_benchmark(str(get("benchmark")), **options)
    hidden = bench.model_hidden if hidden is None else int(hidden)
    depth = bench.model_depth if depth is None else int(depth)
    return MLPConfig(dim=bench.dim, hidden=hidden, depth=depth), int(get("batch_size"))


def run_flops(cell: xr.Dataset, model: MLPConfig, batch_size: int, label: str) -> np.ndarray:
    """Training FLOPs per member at each checkpoint of one cell (flops.py, F.5); Adam-metric
    norms are charged on the 1 / norm_stride of the samples the trainer computes them for
    (the cell's ``norm_stride``, else the grid's, else TrainConfig's default 8)."""
    train, extra = sampler_norms(label)
    fixed = json.loads(cell.attrs.get("fixed") or "{}")
    stride = int(cell["norm_stride"].values.item()) if "norm_stride" in cell.coords else int(fixed.get("norm_stride", 8))
    return training_flops(
        model,
        cell.checkpoint.values,
        batch_size,
        np.nan_to_num(cell["extra_forward"].values),
        np.nan_to_num(cell["extra_backward"].values),
        train,
        extra,
        norm_fraction=1.0 / stride if train == "adam" else 1.0,
    )


def comparison_table(
    ds: xr.Dataset,
    metric: str,
    baseline: str = "uniform",
    model: MLPConfig | None = None,
    batch_size: int | None = None,
    level: float = 0.95,
    family: int | None = None,
) -> pd.DataFrame:
    """One row per sampler of ``ds`` (every axis but ``sampler`` selected) against ``baseline``
    on the same seeds: ``ratio``, the geometric-mean ratio of the final ``metric`` with its
    t-interval (analysis A.2) and p-value (A.3); ``p_holm``, Holm-adjusted over the table's rows
    (A.6); ``ratio_simultaneous``, the interval at the Bonferroni level, simultaneous over the
    rows (over ``family`` comparisons when given: a table built from several); ``effect`` (d_z, A.4); ``n`` seeds; ``speedup_steps``, the median speed-up to the
    baseline's final value with non-reaching seeds censored (A.7); with ``model`` and
    ``batch_size``, ``speedup_flops`` on training FLOPs (flops.py, F.5); ``lr`` where ``ds``
    has it (from :func:`at_chosen_lr`, or ``lr_used`` from ``lr_tuning.collapse_rate``) and ``unbiased``."""
    base = ds.sel(sampler=baseline)
    steps = ds.checkpoint.values.astype(float)
    names = [s for s in ds.sampler.values if s != baseline and str(ds.sel(sampler=s).cell_id.values)]
    m = max(len(names), 1) if family is None else family
    fixed = json.loads(ds.attrs.get("fixed") or "{}")
    rows = []
    for name in names:
        cur = ds.sel(sampler=name)
        x, b = cur[metric].isel(checkpoint=-1).values, base[metric].isel(checkpoint=-1).values
        ratio = paired_ratio(x, b, level)
        row = {
            "sampler": str(name),
            "ratio": ratio,
            "p": ratio.p,
            "effect": ratio.effect,
            "n": ratio.n,
            "ratio_simultaneous": paired_ratio(x, b, bonferroni_level(level, m)),
            "speedup_steps": speedup(cur[metric].values, base[metric].values, steps, level=level),
        }
        if model is not None and batch_size is not None:
            fx, fb = (run_flops(c, model, batch_size, s) for c, s in ((cur, name), (base, baseline)))
            row["speedup_flops"] = speedup(cur[metric].values, base[metric].values, fx, fb, level=level)
        if "lr" in cur or "lr_used" in cur:
            row["lr"] = float(cur["lr" if "lr" in cur else "lr_used"].values)
        elif "lr" in fixed:  # one rate for every cell of the grid
            row["lr"] = float(fixed["lr"])
        if "unbiased" in cur:
            row["unbiased"] = bool(cur["unbiased"].values == 1)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("sampler") if rows else pd.DataFrame()
    if rows:
        table.insert(2, "p_holm", holm(table["p"].to_numpy(dtype=float)))
    return table


def at_chosen_lr(ds: xr.Dataset, chosen: Mapping[str, float]) -> xr.Dataset:
    """``ds`` with the ``lr`` axis replaced by each sampler's chosen rate (``lr`` becomes a
    coordinate over ``sampler``): the cells a tuned comparison reads. ``chosen`` maps sampler
    to rate, e.g. :func:`select_lr`'s choice on a grid whose other axes were selected (or
    ``chosen.xs(value, level=axis)`` of a wider one)."""
    pairs = [(s, float(lr)) for s, lr in chosen.items()]
    cells = [ds.sel(sampler=s, lr=lr) for s, lr in pairs]
    tuned = xr.concat(cells, dim="sampler", data_vars="all", coords="different", compat="equals", join="outer")
    return tuned.assign_coords(lr=("sampler", [lr for _, lr in pairs]))  # also when all rates agree


def select_lr(ds: xr.Dataset, metric: str = "heldout_objective_ema", lr: str = "lr") -> tuple[pd.Series, pd.DataFrame]:
    """The learning rate chosen by ``LR_RULE`` per group of the other axes, and the table of
    candidates (mean final ``metric`` with its t-interval, seeds, diverged seeds, eligibility,
    and which was chosen)."""
    rows = []
    for labels, cell in _cells(ds):
        ran = np.isfinite(cell["diverged_step"].values)
        diverged = int((cell["diverged_step"].values[ran] >= 0).sum())
        est = mean_estimate(cell[metric].isel(checkpoint=-1).values[ran])
        rows.append(
            {
                **labels,
                "mean": est.value,
                "estimate": est,
                "n": int(ran.sum()),
                "diverged": diverged,
                "eligible": diverged == 0 and est.n == int(ran.sum()) > 0,
            }
        )
    cand = pd.DataFrame(rows)
    others = [d for d in ds["cell_id"].dims if d != lr]
    cand["chosen"] = False
    for _, group in cand.groupby(others, sort=False) if others else [(None, cand)]:
        ok = group[group["eligible"]]
        if len(ok):
            best = ok[ok["mean"] == ok["mean"].min()].sort_values(lr).index[0]  # ties: the smaller rate
            cand.loc[best, "chosen"] = True
    chosen = cand[cand["chosen"]].set_index(others)[lr] if others else cand[cand["chosen"]][lr]
    return chosen, cand.set_index(list(ds["cell_id"].dims))


def as_text(table: pd.DataFrame, fmt: str = ".3g") -> pd.DataFrame:
    """``table`` for a page: each :class:`~fmstudy.analysis.Estimate` as ``value [lo, hi]``
    (``< b`` for a censored median known only to lie below b, ``n/a`` for a value that is not
    identified; no brackets where there is no interval),
    p-values (columns starting with ``p``) to 2 significant digits, other floats to ``fmt``."""

    def one(column: str, v: object) -> object:
        if isinstance(v, Estimate):
            value = v.value_text(fmt)
            return f"{value} [{v.lo:{fmt}}, {v.hi:{fmt}}]" if np.isfinite(v.lo) and np.isfinite(v.hi) else value
        if isinstance(v, float) and not isinstance(v, bool):
            return "n/a" if not np.isfinite(v) else f"{v:.2g}" if column.startswith("p") else f"{v:{fmt}}"
        return v

    return pd.DataFrame({c: [one(c, v) for v in table[c]] for c in table.columns}, index=table.index)
