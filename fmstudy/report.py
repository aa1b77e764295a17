"""What the book's chapters share: which profile's results to read, the collected grids as
tidy tables, links to the per-cell pages, and glue of headline numbers (STUDY.md section 7).

The chapters read results and never train. They find them through ``$FMSTUDY_PROFILE`` (smoke,
quick or full; ``make book`` sets it, default quick) under ``$FMSTUDY_RESULTS`` (default:
``results/`` at the repository's top).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .stability import largest_stable_lr, spike_source, stability_table  # the chapters' tables, re-exported
from .store import GridError, collect
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
    "LR_RULE", "against_baseline", "as_text", "at_chosen_lr", "comparison_table", "convergence_metric", "final", "glue_number",
    "largest_stable_lr", "load_grid_results", "model_of", "profile", "results_dir", "run_flops", "run_link", "run_links_table",
    "samplers_of", "select_benchmark", "select_lr", "shown", "spike_source", "stability_table", "throughput_table",
    "tidy_curves",
]

ROOT = Path(__file__).resolve().parents[1]


def profile() -> str:
    return os.environ.get("FMSTUDY_PROFILE", "quick")


def results_dir() -> Path:
    return Path(os.environ.get("FMSTUDY_RESULTS", ROOT / "results")) / profile()


def load_grid_results(grid: str) -> xr.Dataset | None:
    """The collected cells of sub-grid ``grid`` of the current profile, or None when it was not run."""
    try:
        return collect(results_dir(), grid)
    except GridError:
        return None


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


def run_link(cell_id: str, text: str, depth: int = 1) -> str:
    """HTML link from a chapter (``depth`` folders below the book's root) to a cell's page."""
    return f'<a href="{"../" * depth}runs/{profile()}/{cell_id}.html">{text}</a>'


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
            tds += f"<td>{run_link(cid, 'page', depth) if cid else '—'}</td>"
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


def against_baseline(ds: xr.Dataset, metric: str, baseline: str = "uniform") -> pd.DataFrame:
    """One row per sampler of ``ds`` (one sigma selected), as :class:`~fmstudy.analysis.Estimate`
    objects: its final ``metric`` (``final``), the paired ratio of that to ``baseline``
    (``ratio``) and of the held-out objective (``objective_ratio``), the speed-up to reach the
    baseline's final value in steps (``speedup``) and training seconds (``speedup_seconds``),
    medians with the seeds that never reach it censored (``analysis.speedup``);
    plus ``reached`` (fraction of seeds that reach it) and ``unbiased`` (whether the sampler's
    estimate of the fixed objective is unbiased). :func:`shown` formats it for a page."""
    from .analysis import mean_estimate, paired_ratio, speedup

    base = ds.sel(sampler=baseline)
    steps = ds.checkpoint.values.astype(float)
    rows = []
    for name in ds.sampler.values:
        cur = ds.sel(sampler=name)
        if not str(cur.cell_id.values):
            continue
        sp = speedup(cur[metric].values, base[metric].values, steps)
        sp_s = speedup(cur[metric].values, base[metric].values, cur.train_seconds.values, baseline_steps=base.train_seconds.values)
        reached = 1 - sp.censored / sp.n if sp.n else float("nan")
        rows.append({
            "sampler": str(name), "unbiased": bool(cur.unbiased),
            "final": mean_estimate(final(cur, metric).values),
            "ratio": paired_ratio(final(cur, metric).values, final(base, metric).values),
            "objective_ratio": paired_ratio(final(cur, "heldout_objective_ema").values, final(base, "heldout_objective_ema").values),
            "speedup": sp, "speedup_seconds": sp_s, "reached": reached,
        })
    return pd.DataFrame(rows).set_index("sampler")


def throughput_table(record: dict[str, Any]) -> pd.DataFrame:
    """The rows of a ``benchmarks/throughput.py --json`` record, as rates and ratios to its
    first row (the naive loop, measured in the same run of the script)."""
    base = record["rows"][0]["model_steps_per_s"]
    return pd.DataFrame([{
        "configuration": r["configuration"],
        "model-steps/s": r["model_steps_per_s"],
        "x naive": r["model_steps_per_s"] / base,
        "training only x naive": r.get("model_steps_per_s_training_only", r["model_steps_per_s"]) / base,
        "peak memory (MB)": r["peak_memory_mb"],
    } for r in record["rows"]]).set_index("configuration")


def _ci(est: Any) -> str:
    """``value [lo, hi]``; a value that is not identified (a censored median) reads n/a beside
    its interval, and an interval that does not exist (one seed) is left out."""
    if not est.n:
        return "n/a"
    value = f"{est.value:.3g}" if np.isfinite(est.value) else "n/a"
    return f"{value} [{est.lo:.3g}, {est.hi:.3g}]" if np.isfinite(est.lo) and np.isfinite(est.hi) else value


def shown(table: pd.DataFrame, part: str = "final") -> pd.DataFrame:
    """:func:`against_baseline`'s table for a page, value [interval] per column (95% t-intervals;
    a median speed-up's interval is at its order statistics' exact level, 97.9% at 10 seeds),
    in two parts narrow enough for the page: ``"final"`` (the final values and the paired
    ratios to the baseline, and the seeds) and ``"speed-up"`` (steps and seconds to reach the
    baseline's final value)."""
    if part == "final":
        columns = {
            "final value": table["final"].map(_ci),
            "ratio to uniform": table["ratio"].map(_ci),
            "objective ratio": table["objective_ratio"].map(_ci),
            "unbiased": table["unbiased"],
            "seeds": table["ratio"].map(lambda e: e.n),
        }
    elif part == "speed-up":
        columns = {
            "speed-up (steps)": table["speedup"].map(_ci),
            "speed-up (seconds)": table["speedup_seconds"].map(_ci),
            "seeds reaching": table["reached"].map(lambda r: f"{r:.0%}"),
        }
    else:
        raise ValueError(f"part={part!r} is not allowed: part must be 'final' or 'speed-up'")
    return pd.DataFrame(columns, index=table.index)
