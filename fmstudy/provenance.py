"""What shipped results say about themselves (issue 15, item 7): ``PROVENANCE.json`` (the commit,
versions, device, date and command that produced them) and the book's table of the cells'
records (``runs/<profile>/cells.md``), where the chapters' run links lead when a cell's page
was not shipped (:func:`fmstudy.report.run_link`). :mod:`fmstudy.ship` prepares the results.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import html
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import h5py

from . import __version__
from .results import atomic_write
from .store import label, ok_records, write_json

__all__ = ["CELLS_PAGE", "code_state", "file_attrs", "file_sha256", "write_cells_page", "write_provenance"]

CELLS_PAGE = "cells.md"
ROOT = Path(__file__).resolve().parents[1]


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.lru_cache(maxsize=8)
def code_state(folder: str | os.PathLike = ROOT) -> dict[str, Any]:
    """The checkout ``folder`` (default: the one this fmstudy is imported from) as a cell's record
    stores it: ``commit`` (empty when not a git checkout) and ``uncommitted_changes`` (tracked
    files only, outside ``results/`` and ``book/runs/``, which the grid itself writes). Cached: a grid run asks once per cell, the answer does not change meanwhile."""
    folder = Path(folder).resolve()
    sha = _git(folder, "rev-parse", "HEAD")
    # the results and pages a grid writes (runs.jsonl is tracked) are not the code: left out
    changed = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", ":(exclude)book/runs")
    return {"commit": sha, "uncommitted_changes": bool(sha) and bool(changed)}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (a cell's record names the grid file's version by it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_attrs(path: str | os.PathLike, keys: list[str]) -> dict[str, str] | None:
    """The global attributes ``keys`` of a cell's netCDF file that it has, as text, read with
    h5py without touching its variables (opening ~250 files with xarray takes minutes); None
    when the file is missing or not HDF5."""
    try:
        with h5py.File(path, "r") as f:
            raw = {k: f.attrs[k] for k in keys if k in f.attrs}
    except OSError:
        return None
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}


def write_provenance(results: str | os.PathLike, command: str, code: list[str | os.PathLike] | None = None,
                     note: str = "") -> dict[str, Any]:
    """Write ``results/PROVENANCE.json``: the commit of each checkout in ``code`` (default this
    repository) that produced the results, with whether it had uncommitted changes; the
    ``command``; the fmstudy and torch versions, devices and hosts the cells' files record; the
    first and last grid runs of ``runs.jsonl``; this machine; the date (UTC). Returns it."""
    import platform

    import torch

    results = Path(results)
    commits = []
    for folder in code or [ROOT]:
        folder = Path(folder).resolve()
        sha = _git(folder, "rev-parse", "HEAD")
        if not sha:
            raise ValueError(f"code={str(folder)!r} is not allowed: it must be a git checkout (the one that produced the results)")
        commits.append({"checkout": str(folder), "commit": sha, "subject": _git(folder, "log", "-1", "--format=%s"),
                        "uncommitted_changes": bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))})
    seen: dict[str, set[str]] = {"fmstudy_version": set(), "torch_version": set(), "device": set(), "host": set()}
    recs = ok_records(results)
    for rec in recs:
        attrs = file_attrs(results / "cells" / f"{rec['id']}.nc", list(seen))
        if attrs is None:  # missing or not HDF5: not a finished cell, nothing to record
            continue
        for key, values in seen.items():
            values.add(attrs.get(key, ""))
    # the commits the cells' records name (records written before they carried one name none)
    record_commits = sorted({str(r.get("code", {}).get("commit", "")) for r in recs} - {""})
    runs = []
    if (results / "runs.jsonl").is_file():
        runs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines() if line.strip()]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    prov = {
        "produced_by": commits,
        "record_commits": record_commits,
        "command": command,
        "note": note,
        "cells": len(recs),
        "fmstudy_versions": sorted(seen["fmstudy_version"]),
        "torch_versions": sorted(seen["torch_version"]),
        "devices": sorted(seen["device"]),
        "hosts": sorted(seen["host"]),
        "grid_runs": {"first": runs[0].get("time") if runs else None, "last": runs[-1].get("time") if runs else None,
                      "seconds": round(sum(float(r.get("seconds", 0)) for r in runs), 1)},
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": str(torch.__version__),
                    "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
        "fmstudy_version": __version__,
        "pages_shipped": False,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_json(results / "PROVENANCE.json", prov)
    return prov


def write_cells_page(results: str | os.PathLike, pages: str | os.PathLike) -> Path | None:
    """Write ``<pages>/cells.md``, a book page with one row per cell whose record says ok (anchor
    ``cell-<id>``: id, sub-grids, parameters that vary, seeds, seconds, pack) and the results'
    provenance, when some such cell has no page in ``pages`` (results shipped without
    them); else remove a stale one. Returns the page's path, or None."""
    results, pages = Path(results), Path(pages)
    page = pages / CELLS_PAGE
    # every record that says ok and has its file: a superset of the cells the chapters collect
    # (and link to), found without opening ~250 files at every build
    recs = [r for r in ok_records(results) if (results / "cells" / f"{r['id']}.nc").is_file()]
    missing = [r for r in recs if not (pages / f"{r['id']}.ipynb").is_file()]
    if not missing:
        page.unlink(missing_ok=True)
        return None
    prov_path = results / "PROVENANCE.json"
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    lines = [f"# The cells of the {results.name} profile", ""]
    lines += [f"{len(missing)} of the {len(recs)} finished cells in `{results.name}/` have no page here: their results were "
              "shipped with the repository without the executed notebooks (about 0.5 MB each). Each row is a cell's record "
              f"(`results/{results.name}/cells/<id>.json`, its numbers in `<id>.nc`); the chapters' run links lead here. "
              f"`python -m fmstudy grid papermill_params/{results.name}.yaml --force` recomputes them, pages included.", ""]
    for c in prov.get("produced_by", []):
        lines.append(f"- produced by commit `{c['commit'][:12]}` ({html.escape(c.get('subject', ''))})"
                     + (", with uncommitted changes" if c.get("uncommitted_changes") else ""))
    if prov:
        lines += [f"- command: `{prov.get('command', '')}`",
                  f"- fmstudy {', '.join(prov.get('fmstudy_versions', []))}, torch {', '.join(prov.get('torch_versions', []))}, "
                  f"device {', '.join(prov.get('devices', []))}; grid runs from {prov.get('grid_runs', {}).get('first')} "
                  f"to {prov.get('grid_runs', {}).get('last')}; written {prov.get('date', '')}"]
    lines.append("")
    varying = sorted({k for r in recs for k in r.get("labels", {})})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["cell", "sub-grids", *varying, "seeds", "seconds", "pack"])
    rows = []
    for r in sorted(recs, key=lambda r: (r.get("grids", []), json.dumps(r.get("labels", {}), sort_keys=True), r["id"])):
        seeds = r.get("params", {}).get("seeds", [])
        cells = [f"<code>{r['id']}</code>", html.escape(", ".join(map(str, r.get("grids", []))))]
        cells += [html.escape(str(label(r.get("labels", {}).get(k, "")))) for k in varying]
        cells += [f"{len(seeds)} ({min(seeds)}-{max(seeds)})" if seeds else "", f"{float(r.get('seconds', float('nan'))):.1f}",
                  str(len(r["pack"])) if isinstance(r.get("pack"), list) else "1"]
        rows.append(f'<tr id="cell-{r["id"]}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines += ["<table>", f"<tr>{head}</tr>", *rows, "</table>", ""]
    pages.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    atomic_write(page, lambda tmp: Path(tmp).write_text(text))
    return page
