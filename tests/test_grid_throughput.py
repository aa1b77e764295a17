"""``benchmarks/grid_throughput.py`` at the smallest size (a smoke test, not a timed one): both
ways run, interleaved, through the real grid runner and notebooks; what it prints and writes is
consistent with itself (each round's ratio is that round's per-cell seconds over its packed
seconds, rates are model-steps over seconds, medians and ranges are those of the rounds), and
bad options get one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "grid_throughput.py"


def tiny_grid(folder: Path) -> Path:
    """The smoke profile's compare sub-grid at one sigma and a smaller model and evaluation."""
    spec = yaml.safe_load((ROOT / "papermill_params" / "smoke.yaml").read_text())
    spec["notebook"] = str(ROOT / "book" / "notebooks" / "grid_cell.ipynb")
    spec["fixed"].update(hidden=16, depth=2, n_bins=4, probe_per_bin=8, n_checkpoints=2, feedback_every=5, variance_groups=2,
                         eval_samples=40, ode_steps=3, device="cpu")
    compare = next(g for g in spec["grids"] if g["name"] == "compare")
    compare["axes"]["sigma"] = [1.0]
    spec["grids"] = [compare]
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_benchmark_runs_both_ways_and_its_numbers_agree(tmp_path):
    out = tmp_path / "gt.json"
    cmd = [sys.executable, str(SCRIPT), "--grid-file", str(tiny_grid(tmp_path)), "--samplers", "uniform,var_opt", "--seeds", "2",
           "--steps", "20", "--repeats", "2", "--jobs", "1", "--pack-size", "4", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert (rec["subgrid"], rec["seeds"], rec["steps"], rec["repeats"], rec["pack_size"]) == ("compare", 2, 20, 2, 4)
    assert rec["cells"] == 2 and rec["model_steps"] == 2 * 2 * 20  # uniform and var_opt, 2 seeds, 20 steps
    assert [r["round"] for r in rec["rounds"]] == [0, 1]
    for r in rec["rounds"]:
        cell, pack = r["per cell"], r["packed"]
        assert cell["executions"] == 2 and pack["executions"] == 1  # one papermill run per cell; one pack
        assert r["ratio"] == pytest.approx(cell["seconds"] / pack["seconds"], rel=1e-12)
        for way in (cell, pack):
            assert way["seconds"] > 0 and way["model_steps"] == rec["model_steps"]
            assert way["model_steps_per_s"] == pytest.approx(way["model_steps"] / way["seconds"], rel=1e-12)
    ratios = sorted(r["ratio"] for r in rec["rounds"])
    assert rec["ratio"] == pytest.approx(sum(ratios) / 2) and rec["ratio_range"] == ratios  # two rounds: the median is the mean
    for way in ("per cell", "packed"):
        secs = sorted(r[way]["seconds"] for r in rec["rounds"])
        assert rec[way]["seconds_range"] == secs and rec[way]["seconds"] == pytest.approx(sum(secs) / 2)
    # the printed summary says the same
    assert f"ratio per cell / packed: {rec['ratio']:.2f} ({ratios[0]:.2f}-{ratios[1]:.2f})" in proc.stdout
    assert proc.stdout.count("round ") == 2 and f"{rec['packed']['seconds']:.1f} s" in proc.stdout


@pytest.mark.parametrize("args, word", [(["--seeds", "0"], "seeds=0"), (["--pack-size", "1"], "pack_size=1"),
                                        (["--subgrid", "nowhere"], "nowhere"), (["--samplers", "no_such"], "no_such")])
def test_bad_options_get_one_line(tmp_path, args, word):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--grid-file", str(tiny_grid(tmp_path)), "--repeats", "1", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert word in err[-1] and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.json"))
