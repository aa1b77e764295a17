"""The schema of a run's results, in one place, and its netCDF input/output (STUDY.md section 7).

A run (one grid cell: one benchmark, sampler, sigma, learning rate..., all seeds as one
ensemble) is one ``xarray.Dataset`` with these dimensions:

- ``member``: ensemble members, coordinate = their seeds;
- ``step``: every training step (the per-step training loss);
- ``checkpoint``: log-spaced checkpoints, coordinate = the step at which they were taken;
- ``t_bin``: the probe bins over ``[t_eps, 1 - t_eps]``, coordinate = bin centres, with
  ``t_lo``/``t_hi`` the edges.

``SCHEMA`` lists every data variable with its dimensions, units and meaning; ``build_dataset``
refuses anything else, so the chapters can rely on it. The attributes record every option of
the run (``config``, JSON), the seeds, fmstudy's and torch's versions, the device, the TF32
setting and the wall time.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import xarray as xr

__all__ = ["SCHEMA", "atomic_write", "build_dataset", "cell_labels", "compact_encoding", "split_pack", "write_netcdf", "read_netcdf"]

M, S, C, K = "member", "step", "checkpoint", "t_bin"

# name: (dims, units, description)
SCHEMA: dict[str, tuple[tuple[str, ...], str, str]] = {
    "train_loss": ((M, S), "1", "importance-weighted batch loss of each step (the fixed objective's estimate)"),
    "train_loss_unweighted": ((M, S), "1", "plain mean of the per-sample losses of each step (no importance weights)"),
    "diverged_step": ((M,), "step", "step at which the member diverged and was frozen; -1 if it never did"),
    "loss": ((M, C, K), "1", "per-bin loss on the fixed probes"),
    "excess": ((M, C, K), "1", "per-bin excess loss ||v - v*||^2/d on the probes (oracle benchmarks)"),
    "irreducible": ((K,), "1", "per-bin irreducible loss on the probes (oracle benchmarks)"),
    "target_var": ((K,), "1", "per-dimension variance of the target u_t over the bin's probes"),
    "grad_norm_mean": ((M, C, K), "1", "mean per-sample gradient norm"),
    "grad_norm_var": ((M, C, K), "1", "variance of the per-sample gradient norm"),
    "grad_sq": ((M, C, K), "1", "mean squared per-sample gradient norm E||g||^2"),
    "grad_signal": ((M, C, K), "1", "unbiased ||E g||^2"),
    "grad_noise": ((M, C, K), "1", "unbiased tr Cov(g)"),
    "grad_snr": ((M, C, K), "1", "gradient signal-to-noise ratio max(signal, 0) / noise"),
    "q": ((M, C, K), "1", "the sampler's mean proposal density over each bin"),
    "heldout_objective": ((M, C), "1", "fixed objective (uniform t) on the held-out set, raw weights"),
    "heldout_objective_ema": ((M, C), "1", "fixed objective on the held-out set, EMA weights"),
    "integrated_excess": ((M, C), "1", "int_0^1 excess(t) dt, raw weights (oracle benchmarks)"),
    "integrated_excess_ema": ((M, C), "1", "int_0^1 excess(t) dt, EMA weights (oracle benchmarks)"),
    "samples": ((M, "sample", "coord"), "1", "the first generated samples of each member (ODE from the EMA weights), for figures"),
    "train_seconds": ((C,), "s", "wall-clock seconds of training (steps, sampler work) up to the checkpoint"),
    "samples_seen": ((C,), "1", "training samples per member up to the checkpoint"),
    "extra_forward": ((C,), "1", "extra per-member forward samples spent by the sampler (probe feedback)"),
    "extra_backward": ((C,), "1", "extra per-member backward samples spent by the sampler"),
    # A pack (members with different samplers) counts the sampler's work per member; each
    # cell of a pack gets its members' count as extra_* (split_pack).
    "member_extra_forward": ((M, C), "1", "packed runs: extra forward samples spent by each member's sampler"),
    "member_extra_backward": ((M, C), "1", "packed runs: extra backward samples spent by each member's sampler"),
    # End-of-run sample quality (fmstudy.evaluate): ODE samples of each member against the first
    # n held-out points; floor_* is the same metric between those points and independent real
    # sets of the same size (mean and std over repeats), the value a perfect model would get.
    "sample_sw": ((M,), "1", "sliced Wasserstein SW_2 between ODE samples and held-out points"),
    "sample_mmd": ((M,), "1", "squared MMD (sum of RBF kernels) between ODE samples and held-out points"),
    "sample_energy": ((M,), "1", "energy distance between ODE samples and held-out points"),
    "sample_w2": ((M,), "1", "exact W2 between ODE samples and held-out points (first w2_points of each)"),
    "sample_frechet": ((M,), "1", "squared Frechet distance in classifier features (digits, mnist1d)"),
    "sample_nll": ((M,), "nats", "mean negative log-likelihood of held-out points under the member's flow (exact-divergence ODE)"),
    "floor_sw": ((), "1", "noise floor of sample_sw: the metric between the same held-out points and independent real sets, mean over repeats"),
    "floor_sw_std": ((), "1", "standard deviation of the sample_sw floor over repeats"),
    "floor_mmd": ((), "1", "noise floor of sample_mmd: the metric between the same held-out points and independent real sets, mean over repeats"),
    "floor_mmd_std": ((), "1", "standard deviation of the sample_mmd floor over repeats"),
    "floor_energy": ((), "1", "noise floor of sample_energy: the metric between the same held-out points and independent real sets, mean over repeats"),
    "floor_energy_std": ((), "1", "standard deviation of the sample_energy floor over repeats"),
    "floor_w2": ((), "1", "noise floor of sample_w2: the metric between the same held-out points and independent real sets, mean over repeats"),
    "floor_w2_std": ((), "1", "standard deviation of the sample_w2 floor over repeats"),
    "floor_frechet": ((), "1", "noise floor of sample_frechet: the metric between the same held-out points and independent real sets, mean over repeats"),
    "floor_frechet_std": ((), "1", "standard deviation of the sample_frechet floor over repeats"),
    "nll_true": ((), "nats", "mean NLL of the same held-out points under the true mixture: the data's entropy estimate, the best expected sample_nll"),
}

# The variance account (STUDY.md 4.5) at every checkpoint, on fresh probes
# (fmstudy.signals.variance_record): per-bin moments with their standard errors, and the account
# per member with its jackknife standard error (_se) and bias estimate (_bias), in the Euclidean
# metric (var_) and in Adam's (var_adam_, NaN before Adam's first step).
_ACCOUNT_BINS = {
    "bin_grad_sq": "S_k = E[||g||^2 | bin k] on fresh probes",
    "bin_grad_mean_sq": "unbiased ||G_k||^2 = ||E[g | bin k]||^2 on fresh probes",
    "bin_grad_noise": "within-bin spread S_k - ||G_k||^2 on fresh probes",
}
_ACCOUNT = {
    "v_uniform": "V(uniform): per-sample gradient variance of the uniform sampler (4.5a)",
    "v_opt": "V(q*): per-sample variance of the variance-optimal proposal (4.5b)",
    "ceiling": "R = V(uniform) / V(q*), the largest noise reduction of any unbiased allocation (4.5c)",
    "v_strat_uniform": "variance with draws stratified over bins at q = uniform",
    "v_neyman": "variance with stratified draws at the Neyman allocation (4.5d)",
    "ceiling_strat": "V(uniform) / V_strat(Neyman): the ceiling with stratified draws",
    "between": "between-bin part of V(uniform): V(uniform) - V_strat(uniform)",
    "full_sq": "unbiased ||G||^2 of the full gradient",
    "v_run": "V(q) of the run's own proposal at the checkpoint",
    "gain_run": "V(uniform) / V(q) of the run's own proposal: its predicted noise reduction",
    "v_strat_run": "variance of the run's own proposal with draws stratified over bins",
}
for _metric, _prefix, _what in (("", "var_", "Euclidean"), ("_adam", "var_adam_", "Adam's metric")):
    for _name, _desc in _ACCOUNT_BINS.items():
        SCHEMA[_name + _metric] = ((M, C, K), "1", f"{_desc} ({_what})")
        SCHEMA[f"{_name}{_metric}_se"] = ((M, C, K), "1", f"standard error of {_name}{_metric}")
    for _name, _desc in _ACCOUNT.items():
        SCHEMA[_prefix + _name] = ((M, C), "1", f"{_desc} ({_what})")
        SCHEMA[f"{_prefix}{_name}_se"] = ((M, C), "1", f"jackknife standard error of {_prefix}{_name}")
        SCHEMA[f"{_prefix}{_name}_bias"] = ((M, C), "1", f"jackknife bias estimate of {_prefix}{_name}")


def build_dataset(
    arrays: Mapping[str, Any],
    seeds: list[int],
    steps: int,
    checkpoints: list[int],
    t_edges: np.ndarray,
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    """Assemble a run's Dataset; every array must be named in ``SCHEMA`` with its dims' sizes."""
    sizes = {M: len(seeds), S: steps, C: len(checkpoints), K: len(t_edges) - 1}
    data_vars = {}
    for name, value in arrays.items():
        if name not in SCHEMA:
            raise ValueError(f"result {name!r} is not in the schema: known results are {', '.join(SCHEMA)}")
        dims, units, desc = SCHEMA[name]
        value = np.asarray(value)
        want = tuple(sizes[d] for d in dims)
        if value.shape != want:
            raise ValueError(f"result {name!r} has shape {value.shape}: the schema needs {dict(zip(dims, want))}")
        data_vars[name] = xr.Variable(dims, value, {"units": units, "description": desc})
    coords = {
        M: ("member", np.asarray(seeds, dtype=np.int64), {"description": "seed of the member"}),
        S: ("step", np.arange(steps, dtype=np.int64)),
        C: ("checkpoint", np.asarray(checkpoints, dtype=np.int64), {"description": "training step of the checkpoint"}),
        K: ("t_bin", (t_edges[:-1] + t_edges[1:]) / 2, {"description": "bin centre in t"}),
        "t_lo": ("t_bin", t_edges[:-1]),
        "t_hi": ("t_bin", t_edges[1:]),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=_netcdf_attrs(attrs))


def split_pack(ds: xr.Dataset) -> list[xr.Dataset]:
    """The cells of a packed run (a heterogeneous ensemble, ``attrs["groups"]``), each the
    Dataset that cell would have written alone: its members, its config, seeds and sampler
    attributes, and its members' probe work as ``extra_*``. Run-level numbers (timing,
    device, host) are the pack's; a plain run's Dataset comes back as the only cell. The
    cells come in the order of their first members; ``cell_labels`` gives their labels."""
    if "groups" not in ds.attrs:
        return [ds]
    common = {k: v for k, v in ds.attrs.items() if k not in ("groups", "config", "seeds")}
    cells = []
    for group in json.loads(ds.attrs["groups"]):
        part = ds.isel(member=group["members"])
        extra = {}
        for kind in ("forward", "backward"):
            dims, units, desc = SCHEMA[f"extra_{kind}"]
            extra[f"extra_{kind}"] = xr.Variable(dims, part[f"member_extra_{kind}"].values[0], {"units": units, "description": desc})
        part = part.drop_vars(["member_extra_forward", "member_extra_backward"]).assign(extra)
        attrs = {"config": group["config"], "seeds": group["seeds"], "sampler": group["sampler"], "unbiased": group["unbiased"], **common}
        part.attrs = _netcdf_attrs(attrs)
        cells.append(part)
    return cells


def cell_labels(ds: xr.Dataset) -> list[str | None]:
    """The ``cell`` label of each cell of a pack (None where its members carried none), in
    :func:`split_pack`'s order; ``[None]`` for a plain run."""
    return [g.get("cell") for g in json.loads(ds.attrs["groups"])] if "groups" in ds.attrs else [None]


def _netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """netCDF attributes hold strings and numbers only: nested values become JSON strings."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, str):
            out[key] = str(value)  # a str subclass (e.g. torch's version object) would not store
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True, default=str)
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: readers (and concurrent writers) see the old file or the whole new one, and a
    crash never leaves a partly written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # the umask's permissions, as open() gives, not mkstemp's 0600
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# HDF5's 1.10 object formats: compact object headers and a chunk index of a few bytes for a
# one-chunk variable, where the default (1.8) formats spend about 2 KB of B-tree per compressed
# variable, which made compression grow a cell's file (257 KB to 543 KB for 3 seeds). Readable
# by HDF5 1.10 (2018) and later, hence netCDF-C and h5py of the last years.
HDF5_FORMAT = ("v110", "v110")
# Compressed (zlib after a byte shuffle, lossless) only from this size: below it the filter's
# own bookkeeping costs more than it saves.
COMPRESS_FROM_BYTES = 1024


def compact_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The netCDF encoding that :func:`write_netcdf` uses: zlib (level 6) after a byte shuffle
    for every numeric variable of ``COMPRESS_FROM_BYTES`` or more, and no ``_FillValue``
    attribute on floating-point variables (a NaN is stored as itself and read back unmasked);
    the dtype stays, so reading gives the same bits. Measured on a cell of the paper profile
    (3 seeds, 1,000 steps, 121 variables): 260 KB written plainly, 197 KB so; the rest is
    HDF5's per-variable metadata, which no encoding removes."""
    out: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        enc = {"_FillValue": None} if var.dtype.kind == "f" else {}
        if var.dtype.kind in "fiu" and var.nbytes >= COMPRESS_FROM_BYTES:
            enc.update(zlib=True, complevel=6, shuffle=True)
        if enc:
            out[str(name)] = enc
    return out


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a run's Dataset atomically (:func:`atomic_write`), compactly
    (:func:`compact_encoding`, HDF5 1.10 formats); :func:`read_netcdf` reads files written
    before this (default HDF5 formats, uncompressed) the same way."""
    from xarray.backends.h5netcdf_ import H5NetCDFStore

    # encodings carried over from a file the Dataset was read from (chunk sizes, filters)
    # must not decide how it is written: only compact_encoding does
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding = {}

    def write(tmp: str) -> None:
        # to_netcdf cannot pass HDF5's format bounds to h5py: open the store with them and dump
        store = H5NetCDFStore.open(tmp, mode="w", driver_kwds={"libver": HDF5_FORMAT})
        try:
            ds.dump_to_store(store, encoding=compact_encoding(ds))
        finally:
            store.close()

    return atomic_write(path, write)


def read_netcdf(path: str | os.PathLike, *, fast: bool = True) -> xr.Dataset:
    """Load a run's Dataset into memory (the file is closed on return): what
    ``xarray.open_dataset(path, engine="h5netcdf").load()`` gives, several times faster through
    :func:`fmstudy.ncread.open_loaded` unless the file is outside its subset or ``fast`` is False."""
    from .ncread import Unsupported, open_loaded

    try:
        if fast:
            return open_loaded(path)
    except Unsupported:
        pass
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
