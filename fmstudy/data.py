"""Benchmarks: data, fixed held-out sets and fixed per-t probe sets (STUDY.md section 3).

``get_benchmark(name, **options)`` builds a :class:`Benchmark`. Every benchmark is generated or
shipped offline (nothing here touches the network) and is a pure function of its options:

- ``heldout`` is drawn once from its own seeded stream, so it is identical on every call;
- ``sample(n, generator)`` draws training data using only the caller's ``torch.Generator``;
- ``probes(n_bins, per_bin, t_eps)`` returns the same ``(t, x0, x1, eps)`` per t-bin on every
  call, so per-t measurements are comparable across steps, runs and schedules.

The streams are separated by seeding each from a hash of (benchmark seed, purpose, sizes), so
held-out points, probes and a model's own training draws never share random numbers.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .checks import check_float, check_int
from .oracle import BridgeOracle, GaussianMixture
from .paths import BrownianBridge
from .rng import CounterRNG

__all__ = ["Benchmark", "ProbeSet", "get_benchmark", "benchmark_names"]



@dataclass(frozen=True)
class _Draw:
    """A benchmark's generative process as a transform of base noise: ``n_uniform`` uniforms
    and ``n_normal`` standard normals per point (float64, any device) -> a point in R^dim.
    Writing every benchmark this way lets one process serve two noise sources: a
    ``torch.Generator`` (``Benchmark.sample``) and per-member counter streams
    (``Benchmark.sample_members``), so an ensemble member's data depends on its seed only."""

    n_uniform: int
    n_normal: int
    transform: Callable[[Tensor, Tensor], Tensor]
    # The same map written for large batches (fewer operators, no host reads), used for the
    # members' training draws; None: ``transform`` serves both.
    batched: Callable[[Tensor, Tensor], Tensor] | None = None

    def __call__(self, n: int, g: torch.Generator) -> Tensor:
        u = torch.rand(n, self.n_uniform, generator=g, dtype=torch.float64)
        z = torch.randn(n, self.n_normal, generator=g, dtype=torch.float64)
        return self.transform(u, z).float()


def _stream_seed(*key: object) -> int:
    """A 63-bit seed from a hash of ``key``; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(_stream_seed(*key))


@dataclass(frozen=True, eq=False)
class ProbeSet:
    """Fixed probes per t-bin: ``t[b, i]`` lies strictly inside ``(edges[b], edges[b + 1])``
    and inside (0, 1); ``x0``, ``eps`` are standard normal, ``x1`` is training data.
    Shapes: edges ``[n_bins + 1]``, t ``[n_bins, per_bin]``, the rest ``[n_bins, per_bin, dim]``."""

    edges: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor
    eps: Tensor

    @property
    def centers(self) -> Tensor:
        """Bin midpoints, ``[n_bins]``."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def n_bins(self) -> int:
        return self.t.shape[0]

    @property
    def per_bin(self) -> int:
        return self.t.shape[1]


@dataclass(eq=False)
class Benchmark:
    """One benchmark. ``options`` records every option including defaults, so a run can store
    them; ``mixture`` is set only for oracle benchmarks; ``model_hidden``/``model_depth`` are
    suggested velocity-MLP sizes. For the finite datasets (digits, mnist1d) ``train`` is the
    training pool, ``*_labels`` the class labels and ``*_index`` the rows of the source data."""

    name: str
    dim: int
    options: dict[str, Any]
    seed: int
    heldout: Tensor = field(repr=False)
    model_hidden: int
    model_depth: int
    _draw: _Draw = field(repr=False)
    mixture: GaussianMixture | None = field(default=None, repr=False)
    train: Tensor | None = field(default=None, repr=False)
    train_labels: Tensor | None = field(default=None, repr=False)
    heldout_labels: Tensor | None = field(default=None, repr=False)
    train_index: Tensor | None = field(default=None, repr=False)
    heldout_index: Tensor | None = field(default=None, repr=False)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` training points ``[n, dim]`` float32, drawn using only ``generator`` (fresh
        points for generative benchmarks, pool rows with replacement for finite datasets)."""
        n = check_int("n", n, 0)
        if not isinstance(generator, torch.Generator):
            # No global-RNG fallback: a hidden global stream would break run reproducibility.
            raise ValueError(f"generator={generator!r} is not allowed: pass a torch.Generator")
        return self._draw(n, generator)

    def sample_members(self, rng: CounterRNG, counter: int, n: int, device: torch.device | str | None = None) -> Tensor:
        """``[M, n, dim]`` training points, member i's drawn from its own counter stream
        (``rng``, key ``counter``), so they do not depend on the other members or on M."""
        m, draw = rng.n_members, self._draw
        u = rng.uniform(counter, n * draw.n_uniform, device).reshape(m * n, draw.n_uniform)
        z = rng.normal(counter, n * draw.n_normal, device, torch.float64).reshape(m * n, draw.n_normal)
        return (draw.batched or draw.transform)(u, z).float().reshape(m, n, self.dim)

    def oracle(self, path: BrownianBridge) -> BridgeOracle:
        """The exact marginal velocity of ``path`` for this benchmark's mixture (section 2)."""
        if self.mixture is None:
            raise ValueError(
                f"benchmark '{self.name}' has no oracle: oracle benchmarks are {', '.join(ORACLE_BENCHMARKS)}"
            )
        return BridgeOracle(self.mixture, path)

    def probes(self, n_bins: int = 20, per_bin: int = 256, t_eps: float = 0.0) -> ProbeSet:
        """Fixed probes: ``n_bins`` equal bins over ``[t_eps, 1 - t_eps]``, ``per_bin`` points
        each. The stream depends on (seed, n_bins, per_bin) only, so changing ``t_eps`` moves
        the times but keeps ``(x0, x1, eps)`` and the within-bin positions."""
        n_bins, per_bin = check_int("n_bins", n_bins, 1), check_int("per_bin", per_bin, 1)
        t_eps = check_float("t_eps", t_eps, 0.0, 0.5, hi_open=True)
        g = _generator(self.seed, "probes", n_bins, per_bin)
        edges = torch.linspace(float(t_eps), 1.0 - float(t_eps), n_bins + 1, dtype=torch.float64).float()
        u = torch.rand(n_bins, per_bin, generator=g, dtype=torch.float64)
        lo, hi = edges[:-1, None].double(), edges[1:, None].double()
        t = (lo + (hi - lo) * u).float()
        # rand is in [0, 1) and float32 rounding can land on an edge (e.g. 1 - 1e-9 -> 1.0);
        # clamp to the nearest float32 strictly inside the bin, hence strictly inside (0, 1).
        inner_lo = torch.nextafter(edges[:-1], edges[1:])[:, None]
        inner_hi = torch.nextafter(edges[1:], edges[:-1])[:, None]
        t = torch.minimum(torch.maximum(t, inner_lo), inner_hi)
        shape = (n_bins, per_bin, self.dim)
        x0 = torch.randn(shape, generator=g)
        x1 = self._draw(n_bins * per_bin, g).reshape(shape)
        eps = torch.randn(shape, generator=g)
        return ProbeSet(edges=edges, t=t, x0=x0, x1=x1, eps=eps)


# -- options ------------------------------------------------------------------------------
def _int(lo: int, hi: int | None = None, multiple: int = 1) -> Callable[[str, Any], int]:
    """An integer option's check (see :func:`fmstudy.checks.check_int`)."""
    return functools.partial(check_int, lo=lo, hi=hi, multiple=multiple)


def _float(lo: float, strict: bool, hi: float = 1e6) -> Callable[[str, Any], float]:
    """A real option's check: ``> lo`` (``strict``) or ``>= lo``, and at most ``hi``: a finite
    float64 such as 1e200 is still infinite in the float32 data the models train on."""
    return functools.partial(check_float, lo=lo, lo_open=strict, hi=hi, why=" (data are float32)")


_SEED = ("seed", 0, _int(0, 2**63 - 1))
_N_HELDOUT = ("n_heldout", 5000, _int(1))
_NOISE = ("noise", 0.1, _float(0.0, strict=False))


def _finish(name: str, opts: dict[str, Any], dim: int, heldout_n: int, draw: _Draw, hidden: int, depth: int, **kw: Any) -> Benchmark:
    """A generative benchmark: the held-out set is drawn from its own fixed stream."""
    heldout = draw(heldout_n, _generator(opts["seed"], "heldout"))
    return Benchmark(name, dim, dict(opts), opts["seed"], heldout, hidden, depth, draw, **kw)


def _batched_mixture(mixture: GaussianMixture) -> Callable[[Tensor, Tensor], Tensor]:
    """``GaussianMixture.transform`` in a fixed number of operators: every row through every
    component, ``x_k = m_k + (z * sqrt(lambda_k)) U_k^T`` as one batched product ``[K, n, d]``,
    then each row's own component ``k = F^{-1}(u)`` gathered (what the unmasked transform
    computes component by component; K n d memory)."""
    on_device: dict[torch.device, tuple[Tensor, ...]] = {}

    def transform(u: Tensor, z: Tensor) -> Tensor:
        dev = z.device
        if dev not in on_device:
            on_device[dev] = tuple(
                v.to(dev) for v in (mixture.weights.cumsum(0), mixture.means[:, None, :], mixture.evecs.transpose(-1, -2), mixture.evals.sqrt()[:, None, :])
            )
        cum, means, evecs_t, scale = on_device[dev]
        k = torch.searchsorted(cum, u[:, 0].contiguous(), right=True).clamp(max=mixture.n_components - 1)
        every = means + torch.matmul(z[None] * scale, evecs_t)  # [K, n, d]
        return every.gather(0, k[None, :, None].expand(1, *z.shape))[0]

    return transform


def _mixture_benchmark(name: str, opts: dict[str, Any], mixture: GaussianMixture, hidden: int) -> Benchmark:
    draw = _Draw(1, mixture.dim, lambda u, z: mixture.transform(u[:, 0], z), _batched_mixture(mixture))
    return _finish(name, opts, mixture.dim, opts["n_heldout"], draw, hidden, 3, mixture=mixture)


# -- builders -----------------------------------------------------------------------------
def _gmm8(opts: dict[str, Any]) -> Benchmark:
    """8 isotropic Gaussians, centres ``radius (cos 2 pi k/8, sin 2 pi k/8)``, variance ``var``
    per dimension, equal weights. torchcfm's ``sample_8gaussians`` passes ``sqrt(var)`` as the
    covariance (its clusters have variance ~0.316); we follow the spec's var 0.1 and expose it."""
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = opts["radius"] * torch.stack([angles.cos(), angles.sin()], -1)
    mixture = GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, torch.full((8,), opts["var"], dtype=torch.float64))
    return _mixture_benchmark("gmm8", opts, mixture, 128)


def _gmm_d(opts: dict[str, Any]) -> Benchmark:
    """A random mixture from a generator seeded with ``seed``: means at radius 4 U(0.5, 1) in
    uniformly random directions (separated relative to component scales <= sqrt(0.5)),
    covariances ``Q diag(lam) Q^T`` with Haar-random Q and log-uniform lam in [0.05, 0.5]
    (anisotropic, well conditioned), weights normalised U(0.5, 1.5) (none vanishes)."""
    d, k = opts["dim"], opts["n_components"]
    g = torch.Generator().manual_seed(opts["seed"])
    f64 = torch.float64
    directions = torch.randn(k, d, generator=g, dtype=f64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    means = 4.0 * directions * (0.5 + 0.5 * torch.rand(k, 1, generator=g, dtype=f64))
    q, r = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=f64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # sign fix: Haar measure
    lam = torch.exp(math.log(0.05) + (math.log(0.5) - math.log(0.05)) * torch.rand(k, d, generator=g, dtype=f64))
    covs = (q * lam[:, None, :]) @ q.transpose(-1, -2)
    covs = (covs + covs.transpose(-1, -2)) / 2  # exact symmetry for GaussianMixture's check
    w = 0.5 + torch.rand(k, generator=g, dtype=f64)
    mixture = GaussianMixture(w / w.sum(), means, covs)
    return _mixture_benchmark("gmm-d", opts, mixture, 256)


def _moons(opts: dict[str, Any]) -> Benchmark:
    """Two interleaving half circles with Gaussian noise, centred and scaled by 2 (~[-3, 3])."""
    noise = opts["noise"]

    def transform(u: Tensor, z: Tensor) -> Tensor:
        arm = u[:, 0] < 0.5
        a = u[:, 1] * math.pi
        upper = torch.stack([a.cos(), a.sin()], -1)
        lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], -1)
        x = torch.where(arm[:, None], lower, upper) + noise * z
        # (0.5, 0.25) is the exact mean of the noiseless moons.
        return 2 * (x - torch.tensor([0.5, 0.25], dtype=x.dtype, device=x.device))

    return _finish("moons", opts, 2, opts["n_heldout"], _Draw(2, 2, transform), 128, 3)


def _checkerboard(opts: dict[str, Any]) -> Benchmark:
    """Uniform on the 8 dark squares ((col + row) even) of a 4x4 board of side-2 squares on [-4, 4]^2."""

    def transform(u: Tensor, z: Tensor) -> Tensor:
        col = torch.floor(4 * u[:, 0]).clamp(max=3)
        row = 2 * (u[:, 1] < 0.5) + col % 2  # keeps col + row even
        return -4 + 2 * torch.stack([col, row], -1) + 2 * u[:, 2:4]

    return _finish("checkerboard", opts, 2, opts["n_heldout"], _Draw(4, 0, transform), 128, 3)


def _spirals(opts: dict[str, Any]) -> Benchmark:
    """Two Archimedean arms r = 4 theta / (3 pi), theta in [0, 3 pi] (1.5 turns), the second the
    first rotated by pi; theta = 3 pi sqrt(u) spreads points evenly along the arc (arc length
    grows like theta^2)."""
    noise = opts["noise"]

    def transform(u: Tensor, z: Tensor) -> Tensor:
        sign = torch.where(u[:, 0] < 0.5, 1.0, -1.0).to(u.dtype)  # rotation by pi is negation
        theta = 3 * math.pi * u[:, 1].sqrt()
        r = 4 * theta / (3 * math.pi)
        x = (sign * r)[:, None] * torch.stack([theta.cos(), theta.sin()], -1)
        return x + noise * z

    return _finish("spirals", opts, 2, opts["n_heldout"], _Draw(2, 2, transform), 128, 3)


def _pool_benchmark(name: str, opts: dict[str, Any], x: Tensor, y: Tensor, train_idx: Tensor, held_idx: Tensor) -> Benchmark:
    """A finite dataset: training draws are pool rows with replacement."""
    pool = x[train_idx].contiguous()
    pools: dict[torch.device, Tensor] = {}  # the pool on each device it was asked for, once

    def transform(u: Tensor, z: Tensor) -> Tensor:
        on = pools.setdefault(u.device, pool.to(u.device, torch.float64))
        return on[torch.floor(u[:, 0] * on.shape[0]).long().clamp(max=on.shape[0] - 1)]

    draw = _Draw(1, 0, transform)

    return Benchmark(
        name, x.shape[1], dict(opts), opts["seed"], x[held_idx].contiguous(), 512, 4, draw,
        train=pool, train_labels=y[train_idx], heldout_labels=y[held_idx], train_index=train_idx, heldout_index=held_idx,
    )


def _digits(opts: dict[str, Any]) -> Benchmark:
    """scikit-learn's bundled 8x8 digits (1797 x 64, no download), pixels 0..16 -> x/8 - 1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 8 - 1
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(opts["seed"]))
    k = opts["n_heldout"]
    return _pool_benchmark("digits", opts, x, y, perm[k:], perm[:k])


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D from the package's generator (never its download), cached because it takes
    seconds. ``make_dataset`` reseeds numpy's and Python's global RNGs, so both are restored."""
    if "matplotlib.pyplot" not in sys.modules and "MPLBACKEND" not in os.environ:
        import matplotlib  # mnist1d.utils imports pyplot; Agg keeps that import headless

        matplotlib.use("Agg")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = tuple(np.array(d[k]) for k in ("x", "x_test", "y", "y_test"))
    for a in out:
        a.setflags(write=False)  # the cache is shared: nobody may edit it in place
    return out  # type: ignore[return-value]


def _mnist1d(opts: dict[str, Any]) -> Benchmark:
    """MNIST-1D (dim 40), generated with ``seed`` (the package's default is 42; ours is 0);
    the held-out set is the generator's own test split (1000 rows for 5000 samples)."""
    xtr, xte, ytr, yte = _mnist1d_arrays(opts["seed"], opts["num_samples"])
    x = torch.tensor(np.concatenate([xtr, xte]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([ytr, yte]), dtype=torch.int64)
    n = len(xtr)
    return _pool_benchmark("mnist1d", opts, x, y, torch.arange(n), torch.arange(n, n + len(xte)))


@dataclass(frozen=True)
class _Spec:
    build: Callable[[dict[str, Any]], Benchmark]
    options: tuple[tuple[str, Any, Any], ...]  # (name, default, checker)


_REGISTRY: dict[str, _Spec] = {
    "gmm8": _Spec(_gmm8, (_SEED, _N_HELDOUT, ("radius", 5.0, _float(0.0, True)), ("var", 0.1, _float(0.0, True)))),
    "gmm-d": _Spec(_gmm_d, (_SEED, _N_HELDOUT, ("dim", 8, _int(1)), ("n_components", 8, _int(1)))),
    "moons": _Spec(_moons, (_SEED, _N_HELDOUT, _NOISE)),
    "checkerboard": _Spec(_checkerboard, (_SEED, _N_HELDOUT)),
    "spirals": _Spec(_spirals, (_SEED, _N_HELDOUT, _NOISE)),
    "digits": _Spec(_digits, (_SEED, ("n_heldout", 297, _int(1, 1796)))),
    # make_dataset splits num_samples evenly over 10 classes, silently dropping a remainder,
    # then 80/20 into train/test: a multiple of 10 keeps the recorded size the real one.
    "mnist1d": _Spec(_mnist1d, (_SEED, ("num_samples", 5000, _int(10, None, 10)))),
}
ORACLE_BENCHMARKS = ("gmm-d", "gmm8")


def benchmark_names() -> list[str]:
    """All known benchmark names, sorted."""
    return sorted(_REGISTRY)


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """Build benchmark ``name`` (one of :func:`benchmark_names`) with ``options``; every option
    is validated (one-line ``ValueError``) before any data is generated."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown benchmark {name!r}: known benchmarks are {', '.join(benchmark_names())}")
    allowed = {key: (default, check) for key, default, check in spec.options}
    opts: dict[str, Any] = {}
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for benchmark {name!r}: allowed options are {', '.join(sorted(allowed))}"
            )
    for key, (default, check) in allowed.items():
        try:
            opts[key] = check(key, options.get(key, default))
        except ValueError as err:
            raise ValueError(f"{err} (benchmark {name!r})") from None
    return spec.build(dict(sorted(opts.items())))
