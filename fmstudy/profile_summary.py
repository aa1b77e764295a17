"""What a profile ran and what produced it, for the book's first chapter.

Everything here reads a results folder's records, its cost table (:func:`fmstudy.costs.cell_costs`),
its grid-run log (``runs.jsonl``) and its ``PROVENANCE.json``, and returns numbers, tables or
sentences; nothing is measured here. A pack's cells share one clock, so cost is counted in
training FLOPs per cell and wall-clock per execution (:func:`fmstudy.costs.executions`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .costs import executions
from .trim import describe

__all__ = ["grid_run_text", "samplers_run", "links_text", "provenance_text", "read_runs_log", "scale", "subgrid_rows", "subgrid_summary"]


def scale(cells: Sequence[dict[str, Any]], cost: pd.DataFrame) -> dict[str, Any]:
    """The profile's size: ``n_cells``, ``total_tflops`` (training FLOPs of all members / 1e12,
    NaN without cells), ``n_executions`` (a sentence: executions and how many were packs),
    ``total_minutes`` (wall-clock summed over executions, a pack counted once) and ``n_seeds``
    (the distinct numbers of seeds per cell, "n/a" without cells)."""
    runs = executions(cost)
    packs = int((runs["cells"] > 1).sum())
    plural = "s" * (len(runs) != 1)
    return {
        "n_cells": len(cells),
        "total_tflops": cost["flops"].sum() / 1e12 if len(cost) else float("nan"),
        "n_executions": f"{len(runs)} execution{plural} ({packs} of them {'a pack' if packs == 1 else 'packs'} "
        "of cells trained as one ensemble)" if len(runs) else "n/a",
        "total_minutes": runs["wall_seconds"].sum() / 60 if len(runs) else float("nan"),
        "n_seeds": ", ".join(map(str, sorted({len(r["params"]["seeds"]) for r in cells}))) or "n/a",
    }


def read_runs_log(results: str | Path) -> list[dict[str, Any]]:
    """The grid runs ``results/runs.jsonl`` logs (one JSON object a line; none if it is missing)."""
    path = Path(results) / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def grid_run_text(log: Sequence[dict[str, Any]]) -> str:
    """The grid run that ran the most cells, as "N cells in M minutes of wall-clock time with J
    executions at a time (...)" ("cells at a time" for a log written before packs); "n/a" if
    no run ran a cell."""
    ran = [r for r in log if r["ran"] > 0]
    if not ran:
        return "n/a"
    last = max(ran, key=lambda r: r["ran"])
    head = f"{last['ran']} cells in {last['seconds'] / 60:.1f} minutes of wall-clock time with {last['jobs']} "
    if "packs" in last:
        return (head + f"executions at a time ({last['packs']} executions, packs of at most {last['pack_size']} cells) on "
                f"{last['cpus']} CPU cores ({last['executor']} executor)")
    return head + f"cells at a time on {last['cpus']} CPU cores ({last['executor']} executor)"


def _commits_of_records(cells: Sequence[dict[str, Any]]) -> str:
    """How many cells each commit the records name produced, most first (", with uncommitted
    changes" where the record says so), and how many records name none."""
    at = Counter(((r.get("code") or {}).get("commit"), bool((r.get("code") or {}).get("uncommitted_changes"))) for r in cells)
    named = "; ".join(f"{c[:7]}{' with uncommitted changes' if d else ''}: {k} cells" for (c, d), k in sorted(at.items(), key=lambda x: -x[1])
                      if c)
    unnamed = sum(k for (c, _), k in at.items() if not c)
    return (named or "no cell names its commit") + (f"; {unnamed} records name no commit" if unnamed else "")


def _unnamed_by_subgrid(cells: Sequence[dict[str, Any]]) -> str:
    """The sub-grids of the records that name no commit: "all N of X" for a sub-grid none of whose
    records names one, "k of the N of Y" for one where some do; "" when every record names one."""
    total, unnamed = Counter(), Counter()
    for r in cells:
        for g in r.get("grids") or []:
            total[g] += 1
            unnamed[g] += not (r.get("code") or {}).get("commit")
    whole = [f"all {total[g]} of {g}" for g in sorted(total) if unnamed[g] == total[g]]
    part = [f"{unnamed[g]} of the {total[g]} of {g}" for g in sorted(total) if 0 < unnamed[g] < total[g]]
    return ", ".join(whole + part)


def _disagreements(prov: dict[str, Any], cells: Sequence[dict[str, Any]]) -> list[str]:
    """Where ``prov``'s checkouts and the records' commits disagree: commits the records name that
    are not among the checkouts (with their cells), checkouts no record names, and checkouts whose
    uncommitted-changes flag differs from that of every record naming their commit."""
    checkouts = {c["commit"]: bool(c.get("uncommitted_changes")) for c in prov["produced_by"]}
    named: dict[str, list[bool]] = {}
    for r in cells:
        code = r.get("code") or {}
        if code.get("commit"):
            named.setdefault(code["commit"], []).append(bool(code.get("uncommitted_changes")))
    out = []
    extra = [f"{c[:7]} ({len(named[c])} cells)" for c in sorted(named, key=lambda c: -len(named[c])) if c not in checkouts]
    if extra:
        out.append(f"the records name {', '.join(extra)}, not among the checkouts")
    unnamed = [c[:7] for c in checkouts if c not in named]
    if unnamed:
        out.append(f"no record names the checkout{'s' * (len(unnamed) != 1)} {', '.join(unnamed)}")
    for flag, says in ((True, "had uncommitted changes, their records say not"), (False, "had none, their records say it had")):
        differ = [c[:7] for c, dirty in checkouts.items() if dirty == flag and c in named and all(d != flag for d in named[c])]
        if differ:
            n = sum(len(named[c]) for c in named if c[:7] in differ)
            out.append(f"PROVENANCE.json says {' and '.join(differ)} {says} ({n} cells; its flag is a checkout's state when "
                       "PROVENANCE.json was written, a record's that of its checkout when the cell ran)")
    return out


def provenance_text(prov: dict[str, Any] | None, cells: Sequence[dict[str, Any]], profile: str) -> str:
    """What produced these results, from their ``PROVENANCE.json`` (``prov``; None when none ships:
    then this checkout computed them): the checkouts and their commits, versions, devices, the
    last grid run; the commits the records name; where the two accounts disagree
    (:func:`_disagreements`); the sub-grids of the records that name no commit, which only the
    note can tie to a checkout; the note, and what trimming left out."""
    if prov is None:
        return "These results were computed by this checkout on this machine (no PROVENANCE.json ships with them)."
    by = "; ".join(f"commit {c['commit'][:12]} ({c['subject']}{', with uncommitted changes' if c['uncommitted_changes'] else ''})"
                   for c in prov["produced_by"])
    n = len(prov["produced_by"])
    commits = ", ".join(c[:7] for c in prov.get("record_commits", []))
    differ = _disagreements(prov, cells)
    text = (f"According to results/{profile}/PROVENANCE.json, these results were produced by {n} checkout{'s' * (n != 1)}: {by}; "
            f"fmstudy {', '.join(prov['fmstudy_versions'])}, torch {', '.join(prov['torch_versions'])}, on "
            f"{', '.join(prov['devices'])}; its last grid run ended {prov['grid_runs']['last'] or 'n/a'}. "
            f"The cells' records name the commits {commits or 'none'} ({_commits_of_records(cells)}). ")
    text += ("The two accounts disagree: " + "; ".join(differ) + ". ") if differ else "The two accounts agree. "
    unnamed = sum(not (r.get("code") or {}).get("commit") for r in cells)
    if unnamed:
        text += (f"The {unnamed} records that name no commit are {_unnamed_by_subgrid(cells)} (a cell of several sub-grids counted in "
                 "each): " + ("only PROVENANCE.json's note below ties them to a checkout. " if prov.get("note") else
                              "nothing ties them to a checkout. "))
    return text + f"Its note: {prov.get('note') or 'none'} " + describe(prov)


def links_text(prov: dict[str, Any] | None, profile: str) -> str:
    """Where the book's run links lead: each cell's executed notebook, or (results shipped
    without pages) the table of the cells' records."""
    pages = prov is None or bool(prov.get("pages_shipped", True))
    return f"the {profile} profile's links lead to " + ("each cell's executed notebook" if pages else
                                                        f"the table of the cells' records (book/runs/{profile}/cells.md); the cells' pages are not shipped")


def subgrid_rows(cells: Sequence[dict[str, Any]], cost: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, sub-grid it belongs to): id, sub-grid, benchmark, steps, batch, seeds
    and the cell's training FLOPs (NaN where the cost table lacks it). A cell of several
    sub-grids has several rows; ``drop_duplicates("id")`` counts it once."""
    flops = dict(zip(cost["id"], cost["flops"])) if len(cost) else {}
    rows = [{"id": rec["id"], "sub-grid": g, "benchmark": rec["params"].get("benchmark"), "steps": rec["params"].get("steps"),
             "batch": rec["params"].get("batch_size"), "seeds": len(rec["params"]["seeds"]), "flops": flops.get(rec["id"], np.nan)}
            for rec in cells for g in rec["grids"]]
    return pd.DataFrame(rows, columns=["id", "sub-grid", "benchmark", "steps", "batch", "seeds", "flops"])


def subgrid_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (sub-grid, benchmark) of :func:`subgrid_rows`: cells, the largest steps ("steps
    (largest)"), batch and seeds, and the training TFLOPs summed over its cells."""
    agg = rows.groupby(["sub-grid", "benchmark"]).agg(cells=("flops", "size"), steps=("steps", "max"), batch=("batch", "max"),
                                                     seeds=("seeds", "max"), training_tflops=("flops", lambda f: f.sum() / 1e12))
    # a sub-grid may sweep steps (the budget sweep): the column says it shows the largest
    return agg.rename(columns={"training_tflops": "training TFLOPs", "steps": "steps (largest)"})


def samplers_run(cells: Sequence[dict[str, Any]], names: Sequence[str], grid: str = "compare") -> list[str]:
    """Which of the sampler ``names`` some finished cell of sub-grid ``grid`` ran (in the order of
    ``names``); a cell's sampler is its record's ``params.sampler``, a name or ``{"name": ...}``."""
    ran = set()
    for rec in cells:
        if grid in (rec.get("grids") or []):
            spec = rec["params"].get("sampler", "")
            ran.add(spec.get("name") if isinstance(spec, dict) else str(spec))
    return [n for n in names if n in ran]
