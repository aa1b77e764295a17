"""Shipping a profile's results with the repository (issue 15, item 7).

A fresh clone builds the book from committed results without recomputing. What is shipped of a
results folder (``SHIPPED``, mirrored by ``.gitignore``): the cells' netCDF files and records,
``runs.jsonl``, ``throughput.json`` and ``PROVENANCE.json``; not the executed pages (about
0.5 MB each, every cell of a pack a copy of the pack's), nor logs, locks or the floors cache.

- :func:`compact` rewrites finished cells' netCDF files in the compact encoding of
  :func:`fmstudy.results.write_netcdf`, atomically, each verified bit-equal on reading;
- :func:`mark_shipped` writes ``"page_shipped": false`` into finished cells' records, so
  :func:`fmstudy.store.is_finished` counts them finished without their pages;
- :func:`write_provenance` records what produced the results (commit, versions, device, date,
  command) in ``PROVENANCE.json``;
- :func:`unfinished` lists the cells of a grid file that a fresh clone would recompute (none,
  for results ready to ship);
- :func:`write_cells_page` writes ``<pages>/cells.md``, the book's table of the cells'
  records, which :func:`fmstudy.report.run_link` links to where a page is absent.

``python -m fmstudy.ship prepare RESULTS --command CMD --code DIR`` does the first three and
prints the sizes; ``python -m fmstudy.ship page RESULTS PAGES`` the last (``make book``).
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .results import atomic_write, read_netcdf, write_netcdf
from .store import cell_result, is_finished, label, record_path, write_json

__all__ = ["SHIPPED", "CELLS_PAGE", "compact", "mark_shipped", "same_bits", "shipped_files", "shipped_size", "unfinished",
           "write_cells_page", "write_provenance"]

# glob patterns, relative to a results folder, of what is committed (.gitignore says the same);
# cell ids are 16 hex digits, so hidden temporaries (".<id>...") never match
SHIPPED = ("cells/[0-9a-f]*.nc", "cells/[0-9a-f]*.json", "runs.jsonl", "throughput.json", "PROVENANCE.json")
CELLS_PAGE = "cells.md"
ROOT = Path(__file__).resolve().parents[1]


def _records(results: Path) -> list[dict[str, Any]]:
    """The records of the cells whose record says ok (in id order)."""
    out = []
    for path in sorted((Path(results) / "cells").glob("[0-9a-f]*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("id") == path.stem:
            out.append(rec)
    return out


def same_bits(a: Any, b: Any) -> str:
    """"" when Datasets ``a`` and ``b`` read the same: variables in the same order with the same
    dims, dtype, attributes and bytes (NaNs included, bit for bit), the same attributes; else
    what differs (one line)."""
    if list(a.variables) != list(b.variables):
        return f"variables differ: {list(a.variables)} against {list(b.variables)}"
    for name in a.variables:
        x, y = a[name].variable, b[name].variable
        if x.dims != y.dims or x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: dims, dtype or shape differ ({x.dims} {x.dtype} {x.shape} against {y.dims} {y.dtype} {y.shape})"
        if x.dtype.kind in "fiucb":
            if np.ascontiguousarray(x.values).tobytes() != np.ascontiguousarray(y.values).tobytes():
                return f"{name}: values differ"
        elif not np.array_equal(x.values, y.values):
            return f"{name}: values differ"
        if _attrs_key(x.attrs) != _attrs_key(y.attrs):
            return f"{name}: attributes differ"
    if _attrs_key(a.attrs) != _attrs_key(b.attrs):
        return "global attributes differ"
    return ""


def _attrs_key(attrs: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """Attributes as (name, type, bytes): order, type and value (NaN included) compared exactly."""
    return [(k, type(v).__name__, np.asarray(v).tobytes() if not isinstance(v, str) else v.encode()) for k, v in attrs.items()]


def compact(results: str | os.PathLike) -> dict[str, int]:
    """Rewrite every finished cell's netCDF file (record ok, file readable with its id) in the
    compact encoding (:func:`fmstudy.results.compact_encoding`): written beside it, read back,
    compared bit for bit (:func:`same_bits`), then renamed over it; a cell that is running
    (lock file) is left alone, and so is a file the rewrite would not shrink. Raises
    ``ValueError`` naming the cell if a rewrite reads differently (the original is kept).
    Returns counts and bytes before and after."""
    results = Path(results)
    out = {"cells": 0, "rewritten": 0, "skipped": 0, "bytes_before": 0, "bytes_after": 0}
    for rec in _records(results):
        cid = rec["id"]
        path = results / "cells" / f"{cid}.nc"
        ds, why = cell_result(results, {**rec, "page_shipped": False})  # the page is not what is compacted
        if ds is None or (results / "cells" / f"{cid}.lock").exists():
            out["skipped"] += 1
            continue
        out["cells"] += 1
        before = path.stat().st_size
        tmp = results / "cells" / f".{cid}.compact.nc"
        try:
            write_netcdf(ds, tmp)
            diff = same_bits(ds, read_netcdf(tmp))
            if diff:
                raise ValueError(f"cell {cid}: its compact rewrite reads differently ({diff}): the original is kept")
            after = tmp.stat().st_size
            if after < before:
                os.replace(tmp, path)
                out["rewritten"] += 1
            else:
                after = before
        finally:
            tmp.unlink(missing_ok=True)
        out["bytes_before"] += before
        out["bytes_after"] += after
    return out


def mark_shipped(results: str | os.PathLike) -> int:
    """Write ``"page_shipped": false`` into the record of every finished cell (its netCDF file
    readable with its id), atomically; returns how many records say so now."""
    results = Path(results)
    n = 0
    for rec in _records(results):
        if cell_result(results, {**rec, "page_shipped": False})[0] is None:
            continue
        if rec.get("page_shipped") is not False:
            write_json(record_path(results, rec["id"]), {**rec, "page_shipped": False})
        n += 1
    return n


def unfinished(grid_file: str | os.PathLike, results: str | os.PathLike) -> list[str]:
    """The ids of the cells of ``grid_file`` that are not finished in ``results`` without their
    pages: what ``fmstudy grid`` would recompute on a fresh clone (none when the results
    shipped match the grid file committed with them)."""
    from .gridfile import load_grid

    grid = load_grid(grid_file, results=results)
    return [c.id for c in grid.cells if not is_finished(Path(results), c.id, Path(os.devnull) / "no-pages")]


def shipped_files(results: str | os.PathLike) -> list[Path]:
    """The files of ``results`` that are shipped (``SHIPPED``), sorted."""
    return sorted({p for pattern in SHIPPED for p in Path(results).glob(pattern) if p.is_file()})


def shipped_size(results: str | os.PathLike, git: bool = False) -> dict[str, int]:
    """Files and bytes shipped; with ``git``, also the bytes of a git pack holding them (what a
    clone downloads: git compresses each file and stores similar files as deltas)."""
    files = shipped_files(results)
    out = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    if git:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"}

            def git_run(*args: str) -> None:
                subprocess.run(["git", *args], cwd=tmp, env=env, check=True, capture_output=True)

            git_run("init", "-q")
            for p in files:
                dest = Path(tmp) / p.relative_to(results)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(p.read_bytes())
            git_run("add", ".")
            git_run("commit", "-q", "-m", "size")
            git_run("gc", "-q")
            out["git_pack_bytes"] = sum(p.stat().st_size for p in (Path(tmp) / ".git" / "objects" / "pack").glob("*.pack"))
    return out


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


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
    recs = _records(results)
    for rec in recs:
        ds, _ = cell_result(results, {**rec, "page_shipped": False})
        if ds is not None:
            for key, values in seen.items():
                values.add(str(ds.attrs.get(key, "")))
    runs = []
    if (results / "runs.jsonl").is_file():
        runs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines() if line.strip()]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    prov = {
        "produced_by": commits,
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
    """Write ``<pages>/cells.md``, a book page with one row per finished cell (anchor
    ``cell-<id>``: id, sub-grids, parameters that vary, seeds, seconds, pack) and the results'
    provenance, when some finished cell has no page in ``pages`` (results shipped without
    them); else remove a stale one. Returns the page's path, or None."""
    results, pages = Path(results), Path(pages)
    page = pages / CELLS_PAGE
    recs = [r for r in _records(results) if cell_result(results, {**r, "page_shipped": False})[0] is not None]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fmstudy.ship", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="compact, mark records, write PROVENANCE.json, print sizes")
    p.add_argument("results")
    p.add_argument("--command", required=True, help="the command that produced the results")
    p.add_argument("--code", action="append", help="the checkout that produced them (repeatable; default this one)")
    p.add_argument("--note", default="")
    p.add_argument("--grid", help="the grid file shipped with them: say which of its cells a fresh clone would recompute")
    p = sub.add_parser("page", help="write PAGES/cells.md when cells have no page")
    p.add_argument("results")
    p.add_argument("pages")
    p = sub.add_parser("size", help="files and bytes shipped (--git: and a git pack's size)")
    p.add_argument("results")
    p.add_argument("--git", action="store_true")
    args = ap.parse_args(argv)
    if not (Path(args.results) / "cells").is_dir():
        print(f"python -m fmstudy.ship: results={args.results!r} is not allowed: it must be a results folder (with cells/)", file=sys.stderr)
        return 2
    if args.what == "prepare":
        print("compact:", compact(args.results))
        print("records marked as shipped without pages:", mark_shipped(args.results))
        prov = write_provenance(args.results, args.command, args.code, args.note)
        print("provenance:", [c["commit"][:12] for c in prov["produced_by"]], prov["devices"], prov["date"])
        print("shipped:", shipped_size(args.results, git=True))
        if args.grid:
            todo = unfinished(args.grid, args.results)
            print(f"{args.grid}: {len(todo)} cells a fresh clone would recompute" + (f": {', '.join(todo[:10])}" if todo else ""))
            return 1 if todo else 0
    elif args.what == "page":
        page = write_cells_page(args.results, args.pages)
        print(f"cells page: {page}" if page else "every finished cell has its page: no cells page")
    else:
        print(shipped_size(args.results, git=args.git))
    return 0


if __name__ == "__main__":
    sys.exit(main())
