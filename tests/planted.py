"""Collected grids with planted effects for the report layer's tests: every cell's speed-up,
final ratio and variance account are known by construction."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

SEEDS = np.arange(10)
C = np.linspace(1.0, 2.0, 10)  # each seed's starting loss
SPREAD = np.linspace(0.95, 1.05, 10)  # per-seed speed-ups centre * SPREAD: their median is the centre
BATCH = 64
FIXED = {"benchmark": "gmm8", "batch_size": BATCH, "hidden": 16, "depth": 2, "norm_stride": 8}


def cell(
    r: np.ndarray | float,
    budget: int = 1000,
    gain: float = 1.0,
    ceiling: float = 2.0,
    v_strat: float | None = None,
    unbiased: float = 1.0,
    b_noise: float = float(BATCH),
) -> xr.Dataset:
    """One collected cell over 11 linear checkpoints to ``budget``: the metric c_s (1 - 0.4 r_s
    step / budget), so against a baseline with r = 1 (final 0.6 c_s) the speed-up of seed s is
    exactly r_s and its final ratio (1 - 0.4 r_s) / 0.6. The account (both metrics): V(uniform)
    = 64, ||G||^2 = 64 / ``b_noise`` (so B_noise = ``b_noise``), V(U)/V(q) = ``gain``, R =
    ``ceiling``, V_strat(q) = ``v_strat`` (NaN when not given)."""
    steps = np.linspace(0, budget, 11)
    r = np.broadcast_to(np.asarray(r, dtype=float), (10,))
    curve = C[:, None] * (1 - 0.4 * r[:, None] * steps / budget)
    dims = ("member", "checkpoint")
    data = {
        "integrated_excess_ema": (dims, curve),
        "heldout_objective_ema": (dims, curve + 1.0),
        "diverged_step": (("member",), np.full(10, -1.0)),
        "extra_forward": (("checkpoint",), np.zeros(11)),
        "extra_backward": (("checkpoint",), np.zeros(11)),
        "train_seconds": (("checkpoint",), steps / 100),
        "cell_id": ((), "c"),
        "unbiased": ((), unbiased),
    }
    for prefix in ("var_", "var_adam_"):
        data[prefix + "v_uniform"] = (dims, np.full((10, 11), 64.0))
        data[prefix + "full_sq"] = (dims, np.full((10, 11), 64.0 / b_noise))
        data[prefix + "gain_run"] = (dims, np.full((10, 11), gain))
        data[prefix + "ceiling"] = (dims, np.full((10, 11), ceiling))
        data[prefix + "v_strat_run"] = (dims, np.full((10, 11), np.nan if v_strat is None else v_strat))
    return xr.Dataset(data, coords={"member": SEEDS, "checkpoint": steps.astype(int)})


def grid(cells: dict[tuple, xr.Dataset], axes: list[str], fixed: dict | None = None) -> xr.Dataset:
    """Cells keyed by their labels (in the order of ``axes``) merged as ``store.collect`` does:
    outer join (a shorter budget's checkpoints padded with NaN), an empty ``cell_id`` where a
    combination was not run, the common parameters as the attribute ``fixed``."""
    # each cell its own id, as collect gives (the labels stand in for the hash)
    def named(c, key):
        return c.assign(cell_id=((), "|".join(map(str, key)) if str(c["cell_id"].values) else ""))

    parts = [named(c, key).expand_dims({a: [v] for a, v in zip(axes, key)}) for key, c in cells.items()]
    ds = xr.merge(parts, join="outer", compat="no_conflicts")
    ds["cell_id"] = ds["cell_id"].fillna("").astype(str)
    ds.attrs["fixed"] = json.dumps(FIXED if fixed is None else fixed)
    return ds
