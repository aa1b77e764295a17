"""Whole-grid throughput: a sub-grid run per cell (``--pack-size 1``) against the same sub-grid
packed (cells that differ only in sampler, lr and seeds trained as one ensemble), in one run of
this script on one machine.

By default the ``compare`` sub-grid of the quick profile (``papermill_params/quick.yaml``) at
10 seeds. Each repeat runs the whole sub-grid both ways through the grid runner
(``fmstudy.runner.run_grid``, as ``fmstudy grid`` does: papermill, pages, records, noise floors),
each into a fresh temporary results folder, so nothing is reused between runs. Shared machines
are noisy (one idle 2-core machine measured one configuration at 44, 390 and 691 steps/s within
an hour), so the two ways are interleaved (per cell, packed, per cell, packed, ...) and the
ratio is taken per round, per-cell seconds / packed seconds of the same round:

    ratio_r = W_cell(r) / W_pack(r),   printed as median_r ratio_r (min_r - max_r)

with the wall seconds W and the model-steps per second (cells x seeds x steps / W) of each way
as median (range) over the rounds. A ratio is claimed only where its range supports it (the
script says whether every round agrees). ``--json FILE`` writes every round.

    python benchmarks/grid_throughput.py [--seeds 10] [--steps S] [--repeats 3] [--subgrid compare]
        [--samplers uniform,var_opt] [--jobs 2] [--pack-size N] [--grid-file papermill_params/quick.yaml] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("per cell", "packed")


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def sub_grid(grid_file: Path, name: str, seeds: int, steps: int | None, samplers: list[str] | None) -> dict[str, Any]:
    """The grid file's sub-grid ``name`` as a grid file of its own (its notebook an absolute
    path; results and pages filled in per run), at ``seeds`` seeds (0 .. seeds-1), ``steps``
    steps when given, and only the samplers whose name is in ``samplers`` when given."""
    spec = yaml.safe_load(grid_file.read_text())
    subs = {g["name"]: g for g in spec.get("grids", [])}
    if name not in subs:
        raise ValueError(f"--subgrid {name!r} is not allowed: {grid_file} has the sub-grids {', '.join(subs) or 'none'}")
    sub = subs[name]
    fixed = {**spec.get("fixed", {}), **sub.get("fixed", {}), "seeds": list(range(seeds))}
    if steps is not None:
        fixed["steps"] = steps
    axes = dict(sub.get("axes", {}))
    if samplers is not None:
        if "sampler" not in axes:
            raise ValueError(f"--samplers is not allowed here: sub-grid {name!r} has no sampler axis")
        kept = [s for s in axes["sampler"] if (s if isinstance(s, str) else s.get("name")) in samplers]
        if not kept:
            raise ValueError(f"--samplers {','.join(samplers)!r} is not allowed: sub-grid {name!r} has none of them")
        axes["sampler"] = kept
    notebook = (grid_file.parent / spec["notebook"]).resolve()
    return {"description": f"{grid_file.name}: sub-grid {name} at {seeds} seeds", "notebook": str(notebook),
            "fixed": fixed, "grids": [{"name": name, "axes": axes}]}


def run_once(spec: dict[str, Any], pack_size: int, jobs: int) -> dict[str, Any]:
    """One whole run of the grid ``spec`` into a fresh temporary folder: wall seconds of
    ``run_grid`` (everything a user waits for: kernels, training, evaluation, pages, records),
    executions (packs, or cells when ``pack_size`` is 1) and model-steps."""
    from fmstudy.gridfile import load_grid
    from fmstudy.runner import run_grid

    with tempfile.TemporaryDirectory(prefix="grid_throughput.") as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(yaml.safe_dump({**spec, "results": str(Path(tmp) / "results"), "pages": str(Path(tmp) / "pages")}))
        grid = load_grid(path)
        tic = time.perf_counter()
        summary = run_grid(grid, jobs=jobs, progress=False, pack_size=pack_size)
        seconds = time.perf_counter() - tic
        if summary.failed or summary.ran != len(grid.cells):
            raise SystemExit(f"a run failed ({'packed' if pack_size > 1 else 'per cell'}):\n{summary.text(grid)}")
        log = json.loads((grid.results / "runs.jsonl").read_text().splitlines()[-1])
        model_steps = sum(len(c.params["seeds"]) * int(c.params["steps"]) for c in grid.cells)
    return {"seconds": seconds, "cells": len(grid.cells), "executions": log["packs"], "model_steps": model_steps,
            "model_steps_per_s": model_steps / seconds}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over rounds of each way's wall seconds and model-steps/s, and of the
    per-round ratio per-cell seconds / packed seconds."""
    out: dict[str, Any] = {}
    for way in WAYS:
        secs = [r[way]["seconds"] for r in rounds]
        rate = [r[way]["model_steps_per_s"] for r in rounds]
        out[way] = {"seconds": _median(secs), "seconds_range": [min(secs), max(secs)],
                    "model_steps_per_s": _median(rate), "model_steps_per_s_range": [min(rate), max(rate)]}
    ratios = [r["ratio"] for r in rounds]
    out["ratio"], out["ratio_range"] = _median(ratios), [min(ratios), max(ratios)]
    return out


def main(argv: list[str] | None = None) -> int:
    from fmstudy.checks import check_int
    from fmstudy.runner import default_pack_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-file", default=str(ROOT / "papermill_params" / "quick.yaml"))
    parser.add_argument("--subgrid", default="compare", help="the sub-grid to run (default compare)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per cell (0 .. N-1; default 10)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per cell (default: the grid file's)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds, each running both ways (default 3)")
    parser.add_argument("--samplers", default=None, help="comma-separated sampler names to keep (default: all of the sub-grid's)")
    parser.add_argument("--jobs", type=int, default=2, help="local workers for both ways (default 2, as make book)")
    parser.add_argument("--pack-size", type=int, default=None, help="cells per pack when packed (default: the runner's default for this device)")
    parser.add_argument("--json", help="also write every round and the summary to this JSON file")
    args = parser.parse_args(argv)
    try:
        for name in ("seeds", "repeats", "jobs"):
            check_int(name, getattr(args, name), 1)
        if args.steps is not None:
            check_int("steps", args.steps, 1)
        pack = default_pack_size() if args.pack_size is None else check_int("pack_size", args.pack_size, 2, why=" (packed runs need 2 cells a pack)")
    except ValueError as err:
        parser.error(str(err))
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()] if args.samplers else None
    try:
        spec = sub_grid(Path(args.grid_file), args.subgrid, args.seeds, args.steps, samplers)
    except ValueError as err:
        parser.error(str(err))
    os.environ.pop("FMSTUDY_FLOOR_CACHE", None)  # each run computes its noise floors in its own folder
    rounds = []
    for i in range(args.repeats):  # interleaved: per cell, packed, per cell, packed, ...
        r = {way: run_once(spec, 1 if way == "per cell" else pack, args.jobs) for way in WAYS}
        r["round"] = i
        r["ratio"] = r["per cell"]["seconds"] / r["packed"]["seconds"]
        rounds.append(r)
        print(f"round {i + 1}/{args.repeats}: per cell {r['per cell']['seconds']:.1f} s ({r['per cell']['executions']} executions), "
              f"packed {r['packed']['seconds']:.1f} s ({r['packed']['executions']} packs), ratio {r['ratio']:.2f}", flush=True)
    s = summarise(rounds)
    first = rounds[0]["per cell"]
    print(f"{args.subgrid} of {Path(args.grid_file).name}: {first['cells']} cells x {args.seeds} seeds, {first['model_steps']} model-steps, "
          f"--jobs {args.jobs}, pack size {pack}, {args.repeats} interleaved rounds (median (range))")
    for way in WAYS:
        w = s[way]
        print(f"  {way:<9} {w['seconds']:8.1f} s ({w['seconds_range'][0]:.1f}-{w['seconds_range'][1]:.1f})"
              f"  {w['model_steps_per_s']:8.0f} model-steps/s ({w['model_steps_per_s_range'][0]:.0f}-{w['model_steps_per_s_range'][1]:.0f})")
    lo, hi = s["ratio_range"]
    verdict = ("packed faster in every round" if lo > 1 else "per cell faster in every round" if hi < 1
               else "the rounds disagree: no ratio claimed")
    print(f"  ratio per cell / packed: {s['ratio']:.2f} ({lo:.2f}-{hi:.2f}); {verdict}")
    if args.json:
        import platform

        import torch

        from fmstudy import __version__
        from fmstudy.results import atomic_write

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
        record = {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                  "fmstudy": __version__, "date": datetime.date.today().isoformat(), "grid_file": Path(args.grid_file).name,
                  "subgrid": args.subgrid, "seeds": args.seeds, "steps": spec["fixed"]["steps"], "cells": first["cells"],
                  "model_steps": first["model_steps"], "jobs": args.jobs, "pack_size": pack, "repeats": args.repeats,
                  "samplers": samplers, "rounds": rounds, **s}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
