"""Chapter 8's analysis (cost and performance): the throughput benchmarks as the page shows them
(medians over rounds with their ranges), the shipped GPU measurements, the whole-grid packing
measurement's sentence, and a profile's wall-clock per execution (its compute per sampler is in
:mod:`fmstudy.sampler_costs`).

The tables come from :mod:`fmstudy.costs` (re-exported by :mod:`fmstudy.report`): a throughput
ratio is the median over rounds r of rate_r / naive_r with its range (min-max); the packing ratio
the median over rounds of per-cell seconds / packed seconds; an execution's rate
sum_cells members x steps / W_execution, its training share T_train / W_execution. Cells are
compared in training FLOPs per member (flops.py, F.5), never in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import report
from .frames import require_columns

__all__ = [
    "configuration_sampler",
    "executions_text",
    "grid_throughput_shown",
    "grid_throughput_text",
    "measurement_caption",
    "packing_verdict",
    "rates_shown",
    "read_record",
    "shipped_measurements",
    "train_share",
    "wall_table",
    "with_range",
]


def read_record(path: Path) -> dict[str, Any] | None:
    """A benchmark's JSON record at ``path``, or None when the file is absent."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def with_range(tab: pd.DataFrame, col: str, fmt: str = ".2f") -> list[str]:
    """ "median (min-max)" per row of a table with the columns col, "col min", "col max", each
    formatted with ``fmt``; the median alone where the range is unknown (a non-finite min)."""
    require_columns(tab, (col, f"{col} min", f"{col} max"), "throughput table")
    try:
        format(0.5, fmt)
    except (ValueError, TypeError):
        raise ValueError(f"fmt={fmt!r} is not allowed: it must be a float format such as '.2f' or '.0f'") from None
    return [
        f"{m:{fmt}} ({lo:{fmt}}-{hi:{fmt}})" if np.isfinite(lo) else f"{m:{fmt}}"
        for m, lo, hi in zip(tab[col], tab[f"{col} min"], tab[f"{col} max"])
    ]


def rates_shown(tab: pd.DataFrame) -> pd.DataFrame:
    """``report.throughput_table`` for the page: rates to the unit and ratios to 2 decimals, each
    as "median (min-max)" over rounds, and the peak memory rounded to the MB. The training-only
    ratio comes first, as ``training only x naive``: it compares like with like (the naive loop
    only trains); the whole run's (``x naive`` of the table) follows as ``whole run x naive``,
    which also counts the engine's checkpoints, work the naive loop does not do."""
    return pd.DataFrame(
        {
            "model-steps/s": with_range(tab, "model-steps/s", ".0f"),
            "training only x naive": with_range(tab, "training only x naive"),
            "whole run x naive": with_range(tab, "x naive"),
            "peak memory (MB)": tab["peak memory (MB)"].round(0),
        },
        index=tab.index,
    )


def configuration_sampler(configuration: str) -> str:
    """The sampler of a throughput configuration: "engine M=32 var_opt + diagnostics" -> "var_opt"."""
    words = str(configuration).split("+")[0].split()
    if not words:
        raise ValueError(f"configuration={configuration!r} is not allowed: it names no sampler before '+'")
    return words[-1]


def measurement_caption(record: dict[str, Any], name: str) -> str:
    """The caption of a shipped throughput measurement: benchmark, device, size, versions, date and file ``name``."""
    return (
        f"**{record['benchmark']}** on {record['device']}: {record['members']} members, {record['steps']} steps, batch {record['batch']}, "
        f"torch {record['torch']}, fmstudy {record.get('fmstudy', '?')}, measured {record.get('date', '?')} (`{name}`)"
    )


def shipped_measurements(folder: Path) -> list[tuple[str, pd.DataFrame]]:
    """(caption, :func:`rates_shown` table) of every ``throughput_*.json`` in ``folder``, by file name."""
    out = []
    for path in sorted(Path(folder).glob("throughput_*.json")):
        rec = json.loads(path.read_text())
        out.append((measurement_caption(rec, path.name), rates_shown(report.throughput_table(rec))))
    return out


def packing_verdict(lo: float, hi: float) -> str:
    """What the range [lo, hi] of the per-round ratios per-cell / packed seconds says: packed
    faster in every round (lo > 1), per cell faster in every round (hi < 1), or no claim."""
    if lo > hi:
        raise ValueError(f"lo={lo!r}, hi={hi!r} is not allowed: lo must be <= hi")
    if lo > 1:
        return "packed was faster in every round"
    if hi < 1:
        return "per cell was faster in every round"
    return "the rounds disagree on which way is faster, so no ratio is claimed"


def grid_throughput_text(gt: dict[str, Any] | None, profile: str) -> str:
    """The packing sentence from a ``benchmarks/grid_throughput.py`` record (``report.grid_throughput_table``:
    median wall seconds per way, the median and range of the per-round ratio, :func:`packing_verdict`),
    or, without one, that profile ``profile`` claims nothing and how to measure it."""
    if not gt:
        return (
            f"This profile has no such measurement (`results/{profile}/grid_throughput.json` is absent), so "
            "this book claims nothing about what packing gains in wall-clock time. `python benchmarks/grid_throughput.py "
            f"--json results/{profile}/grid_throughput.json` makes one (on an idle machine; one round, both ways, took about "
            "40 minutes on the 2-core CPU, so 3 rounds take about 2 hours)."
        )
    tab, (ratio, lo, hi) = report.grid_throughput_table(gt)
    return (
        f"Measured on {gt['device']} ({gt['date']}, fmstudy {gt['fmstudy']}): the `{gt['subgrid']}` sub-grid of "
        f"`{gt['grid_file']}`, {gt['cells']} cells of {gt['seeds']} seeds and {gt['steps']} steps "
        f"({gt['model_steps']:,} model-steps), `--jobs {gt['jobs']}`, packs of at most {gt['pack_size']} cells, "
        f"{len(gt['rounds'])} interleaved rounds. The whole grid took {tab.loc['per cell', 'wall s']:.0f} s per cell "
        f"and {tab.loc['packed', 'wall s']:.0f} s packed (medians over rounds); per-cell seconds over packed "
        f"seconds, round by round, {ratio:.2f} (range {lo:.2f}-{hi:.2f}): {packing_verdict(lo, hi)}."
    )


def grid_throughput_shown(gt: dict[str, Any]) -> pd.DataFrame:
    """The packing record for the page: per way its executions, wall seconds of the whole grid
    and model-steps/s, each "median (min-max)" over rounds to the unit."""
    tab, _ = report.grid_throughput_table(gt)
    return pd.DataFrame(
        {
            "executions": tab["executions"].astype(int),
            "wall seconds, whole grid": with_range(tab, "wall s", ".0f"),
            "model-steps/s": with_range(tab, "model-steps/s", ".0f"),
        },
        index=tab.index,
    )


def executions_text(runs: pd.DataFrame) -> str:
    """ "N executions: P packs of C cells in all, and A cells alone" from ``report.executions``
    (a pack has more than one cell)."""
    require_columns(runs, ("cells",), "table of executions")
    packs = runs[runs["cells"] > 1]
    alone = int((runs["cells"] == 1).sum())
    return (
        f"{len(runs)} executions: {len(packs)} pack{'s' * (len(packs) != 1)} of "
        f"{int(packs['cells'].sum())} cells in all, and {alone} cell{'s' * (alone != 1)} alone"
    )


def train_share(runs: pd.DataFrame) -> float:
    """Training's share of the executions' summed wall time, in percent: 100 sum T_train / sum W."""
    require_columns(runs, ("train_seconds", "wall_seconds"), "table of executions")
    return 100 * runs["train_seconds"].sum() / runs["wall_seconds"].sum()


def wall_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per kind of execution (pack: more than one cell; cell alone): executions, cells, median
    wall seconds, median model-steps/s and median training share of wall, to 2 decimals."""
    require_columns(runs, ("cells", "wall_seconds", "model_steps_per_s", "train_share"), "table of executions")
    wall = (
        runs.assign(kind=np.where(runs["cells"] > 1, "pack", "cell alone"))
        .groupby("kind")
        .agg(
            executions=("cells", "size"),
            cells=("cells", "sum"),
            wall_s_median=("wall_seconds", "median"),
            model_steps_per_s_median=("model_steps_per_s", "median"),
            training_share=("train_share", "median"),
        )
    )
    names = {
        "wall_s_median": "wall s per execution (median)",
        "model_steps_per_s_median": "model-steps/s (median)",
        "training_share": "training share of wall (median)",
    }
    return wall.rename(columns=names).round(2)
