"""Adaptive proposals over K equal bins of t (STUDY.md section 4): each member keeps its own
probabilities, updated from the trainer's :class:`~fmstudy.sampler_base.Feedback` on the device,
with no host synchronisation in ``update`` (no ``.item()``, ``bool(tensor)`` or boolean indexing),
so a GPU keeps queueing kernels."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_float, check_int
from .sampler_base import Feedback, TimeSampler

__all__ = ["LossSecondMoment", "GradNorm", "LearningProgress", "OracleExcess"]


class _Binned(TimeSampler):
    """Adaptive proposal over ``n_bins`` equal bins of [a, b]: probabilities ``probs [M, K]``
    (uniform at the start), always mixed with the uniform floor."""

    adaptive = True
    fusable: ClassVar[bool] = True  # updates member by member: groups of it can be one unit (fmstudy.member_samplers)
    options = TimeSampler.options + ("n_bins",)

    def __init__(self, seeds, n_bins: int = 20, floor: float = 0.05, **kw):
        self.n_bins = check_int("n_bins", n_bins, 2)
        super().__init__(seeds, floor=floor, **kw)
        self.edges = torch.linspace(self.lo, self.hi, self.n_bins + 1, dtype=torch.float64, device=self.device)
        self.probs = torch.full((self.n_members, self.n_bins), 1.0 / self.n_bins, dtype=torch.float64, device=self.device)
        # Made once, not in every update: the edges never move (operators counted per step, tests/test_ops.py).
        self._inner = self.edges[1:-1].contiguous()
        self._ramp = self.floor * (self.edges - self.lo) / (self.hi - self.lo)
        self._zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._row = torch.arange(self.n_members, device=self.device)[:, None] * self.n_bins  # member i's first (member, bin) key

    def base_table(self) -> tuple[Tensor, Tensor]:
        cdf = F.pad(self.probs.cumsum(1), (1, 0))  # C_0 = 0 in front
        return self.edges, cdf / cdf[:, -1:]

    def table(self) -> tuple[Tensor, Tensor]:
        """``TimeSampler.table``'s ``(1 - floor) C + floor (e - a) / (b - a)`` (4.3), its second
        term (the same numbers: the edges are fixed) computed once."""
        edges, cdf = self.base_table()
        return edges, (1 - self.floor) * cdf + self._ramp if self.floor > 0 else cdf

    def bin_of(self, t: Tensor) -> Tensor:
        """Bin index ``[M, B]`` of times ``t``: the number of inner edges ``e_1 .. e_{K-1}`` at or
        below t, which is ``clamp(searchsorted(edges, t, right) - 1, 0, K - 1)`` in one operator."""
        t = t.to(torch.float64)
        return torch.searchsorted(self._inner, t.contiguous(), right=True)

    def _set_probs(self, scores: Tensor, ready: Tensor | None = None) -> None:
        """``probs ∝ scores`` for members whose scores are ``ready`` (``[M, 1]``, all if None);
        members whose scores are all zero or not finite keep their probabilities."""
        total = scores.sum(1, keepdim=True)
        ok = (total > 0) & (total < math.inf)  # finite and positive (NaN fails both)
        if ready is not None:
            ok = ok & ready
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
        self._made: tuple[Tensor, Tensor, Tensor] | None = None  # _positions

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "t", self.signal)
        if got is None:
            return
        t, x = got
        m, k, n = self.n_members, self.n_bins, self.history
        # Sorted stably, each (member, bin) key's values are a run [first, end) in batch order,
        # and a value's rank among them is pos - first.
        key, order = torch.sort((self._row + self.bin_of(t)).reshape(-1), stable=True)
        x = x.reshape(-1)[order]
        pos, pos_n, ones = self._positions(key.numel())
        first, end = torch.searchsorted(key, key), torch.searchsorted(key, key, right=True)
        # Counted by index_add_, not bincount, which reads the largest key back to the host on a GPU.
        count = torch.zeros(m * k, dtype=torch.int64, device=self.device).index_add_(0, key, ones)
        keep = pos_n >= end  # only the newest N of a batch survive, as sequentially: rank >= (end - first) - N
        target = key * n + (self.head.view(-1)[key] + (pos - first)) % n
        # Written without boolean indexing, whose row count would stall a GPU: the newest N
        # of a (member, bin) fill all N of its slots, so zeroing every slot the batch reaches
        # and then adding the kept values (zeros for the others) writes each kept value exactly.
        flat = self.values.view(-1)
        flat.index_fill_(0, target, 0.0)
        flat.index_put_((target,), torch.where(keep, x.to(flat.dtype), self._zero), accumulate=True)
        count = count.view(m, k)
        self.head = (self.head + count) % n
        self.filled = (self.filled + count).clamp(max=n)
        warm = (self.filled == n).all(1, keepdim=True)
        self._set_probs(torch.sqrt((self.values**2).mean(-1)), ready=warm)

    def _positions(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(0 .. size-1, the same + history, ones)`` for a batch of ``size`` values, made once per size."""
        if self._made is None or self._made[0].numel() != size:
            pos = torch.arange(size, device=self.device)
            self._made = (pos, pos + self.history, torch.ones_like(pos))
        return self._made

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
    fusable = False  # whether any member has a previous loss is decided across the members
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
        size = self.previous.abs()
        have_prev = (size < math.inf).all(1, keepdim=True)  # every bin's previous loss finite (NaN < inf is false)
        reward = torch.where(have_prev, (self.previous - loss) / size.clamp(min=1e-12), self._zero)
        # Smoothed only once some member has a previous loss, decided on the device (a Python
        # ``if`` on a tensor would wait for the GPU).
        score, seen = self.score, self.seen
        self._smooth(reward)
        any_prev = have_prev.any()
        self.score = torch.where(any_prev, self.score, score)
        self.seen = torch.where(any_prev, self.seen, seen)
        logits = self.score / self.temperature
        self._set_probs(torch.softmax(logits - logits.amax(1, keepdim=True), dim=1), ready=have_prev)
        self.previous = loss.clone()

    def _state(self) -> dict[str, Tensor]:
        return {**super()._state(), "previous": self.previous}

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
