"""Learning rates tuned per sampler (STUDY.md section 6; issue 15): the rule's choice on the
tuning sub-grids, the check that every evaluation cell ran at that choice, and evaluation
grids with a zipped ``sampler+lr`` axis collapsed to one rate per sampler.

The paper profile tunes once per sampler and benchmark (seeds disjoint from the evaluation's,
at the middle budget) and reuses the rate at every sigma and budget. A tuned rate is therefore
keyed by the tuning grid's axes other than ``lr`` (e.g. sampler, benchmark) and the benchmark
it ran on, never by sigma or steps. The rule itself is :data:`fmstudy.tables.LR_RULE`:

    lr*(g) = min argmin_{lr in eligible(g)} mean_s metric_s(g, lr, T),
    eligible(g) = {lr : no seed diverged at lr}                                   (L.1)

for each group g of the other axes, T the last checkpoint, ties to the smaller rate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .store import label
from .tables import _cells, select_lr

__all__ = ["CONTEXT", "cell_param", "check_tuned", "collapse_rate", "rule_cost", "same_family", "tuned_rates"]

# What a tuned rate belongs to besides the tuning grid's own axes: the problem it was tuned on.
# Not sigma nor the budget (steps, warm-up): the rate is reused across those by design.
CONTEXT = ("benchmark", "benchmark_options", "target", "weighting", "batch_size", "hidden", "depth")

Key = Callable[[str, Any], Any]


def _fixed(ds: xr.Dataset) -> dict[str, Any]:
    return json.loads(ds.attrs.get("fixed") or "{}")


def cell_param(ds: xr.Dataset, labels: dict[str, Any], name: str) -> Any:
    """A cell's ``name``: its axis label, else a scalar coordinate, else the grid's fixed
    parameter (labelled as ``collect`` labels axes); KeyError when the results do not say."""
    if name in labels:
        return labels[name]
    if name in ds.coords and ds[name].ndim == 0:
        return ds[name].values.item()
    fixed = _fixed(ds)
    if name in fixed:
        return label(fixed[name])
    raise KeyError(name)


def same_family(axis: str, value: Any) -> Any:
    """A ``key`` for :func:`check_tuned` under which a rate tuned on one random instance of a
    benchmark family (``benchmark_options`` ``dim=8, seed=0``) is the rate of every instance
    (``dim=8, seed=2``): the ``seed`` entry of the options' label is dropped."""
    if axis != "benchmark_options" or not isinstance(value, str):
        return value
    return re.sub(r"(^|, )seed=[^,]*", "", value).lstrip(", ")


def tuned_rates(tune_ds: xr.Dataset, metric: str = "heldout_objective_ema") -> pd.DataFrame:
    """The rate chosen by (L.1) for each group of ``tune_ds``'s axes other than ``lr`` (the
    index: those axes, plus each parameter of :data:`CONTEXT` the grid fixed, so that a rate is
    never read for another benchmark, target, weighting, batch or model), with ``metric`` (the group's mean final value at that rate, an
    Estimate with its t-interval), ``n`` (its seeds), ``rates`` (the candidates tried) and ``eligible``
    (how many had no divergence). A group where every rate diverged has ``lr`` NaN."""
    if "lr" not in tune_ds["cell_id"].dims:
        raise ValueError(f"tuning results with axes {list(tune_ds['cell_id'].dims)} are not allowed: lr must be an axis")
    others = [d for d in tune_ds["cell_id"].dims if d != "lr"]
    if not others:
        raise ValueError("tuning results with lr as their only axis are not allowed: there is no sampler (or weighting) to tune for")
    _, cand = select_lr(tune_ds, metric)
    cand = cand.reset_index()
    fixed = _fixed(tune_ds)
    extra = {k: _plain(label(fixed[k])) for k in CONTEXT if k not in others and k in fixed}
    rows = []
    for keys, group in cand.groupby(others, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        pick = group[group["chosen"]]
        row = {**dict(zip(others, keys)), **extra, "lr": float(pick["lr"].iloc[0]) if len(pick) else np.nan}
        row[metric] = pick["estimate"].iloc[0] if len(pick) else None
        row["n"] = int(pick["n"].iloc[0]) if len(pick) else int(group["n"].max())  # seeds, beside the interval
        row["rates"] = tuple(sorted(float(v) for v in group["lr"]))
        row["eligible"] = int(group["eligible"].sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index([*others, *extra])


def _plain(value: Any) -> Any:
    """A key's value comparable across grids: numbers as floats (an axis holds 256.0 where a
    fixed parameter holds 256), None (a benchmark's default) as the text "None"."""
    if value is None:
        return "None"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return value


def _run_rate(ds: xr.Dataset, labels: dict[str, Any]) -> float:
    try:
        return float(cell_param(ds, labels, "lr"))
    except KeyError:
        raise ValueError("evaluation results that do not record their learning rate are not allowed: lr is neither an axis nor fixed") from None


def check_tuned(
    eval_ds: xr.Dataset, tuned: pd.DataFrame | xr.Dataset, key: Key | None = None, on: Sequence[str] | None = None
) -> pd.DataFrame:
    """The cells of ``eval_ds`` whose run rate is not the rule's choice: one row per offending
    cell with its axes, ``lr_run``, ``lr_rule`` (NaN: no choice for it) and ``why``; empty when
    every cell ran at its tuned rate (a chapter fails loudly otherwise). ``tuned`` is
    :func:`tuned_rates`'s table (or the tuning results themselves); a cell is matched to it on
    ``on`` (default: the table's index), each value mapped through ``key(axis, value)`` on both
    sides (e.g. :func:`same_family`)."""
    table = tuned_rates(tuned) if isinstance(tuned, xr.Dataset) else tuned
    on = list(table.index.names if on is None else on)
    key = key or (lambda axis, value: value)
    rule: dict[tuple, float] = {}
    for idx, lr in table.reset_index().set_index(on)["lr"].items():
        idx = idx if isinstance(idx, tuple) else (idx,)
        rule[tuple(_plain(key(a, v)) for a, v in zip(on, idx))] = float(lr)
    rows = []
    for labels, cell in _cells(eval_ds):
        try:
            want = tuple(_plain(key(a, cell_param(eval_ds, labels, a))) for a in on)
        except KeyError as err:
            raise ValueError(f"evaluation results without {err.args[0]!r} are not allowed: the tuned rates are keyed on {on}") from None
        run = _run_rate(eval_ds, labels)
        chosen = rule.get(want, np.nan)
        if not np.isfinite(chosen):
            why = "no tuned rate for this cell"
        elif not np.isclose(run, chosen, rtol=1e-9, atol=0.0):
            why = "ran at another rate than the rule's choice"
        else:
            continue
        rows.append({**{a: v for a, v in labels.items() if a != "lr"}, "lr_run": run, "lr_rule": chosen, "why": why})
    columns = [d for d in eval_ds["cell_id"].dims if d != "lr"] + ["lr_run", "lr_rule", "why"]
    return pd.DataFrame(rows, columns=columns)


def collapse_rate(ds: xr.Dataset) -> xr.Dataset:
    """A grid with a zipped ``sampler+lr`` axis (each sampler run at one rate, the other rates
    of the ``lr`` axis empty) without its ``lr`` axis: every variable at the rate each
    (sampler, other axes) cell ran, that rate kept as the variable ``lr_used`` (NaN where the
    cell ran at no rate). A cell that ran at two rates is refused in one line."""
    ids = ds["cell_id"]
    if "lr" not in ids.dims:
        lr = float(cell_param(ds, {}, "lr")) if ("lr" in ds.coords or "lr" in _fixed(ds)) else np.nan
        return ds.assign(lr_used=xr.full_like(ids, lr, dtype=float).where(ids != ""))
    ran = ids != ""
    count = ran.sum("lr")
    if int(count.max()) > 1:
        where = count.where(count > 1, drop=True)
        at = {d: where[d].values[0].item() for d in where.dims}
        rates = [float(v) for v in ids.sel(at)["lr"].values[(ids.sel(at) != "").values]]
        raise ValueError(f"cell {at} ran at learning rates {rates}, which is not allowed: a zipped sampler+lr grid runs each sampler at one rate")
    pick = ran.argmax("lr")  # the one rate that ran (0 where none did: masked below)
    out = ds.isel(lr=pick)
    used = out["lr"].where(count == 1)
    out = out.drop_vars("lr").assign(lr_used=used.drop_vars("lr", errors="ignore"))
    out["cell_id"] = out["cell_id"].where(count == 1, "")
    return out


def rule_cost(tune_ds: xr.Dataset, judge: str = "integrated_excess_ema", metric: str = "heldout_objective_ema") -> pd.DataFrame:
    """What ranking rates by ``metric`` (the rule's) costs on ``judge`` (e.g. the exact
    integrated excess on an oracle benchmark), per group of the tuning grid's other axes:

        cost = mean_s judge_s(lr_rule) / min_{lr eligible} mean_s judge_s(lr)                 (L.2)

    with ``lr_rule`` the rule's choice (L.1) and ``lr_best`` the argmin; 1 when the rule chose
    the judge's best rate. Columns ``lr_rule``, ``lr_best``, ``judge_rule``, ``judge_best``, ``cost``."""
    _, by_rule = select_lr(tune_ds, metric)
    _, by_judge = select_lr(tune_ds, judge)
    others = [n for n in by_rule.index.names if n != "lr"]
    rows = []
    for keys, group in by_judge.reset_index().groupby(others, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        rule = by_rule.reset_index()
        rule = rule[(rule[others] == pd.Series(dict(zip(others, keys)))).all(axis=1) & rule["chosen"]]
        if not len(rule):
            continue
        lr_rule = float(rule["lr"].iloc[0])
        ok = group[group["eligible"]]
        best = ok.loc[ok["mean"].idxmin()]
        at_rule = float(group.loc[np.isclose(group["lr"], lr_rule), "mean"].iloc[0])
        rows.append({**dict(zip(others, keys)), "lr_rule": lr_rule, "lr_best": float(best["lr"]), "judge_rule": at_rule,
                     "judge_best": float(best["mean"]), "cost": at_rule / float(best["mean"])})
    return pd.DataFrame(rows).set_index(others)
