"""A benchmark: its data, fixed held-out set and fixed per-t probe sets (STUDY.md section 3).

:class:`Benchmark` is what :func:`fmstudy.data.get_benchmark` builds (the builders live in
:mod:`fmstudy.mixture_benchmarks`, :mod:`fmstudy.toy_benchmarks` and
:mod:`fmstudy.dataset_benchmarks`). Every benchmark is generated or shipped offline (nothing
here touches the network) and is a pure function of its options:

- ``heldout`` is drawn once from its own seeded stream, so it is identical on every call;
- ``sample(n, generator)`` draws training data using only the caller's ``torch.Generator``;
- ``probes(n_bins, per_bin, t_eps)`` returns the same ``(t, x0, x1, eps)`` per t-bin on every
  call, so per-t measurements are comparable across steps, runs and schedules.

The streams are separated by seeding each from a hash of (benchmark seed, purpose, sizes), so
held-out points, probes and a model's own training draws never share random numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .checks import check_float, check_int
from .oracle import BridgeOracle, GaussianMixture
from .paths import BrownianBridge
from .rng import CounterRNG

__all__ = ["Benchmark", "ProbeSet", "ORACLE_BENCHMARKS"]

ORACLE_BENCHMARKS = ("gmm-d", "gmm8")  # the benchmarks with a mixture, hence an exact oracle


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


def _finish(name: str, opts: dict[str, Any], dim: int, heldout_n: int, draw: _Draw, hidden: int, depth: int, **kw: Any) -> Benchmark:
    """A generative benchmark: the held-out set is drawn from its own fixed stream."""
    heldout = draw(heldout_n, _generator(opts["seed"], "heldout"))
    return Benchmark(name, dim, dict(opts), opts["seed"], heldout, hidden, depth, draw, **kw)
