"""The shipped results are what the code computes: one member of a shipped cell, rerun alone on
CPU, gives the stored numbers to float32 rounding (issue 15, item 7).

A member does not depend on its pack or ensemble (tests/test_train.py, tests/test_pack.py): the
cell's record gives its parameters, and a run of ``members`` of one (that member's seed,
sampler and rate, the cell's other options) must give its training losses, its EMA model's
held-out objective and integrated excess at every checkpoint, its proposal q and its
divergence step. The tolerance is float32 rounding (rtol 1e-5): on one CPU build the numbers
are equal bit for bit; another build or device may sum in another order. The variance account
in Adam's metric is not compared: its float32 sums are blocked by the number of members and
differ up to 1e-4 relative between a pack and a member alone (tests/test_train.py).

The cheapest shipped cell (fewest steps x batch) of ``results/paper`` is rerun; the test skips,
saying why, where no results are shipped. ``test_the_rerun_reproduces_a_pack_it_wrote`` checks
the procedure itself on a small pack written here as the grid runner writes one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fmstudy.results import read_netcdf, split_pack, write_netcdf
from fmstudy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path(os.environ.get("FMSTUDY_SHIPPED", ROOT / "results" / "paper"))
RTOL = 1e-5  # float32 rounding
COMPARED = ("heldout_objective_ema", "integrated_excess_ema", "heldout_objective", "integrated_excess", "q")
LAST_STEPS = 50  # the training losses compared: the last steps, where a drift would have grown


def cheapest_cell(results: Path, sampler: str | None = None, benchmark: str | None = None) -> dict | None:
    """The record of the finished cell with the fewest steps x batch (ties: by id), of sampler
    ``sampler`` and benchmark ``benchmark`` where given, among those run
    at a learning rate no seed diverged at and outside a stability sweep (whose rates are pushed
    to divergence: a chaotic trajectory would not reproduce to float32 rounding on another
    machine's summation order), and not trimmed for shipping (fmstudy.trim: its per-step losses
    and diagnostics left out, there would be little to compare)."""
    best = None
    for path in sorted((results / "cells").glob("[0-9a-f]*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok" or not (results / "cells" / f"{rec['id']}.nc").is_file():
            continue
        if "stability" in rec.get("grids", []) or rec["params"].get("lr", 0) > 0.03 or rec.get("trimmed"):
            continue
        p = rec["params"]
        name = p["sampler"] if isinstance(p["sampler"], str) else p["sampler"]["name"]
        if (sampler and name != sampler) or (benchmark and p.get("benchmark", "gmm8") != benchmark):
            continue
        cost = p["steps"] * p["batch_size"]
        if best is None or cost < best[0]:
            best = (cost, rec)
    return None if best is None else best[1]


def rerun_member(rec: dict, seed: int):
    """Train member ``seed`` of the cell of record ``rec`` alone, on CPU; its Dataset."""
    params = rec["params"]
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"seeds", "members", "device", "weighting"}
    kwargs = {k: params[k] for k in names if k in params}
    member = {"seed": seed, "sampler": params["sampler"], "lr": params["lr"]}
    config = TrainConfig(**kwargs, seeds=(seed,), members=(member,), device="cpu", weighting=params.get("weighting") or None)
    return split_pack(train(config, progress=False).dataset)[0]


def compare(stored, rerun, seed: int) -> None:
    """The member ``seed`` of ``stored`` against the one-member ``rerun``, to float32 rounding."""
    want = stored.isel(member=list(stored.member.values).index(seed))
    got = rerun.isel(member=0)
    np.testing.assert_array_equal(want.checkpoint.values, got.checkpoint.values)
    assert int(want.diverged_step) == int(got.diverged_step)
    for name in ("train_loss", "train_loss_unweighted"):
        np.testing.assert_allclose(got[name].values[-LAST_STEPS:], want[name].values[-LAST_STEPS:], rtol=RTOL, err_msg=name)
    present = [n for n in COMPARED if n in stored]
    assert "heldout_objective_ema" in present and "q" in present
    for name in present:
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=RTOL, atol=1e-12, err_msg=name)


def check_cell(results: Path, rec: dict) -> None:
    stored = read_netcdf(results / "cells" / f"{rec['id']}.nc")
    assert stored.attrs["cell_id"] == rec["id"]
    seed = int(stored.member.values[0])
    compare(stored, rerun_member(rec, seed), seed)


# the cheapest cell of all; var_opt's (it reads the per-sample gradient norms in Adam's metric,
# fmstudy.models); oracle_qstar's (probe feedback); and a real-data cell (the larger MLP)
@pytest.mark.parametrize("sampler, benchmark", [(None, None), ("var_opt", None), ("oracle_qstar", None), ("var_opt", "digits")])
def test_a_shipped_member_reruns_to_float32_rounding(sampler, benchmark):
    if not (SHIPPED / "cells").is_dir():
        pytest.skip(f"no shipped results in {SHIPPED} (the paper profile's results are committed under results/paper)")
    rec = cheapest_cell(SHIPPED, sampler, benchmark)
    if rec is None:
        pytest.skip(f"{SHIPPED} holds no finished cell of sampler {sampler} on benchmark {benchmark}")
    check_cell(SHIPPED, rec)


SMALL = dict(benchmark="gmm8", sigma=0.5, steps=40, batch_size=32, hidden=16, depth=2, n_bins=4, probe_per_bin=8, n_checkpoints=3,
             feedback_every=5, variance_groups=2, warmup_steps=4, lr=0.01, ema_decay=0.9)


def test_the_rerun_reproduces_a_pack_it_wrote(tmp_path):
    """A pack of two cells (an adaptive and a fixed sampler, two rates, two seeds each) written
    as the grid runner writes one (compact netCDF per cell, record with the cell's params): the
    rerun of each cell's second member matches; a wrong seed's rerun does not."""
    cells = [("c0", {"name": "grad_norm"}, 0.01, [3, 5]), ("c1", {"name": "uniform"}, 0.02, [5, 7])]
    members = tuple({"seed": s, "sampler": spec, "lr": lr, "cell": cid} for cid, spec, lr, seeds in cells for s in seeds)
    packed = train(TrainConfig(**{**SMALL, "lr": 0.01}, members=members, device="cpu"), progress=False).dataset
    (tmp_path / "cells").mkdir()
    for (cid, spec, lr, seeds), ds in zip(cells, split_pack(packed)):
        ds.attrs["cell_id"] = cid
        write_netcdf(ds, tmp_path / "cells" / f"{cid}.nc")
        params = {**SMALL, "sampler": spec, "lr": lr, "seeds": seeds, "weighting": {}, "eval_samples": 40}
        (tmp_path / "cells" / f"{cid}.json").write_text(json.dumps({"id": cid, "status": "ok", "params": params}))
    for cid, spec, lr, seeds in cells:
        rec = json.loads((tmp_path / "cells" / f"{cid}.json").read_text())
        stored = read_netcdf(tmp_path / "cells" / f"{cid}.nc")
        compare(stored, rerun_member(rec, seeds[1]), seeds[1])
    with pytest.raises(AssertionError):  # the comparison can fail: another member's numbers are not these
        compare(stored, rerun_member(rec, seeds[0]), seeds[1])
