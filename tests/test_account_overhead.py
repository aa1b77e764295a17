"""``benchmarks/account_overhead.py`` at the smallest size (a smoke test, not a timed one): both
runs train, interleaved; each round's overhead is its own with / without - 1 and the summary is
the median and range of the rounds; bad options get one line before any run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "account_overhead.py"


def tiny_grid(folder: Path) -> Path:
    spec = {"fixed": {"benchmark": "gmm8", "sigma": 1.0, "steps": 12, "batch_size": 16, "hidden": 16, "depth": 2, "n_bins": 4,
                      "probe_per_bin": 8, "n_checkpoints": 2, "warmup_steps": 2, "eval_samples": 40}}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_the_benchmark_times_both_runs_and_its_numbers_agree(tmp_path):
    out = tmp_path / "ao.json"
    proc = _run(["--grid-file", str(tiny_grid(tmp_path)), "--seeds", "2", "--groups", "2", "--repeats", "3", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["groups"] == 2 and rec["options"]["seeds"] == [0, 1] and rec["options"]["probe_per_bin"] == 8
    assert "eval_samples" not in rec["options"]  # a grid-cell option, not the run's
    assert len(rec["rounds"]) == 3
    for r in rec["rounds"]:
        assert r["with"] > 0 and r["without"] > 0 and r["overhead"] == pytest.approx(r["with"] / r["without"] - 1, rel=1e-12)
    over = [r["overhead"] for r in rec["rounds"]]
    assert rec["overhead"] == pytest.approx(statistics.median(over)) and rec["overhead_range"] == [min(over), max(over)]
    assert f"account overhead {100 * rec['overhead']:.1f}%" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [(["--repeats", "2"], "repeats=2 is not allowed"),
                                               (["--seeds", "0"], "seeds=0 is not allowed"),
                                               (["--groups", "3"], "variance_groups=3 is not allowed")])
def test_bad_options_get_one_line_before_any_run(tmp_path, args, message):
    proc = _run(["--grid-file", str(tiny_grid(tmp_path)), *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
