"""The time sampler's interface: draws, importance weights and feedback (STUDY.md section 4).

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

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from .checks import check_float, check_int
from .rng import CounterRNG

__all__ = ["TimeDraw", "Feedback", "TimeSampler"]

_TIME_STREAM = 1  # CounterRNG stream reserved for t; data and noise use others


@dataclass(frozen=True)
class TimeDraw:
    """Times ``t`` ``[M, B]``, importance weights ``weight`` (4.2, or ones) and ``q(t)``."""

    t: Tensor
    weight: Tensor
    density: Tensor


@dataclass
class Feedback:
    """What the trainer tells a sampler after a step (per sample) or at a feedback point (per bin).

    Per sample, ``[M, B]``, for the batch just trained on: ``t``, ``loss`` (unweighted squared
    error l_b), ``grad_norm`` (Euclidean norm of grad l_b, the unweighted per-sample loss's
    parameter gradient) and ``grad_sq_adam`` (``g_b^T P g_b`` with P Adam's preconditioner,
    :func:`fmstudy.models.per_sample_grad_sq_adam`). Per bin ``[M, K]`` on the sampler's bins:
    ``bin_loss`` (held-out loss), ``bin_excess`` (oracle excess loss), ``bin_grad_mean_sq``
    (unbiased ``||E[g | bin k]||^2``) and ``bin_grad_sq`` (``E[||g||^2 | bin k]``), and the same two
    in Adam's metric, ``bin_grad_mean_sq_adam`` and ``bin_grad_sq_adam``
    (:func:`fmstudy.signals.measure_variance` on fresh probes gives all four).
    """

    t: Tensor | None = None
    loss: Tensor | None = None
    grad_norm: Tensor | None = None
    grad_sq_adam: Tensor | None = None
    bin_loss: Tensor | None = None
    bin_excess: Tensor | None = None
    bin_grad_mean_sq: Tensor | None = None
    bin_grad_sq: Tensor | None = None
    bin_grad_mean_sq_adam: Tensor | None = None
    bin_grad_sq_adam: Tensor | None = None


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
