"""A corpus of bad grid files and command lines, as a hostile or careless user writes them.

Every case must be refused by ``fmstudy grid`` (or ``collect``) with exit status 2 and one short
line on stderr that names the problem, with no traceback, before anything is written: the
folder the case lives in is byte-for-byte the same afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmstudy.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_cell.ipynb"
CELL = ROOT / "book" / "notebooks" / "grid_cell.ipynb"
MAX_LINE = 400

# A head every case starts with unless it gives its own: the tiny notebook, results and pages
# in the case's folder ({d} is replaced by that folder).
HEAD = f"notebook: {TINY}\nresults: {{d}}/results\npages: {{d}}/pages\n"
REAL = f"notebook: {CELL}\nresults: {{d}}/results\npages: {{d}}/pages\n"
BOMB = "".join(f"x-{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 9))

# (id, grid file text (None: no file is written), extra arguments, words the line must contain)
CASES: list[tuple[str, str | None, list[str], str]] = [
    # -- the file as text ------------------------------------------------------------------------
    ("not-yaml", HEAD + "axes: [unclosed\n", [], "not valid YAML"),
    ("duplicate-top-key", HEAD + "axes: {sigma: [0.0]}\naxes: {sigma: [1.0]}\n", [], "duplicate key 'axes'"),
    ("duplicate-axis", HEAD + "axes:\n  sigma: [0.0]\n  sigma: [1.0]\n", [], "duplicate key 'sigma'"),
    ("duplicate-fixed", HEAD + "fixed: {steps: 3, steps: 4}\naxes: {sigma: [0.0]}\n", [], "duplicate key 'steps'"),
    ("alias-bomb", HEAD + "x-0: &l0 [0.0]\n" + BOMB + "axes: {sigma: *l8}\n", [], "aliases are expanded"),
    ("alias-bomb-unused", HEAD + "x-0: &l0 [0.0]\n" + BOMB + "axes: {sigma: [0.0]}\n", [], "aliases are expanded"),
    ("recursive-alias", HEAD + "x-a: &a [*a]\naxes: {sigma: [0.0]}\n", [], "refers to itself"),
    ("recursive-mapping", HEAD + "x-a: &a {b: *a}\naxes: {sigma: [0.0]}\n", [], "recursive"),
    ("python-tag", HEAD + "axes: {sigma: !!python/object/apply:os.system ['touch {d}/owned']}\n", [], "not valid YAML"),
    ("not-a-mapping", "- notebook\n- axes\n", [], "a grid file is a mapping"),
    ("empty-file", "", [], "a grid file is a mapping"),
    ("huge-integer", HEAD + "axes: {steps: [" + "9" * 5000 + "]}\n", [], "not valid YAML"),
    ("too-deep", HEAD + "axes: {sigma: " + "[" * 5000 + "]" * 5000 + "}\n", [], "not valid YAML"),
    ("too-big-file", HEAD + "axes: {sigma: [0.0]}\n" + "#" * 1_100_000 + "\n", [], "bytes: a grid file is at most"),
    ("no-such-file", None, [], "no such grid file"),
    # -- keys ------------------------------------------------------------------------------------
    ("unknown-key", HEAD + "axes: {sigma: [0.0]}\ncolour: 1\n", [], "unknown key 'colour'"),
    ("number-key", HEAD + "axes: {sigma: [0.0]}\n1: x\n", [], "unknown key 1"),
    ("no-notebook", "axes: {sigma: [0.0]}\n", [], "notebook: missing"),
    ("notebook-list", "notebook: [a, b]\naxes: {sigma: [0.0]}\n", [], "notebook: missing"),
    ("notebook-absent", "notebook: nowhere.ipynb\naxes: {sigma: [0.0]}\n", [], "'nowhere.ipynb' does not exist"),
    ("notebook-garbage", "notebook: {d}/bad.ipynb\naxes: {sigma: [0.0]}\n", [], "not a readable Jupyter notebook"),
    ("notebook-no-parameters", "notebook: {d}/plain.ipynb\naxes: {sigma: [0.0]}\n", [], "no cell tagged 'parameters'"),
    ("notebook-not-literal", "notebook: {d}/call.ipynb\naxes: {sigma: [0.0]}\n", [], "is not a literal"),
    ("axes-and-grids", HEAD + "axes: {sigma: [0.0]}\ngrids: []\n", [], "exactly one of 'axes'"),
    ("no-axes", HEAD + "fixed: {steps: 3}\n", [], "exactly one of 'axes'"),
    ("grids-not-list", HEAD + "grids: {a: 1}\n", [], "grids: must be a non-empty list"),
    ("grid-not-mapping", HEAD + "grids: [3]\n", [], "grids[0]: must be a mapping"),
    ("grid-unknown-key", HEAD + "grids: [{name: a, axes: {sigma: [0.0]}, extra: 1}]\n", [], "grids[0]: unknown key 'extra'"),
    ("grid-names-twice", HEAD + "grids: [{name: a, axes: {sigma: [0.0]}}, {name: a, axes: {lr: [0.1]}}]\n", [], "'a' names two"),
    ("grid-name-mapping", HEAD + "grids: [{name: {x: 1}, axes: {sigma: [0.0]}}]\n", [], "name: must be a short string"),
    ("grid-name-long", HEAD + "grids: [{name: " + "n" * 500 + ", axes: {sigma: [0.0]}}]\n", [], "is too long"),
    ("fixed-not-mapping", HEAD + "fixed: [1, 2]\naxes: {sigma: [0.0]}\n", [], "fixed: must be a mapping"),
    ("axes-empty", HEAD + "axes: {}\n", [], "axes: empty"),
    ("axis-empty-list", HEAD + "axes: {sigma: []}\n", [], "axes.sigma: must be a non-empty list"),
    ("axis-scalar", HEAD + "axes: {sigma: 0.5}\n", [], "axes.sigma: must be a non-empty list"),
    ("unknown-parameter", HEAD + "axes: {temperature: [1.0]}\n", [], "unknown parameter 'temperature'"),
    ("runner-parameter", HEAD + "fixed: {output: x.nc}\naxes: {sigma: [0.0]}\n", [], "'output' is set by the runner"),
    ("results-not-text", HEAD.replace("results: {d}/results\n", "") + "results: 5\naxes: {sigma: [0.0]}\n", [], "results: must be a folder"),
    ("description-list", HEAD + "description: [1]\naxes: {sigma: [0.0]}\n", [], "description: must be text"),
    ("slurm-not-mapping", HEAD + "slurm: abc\naxes: {sigma: [0.0]}\n", [], "slurm: must be a mapping"),
    # -- values ----------------------------------------------------------------------------------
    ("sigma-text", HEAD + "axes: {sigma: [high]}\n", [], "'high' is str: it must be a number"),
    ("lr-yaml11", HEAD + "axes: {lr: [1e-3]}\n", [], "YAML reads '1e-3' as text"),
    ("steps-float", HEAD + "axes: {steps: [2.5]}\n", [], "2.5 is float: it must be an integer"),
    ("steps-bool", HEAD + "axes: {steps: [true]}\n", [], "True is bool: it must be an integer"),
    ("seeds-float", HEAD + "fixed: {seeds: [0, 1.5]}\naxes: {sigma: [0.0]}\n", [], "seeds[1]: 1.5 is float"),
    ("seeds-text", HEAD + "fixed: {seeds: ['1']}\naxes: {sigma: [0.0]}\n", [], "seeds[0]: '1' is str"),
    ("seeds-bool", HEAD + "fixed: {seeds: [true]}\naxes: {sigma: [0.0]}\n", [], "seeds[0]: True is bool"),
    ("seeds-repeated", HEAD + "fixed: {seeds: [1, 1]}\naxes: {sigma: [0.0]}\n", [], "distinct"),
    ("seeds-empty", HEAD + "fixed: {seeds: []}\naxes: {sigma: [0.0]}\n", [], "at least one"),
    ("sigma-nan", HEAD + "axes: {sigma: [.nan]}\n", [], "it must be a finite number"),
    ("sigma-negative", HEAD + "axes: {sigma: [-1.0]}\n", [], "sigma=-1.0"),
    ("benchmark-unknown", HEAD + "axes: {benchmark: [gmm9]}\n", [], "unknown benchmark 'gmm9'"),
    ("benchmark-option", REAL + "fixed: {benchmark_options: {colour: 1}}\naxes: {sigma: [0.0]}\n", [], "unknown option 'colour'"),
    ("radius-huge", REAL + "fixed: {benchmark_options: {radius: 1.0e+200}}\naxes: {sigma: [0.0]}\n", [], "radius=1e+200"),
    ("radius-inf", REAL + "fixed: {benchmark_options: {radius: .inf}}\naxes: {sigma: [0.0]}\n", [], "radius=inf"),
    ("noise-huge", REAL + "fixed: {benchmark: moons, benchmark_options: {noise: 1.0e+300}}\naxes: {sigma: [0.0]}\n", [], "noise=1e+300"),
    ("sampler-unknown", HEAD + "axes: {sampler: [uniform, fancy]}\n", [], "unknown sampler 'fancy'"),
    ("sampler-option", HEAD + "axes: {sampler: [{name: beta, alpha: 2}]}\n", [], "unknown parameter 'alpha'"),
    ("sampler-n-bins", REAL + "axes: {sampler: [{name: info_snr, n_bins: 7}]}\n", [], "n_bins=7 is not allowed"),
    ("oracle-without-oracle", HEAD + "fixed: {benchmark: moons}\naxes: {sampler: [oracle_excess]}\n", [], "needs an oracle"),
    ("hidden-text", REAL + "axes: {hidden: [wide]}\n", [], "hidden='wide'"),
    ("hidden-float", REAL + "axes: {hidden: [2.5]}\n", [], "hidden=2.5"),
    ("depth-zero", REAL + "axes: {depth: [0]}\n", [], "depth=0"),
    ("device-unknown", REAL + "axes: {device: [gpu]}\n", [], "device='gpu'"),
    ("device-absent", REAL + "axes: {device: ['cuda:99']}\n", [], "CUDA devices"),
    ("eval-samples-one", REAL + "axes: {eval_samples: [1]}\n", [], "eval_samples=1"),
    ("eval-samples-heldout", REAL + "fixed: {benchmark: digits}\naxes: {eval_samples: [5000]}\n", [], "held-out points"),
    ("ode-steps-zero", REAL + "axes: {ode_steps: [0]}\n", [], "ode_steps=0"),
    ("ode-method", REAL + "axes: {ode_method: [midpoint]}\n", [], "ode_method='midpoint'"),
    ("decay", REAL + "axes: {decay: [linear]}\n", [], "decay='linear'"),
    ("lr-zero", HEAD + "axes: {lr: [0.0]}\n", [], "lr=0.0"),
    ("long-value", HEAD + "axes: {sigma: [" + "x" * 100_000 + "]}\n", [], "is str: it must be a number"),
    ("long-name", HEAD + "axes:\n  " + "p" * 1000 + ": [1]\n", [], "unknown parameter"),
    # -- resource limits -------------------------------------------------------------------------
    ("cells-product", HEAD + "x-v: &v [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]\n"
     "axes: {sigma: *v, lr: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60]}\n",
     [], "more than 5000 cells"),
    ("steps-limit", HEAD + "axes: {steps: [1000000000]}\n", [], "steps=1000000000 exceeds the limit"),
    ("batch-limit", REAL + "axes: {batch_size: [10000000]}\n", [], "batch_size=10000000 exceeds"),
    ("n-bins-limit", REAL + "axes: {n_bins: [100000]}\n", [], "n_bins=100000 exceeds"),
    ("probes-limit", REAL + "axes: {probe_per_bin: [10000000]}\n", [], "probe_per_bin=10000000 exceeds"),
    ("hidden-limit", REAL + "axes: {hidden: [100000]}\n", [], "hidden=100000 exceeds"),
    ("members-limit", HEAD + "fixed: {seeds: [" + ", ".join(map(str, range(300))) + "]}\naxes: {sigma: [0.0]}\n", [], "members=300"),
    ("memory-limit", REAL + "fixed: {seeds: [" + ", ".join(map(str, range(64))) + "], hidden: 8000}\naxes: {sigma: [0.0]}\n", [], "GiB"),
    ("data-limit", REAL + "fixed: {benchmark_options: {n_heldout: 10000000000}}\naxes: {sigma: [0.0]}\n", [], "GiB of data"),
    ("limits-unknown", HEAD + "limits: {speed: 3}\naxes: {sigma: [0.0]}\n", [], "unknown limit 'speed'"),
    ("limits-negative", HEAD + "limits: {cells: -1}\naxes: {sigma: [0.0]}\n", [], "limits.cells"),
    ("limits-not-mapping", HEAD + "limits: 7\naxes: {sigma: [0.0]}\n", [], "limits: must be a mapping"),
    # -- the command line ------------------------------------------------------------------------
    ("jobs-zero", HEAD + "axes: {sigma: [0.0]}\n", ["--jobs", "0"], "jobs=0 is not allowed"),
    ("jobs-text", HEAD + "axes: {sigma: [0.0]}\n", ["--jobs", "many"], "invalid int value"),
    ("executor", HEAD + "axes: {sigma: [0.0]}\n", ["--executor", "cloud"], "invalid choice"),
    ("unknown-flag", HEAD + "axes: {sigma: [0.0]}\n", ["--colour"], "unrecognized arguments"),
    ("slurm-no-value", HEAD + "axes: {sigma: [0.0]}\n", ["--slurm", "timeout_min"], "write KEY=VALUE"),
    ("slurm-bad-yaml", HEAD + "axes: {sigma: [0.0]}\n", ["--slurm", "timeout_min=[1"], "not a YAML scalar"),
    ("limit-text", HEAD + "axes: {sigma: [0.0]}\n", ["--limit", "cells=many"], "a limit must be a positive integer"),
    ("limit-unknown", HEAD + "axes: {sigma: [0.0]}\n", ["--limit", "speed=3"], "unknown limit 'speed'"),
    ("results-is-file", HEAD + "axes: {sigma: [0.0]}\n", ["--results", "{d}/afile"], "is a file, not a folder"),
    ("pages-under-file", HEAD + "axes: {sigma: [0.0]}\n", ["--pages", "{d}/afile/pages"], "is a file, not a folder"),
    # the dry run makes the same checks of the run's settings
    ("dry-jobs-zero", HEAD + "axes: {sigma: [0.0]}\n", ["--dry-run", "--jobs", "0"], "jobs=0 is not allowed"),
    ("dry-results-is-file", HEAD + "axes: {sigma: [0.0]}\n", ["--dry-run", "--results", "{d}/afile"], "is a file, not a folder"),
    ("dry-slurm-no-value", HEAD + "axes: {sigma: [0.0]}\n", ["--dry-run", "--slurm", "=3"], "write KEY=VALUE"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _notebook(source: str, tagged: bool = True) -> str:
    import json

    meta = {"tags": ["parameters"]} if tagged else {}
    cell = {"cell_type": "code", "metadata": meta, "source": source, "outputs": [], "execution_count": None}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _refused(argv: list[str], capsys, folder: Path, words: str) -> str:
    before = _snapshot(folder)
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    line = out.err
    assert line.endswith("\n") and line.count("\n") == 1, line[:500]
    assert len(line) <= MAX_LINE + 1 and "Traceback" not in line
    assert words in line, line
    assert _snapshot(folder) == before  # nothing written, nothing touched
    return line


@pytest.mark.parametrize("name, text, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, name, text, args, words):
    d = tmp_path
    (d / "bad.ipynb").write_text("{ this is not json")
    (d / "plain.ipynb").write_text(_notebook("x = 1", tagged=False))
    (d / "call.ipynb").write_text(_notebook("x = 1\ny = open('/etc/passwd')"))
    (d / "afile").write_text("a file where a folder should be")
    path = d / "grid.yaml"
    if text is not None:
        path.write_text(text.replace("{d}", str(d)))
    _refused(["grid", str(path), "--quiet", *(a.replace("{d}", str(d)) for a in args)], capsys, d, words)
    assert not (d / "owned").exists()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_non_utf8_grid_file(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_bytes(HEAD.format(d=tmp_path).encode() + b"axes: {sigma: [0.0]}\ndescription: caf\xe9\n")
    _refused(["grid", str(path)], capsys, tmp_path, "not UTF-8 text")


def test_a_folder_is_not_a_grid_file(tmp_path, capsys):
    _refused(["grid", str(tmp_path)], capsys, tmp_path, "no such grid file")


def test_missing_papermill_names_the_extra(tmp_path, capsys, monkeypatch):
    path = tmp_path / "grid.yaml"
    path.write_text(HEAD.format(d=tmp_path) + "axes: {sigma: [0.0]}\n")
    monkeypatch.setitem(sys.modules, "papermill", None)  # importlib then finds no papermill
    _refused(["grid", str(path)], capsys, tmp_path, "pip install 'fmstudy[book]'")


def test_unknown_slurm_parameter(tmp_path, capsys):
    pytest.importorskip("submitit")
    path = tmp_path / "grid.yaml"
    path.write_text(HEAD.format(d=tmp_path) + "axes: {sigma: [0.0]}\n")
    _refused(["grid", str(path), "--executor", "slurm", "--cluster", "local", "--slurm", "colour=3"], capsys, tmp_path, "slurm:")


def test_cuda_device_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 'cuda' is a valid device here (cuda:99 is tested in the corpus)")
    path = tmp_path / "grid.yaml"
    path.write_text(REAL.format(d=tmp_path) + "axes: {device: [cuda]}\n")
    _refused(["grid", str(path)], capsys, tmp_path, "device='cuda' is not allowed")


def test_collect_of_an_empty_folder(tmp_path, capsys):
    _refused(["collect", str(tmp_path)], capsys, tmp_path, "no finished cells")


def test_collect_of_unrelated_sub_grids_at_once(tmp_path, capsys, monkeypatch):
    """Cells of sub-grids with disjoint axes merged into one array are mostly holes: refused in
    one line, naming the sub-grids, before allocating; --grid collects one of them."""
    import json

    from test_store_ship import cell_dataset

    import fmstudy.store as store
    from fmstudy.results import write_netcdf

    cells = tmp_path / "cells"
    cells.mkdir()
    specs = [("a", {"sigma": v}) for v in (0.0, 1.0)] + [("b", {"lr": v}) for v in (0.01, 0.1)] + [("c", {"steps": v}) for v in (10, 20)]
    for i, (grid, params) in enumerate(specs):
        cid = f"{i:016x}"
        write_netcdf(cell_dataset(cid, members=2, steps=5), cells / f"{cid}.nc")
        (cells / f"{cid}.json").write_text(json.dumps({"id": cid, "status": "ok", "params": params, "grids": [grid],
                                                       "grid_axes": {grid: list(params)}, "grid_file": "g.yaml", "page": "x",
                                                       "page_shipped": False}))
    monkeypatch.setattr(store, "MAX_HOLES", 1)  # each axis: 2 values and "not set" -> 3 x 3 x 3 for 6 cells
    _refused(["collect", str(tmp_path)], capsys, tmp_path, "span sub-grids a, b, c; merged they would make a grid of 27 combinations")
    assert main(["collect", str(tmp_path), "--grid", "b"]) == 0 and (tmp_path / "collected-b.nc").exists()


def _mount_tmpfs(where: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def test_read_only_results_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "size=1m,ro"):
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        path = tmp_path / "grid.yaml"
        path.write_text(HEAD.format(d=tmp_path) + "axes: {sigma: [0.0]}\n")
        _refused(["grid", str(path), "--results", str(ro / "results")], capsys, tmp_path, "cannot be written")
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_refusal_from_a_real_process_has_no_traceback(tmp_path):
    """The console entry point itself (not only main()): exit 2, one line."""
    path = tmp_path / "grid.yaml"
    path.write_text(HEAD.format(d=tmp_path) + "axes: {sigma: [0.0]}\naxes: {lr: [0.1]}\n")
    proc = subprocess.run([sys.executable, "-m", "fmstudy", "grid", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "duplicate key 'axes'" in proc.stderr
    assert not (tmp_path / "results").exists()
