"""What the book's chapters share: which profile's results to read, the collected grids as
tidy tables, links to the per-cell pages, and glue of headline numbers (STUDY.md section 7).

The chapters read results and never train. They find them through ``$FMSTUDY_PROFILE`` (smoke,
quick, full or paper; ``make book`` sets it, default paper: the shipped results) under ``$FMSTUDY_RESULTS`` (default:
``results/`` at the repository's top).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .baseline_page import level_text, shown  # against_baseline's table for a page, re-exported
from .costs import cell_costs, executions, grid_throughput_table, median_range  # the runs' cost, re-exported
from .lr_tuning import collapse_rate
from .stability import largest_stable_lr, spike_source, stability_table  # the chapters' tables, re-exported
from .store import GridError, collect, label, ok_records
from .tables import (  # the chapters' tables, re-exported
    LR_RULE,
    as_text,
    at_chosen_lr,
    comparison_table,
    model_of,
    run_flops,
    select_lr,
)

__all__ = [
    "LR_RULE", "against_baseline", "as_text", "at_chosen_lr", "cell_costs", "comparison_table", "convergence_metric", "executions",
    "final", "glue_number", "grid_throughput_table", "largest_stable_lr", "level_text", "load_grid_results", "median_range", "one_rate", "model_of", "ok_records",
    "profile", "results_dir", "run_flops", "run_link", "run_links_table", "samplers_of", "select_benchmark", "select_lr", "shown",
    "spike_source", "stability_table", "throughput_table", "tidy_curves",
]

ROOT = Path(__file__).resolve().parents[1]


def profile() -> str:
    return os.environ.get("FMSTUDY_PROFILE", "paper")


def results_dir() -> Path:
    return Path(os.environ.get("FMSTUDY_RESULTS", ROOT / "results")) / profile()


def load_grid_results(grid: str, collapse: bool = True) -> xr.Dataset | None:
    """The collected cells of sub-grid ``grid`` of the current profile, or None when it was not run.
    A sub-grid that runs each sampler at one rate (a zipped ``sampler+lr`` axis: each at its tuned
    rate) comes without an ``lr`` axis, the rate in ``lr_used``; a learning-rate sweep (several
    rates per sampler) keeps its ``lr`` axis; so does every grid with ``collapse`` False."""
    try:
        ds = collect(results_dir(), grid)
    except GridError:
        return None
    return one_rate(ds) if collapse else ds


def one_rate(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its ``lr`` axis where each sampler ran at one rate (``lr_tuning.collapse_rate``),
    else unchanged: what :func:`load_grid_results` returns, for results already loaded with ``collapse=False``."""
    ids = ds["cell_id"]
    return collapse_rate(ds) if "lr" in ids.dims and int((ids != "").sum("lr").max()) <= 1 else ds


def final(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``var`` at the last checkpoint."""
    return ds[var].isel(checkpoint=-1)


def tidy_curves(ds: xr.Dataset, var: str, by: str = "sampler") -> pd.DataFrame:
    """Long table (``by``, seed, step, value) of ``var`` [.., member, checkpoint] for seaborn."""
    da = ds[var]
    other = [d for d in da.dims if d not in (by, "member", "checkpoint")]
    if other:
        raise ValueError(f"{var} still has dims {other}: select them first")
    df = da.to_dataframe(name=var).reset_index()
    return df.rename(columns={"member": "seed"})[[by, "seed", "checkpoint", var]].dropna()


def _runs() -> Path:
    return ROOT / "book" / "runs" / profile()


def run_link(cell_id: str, text: str, depth: int = 1) -> str:
    """HTML link from a chapter (``depth`` folders below the book's root) to a cell's page; where
    the page is absent (results shipped without pages, :mod:`fmstudy.ship`), to the cell's row in
    the profile's table of records (``runs/<profile>/cells.md``); with neither, the cell id as
    text: never a broken link."""
    up = f'{"../" * depth}runs/{profile()}'
    if (_runs() / f"{cell_id}.ipynb").is_file():
        return f'<a href="{up}/{cell_id}.html">{text}</a>'
    if (_runs() / "cells.md").is_file():
        return f'<a href="{up}/cells.html#cell-{cell_id}">{text}</a>'
    return f"<code>{cell_id}</code>"


def run_links_table(ds: xr.Dataset, rows: str, cols: str | None = None, depth: int = 1) -> str:
    """An HTML table linking every cell of ``ds`` (indexed by one or two of its axes) to its page."""
    ids = ds["cell_id"]
    extra = [d for d in ids.dims if d not in (rows, cols)]
    if extra:  # axes fixed to one value in this grid
        ids = ids.isel({d: 0 for d in extra})
    col_values = list(ids[cols].values) if cols else [None]
    head = "".join(f"<th>{cols} = {c}</th>" for c in col_values) if cols else "<th>run</th>"
    body = ""
    for r in ids[rows].values:
        tds = ""
        for c in col_values:
            cid = str(ids.sel({rows: r, **({cols: c} if cols else {})}).item())
            text = "page" if (_runs() / f"{cid}.ipynb").is_file() else "record"
            tds += f"<td>{run_link(cid, text, depth) if cid else '—'}</td>"
        body += f"<tr><td>{r}</td>{tds}</tr>"
    return f"<table><tr><th>{rows}</th>{head}</tr>{body}</table>"


def glue_number(name: str, value: Any, fmt: str = ".3g") -> str:
    """Glue ``value`` (a number or an :class:`~fmstudy.analysis.Estimate`) for the prose under
    ``name`` as formatted text (quoted in the prose with ``{glue:md}`name```), and return the
    text. NaN reads 'n/a'."""
    from IPython.display import Markdown
    from myst_nb import glue

    if hasattr(value, "text"):
        text = value.text(fmt)  # says n/a and 'no interval' itself, with the seeds
    elif isinstance(value, (int, float, np.integer, np.floating)):
        text = f"{value:{fmt}}" if np.isfinite(value) else "n/a"
    else:
        text = str(value)
    glue(name, Markdown(text), display=False)
    return text


def select_benchmark(ds: xr.Dataset, name: str = "gmm8") -> xr.Dataset:
    """``ds`` at benchmark ``name`` when the grid has a benchmark axis (else ``ds`` itself)."""
    if "benchmark" not in ds.dims:
        return ds
    return ds.sel(benchmark=name) if name in ds.benchmark.values else ds.isel(benchmark=0)


def samplers_of(ds: xr.Dataset, names: tuple[str, ...]) -> list[str]:
    """The sampler labels of ``ds`` whose name is in ``names``, in that order."""
    found = [s for s in ds.sampler.values if str(s).split("(")[0] in names]
    return sorted(found, key=lambda s: (names.index(str(s).split("(")[0]), str(s)))


def convergence_metric(ds: xr.Dataset) -> str:
    """The oracle's integrated excess (EMA weights) where there is an oracle, else the held-out objective."""
    ok = "integrated_excess_ema" in ds and bool(np.isfinite(ds["integrated_excess_ema"].values).any())
    return "integrated_excess_ema" if ok else "heldout_objective_ema"


def _sampler_label(name: str, cell: xr.Dataset, samplers: dict[str, str] | None) -> str:
    """The sampler whose FLOPs a row of :func:`against_baseline` is charged: ``samplers[name]``
    if given; ``name`` itself when it names a sampler; else the sampler in the record of the
    row's cell (a row labelled by something else, e.g. a weighting)."""
    import json

    from .tables import sampler_norms

    if samplers and name in samplers:
        return samplers[name]
    try:
        sampler_norms(name)
        return name
    except ValueError:
        pass
    rec = results_dir() / "cells" / f"{str(cell.cell_id.values)}.json"
    if rec.exists():
        return str(label(json.loads(rec.read_text())["params"]["sampler"]))
    raise ValueError(f"row {name!r} is not allowed without its sampler: name a sampler, or pass samplers={{{name!r}: 'uniform', ...}}")


def against_baseline(ds: xr.Dataset, metric: str, baseline: str = "uniform", model: Any = None, batch_size: int | None = None,
                     samplers: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per sampler of ``ds`` (one sigma selected), as :class:`~fmstudy.analysis.Estimate`
    objects: its final ``metric`` (``final``), the paired ratio of that to ``baseline``
    (``ratio``) and of the held-out objective (``objective_ratio``), the speed-up to reach the
    baseline's final value in steps (``speedup``) and in training FLOPs per member
    (``speedup_flops``: flops.py, F.5, the samplers' extra passes and norms counted; not in
    seconds, which a pack's cells share), medians with the seeds that never reach it censored
    (``analysis.speedup``; the FLOPs from ``model`` and ``batch_size``, by default
    :func:`model_of` ``ds``, and each row's sampler, see :func:`_sampler_label`);
    plus ``reached`` (fraction of seeds that reach it) and ``unbiased`` (whether the sampler's
    estimate of the fixed objective is unbiased). :func:`shown` formats it for a page."""
    from .analysis import mean_estimate, paired_ratio, speedup

    base = ds.sel(sampler=baseline)
    steps = ds.checkpoint.values.astype(float)
    model, batch = model_of(ds) if model is None or batch_size is None else (model, int(batch_size))
    base_flops = run_flops(base, model, batch, _sampler_label(baseline, base, samplers))
    rows = []
    for name in ds.sampler.values:
        cur = ds.sel(sampler=name)
        if not str(cur.cell_id.values):
            continue
        sp = speedup(cur[metric].values, base[metric].values, steps)
        flops = run_flops(cur, model, batch, _sampler_label(str(name), cur, samplers))
        sp_f = speedup(cur[metric].values, base[metric].values, flops, baseline_steps=base_flops)
        reached = 1 - sp.censored / sp.n if sp.n else float("nan")
        rows.append({
            "sampler": str(name), "unbiased": bool(cur.unbiased),
            "final": mean_estimate(final(cur, metric).values),
            "ratio": paired_ratio(final(cur, metric).values, final(base, metric).values),
            "objective_ratio": paired_ratio(final(cur, "heldout_objective_ema").values, final(base, "heldout_objective_ema").values),
            "speedup": sp, "speedup_flops": sp_f, "reached": reached,
        })
    return pd.DataFrame(rows).set_index("sampler")


def throughput_table(record: dict[str, Any]) -> pd.DataFrame:
    """The rows of a ``benchmarks/throughput.py --json`` record against its first row (the
    naive loop, measured in the same interleaved rounds), read round by round as the script
    prints them: ``model-steps/s`` the median over rounds with its ``min``/``max``; ``x naive``
    the median over rounds r of the per-round ratio rate_r / naive_r, with its range
    (``x naive min``/``max``), not the ratio of the medians; ``training only x naive`` the same
    for the training-only rate. A record without its rounds gives the ratio of the stored
    rates and no range (NaN)."""
    base = record["rows"][0]

    def rates(row: dict[str, Any], key: str) -> list[float]:
        return [r.get(key, r["model_steps_per_s"]) for r in row.get("repeats") or []]

    out = []
    for row in record["rows"]:
        entry = {"configuration": row["configuration"], "model-steps/s": row["model_steps_per_s"]}
        lo, hi = row.get("model_steps_per_s_range", [np.nan, np.nan])
        entry.update({"model-steps/s min": lo, "model-steps/s max": hi})
        for key, name in (("model_steps_per_s", "x naive"), ("model_steps_per_s_training_only", "training only x naive")):
            mine, naive = rates(row, key), rates(base, "model_steps_per_s")  # the naive loop has no training-only rate of its own
            if mine and len(mine) == len(naive):
                med, lo, hi = median_range(a / b for a, b in zip(mine, naive))
            else:
                med, lo, hi = row.get(key, row["model_steps_per_s"]) / base["model_steps_per_s"], np.nan, np.nan
            entry.update({name: med, f"{name} min": lo, f"{name} max": hi})
        entry["peak memory (MB)"] = row["peak_memory_mb"]
        out.append(entry)
    return pd.DataFrame(out).set_index("configuration")
