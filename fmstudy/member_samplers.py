"""The time samplers of a heterogeneous ensemble: one sampler per group of members.

The members of one run may use different samplers (fixed or adaptive, reweighted or not).
Each group of members owns one :class:`~fmstudy.samplers.TimeSampler` over its seeds, with
its own state, exactly as if the group trained alone. Drawing is one batched inverse CDF for
all members whatever the number of groups: every table-based proposal (STUDY.md section 4)
is a piecewise-linear CDF, so member i's table ``(edges_i, cdf_i)`` becomes row i of a padded
``[M, G_max + 1]`` pair (cdf padded with +inf, never reached), and

    cell  = clamp(searchsorted(cdf_i, u, right) - 1, 0, G_i - 1)
    t     = e0 + clamp((u - c0) / (c1 - c0), 0, 1) (e1 - e0),  q = (c1 - c0) / (e1 - e0)
    w     = 1 / ((b - a) q)   (4.2) for reweighting members, 1 otherwise

is, element by element, the arithmetic of ``TimeSampler.sample``: a member's draws are the
ones it gets alone. The uniforms ``u`` come from the caller (the step's fused draws of the
time stream). Tables are rebuilt only after an adaptive group's update.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .samplers import Feedback, TimeDraw, TimeSampler

__all__ = ["MemberSamplers"]

_PER_SAMPLE = ("t", "loss", "grad_norm", "grad_sq_adam")


def _table_based(s: TimeSampler) -> bool:
    """Whether ``s`` draws by the base class's table inversion (then it can be batched)."""
    cls = type(s)
    return cls.sample is TimeSampler.sample and cls._invert is TimeSampler._invert


class MemberSamplers:
    """``samplers[g]`` serves the members ``groups[g]`` (indices into the ensemble, ``M`` in all)."""

    def __init__(self, samplers: Sequence[TimeSampler], groups: Sequence[Sequence[int]], n_members: int, device: torch.device) -> None:
        self.samplers, self.groups = list(samplers), [list(g) for g in groups]
        self.n_members, self.device = n_members, device
        if sorted(i for g in self.groups for i in g) != list(range(n_members)):
            raise ValueError(f"groups {self.groups} are not allowed: each of the {n_members} members must be in exactly one group")
        self._index = [torch.tensor(g, dtype=torch.int64, device=device) for g in self.groups]
        self._whole = [g == list(range(n_members)) for g in self.groups]
        self.batched = all(_table_based(s) for s in self.samplers)
        lo_hi = {(s.lo, s.hi) for s in self.samplers}
        if len(lo_hi) != 1:
            raise ValueError(f"samplers over different time domains {sorted(lo_hi)} are not allowed in one run")
        self.lo, self.hi = lo_hi.pop()
        per_member = lambda f: torch.tensor([f(s) for s, g in zip(self.samplers, self.groups) for _ in g], device=device)  # noqa: E731
        order = torch.tensor([i for g in self.groups for i in g], device=device)
        scatter = lambda x: torch.empty_like(x).index_copy_(0, order, x)  # noqa: E731
        self._stratified = scatter(per_member(lambda s: s.stratified))[:, None]
        self._reweight = scatter(per_member(lambda s: s.reweight))[:, None]
        self._any_stratified, self._all_reweight = bool(self._stratified.any()), bool(self._reweight.all())
        self._tables: tuple[Tensor, Tensor, Tensor] | None = None
        self._last: tuple[int, Tensor] | None = None

    # -- what the run asks of its samplers ---------------------------------------------------
    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(s.requires for s in self.samplers))

    @property
    def adaptive(self) -> bool:
        return any(s.adaptive for s in self.samplers)

    @property
    def counter(self) -> int:
        return self.samplers[0].counter

    def _build_tables(self) -> tuple[Tensor, Tensor, Tensor]:
        tables = [s.table() for s in self.samplers]
        width = max(e.numel() for e, _ in tables)
        m = self.n_members
        if self._last is None or self._last[0] != width:  # each member's last cell, G_i - 1
            last = torch.empty(m, 1, dtype=torch.int64, device=self.device)
            for (e, _), idx in zip(tables, self._index):
                last.index_fill_(0, idx, e.numel() - 2)
            self._last = (width, last)
        if len(tables) == 1 and self._whole[0]:  # one group: its own table, no copies
            e, c = tables[0]
            return e.expand(m, width), c if c.shape[0] == m else c.expand(m, width).contiguous(), self._last[1]
        edges = torch.empty(m, width, dtype=torch.float64, device=self.device)
        cdf = torch.full((m, width), torch.inf, dtype=torch.float64, device=self.device)
        for (e, c), g, idx in zip(tables, self.groups, self._index):
            n = e.numel()
            edges[idx, :n] = e.expand(len(g), n)
            edges[idx, n:] = e[-1]
            cdf[idx, :n] = c.expand(len(g), n)
        return edges, cdf, self._last[1]

    def sample_from(self, u: Tensor, dtype: torch.dtype = torch.float32) -> TimeDraw:
        """Draws ``[M, B]`` from uniforms ``u`` (float64): each group's counter advances by one."""
        if not self.batched:  # some sampler draws its own way: ask each group (its own stream)
            return self._sample_each(u.shape[1], dtype)
        if self._tables is None:
            self._tables = self._build_tables()
        edges, cdf, last = self._tables
        for s in self.samplers:
            s.counter += 1
        if self._any_stratified:
            b = u.shape[1]
            u = torch.where(self._stratified, (torch.arange(b, dtype=torch.float64, device=u.device) + u) / b, u)
        # Every table starts at C_0 = 0 < u, so the cell index is >= 0 without a clamp.
        i = torch.minimum(torch.searchsorted(cdf, u, right=True) - 1, last)
        c0, c1 = cdf.gather(1, i), cdf.gather(1, i + 1)
        e0, e1 = edges.gather(1, i), edges.gather(1, i + 1)
        frac = ((u - c0) / (c1 - c0)).clamp(0, 1)
        t, q = e0 + frac * (e1 - e0), (c1 - c0) / (e1 - e0)
        w = 1.0 / ((self.hi - self.lo) * q)
        if not self._all_reweight:
            w = torch.where(self._reweight, w, 1.0)
        return TimeDraw(t.to(dtype), w.to(dtype), q.to(dtype))

    def _sample_each(self, batch: int, dtype: torch.dtype) -> TimeDraw:
        draws = [s.sample(batch, dtype) for s in self.samplers]
        return TimeDraw(*(self._merge([getattr(d, f) for d in draws]) for f in ("t", "weight", "density")))

    def _merge(self, parts: Sequence[Tensor]) -> Tensor:
        if len(parts) == 1 and self._whole[0]:
            return parts[0]
        out = torch.empty(self.n_members, *parts[0].shape[1:], dtype=parts[0].dtype, device=parts[0].device)
        for x, idx in zip(parts, self._index):
            out[idx] = x
        return out

    def _part(self, x: Tensor | None, g: int) -> Tensor | None:
        return x if x is None or self._whole[g] else x.index_select(0, self._index[g])

    def update(self, feedback: Feedback, per_sample: bool, only: Sequence[bool] | None = None) -> None:
        """Feed the groups that use this kind of feedback (per sample, or per bin) their rows;
        ``only``: a flag per group, to feed a subset (per-bin moments come from two sources)."""
        for g, s in enumerate(self.samplers):
            wants = any(r in _PER_SAMPLE for r in s.requires) if per_sample else any(r.startswith("bin_") for r in s.requires)
            if s.adaptive and wants and (only is None or only[g]):
                s.update(Feedback(**{k: self._part(v, g) for k, v in vars(feedback).items()}))
                self._tables = None

    def bin_mass(self, edges: Tensor) -> Tensor:
        """``[M, K]`` probability of each interval under each member's proposal."""
        return self._merge([s.bin_mass(edges) for s in self.samplers])

    # -- records and resume ------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.samplers]

    def state_dict(self) -> list[dict[str, Any]]:
        return [s.state_dict() for s in self.samplers]

    def load_state_dict(self, state: Sequence[Mapping[str, Any]]) -> None:
        for s, st in zip(self.samplers, state, strict=True):
            s.load_state_dict(st)
        self._tables = None
