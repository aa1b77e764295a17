"""Time samplers: how training samples are allocated over t (STUDY.md section 4).

The training objective is fixed: ``L = E_{t ~ U[a, b]} l(t)`` with ``[a, b] = [t_eps, 1 - t_eps]``
(eq. 4.1). A sampler draws t from a proposal ``q`` on [a, b] and returns the importance weight

    w(t) = p_U(t) / q(t) = 1 / ((b - a) q(t))                                      (4.2)

so that ``E_q[w(t) l(t)] = L`` (unbiased) when ``reweight`` is on; with it off the weights are
1 and the sampler optimises ``E_q l(t)``, a different objective, which ``unbiased`` reports.

Every proposal here is piecewise constant in t: a table of edges ``a = e_0 < ... < e_G = b``
and cumulative probabilities ``C_0 = 0 <= ... <= C_G = 1``. Fixed families (logit-normal,
beta...) are tabulated once on a fine grid from their exact CDF; adaptive samplers keep one
row of probabilities per member over K equal bins. Because draws (inverse CDF, linear within
a cell) and ``density`` read the same table, ``w`` is exactly unbiased for what is drawn, and
the nominal family is matched to the table's resolution. Every sampler mixes in a uniform
floor, ``q = (1 - floor) q_base + floor / (b - a)`` (4.3), which bounds ``w <= 1 / floor``.

All samplers work on M ensemble members at once: draws are ``[M, B]``, each member with its
own counter-based random stream (:class:`fmstudy.rng.CounterRNG`) and, for adaptive ones, its
own state. ``state_dict``/``load_state_dict`` resume bit-exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

from .checks import check_float, check_int
from .rng import CounterRNG

__all__ = [
    "TimeDraw",
    "Feedback",
    "TimeSampler",
    "make_sampler",
    "sampler_names",
    "SAMPLERS",
]

_TIME_STREAM = 1  # CounterRNG stream reserved for t; data and noise use others


@dataclass(frozen=True)
class TimeDraw:
    """Times ``t`` ``[M, B]``, importance weights ``weight`` (4.2, or ones) and ``q(t)``."""

    t: Tensor
    weight: Tensor
    density: Tensor


@dataclass
class Feedback:
    """What the trainer tells a sampler after a step (per sample) or at a checkpoint (per bin).

    Per sample, ``[M, B]``: ``t``, ``loss`` (unweighted squared error), ``grad_norm`` (norm of
    the per-sample parameter gradient). Per bin ``[M, K]`` on the sampler's bins (fixed probe
    sets): ``bin_loss`` (held-out loss), ``bin_excess`` (oracle excess loss),
    ``bin_grad_mean_sq`` (``||E g||^2``) and ``bin_grad_sq`` (``E ||g||^2``).
    """

    t: Tensor | None = None
    loss: Tensor | None = None
    grad_norm: Tensor | None = None
    bin_loss: Tensor | None = None
    bin_excess: Tensor | None = None
    bin_grad_mean_sq: Tensor | None = None
    bin_grad_sq: Tensor | None = None


class TimeSampler:
    """Base class: a piecewise-constant proposal on ``[t_eps, 1 - t_eps]`` for M members.

    Args:
        seeds: one seed per ensemble member; member i's draws depend on ``seeds[i]`` only.
        t_eps: the time domain is ``[t_eps, 1 - t_eps]``, ``0 <= t_eps < 0.5``.
        reweight: return the weights (4.2) that keep the fixed objective (unbiased), or ones.
        floor: weight of the uniform mixture (4.3), in [0, 1].
        stratified: draw the batch's B uniforms one per stratum ``[j/B, (j+1)/B)`` before the
            inverse CDF (variance reduction; each draw still has marginal density q).
        device: where draws and state live.
    """

    name: ClassVar[str] = "base"
    options: ClassVar[tuple[str, ...]] = ("reweight", "floor", "stratified")  # for make_sampler
    requires: ClassVar[frozenset[str]] = frozenset()  # Feedback fields the sampler reads
    adaptive: ClassVar[bool] = False

    def __init__(
        self,
        seeds: Sequence[int] | Tensor,
        t_eps: float = 0.0,
        reweight: bool = True,
        floor: float = 0.0,
        stratified: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.t_eps = check_float("t_eps", t_eps, 0.0, 0.5, hi_open=True)
        self.floor = check_float("floor", floor, 0.0, 1.0)
        if not isinstance(reweight, bool) or not isinstance(stratified, bool):
            raise ValueError(f"reweight={reweight!r}, stratified={stratified!r}: both must be true or false")
        self.reweight, self.stratified = reweight, stratified
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.rng = CounterRNG(seeds, stream=_TIME_STREAM)
        self.counter = 0
        self.lo, self.hi = self.t_eps, 1.0 - self.t_eps

    @property
    def n_members(self) -> int:
        return self.rng.n_members

    # -- the proposal, as a table ----------------------------------------------------------
    def base_table(self) -> tuple[Tensor, Tensor]:
        """``(edges [G + 1], cdf [1 or M, G + 1])`` of the proposal before the floor, float64."""
        raise NotImplementedError

    def table(self) -> tuple[Tensor, Tensor]:
        """The proposal after the uniform floor (4.3): still piecewise linear on the same edges."""
        edges, cdf = self.base_table()
        if self.floor > 0:
            cdf = (1 - self.floor) * cdf + self.floor * (edges - self.lo) / (self.hi - self.lo)
        return edges, cdf

    @property
    def support_is_full(self) -> bool:
        """Whether q > 0 everywhere on [a, b] (otherwise no weight can make the estimate unbiased)."""
        return True

    @property
    def unbiased(self) -> bool:
        """Whether draws and weights estimate the fixed objective (4.1) without bias."""
        return self.reweight and (self.support_is_full or self.floor > 0)

    def _invert(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse CDF of the table for uniforms ``u [M, B]`` (linear within each cell); also
        returns q at the draws, read from the drawn cell (never a zero-mass neighbour)."""
        edges, cdf = self.table()
        g = edges.numel() - 1
        if cdf.shape[0] == 1:  # one table for all members (fixed samplers): no [M, G] copy
            i = (torch.searchsorted(cdf[0], u, right=True) - 1).clamp(0, g - 1)
            c0, c1 = cdf[0, i], cdf[0, i + 1]
        else:
            i = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, g - 1)
            c0, c1 = cdf.gather(1, i), cdf.gather(1, i + 1)
        e0, e1 = edges[i], edges[i + 1]
        frac = ((u - c0) / (c1 - c0)).clamp(0, 1)
        return e0 + frac * (e1 - e0), (c1 - c0) / (e1 - e0)

    def density(self, t: Tensor) -> Tensor:
        """``q(t)`` of each member's current proposal; ``t`` has shape ``[M, ...]``; 0 outside [a, b]."""
        edges, cdf = self.table()
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        if t.ndim == 0 or t.shape[0] != self.n_members:
            raise ValueError(
                f"t of shape {tuple(t.shape)} is not allowed: density needs t of shape [M, ...] with M={self.n_members}"
            )
        flat = t.reshape(self.n_members, -1)
        g = edges.numel() - 1
        i = (torch.searchsorted(edges, flat.contiguous(), right=True) - 1).clamp(0, g - 1)
        mass = cdf.diff(dim=1)
        q = (mass[0, i] if mass.shape[0] == 1 else mass.gather(1, i)) / (edges[i + 1] - edges[i])
        q = torch.where((flat >= self.lo) & (flat <= self.hi), q, torch.zeros_like(q))
        return q.reshape(t.shape)

    def cdf(self, t: Tensor) -> Tensor:
        """Each member's proposal CDF at times ``t`` (1-D), ``[M, len(t)]``; clamped to [a, b]."""
        edges, cdf = self.table()
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).clamp(self.lo, self.hi)
        g = edges.numel() - 1
        i = (torch.searchsorted(edges, t, right=True) - 1).clamp(0, g - 1)
        frac = (t - edges[i]) / (edges[i + 1] - edges[i])
        out = cdf[:, i] + frac * (cdf[:, i + 1] - cdf[:, i])
        return out.expand(self.n_members, -1)

    def bin_mass(self, edges: Tensor) -> Tensor:
        """Probability of each interval ``[edges[k], edges[k + 1]]`` under each member's
        proposal, ``[M, K]`` (divide by the widths for the mean density in each bin)."""
        return self.cdf(edges).diff(dim=1)

    def sample(self, batch: int, dtype: torch.dtype = torch.float32) -> TimeDraw:
        """Draw ``[M, batch]`` times from each member's proposal and advance the counter."""
        check_int("batch", batch, 1)
        u = self.rng.uniform(self.counter, batch, self.device)
        self.counter += 1
        if self.stratified:
            u = (torch.arange(batch, dtype=torch.float64, device=self.device) + u) / batch
        t, q = self._invert(u)
        w = 1.0 / ((self.hi - self.lo) * q) if self.reweight else torch.ones_like(q)
        return TimeDraw(t.to(dtype), w.to(dtype), q.to(dtype))

    def update(self, feedback: Feedback) -> None:
        """Fixed samplers ignore feedback; adaptive ones update their state."""

    # -- records and resume ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Every option, for a run's record."""
        return {
            "name": self.name,
            "t_eps": self.t_eps,
            "reweight": self.reweight,
            "unbiased": self.unbiased,
            "floor": self.floor,
            "stratified": self.stratified,
            "seeds": self.rng.seeds.tolist(),
            **self._options(),
        }

    def _options(self) -> dict[str, Any]:
        return {}

    def _state(self) -> dict[str, Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"describe": self.describe(), "counter": self.counter, "state": {k: v.clone() for k, v in self._state().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["describe"] != self.describe():
            raise ValueError(f"state of sampler {state['describe']} does not match this sampler {self.describe()}")
        self.counter = int(state["counter"])
        for key, value in state["state"].items():
            getattr(self, key).copy_(value)


# -- fixed proposals ---------------------------------------------------------------------
class _Tabulated(TimeSampler):
    """A fixed family given by its exact CDF (and quantile function, for resolution where the
    mass is), restricted to ``[a, b]`` or to ``truncate = (lo, hi)`` inside it."""

    grid: ClassVar[int] = 16384  # cells per source; relative density error ~ |q'/q| * 0.5/grid
    options = TimeSampler.options + ("truncate",)

    def __init__(self, seeds, t_eps=0.0, reweight=True, floor=0.0, stratified=False, truncate=None, device=None):
        super().__init__(seeds, t_eps, reweight, floor, stratified, device)
        self.truncate = None
        lo, hi = self.lo, self.hi
        if truncate is not None:
            if not (isinstance(truncate, (list, tuple)) and len(truncate) == 2):
                raise ValueError(f"truncate={truncate!r} is not allowed: give [lo, hi] with 0 <= lo < hi <= 1")
            tl, th = (float(v) for v in truncate)
            if not (0.0 <= tl < th <= 1.0) or th <= self.lo or tl >= self.hi:
                raise ValueError(
                    f"truncate={list(truncate)!r} is not allowed: it must satisfy 0 <= lo < hi <= 1 and overlap [{self.lo}, {self.hi}]"
                )
            self.truncate = (tl, th)
            lo, hi = max(tl, lo), min(th, hi)
        self._mixed: tuple[Tensor, Tensor] | None = None
        self._range = (lo, hi)

    def table(self) -> tuple[Tensor, Tensor]:
        if self._mixed is None:  # fixed: built once, floor included
            self._mixed = super().table()
        return self._mixed

    def family_cdf(self, t: np.ndarray) -> np.ndarray:
        """The nominal family's CDF on (0, 1), numpy float64."""
        raise NotImplementedError

    def family_quantile(self, u: np.ndarray) -> np.ndarray:
        """The nominal family's quantile function, numpy float64."""
        raise NotImplementedError

    @property
    def support_is_full(self) -> bool:
        return self._range == (self.lo, self.hi)

    def base_table(self) -> tuple[Tensor, Tensor]:
        """Built from the family's CDF; called once, since :meth:`table` caches the result."""
        lo, hi = self._range
        u = np.concatenate([np.linspace(0, 1, self.grid + 1)[1:-1], special.expit(np.linspace(-30, 30, self.grid))])
        knots = np.concatenate([np.linspace(lo, hi, self.grid + 1), self.family_quantile(u)])
        knots = np.unique(np.clip(knots, lo, hi))
        # Knots closer than 1e-12 (the two grids can both hold ~0.5) would make cells
        # whose mass is pure rounding error of the CDF; keep one of each such pair.
        knots = knots[np.concatenate([[True], np.diff(knots) > 1e-12])]
        knots[-1] = hi
        c = self.family_cdf(knots)
        c = (c - c[0]) / (c[-1] - c[0])
        # Extend with zero-mass cells so that the table always spans the whole [a, b].
        edges = np.unique(np.concatenate([[self.lo], knots, [self.hi]]))
        cum = np.interp(edges, knots, c, left=0.0, right=1.0)
        return (
            torch.tensor(edges, dtype=torch.float64, device=self.device),
            torch.tensor(np.maximum.accumulate(cum), dtype=torch.float64, device=self.device)[None],
        )

    def _options(self) -> dict[str, Any]:
        return {"truncate": list(self.truncate) if self.truncate else None, **self._family()}

    def _family(self) -> dict[str, Any]:
        return {}


class Uniform(_Tabulated):
    """``q = U[a, b]``: the fixed objective's own distribution; ``stratified`` gives one draw
    per stratum of the batch."""

    name = "uniform"
    grid = 1  # its CDF is linear: one cell is exact

    def family_cdf(self, t):
        return t

    def family_quantile(self, u):
        return u


class LogitNormal(_Tabulated):
    """``logit t ~ N(m, s^2)`` (SD3): ``F(t) = Phi((logit t - m) / s)``."""

    name = "logit_normal"
    options = _Tabulated.options + ("m", "s")

    def __init__(self, seeds, m: float = 0.0, s: float = 1.0, **kw):
        self.m, self.s = check_float("m", m), check_float("s", s, 0.0, lo_open=True)
        super().__init__(seeds, **kw)

    def family_cdf(self, t):
        with np.errstate(divide="ignore"):
            return stats.norm.cdf((special.logit(t) - self.m) / self.s)

    def family_quantile(self, u):
        return special.expit(self.m + self.s * stats.norm.ppf(u))

    def _family(self):
        return {"m": self.m, "s": self.s}


class Mode(_Tabulated):
    """SD3's mode sampling with heavy tails: ``t = f(u) = u + s (cos^2(pi u / 2) - 1 + u)``,
    ``u ~ U(0, 1)``; s > 0 puts more mass in the middle. f is increasing (a valid quantile
    function) for ``-1 <= s <= 2 / (pi - 2)``; f(1 - u) = 1 - f(u), so the direction of t is
    immaterial. The CDF is f's inverse, found by bisection."""

    name = "mode"
    options = _Tabulated.options + ("scale",)
    S_MAX: ClassVar[float] = 2 / (math.pi - 2)

    def __init__(self, seeds, scale: float = 1.29, **kw):
        self.scale = check_float("scale", scale, -1.0, self.S_MAX)
        super().__init__(seeds, **kw)

    def family_quantile(self, u):
        return u + self.scale * (np.cos(np.pi * u / 2) ** 2 - 1 + u)

    def family_cdf(self, t):
        lo, hi = np.zeros_like(t), np.ones_like(t)
        for _ in range(60):  # 2^-60: below float64 resolution
            mid = (lo + hi) / 2
            below = self.family_quantile(mid) < t
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return (lo + hi) / 2

    def _family(self):
        return {"scale": self.scale}


class Beta(_Tabulated):
    """``t ~ Beta(a, b)``; ``a = b < 1`` is U-shaped (``a = b = 1/2``: the arcsine law)."""

    name = "beta"
    options = _Tabulated.options + ("a", "b")

    def __init__(self, seeds, a: float = 1.0, b: float = 1.0, **kw):
        self.a, self.b = check_float("a", a, 0.0, lo_open=True), check_float("b", b, 0.0, lo_open=True)
        super().__init__(seeds, **kw)

    def family_cdf(self, t):
        return stats.beta.cdf(t, self.a, self.b)

    def family_quantile(self, u):
        return stats.beta.ppf(u, self.a, self.b)

    def _family(self):
        return {"a": self.a, "b": self.b}


class Arcsine(Beta):
    """The arcsine law ``Beta(1/2, 1/2)``: U-shaped, more samples near both endpoints."""

    name = "arcsine"
    options = _Tabulated.options

    def __init__(self, seeds, **kw):
        super().__init__(seeds, a=0.5, b=0.5, **kw)


class UShaped(Beta):
    """A symmetric U-shaped ``Beta(a, a)`` with ``0 < a < 1``."""

    name = "u_shaped"
    options = _Tabulated.options + ("a",)

    def __init__(self, seeds, a: float = 0.5, **kw):
        a = check_float("a", a, 0.0, 1.0, lo_open=True, hi_open=True)
        super().__init__(seeds, a=a, b=a, **kw)


# -- adaptive proposals --------------------------------------------------------------------
class _Binned(TimeSampler):
    """Adaptive proposal over ``n_bins`` equal bins of [a, b]: probabilities ``probs [M, K]``
    (uniform at the start), always mixed with the uniform floor."""

    adaptive = True
    options = TimeSampler.options + ("n_bins",)

    def __init__(self, seeds, n_bins: int = 20, floor: float = 0.05, **kw):
        self.n_bins = check_int("n_bins", n_bins, 2)
        super().__init__(seeds, floor=floor, **kw)
        self.edges = torch.linspace(self.lo, self.hi, self.n_bins + 1, dtype=torch.float64, device=self.device)
        self.probs = torch.full((self.n_members, self.n_bins), 1.0 / self.n_bins, dtype=torch.float64, device=self.device)

    def base_table(self) -> tuple[Tensor, Tensor]:
        cdf = torch.cat([torch.zeros_like(self.probs[:, :1]), self.probs.cumsum(1)], dim=1)
        return self.edges, cdf / cdf[:, -1:]

    def bin_of(self, t: Tensor) -> Tensor:
        """Bin index ``[M, B]`` of times ``t``."""
        t = t.to(torch.float64)
        return (torch.searchsorted(self.edges, t.contiguous(), right=True) - 1).clamp(0, self.n_bins - 1)

    def _set_probs(self, scores: Tensor, ready: Tensor | None = None) -> None:
        """``probs ∝ scores`` for members whose scores are ``ready`` (all if None); members
        whose scores are all zero or not finite keep their probabilities."""
        total = scores.sum(1, keepdim=True)
        ok = torch.isfinite(total) & (total > 0)
        if ready is not None:
            ok = ok & ready[:, None]
        self.probs = torch.where(ok, scores / total.clamp(min=1e-300), self.probs)

    def _needs(self, feedback: Feedback, *fields: str) -> list[Tensor] | None:
        """The named feedback fields as float64, or None when this feedback lacks them."""
        values = [getattr(feedback, f) for f in fields]
        if any(v is None for v in values):
            return None
        out = [torch.as_tensor(v, device=self.device).to(torch.float64) for v in values]
        for name, v in zip(fields, out):
            per_bin = name.startswith("bin_")
            if v.ndim != 2 or v.shape[0] != self.n_members or (per_bin and v.shape[1] != self.n_bins):
                allowed = f"[{self.n_members}, {self.n_bins}]" if per_bin else f"[{self.n_members}, B]"
                raise ValueError(f"feedback {name} of shape {list(v.shape)} is not allowed: it must be {allowed}")
        return out

    def _state(self) -> dict[str, Tensor]:
        return {"probs": self.probs}

    def _options(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, **self._family()}

    def _family(self) -> dict[str, Any]:
        return {}


class _SecondMoment(_Binned):
    """``p_k ∝ sqrt(mean of the last N values^2)`` per bin (Improved DDPM), uniform until every
    bin of a member holds N values. The history is a ring buffer per (member, bin)."""

    signal: ClassVar[str] = "loss"
    options = _Binned.options + ("history",)

    def __init__(self, seeds, history: int = 10, **kw):
        self.history = check_int("history", history, 1)
        super().__init__(seeds, **kw)
        shape = (self.n_members, self.n_bins)
        self.values = torch.zeros(*shape, self.history, dtype=torch.float64, device=self.device)
        self.filled = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.head = torch.zeros(shape, dtype=torch.int64, device=self.device)

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "t", self.signal)
        if got is None:
            return
        t, x = got
        m, k, n = self.n_members, self.n_bins, self.history
        key = (torch.arange(m, device=self.device)[:, None] * k + self.bin_of(t)).reshape(-1)
        x = x.reshape(-1)
        # Rank of each value among this batch's values of its (member, bin), in batch order.
        order = torch.sort(key, stable=True).indices
        key, x = key[order], x[order]
        count = torch.bincount(key, minlength=m * k)
        start = count.cumsum(0) - count
        rank = torch.arange(key.numel(), device=self.device) - start[key]
        keep = rank >= count[key] - n  # only the newest N of a batch survive, as sequentially
        target = key * n + (self.head.reshape(-1)[key] + rank) % n
        # Written without boolean indexing, whose row count would stall a GPU: the newest N
        # of a (member, bin) fill all N of its slots, so zeroing every slot the batch reaches
        # and then adding the kept values (zeros for the others) writes each kept value exactly.
        flat = self.values.view(-1)
        flat.index_fill_(0, target, 0.0)
        flat.index_put_((target,), torch.where(keep, x.to(flat.dtype), 0.0), accumulate=True)
        self.head = (self.head + count.reshape(m, k)) % n
        self.filled = (self.filled + count.reshape(m, k)).clamp(max=n)
        warm = (self.filled == n).all(1)
        self._set_probs(torch.sqrt((self.values**2).mean(-1)), ready=warm)

    def _state(self) -> dict[str, Tensor]:
        return {"probs": self.probs, "values": self.values, "filled": self.filled, "head": self.head}

    def _family(self) -> dict[str, Any]:
        return {"history": self.history}


class LossSecondMoment(_SecondMoment):
    """Improved DDPM's importance sampler: ``p_k ∝ sqrt(E[l^2 | bin k])`` from the last
    ``history`` per-sample losses of each bin."""

    name = "loss_second_moment"
    requires = frozenset({"t", "loss"})
    signal = "loss"


class GradNorm(_SecondMoment):
    """The variance-optimal proposal for an unbiased gradient estimate: with weights (4.2)
    the estimator's second moment is ``int p_U^2 E[||g||^2 | t] / q dt``, minimised by
    ``q*(t) ∝ sqrt(E[||g||^2 | t])`` (Cauchy-Schwarz); estimated per bin from the last
    ``history`` per-sample gradient norms."""

    name = "grad_norm"
    requires = frozenset({"t", "grad_norm"})
    signal = "grad_norm"


class _Smoothed(_Binned):
    """Adaptive samplers fed per-bin measurements at checkpoints: an exponential moving
    average ``score <- (1 - beta) score + beta * new`` (beta = ``smoothing``), then p ∝ f(score)."""

    options = _Binned.options + ("smoothing",)

    def __init__(self, seeds, smoothing: float = 0.5, **kw):
        self.smoothing = check_float("smoothing", smoothing, 0.0, 1.0, lo_open=True)
        super().__init__(seeds, **kw)
        self.score = torch.zeros(self.n_members, self.n_bins, dtype=torch.float64, device=self.device)
        self.seen = torch.zeros(self.n_members, dtype=torch.bool, device=self.device)

    def _smooth(self, new: Tensor) -> None:
        beta = torch.where(self.seen, self.smoothing, 1.0)[:, None]
        self.score = (1 - beta) * self.score + beta * new
        self.seen = torch.ones_like(self.seen)

    def _state(self) -> dict[str, Tensor]:
        return {"probs": self.probs, "score": self.score, "seen": self.seen}

    def _family(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, **self._params()}

    def _params(self) -> dict[str, Any]:
        return {}


class OracleExcess(_Smoothed):
    """``p_k ∝ excess_k``, the oracle's learnable loss per bin (oracle benchmarks only): an upper
    bound on what perfect knowledge of where the learnable signal lies would buy."""

    name = "oracle_excess"
    requires = frozenset({"bin_excess"})

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "bin_excess")
        if got is not None:
            self._smooth(got[0].clamp(min=0))
            self._set_probs(self.score)


class LearningProgress(_Smoothed):
    """A full-information softmax bandit over bins (Hedge): at every checkpoint all bins'
    held-out losses are measured on fixed probes, the reward of bin k is its relative decrease
    ``r_k = (l_k^prev - l_k) / l_k^prev`` (scale-free across bins whose loss levels differ by
    orders of magnitude), smoothed, and ``p_k ∝ exp(score_k / temperature)``. As progress
    slows everywhere the scores shrink and the proposal relaxes towards uniform."""

    name = "learning_progress"
    requires = frozenset({"bin_loss"})
    options = _Smoothed.options + ("temperature",)

    def __init__(self, seeds, temperature: float = 0.02, **kw):
        self.temperature = check_float("temperature", temperature, 0.0, lo_open=True)
        super().__init__(seeds, **kw)
        self.previous = torch.full((self.n_members, self.n_bins), math.nan, dtype=torch.float64, device=self.device)

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "bin_loss")
        if got is None:
            return
        loss = got[0]
        have_prev = torch.isfinite(self.previous).all(1)
        if bool(have_prev.any()):
            reward = (self.previous - loss) / self.previous.abs().clamp(min=1e-12)
            reward = torch.where(have_prev[:, None], reward, torch.zeros_like(reward))
            self._smooth(reward)
            logits = self.score / self.temperature
            self._set_probs(torch.softmax(logits - logits.amax(1, keepdim=True), dim=1), ready=have_prev)
        self.previous = loss.clone()

    def _state(self) -> dict[str, Tensor]:
        return {**super()._state(), "previous": self.previous}

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


class InfoSNR(_Smoothed):
    """The study's information-aware proposal: learnable signal, discounted by gradient noise.

    Let ``G_k = E[g | bin k]`` be the mean per-sample gradient of bin k (the signal it carries)
    and ``S_k = E[||g||^2 | bin k]`` its second moment, so ``N_k = S_k - ||G_k||^2`` is the noise
    and ``rho_k = ||G_k||^2 / N_k`` the gradient signal-to-noise ratio. A step of size eta along
    one sample of bin k changes that bin's loss, to second order with curvature beta, by
    ``-eta ||G_k||^2 + beta eta^2 S_k / 2``; with the best step ``eta_k = ||G_k||^2 / (beta S_k)``
    the expected decrease per sample is

        Delta_k = ||G_k||^4 / (2 beta S_k) = ||G_k||^2 rho_k / (2 beta (1 + rho_k)).        (4.4)

    Allocating samples in proportion to what they can achieve, ``p_k ∝ ||G_k||^4 / S_k``:
    informative bins (large learnable gradient) get more, but only as far as their signal
    stands above their noise (the factor ``rho/(1 + rho)``). This spends less where ``u_t`` is
    dominated by the bridge's noise ``s'_t eps`` (near the endpoints when sigma > 0), where the
    variance-optimal ``grad_norm`` proposal spends more. With ``reweight`` on the objective is
    unchanged and only the estimator's variance is traded for this allocation; the uniform floor
    bounds the weights. Fed per-bin gradient statistics measured on the fixed probes.
    """

    name = "info_snr"
    requires = frozenset({"bin_grad_mean_sq", "bin_grad_sq"})

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "bin_grad_mean_sq", "bin_grad_sq")
        if got is None:
            return
        signal, second = got
        signal = signal.clamp(min=0)
        self._smooth(signal**2 / second.clamp(min=1e-300))
        self._set_probs(self.score)


# -- the registry ----------------------------------------------------------------------------
SAMPLERS: dict[str, type[TimeSampler]] = {
    cls.name: cls
    for cls in (Uniform, LogitNormal, Mode, Beta, Arcsine, UShaped, LossSecondMoment, GradNorm, LearningProgress, OracleExcess, InfoSNR)
}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"stratified": ("uniform", {"stratified": True})}


def sampler_names() -> list[str]:
    return sorted([*SAMPLERS, *_ALIASES])


def make_sampler(
    spec: Mapping[str, Any] | str,
    seeds: Sequence[int] | Tensor,
    t_eps: float = 0.0,
    device: torch.device | str | None = None,
) -> TimeSampler:
    """Build a sampler from a grid file's description, e.g.
    ``{"name": "logit_normal", "m": 0.0, "s": 1.0, "reweight": True}``. The time domain
    ``t_eps`` belongs to the path and is passed separately. Unknown names and keys, and bad
    values, get a one-line ``ValueError`` that lists what is allowed."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name in _ALIASES:
        name, extra = _ALIASES[name]
        spec = {**extra, **spec}
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: known samplers are {', '.join(sampler_names())}")
    cls = SAMPLERS[name]
    allowed = set(cls.options)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for sampler {name!r}: allowed parameters are {', '.join(sorted(allowed))}"
        )
    if "truncate" in spec and spec["truncate"] is not None:
        spec["truncate"] = tuple(spec["truncate"])
    return cls(seeds, t_eps=t_eps, device=device, **spec)
