"""End-of-run sample quality of a trained ensemble, with noise floors (STUDY.md section 6).

For an ensemble of M velocity fields (``VelocityEnsemble``, or any ``velocity(x, t)`` that
returns ``[M, n, d]``) and a benchmark:

- samples: one shared ``x0 ~ N(0, I)`` of shape ``[n, d]`` (paired: every member starts from
  the same points) integrated by ``ode_sample`` from 0 to ``t1``, giving ``[M, n, d]``;
- per member m, against the reference ``y = heldout[:n]``:

      sw      SW_2(x_m, y), 256 directions fixed by seed 0 (the same for every member)
      mmd     MMD^2 with RBF kernels at (0.25 .. 4) x the median pairwise distance of two
              *real* sets (fixed once, so members and floor share one kernel)
      energy  2 E||X - Y|| - E||X - X'|| - E||Y - Y'||
      w2      exact W2 on the first min(n, w2_points) rows of each (O(k^2) memory)
      frechet squared Frechet distance in classifier features (digits, mnist1d only)
      nll     -(1/P) sum_i log p_m(y_i) over the first P = min(nll_points, len(heldout))
              held-out rows (not limited to n: the NLL needs no samples), by the
              exact-divergence ODE (S.8), in nats per point (dim <= 8 only, for cost)

- floors: the same metric between ``y`` and ``floor_repeats`` independent real sets
  ``r_j = bench.sample(n)`` (a fixed generator): ``(mean_j, std_j)``. A member is no better
  than real data once its value is within a few floor stds of the floor mean. Comparing with
  the same ``y`` as the members keeps the comparison paired. (For digits/mnist1d ``r_j`` are
  draws with replacement from the training pool.)
- ``nll_true``: for benchmarks with a known mixture, ``-(1/P) sum_i log p_data(y_i)`` on the
  same P points: an estimate of the data's entropy, the best *expected* NLL any model can
  reach (cross-entropy >= entropy). It is not a two-sample floor, hence its own name.

The floors depend on the benchmark and the sample size only, not on the model, so they are
computed once and cached on disk when a cache folder is given (``floor_cache``, default
``$FMSTUDY_FLOOR_CACHE``, which the grid runner sets to ``<results>/floors``): one JSON file per
content address, the SHA-256 of everything a floor is a function of (the reference and real
sets' bytes, the metrics, their sizes and bandwidths, the classifier's weights for Frechet,
fmstudy's version), written atomically. A file that cannot be read is recomputed and rewritten.

A member whose samples (or log-likelihoods) are not all finite, e.g. one frozen after
diverging, gets NaN for that metric; the others are unaffected (members never mix).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from . import feature_classifier, metrics
from .checks import check_int
from .results import SCHEMA, atomic_write
from .solvers import log_likelihood, nfe, ode_sample

__all__ = ["FLOOR_SEED", "NLL_MAX_DIM", "SampleQuality", "add_sample_quality", "sample_quality"]

NLL_MAX_DIM = 8  # NLL costs d backward passes per evaluation: only in low dimension
N_KEPT_SAMPLES = 64  # generated samples per member stored in the results for the book's figures
FLOOR_SEED = 20240601  # the floor's real sets: fixed, so a benchmark's floor is the same in every run
Metric = Callable[[Tensor, Tensor], float]


@dataclass
class SampleQuality:
    """``samples [M, n, d]`` (CPU float64), per-member ``metrics`` ``name -> [M]``, ``floors``
    ``name -> (mean, std)``, ``nll_true`` (mixture benchmarks with nll) and the ``options``."""

    samples: Tensor
    metrics: dict[str, np.ndarray]
    floors: dict[str, tuple[float, float]]
    nll_true: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The ``SCHEMA`` variables: ``sample_<name>`` [M], ``floor_<name>`` and
        ``floor_<name>_std`` scalars, and ``nll_true`` when known."""
        out = {f"sample_{k}": np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()}
        for k, (mean, std) in self.floors.items():
            out[f"floor_{k}"], out[f"floor_{k}_std"] = np.float64(mean), np.float64(std)
        if self.nll_true is not None:
            out["nll_true"] = np.float64(self.nll_true)
        return out


def _per_member(metric: Metric, samples: Tensor, ref: Tensor) -> np.ndarray:
    """``metric(samples[m], ref)`` for each member; NaN where the member has non-finite samples
    (the metrics refuse those with an error, which must not end the evaluation of the others),
    and where a finite but far-off member makes exact W2's simplex stop (RuntimeError)."""
    vals = []
    for x in samples:
        try:
            vals.append(metric(x, ref) if bool(torch.isfinite(x).all()) else math.nan)
        except RuntimeError:
            vals.append(math.nan)
    return np.asarray(vals, dtype=np.float64)


def _floor(metric: Metric, reals: list[Tensor], ref: Tensor) -> tuple[float, float]:
    """(mean, sample std with 1/(R - 1)) of ``metric(r_j, ref)`` over the real sets."""
    vals = np.asarray([metric(r, ref) for r in reals], dtype=np.float64)
    return float(vals.mean()), float(vals.std(ddof=1))


def _floor_key(table: Mapping[str, Metric], reals: list[Tensor], ref: Tensor, parts: Mapping[str, Any], clf: Any) -> str:
    """The floors' content address: SHA-256 of every input they are a function of."""
    from . import __version__

    h = hashlib.sha256(json.dumps({"metrics": sorted(table), "version": __version__, **parts}, sort_keys=True, default=str).encode())
    for x in (ref, *reals):
        h.update(str(tuple(x.shape)).encode())
        h.update(x.contiguous().numpy().tobytes())
    if clf is not None:  # the Frechet floor is in the classifier's features
        for name, value in sorted(clf.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _floors(table: Mapping[str, Metric], reals: list[Tensor], ref: Tensor, cache: str | os.PathLike | None, key: Callable[[], str]) -> dict[str, tuple[float, float]]:
    """:func:`_floor` of every metric, read from / written to ``cache/<key>.json`` when ``cache`` is set."""
    if not cache:
        return {k: _floor(f, reals, ref) for k, f in table.items()}
    path = Path(cache) / f"{key()}.json"
    try:
        stored = json.loads(path.read_text())
        if set(stored) == set(table):
            return {k: (float(v[0]), float(v[1])) for k, v in stored.items()}
    except (OSError, ValueError, TypeError, IndexError, AttributeError):  # missing or unreadable: recomputed
        pass
    floors = {k: _floor(f, reals, ref) for k, f in table.items()}
    # JSON keeps a float64 exactly (repr round-trips), so a cached floor is the computed one
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({k: list(v) for k, v in floors.items()}, sort_keys=True)))
    return floors


def sample_quality(
    model: Callable[[Tensor, Tensor], Tensor],
    bench: Any,
    *,
    n_samples: int = 1000,
    ode_steps: int = 50,
    method: str = "heun",
    seed: int = 0,
    w2_points: int = 1000,
    nll_points: int = 500,
    t1: float = 1.0,
    floor_repeats: int = 5,
    floor_cache: str | os.PathLike | None = None,
) -> SampleQuality:
    """Evaluate every member of ``model`` on ``bench`` (a :class:`~fmstudy.benchmark_base.Benchmark`);
    see the module docstring for the metrics. Deterministic: ``x0`` comes from a generator
    seeded ``seed``, the floor's real sets from one seeded ``FLOOR_SEED``. The ODE (and the
    NLL's augmented ODE, with the same ``method`` and ``ode_steps``) runs on the model's
    device and dtype; the metrics run on CPU in float64. ``t1 < 1`` stops short of t = 1 (as
    training's ``t_eps`` does) and scores the held-out points as draws at ``t1``. ``floor_cache``:
    the folder of cached floors (default ``$FMSTUDY_FLOOR_CACHE``; unset or empty: none)."""
    held = bench.heldout
    n = check_int("n_samples", n_samples, 2, len(held), why=f" (the held-out set has {len(held)} rows)")
    n_w2 = min(n, check_int("w2_points", w2_points, 1))
    n_nll = min(len(held), check_int("nll_points", nll_points, 1))
    repeats = check_int("floor_repeats", floor_repeats, 2)
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()

    # x0 is drawn on the CPU so the same seed gives the same points on every device.
    x0 = torch.randn(n, bench.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = ode_sample(model, x0.to(device, dtype), ode_steps, method, t1=t1)  # runs under no_grad itself
    samples = (out if out.ndim == 3 else out[None]).detach().to("cpu", torch.float64)

    ref = held[:n].to(torch.float64)
    g = torch.Generator().manual_seed(FLOOR_SEED)
    reals = [bench.sample(n, g).to(torch.float64) for _ in range(repeats)]
    # One kernel for all: bandwidths from two real sets, not from each (model, ref) pair,
    # whose median would move with the model and make MMDs of different members incomparable.
    bandwidths = metrics.median_bandwidths(ref, reals[0])
    table: dict[str, Metric] = {
        "sw": metrics.sliced_wasserstein,
        "mmd": lambda x, y: metrics.mmd(x, y, bandwidths),
        "energy": metrics.energy_distance,
        "w2": lambda x, y: metrics.wasserstein2(x[:n_w2], y[:n_w2]),
    }
    clf = None
    if getattr(bench, "train_labels", None) is not None and getattr(bench, "heldout_labels", None) is not None:
        clf = feature_classifier.classifier_for(bench)  # trained once and cached on disk
        table["frechet"] = lambda x, y: feature_classifier.classifier_frechet(bench, x, y, clf)
    values = {k: _per_member(f, samples, ref) for k, f in table.items()}
    cache = os.environ.get("FMSTUDY_FLOOR_CACHE") if floor_cache is None else floor_cache
    parts = {"n": n, "w2_points": n_w2, "repeats": repeats, "floor_seed": FLOOR_SEED, "bandwidths": list(bandwidths)}
    floors = _floors(table, reals, ref, cache, lambda: _floor_key(table, reals, ref, parts, clf))

    nll_true = None
    if bench.dim <= NLL_MAX_DIM:
        pts = held[:n_nll].to(device, dtype).expand(samples.shape[0], -1, -1).contiguous()
        logp = log_likelihood(model, pts, ode_steps, method, t1=t1).to("cpu", torch.float64)  # [M, P]
        values["nll"] = np.where(torch.isfinite(logp).all(1).numpy(), -logp.mean(1).numpy(), math.nan)
        if getattr(bench, "mixture", None) is not None:
            nll_true = -float(bench.mixture.log_prob(held[:n_nll].to(torch.float64)).mean())

    options = {
        "n_samples": n, "ode_steps": ode_steps, "method": method, "seed": seed, "w2_points": n_w2,
        "nll_points": n_nll if "nll" in values else 0, "t1": t1, "floor_repeats": repeats, "floor_seed": FLOOR_SEED,
        "nfe": nfe(method, ode_steps), "mmd_bandwidths": list(bandwidths),
    }
    return SampleQuality(samples, values, floors, nll_true, options)


def add_sample_quality(ds: xr.Dataset, quality: SampleQuality, options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """A copy of the run's Dataset with :meth:`SampleQuality.as_arrays` added (units and
    descriptions from ``SCHEMA``) and the attribute ``evaluation``: JSON of the evaluation's
    own options updated with ``options`` (e.g. which weights, raw or EMA, were evaluated)."""
    sizes = {"member": ds.sizes.get("member")}
    data_vars = {}
    for name, value in quality.as_arrays().items():
        dims, units, desc = SCHEMA[name]
        want = tuple(sizes[d] for d in dims)
        if value.shape != want:
            raise ValueError(f"result {name!r} has shape {value.shape}: the dataset needs {dict(zip(dims, want))}")
        data_vars[name] = xr.Variable(dims, value, {"units": units, "description": desc})
    dims, units, desc = SCHEMA["samples"]
    kept = quality.samples[:, :N_KEPT_SAMPLES].to(torch.float32).cpu().numpy()  # enough for a figure, small on disk
    data_vars["samples"] = xr.Variable(dims, kept, {"units": units, "description": desc})
    out = ds.assign(data_vars)
    out.attrs["evaluation"] = json.dumps({**quality.options, **dict(options or {})}, sort_keys=True, default=str)
    return out
