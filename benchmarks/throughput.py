"""Training throughput: fmstudy's ensemble engine against a naive eager single-model loop.

The naive loop is what flow-matching examples usually do: one model, one optimiser step per
Python iteration, fresh data each step. The engine trains M seeds as one batched ensemble.
Both run in one run of this script on the same device, benchmark and model size; each
measurement runs in a fresh subprocess, so that its peak memory (CPU: max RSS; GPU: max
allocated) is its own. Shared machines are noisy, so the configurations are interleaved
(A B C ... A B C ...) ``--repeats`` times and each is reported as the median with its range
(min-max) over the repeats; a ratio to the naive loop is the median of the per-round ratios,
with their range. ``--baseline-tree DIR`` adds the same engine configurations run
from another copy of the package (e.g. an older commit's ``fmstudy/`` extracted to DIR), to
measure a change before and after in the same interleaved rounds.

    python benchmarks/throughput.py [--device cpu|cuda] [--members 64] [--steps 200]
        [--benchmark gmm8] [--batch 256] [--repeats 3] [--baseline-tree DIR] [--engine-only]

Issue 4's targets: on a GPU at least 100x the naive loop with the uniform sampler and 50x
with an adaptive sampler and the default diagnostics cadence; on a CPU at least 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def naive(benchmark: str, steps: int, batch: int, device: str) -> dict:
    """One VelocityMLP, torch.Generator data, an eager loop: the baseline."""
    from fmstudy.data import get_benchmark
    from fmstudy.models import MLPConfig, VelocityMLP
    from fmstudy.paths import BrownianBridge

    bench = get_benchmark(benchmark)
    model = VelocityMLP(MLPConfig(bench.dim, bench.model_hidden, bench.model_depth), seed=0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = BrownianBridge(0.5, 1e-3)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        x1 = bench.sample(batch, g).to(device)
        x0 = torch.randn(x1.shape, generator=g).to(device)
        eps = torch.randn(x1.shape, generator=g).to(device)
        t = (torch.rand(batch, generator=g) * 0.998 + 1e-3).to(device)
        s = path.sample(x0, x1, t, eps, check=False)
        loss = ((model(s.xt, t) - s.ut) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - tic
    return {"model_steps_per_s": steps / seconds, "seconds": seconds}


def engine(benchmark: str, steps: int, batch: int, device: str, members: int, sampler: str, diagnostics: bool) -> dict:
    """fmstudy.train on M members: the whole run after set-up (building the benchmark, the
    probes and M models is a one-off cost, not throughput), and its training steps alone."""
    from fmstudy.train import TrainConfig, train

    cfg = TrainConfig(
        benchmark=benchmark,
        sigma=0.5,
        seeds=tuple(range(members)),
        steps=steps,
        batch_size=batch,
        sampler={"name": sampler},
        device=device,
        # Without diagnostics only the two compulsory checkpoints (first and last) are taken.
        n_checkpoints=12 if diagnostics else 2,
        variance_groups=4 if diagnostics else 0,  # the variance account is part of the diagnostics
    )
    train(TrainConfig(**{**cfg.as_dict(), "steps": 5, "seeds": (0,)}), progress=False)  # warm-up
    ds = train(cfg, progress=False).dataset
    seconds = ds.attrs["wall_seconds"] - ds.attrs["setup_seconds"]
    train_only = float(ds.train_seconds.values[-1])
    return {
        "model_steps_per_s": members * steps / seconds,
        "model_steps_per_s_training_only": members * steps / train_only,
        "seconds": seconds,
        "diagnostics_seconds": seconds - train_only,
        "setup_seconds": ds.attrs["setup_seconds"],
    }


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec: dict) -> None:
    """Run one measurement and print it as JSON (called in a fresh process)."""
    kind = spec.pop("kind")
    out = naive(**spec) if kind == "naive" else engine(**spec)
    out["peak_memory_mb"] = _peak_memory_mb(spec["device"])
    print(json.dumps(out))


def measure(spec: dict, tree: str | None = None) -> dict:
    env = dict(os.environ)
    if tree:  # that copy of fmstudy is imported first
        env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default 64 on CPU, 1024 on GPU)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--benchmark", default="gmm8")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all configurations (median and range reported)")
    parser.add_argument("--baseline-tree", help="also run the engine from this copy of the package (a folder holding fmstudy/)")
    parser.add_argument("--engine-only", action="store_true", help="leave out the naive loop")
    parser.add_argument("--only", help="engine configurations to run, comma-separated SAMPLER or SAMPLER+diagnostics (default: uniform, uniform+diagnostics, grad_norm+diagnostics, var_opt+diagnostics)")
    parser.add_argument("--json", help="also write the measurements to this JSON file (the book's cost chapter reads it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    members = args.members or (1024 if torch.device(args.device).type == "cuda" else 64)
    common = {"benchmark": args.benchmark, "batch": args.batch, "device": args.device}
    configs: list[tuple[str, dict, str | None]] = []
    if not args.engine_only:
        configs.append(("naive eager loop, 1 model", {"kind": "naive", "steps": args.steps * 5, **common}, None))
    samplers = (("uniform", False), ("uniform", True), ("grad_norm", True), ("var_opt", True))
    if args.only:  # e.g. --only uniform,grad_norm+diagnostics
        samplers = tuple((name.removesuffix("+diagnostics"), name.endswith("+diagnostics")) for name in args.only.split(","))
    trees = [(None, "")] + ([(args.baseline_tree, " [baseline]")] if args.baseline_tree else [])
    for sampler, diag in samplers:
        for tree, tag in trees:
            spec = {"kind": "engine", "steps": args.steps, "members": members, "sampler": sampler, "diagnostics": diag, **common}
            configs.append((f"engine M={members} {sampler}{' + diagnostics' if diag else ''}{tag}", spec, tree))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for _ in range(args.repeats):  # interleaved: A B C ... A B C ...
        for name, spec, tree in configs:
            runs[name].append(measure(dict(spec), tree))
    print(f"device={args.device} benchmark={args.benchmark} batch={args.batch} torch={torch.__version__} repeats={args.repeats}")
    # "whole run" counts everything after set-up (checkpoint diagnostics included);
    # "training only" counts the steps and the sampler's own work (feedback passes included).
    print(f"{'configuration':<52} {'model-steps/s (range)':>24} {'x naive (range)':>18} {'training only':>14} {'peak MB':>8}")
    naive_runs = runs.get("naive eager loop, 1 model")
    rows = []
    for name, results in runs.items():
        whole = [r["model_steps_per_s"] for r in results]
        only = [r.get("model_steps_per_s_training_only", r["model_steps_per_s"]) for r in results]
        row = {**results[0], "model_steps_per_s": _median(whole), "model_steps_per_s_range": [min(whole), max(whole)],
               "model_steps_per_s_training_only": _median(only), "repeats": results}
        ratio = ""
        if naive_runs:
            per_round = [w / n["model_steps_per_s"] for w, n in zip(whole, naive_runs)]
            row["x_naive"], row["x_naive_range"] = _median(per_round), [min(per_round), max(per_round)]
            ratio = f"{row['x_naive']:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
        rows.append((name, row))
        print(f"{name:<52} {_median(whole):>9.0f} ({min(whole):.0f}-{max(whole):.0f})".ljust(78) + f"{ratio:>18} {_median(only):>14.0f} {row['peak_memory_mb']:>8.0f}")
    if args.baseline_tree:  # this tree against the baseline tree, per round
        print("this tree / baseline tree, median (range) over rounds:        whole run     training only")
        for sampler, diag in samplers:
            name = f"engine M={members} {sampler}{' + diagnostics' if diag else ''}"
            line = f"  {name:<50}"
            for key in ("model_steps_per_s", "model_steps_per_s_training_only"):
                per_round = [a[key] / b[key] for a, b in zip(runs[name], runs[name + " [baseline]"])]
                line += f"  {_median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
            print(line)
    if args.json:
        from fmstudy.results import atomic_write

        device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else f"cpu ({os.cpu_count()} cores)"
        import datetime

        from fmstudy import __version__

        record = {"device": device, "benchmark": args.benchmark, "batch": args.batch, "members": members, "steps": args.steps,
                  "torch": torch.__version__, "fmstudy": __version__, "date": datetime.date.today().isoformat(),
                  "rows": [{"configuration": name, **r} for name, r in rows]}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))


if __name__ == "__main__":
    main()
