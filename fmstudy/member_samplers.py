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
time stream); an adaptive group's rows are rewritten after its update. Groups of alike
adaptive samplers (one class and options, seeds aside) that update member by member
(``fusable``) are one *unit*, one sampler over all their members, so that one sampler at
several learning rates costs a step what one group does; its rows are the groups' own
numbers, which their samplers get back by ``sync`` (``state_dict`` calls it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .samplers import Feedback, TimeDraw, TimeSampler

__all__ = ["MemberSamplers"]

_PER_SAMPLE = ("t", "loss", "grad_norm", "grad_sq_adam")


def _table_based(s: TimeSampler) -> bool:
    """Whether ``s`` draws by the base class's table inversion (then it can be batched)."""
    return type(s).sample is TimeSampler.sample and type(s)._invert is TimeSampler._invert


def _kind(s: TimeSampler) -> str:
    """A sampler's class and options, seeds aside."""
    return json.dumps([type(s).__name__, {k: v for k, v in s.describe().items() if k != "seeds"}], sort_keys=True, default=str)


@dataclass
class _Unit:
    """``sampler`` over the members ``index`` (``whole``: all of the run's, in order), serving ``groups``."""

    sampler: TimeSampler
    groups: list[int]
    index: Tensor
    whole: bool


class MemberSamplers:
    """``samplers[g]`` serves the members ``groups[g]`` (indices into the ensemble, ``M`` in all).
    ``make(g, seeds)``, if given, builds a sampler like group g's over other seeds (for units)."""

    def __init__(self, samplers: Sequence[TimeSampler], groups: Sequence[Sequence[int]], n_members: int, device: torch.device,
                 make: Callable[[int, list[int]], TimeSampler] | None = None) -> None:
        self._samplers, self.groups = list(samplers), [list(g) for g in groups]
        self.n_members, self.device = n_members, device
        if sorted(i for g in self.groups for i in g) != list(range(n_members)):
            raise ValueError(f"groups {self.groups} are not allowed: each of the {n_members} members must be in exactly one group")
        self.batched = all(_table_based(s) for s in self._samplers)
        self.units = self._units(make if self.batched else None)
        self._behind: set[int] = set()  # units updated since their groups' samplers were synced
        lo_hi = {(s.lo, s.hi) for s in self._samplers}
        if len(lo_hi) != 1:
            raise ValueError(f"samplers over different time domains {sorted(lo_hi)} are not allowed in one run")
        self.lo, self.hi = lo_hi.pop()
        per_member = lambda f: torch.tensor([f(s) for s, g in zip(self._samplers, self.groups) for _ in g], device=device)  # noqa: E731
        order = torch.tensor([i for g in self.groups for i in g], device=device)
        scatter = lambda x: torch.empty_like(x).index_copy_(0, order, x)  # noqa: E731
        self._stratified, self._reweight = (scatter(per_member(lambda s, k=k: getattr(s, k)))[:, None] for k in ("stratified", "reweight"))
        self._strata, self._all_reweight = int(self._stratified.sum()), bool(self._reweight.all())  # stratified members
        self._one = torch.ones((), dtype=torch.float64, device=device)  # a non-reweighting member's weight
        self._tables: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # edges, cell widths, cdf, G_i
        self._made: dict[str, tuple] = dict.fromkeys(("last", "edges", "strata"), (None,))  # made once, tagged by what they depend on
        self._edges: list[Tensor] = []  # each unit's edges in the tables, to see that they still hold
        self._rows: list[Tensor] = []  # each unit's columns of a table shared by several units
        self._stale: set[int] = set()  # units updated since the tables were built

    def _units(self, make: Callable[[int, list[int]], TimeSampler] | None) -> list[_Unit]:
        """One unit per group, but one for all groups of alike fusable adaptive samplers."""
        alike: dict[str, list[int]] = {}  # in order of each unit's first group
        for g, s in enumerate(self._samplers):
            fusable = make is not None and s.adaptive and getattr(s, "fusable", False)
            alike.setdefault(_kind(s) if fusable else f"group {g}", []).append(g)
        units = []
        for key, gs in alike.items():
            members = [i for g in gs for i in self.groups[g]]
            sampler = self._samplers[gs[0]]
            if len(gs) > 1:  # its rows: the groups' members, group after group
                sampler = make(gs[0], [int(x) for g in gs for x in self._samplers[g].rng.seeds.tolist()])
                if _kind(sampler) != key:
                    raise ValueError(f"make built {sampler.describe()} for groups {gs}: not their sampler")
            index = torch.tensor(members, dtype=torch.int64, device=self.device)
            units.append(_Unit(sampler, gs, index, members == list(range(self.n_members))))
        return units

    # -- what the run asks of its samplers ---------------------------------------------------
    @property
    def samplers(self) -> list[TimeSampler]:
        """Each group's sampler, its state in sync with its unit's (:meth:`sync`)."""
        self.sync()
        return self._samplers

    @property
    def kinds(self) -> list[tuple[str, frozenset[str], int]]:
        """Each group's sampler's ``(name, requires, counter)``, read without a sync."""
        return [(s.name, s.requires, s.counter) for s in self._samplers]

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(s.requires for s in self._samplers))

    @property
    def adaptive(self) -> bool:
        return any(s.adaptive for s in self._samplers)

    def _build_tables(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tables = [unit.sampler.table() for unit in self.units]
        self._edges, self._stale = [e for e, _ in tables], set()
        width, m = max(e.numel() for e, _ in tables), self.n_members
        if self._made["last"][0] != width:  # each member's last cell's right end, G_i
            last = torch.empty(m, 1, dtype=torch.int64, device=self.device)
            for (e, _), unit in zip(tables, self.units):
                last.index_fill_(0, unit.index, e.numel() - 1)
            self._made["last"] = (width, last)
        if len(tables) == 1 and self.units[0].whole:  # one unit: its own table, no copies
            (e, c), made = tables[0], self._made["edges"]
            if made[0] is not e:  # its edges do not move: expanded, and their widths, made once
                made = self._made["edges"] = (e, e.expand(m, width), (e[1:] - e[:-1]).expand(m, width - 1))
            return *made[1:], c if c.shape[0] == m else c.expand(m, width).contiguous(), self._made["last"][1]
        edges = torch.empty(m, width, dtype=torch.float64, device=self.device)
        cdf = torch.full((m, width), torch.inf, dtype=torch.float64, device=self.device)
        for (e, c), unit in zip(tables, self.units):
            n, idx, k = e.numel(), unit.index, len(unit.index)
            edges[idx, :n] = e.expand(k, n)
            edges[idx, n:] = e[-1]
            cdf[idx, :n] = c.expand(k, n)
        self._rows = [cdf[:, : e.numel()] for e, _ in tables]
        return edges, edges[:, 1:] - edges[:, :-1], cdf, self._made["last"][1]

    def sample_from(self, u: Tensor, dtype: torch.dtype = torch.float32) -> TimeDraw:
        """Draws ``[M, B]`` from uniforms ``u`` (float64): each group's counter advances by one;
        ``t`` and ``weight`` in ``dtype``, ``density`` in float64."""
        if not self.batched:  # some sampler draws its own way: ask each group (its own stream)
            return self._sample_each(u.shape[1], dtype)
        if self._tables is None:
            self._tables = self._build_tables()
        elif self._stale:
            self._refresh()
        edges, widths, cdf, last = self._tables
        for s in [*self._samplers, *(unit.sampler for unit in self.units if len(unit.groups) > 1)]:
            s.counter += 1
        if self._strata:  # (b + u) / B in the b-th of B cells; (0 + u) / 1 = u for the other members
            if self._made["strata"][0] != u.shape[1]:  # b (0 off the strata) and B (1 off), made once per B
                b = torch.arange(u.shape[1], dtype=torch.float64, device=u.device)
                self._made["strata"] = (u.shape[1], b * self._stratified, self._stratified.to(b.dtype) * (u.shape[1] - 1.0) + 1.0)
        u = (self._made["strata"][1] + u) / self._made["strata"][2] if self._strata else u.contiguous()
        # Every table starts at C_0 = 0 < u, so the cell index is >= 0 without a clamp; the
        # cell's right end j = min(searchsorted, G_i) is i + 1 with i = min(searchsorted - 1, G_i - 1).
        j = torch.minimum(torch.searchsorted(cdf, u, right=True), last)
        i = j - 1
        c0, c1 = cdf.gather(1, i), cdf.gather(1, j)
        e0, de = edges.gather(1, i), widths.gather(1, i)  # widths[i] = e_{i+1} - e_i, computed when built
        dc = c1 - c0
        frac = ((u - c0) / dc).clamp(0, 1)
        t, q = e0 + frac * de, dc / de
        w = torch.reciprocal((self.hi - self.lo) * q)  # torch's 1.0 / x is reciprocal(x) * 1.0: the same number
        if not self._all_reweight:
            w = torch.where(self._reweight, w, self._one)
        return TimeDraw(t.to(dtype), w.to(dtype), q)  # q in float64: the step does not read it, so no cast

    def _refresh(self) -> None:
        """Rewrite the cdf rows of the units updated since the tables were built (their edges
        stay; if not, build anew), not the others': operators that do not grow with the groups."""
        if len(self.units) == 1 and self.units[0].whole:  # the tables are the unit's own: take the new ones
            self._tables = self._build_tables()
            return
        for u in sorted(self._stale):
            unit = self.units[u]
            e, c = unit.sampler.table()
            if e is not self._edges[u]:
                self._tables = self._build_tables()
                return
            self._rows[u].index_copy_(0, unit.index, c if c.shape[0] == len(unit.index) else c.expand(len(unit.index), -1))
        self._stale = set()

    def _sample_each(self, batch: int, dtype: torch.dtype) -> TimeDraw:
        draws = [s.sample(batch, dtype) for s in self._samplers]  # not batched: one unit per group
        return TimeDraw(*(self._merge([getattr(d, f) for d in draws]) for f in ("t", "weight", "density")))

    def _merge(self, parts: Sequence[Tensor]) -> Tensor:
        """Each unit's rows ``parts[u]`` put in member order, ``[M, ...]``."""
        if len(parts) == 1 and self.units[0].whole:
            return parts[0]
        out = torch.empty(self.n_members, *parts[0].shape[1:], dtype=parts[0].dtype, device=parts[0].device)
        for x, unit in zip(parts, self.units):
            out[unit.index] = x
        return out

    def _part(self, x: Tensor | None, unit: _Unit) -> Tensor | None:
        return x if x is None or unit.whole else x.index_select(0, unit.index)

    def update(self, feedback: Feedback, per_sample: bool, only: Sequence[bool] | None = None) -> None:
        """Feed the groups that use this kind of feedback (per sample, or per bin) their rows;
        ``only``: a flag per group, to feed a subset (per-bin moments come from two sources)."""
        for u, unit in enumerate(self.units):
            s = unit.sampler
            wants = any(r in _PER_SAMPLE for r in s.requires) if per_sample else any(r.startswith("bin_") for r in s.requires)
            # Feedback with none of the sampler's signals (times alone) would recompute the same proposal: skipped
            signals = any(r != "t" and getattr(feedback, r, None) is not None for r in s.requires)
            flags = {True} if only is None else {bool(only[g]) for g in unit.groups}
            if len(flags) > 1:
                raise ValueError(f"only={list(only)} is not allowed: groups {unit.groups} have alike samplers and are fed together")
            if s.adaptive and wants and signals and flags == {True}:
                s.update(Feedback(**{k: self._part(getattr(feedback, k), unit) for k in s.requires}))  # its fields only
                self._stale.add(u)
                if len(unit.groups) > 1:
                    self._behind.add(u)

    def bin_mass(self, edges: Tensor) -> Tensor:
        """``[M, K]`` probability of each interval under each member's proposal."""
        return self._merge([unit.sampler.bin_mass(edges) for unit in self.units])

    def sync(self) -> None:
        """Give each group's sampler its rows of its unit's state (updated as one since)."""
        for u in sorted(self._behind):
            self._copy_rows(self.units[u], to_groups=True)
        self._behind = set()

    def _copy_rows(self, unit: _Unit, to_groups: bool) -> None:
        """Group after group, along the member axis (where the unit's shape and the group's differ)."""
        at = 0
        for g in unit.groups:
            n, mine = len(self.groups[g]), self._samplers[g]._state()
            for key, big in unit.sampler._state().items():
                rows = big.narrow(next(i for i, (a, b) in enumerate(zip(big.shape, mine[key].shape)) if a != b), at, n)
                mine[key].copy_(rows) if to_groups else rows.copy_(mine[key])
            at += n

    # -- records and resume ------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._samplers]

    def state_dict(self) -> list[dict[str, Any]]:
        self.sync()
        return [s.state_dict() for s in self._samplers]

    def load_state_dict(self, state: Sequence[Mapping[str, Any]]) -> None:
        for s, st in zip(self._samplers, state, strict=True):
            s.load_state_dict(st)
        for unit in self.units:
            if len(unit.groups) > 1:
                unit.sampler.counter = self._samplers[unit.groups[0]].counter
                self._copy_rows(unit, to_groups=False)
        self._behind = set()
        self._tables = None
