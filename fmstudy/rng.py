"""Counter-based random numbers for ensembles: one independent stream per member, no state.

A draw is a hash of ``(member seed, stream, counter, index)``. This gives, for free, what an
ensemble of M members trained as one batch needs and a stateful ``torch.Generator`` per
member cannot give at speed:

- member i's numbers depend only on its own seed, so they do not change when M changes;
- a whole ``[M, n]`` block is produced by a few vectorised integer operations on any device
  (one generator per member would cost M Python calls per step);
- the state is the counter, so resuming from a checkpoint replays the same numbers.

The hash is a 32-bit integer finaliser (shift-xor-multiply, constants 0x21f0aaad and
0x735a2d97 from C. Wellons' hash search) folded over the key words. Every intermediate value
stays below 2^63 (a 32-bit word times a constant below 2^31), so int64 arithmetic never
overflows and CPU and GPU give bit-identical results.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["CounterRNG", "Request", "Served", "StepDraws"]

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x: Tensor) -> Tensor:
    """Bijective avalanche of 32-bit words held in int64 (x in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def _fold(h: Tensor, k: Tensor | int) -> Tensor:
    """Combine hash ``h`` with key word ``k`` (boost's hash_combine shape, then a mix). An
    integer ``k`` is mixed in Python: making it a GPU tensor would wait for the device."""
    return _combine(h, _mix32(k & _M32) + _GOLDEN)


def _combine(h: Tensor, k: Tensor | int) -> Tensor:
    """:func:`_fold` with the key word already mixed and offset (``k = mix32(key) + golden``),
    so that constant keys are mixed once, not at every draw. Integer sums are exact in int64,
    so the grouping of the additions does not change the value."""
    return _mix32((h ^ (k + ((h << 6) & _M32) + (h >> 2))) & _M32)


class CounterRNG:
    """Uniform and normal numbers for ``M`` members, keyed by each member's seed.

    Args:
        seeds: one non-negative integer seed per member.
        stream: separates independent uses (time sampling, data, noise...) of the same seeds.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, stream: int = 0) -> None:
        seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
        if seeds.numel() == 0 or bool((seeds < 0).any()):
            raise ValueError(f"seeds={seeds.tolist()} are not allowed: give one integer >= 0 per member")
        self.seeds = seeds
        self.stream = int(stream)
        h = _fold(_mix32(seeds & _M32), seeds >> 32)
        self._base = _fold(h, self.stream)  # [M]
        self._on_device: dict[torch.device, Tensor] = {}

    @property
    def n_members(self) -> int:
        return self.seeds.numel()

    def _words(self, counter: int, n: int, device: torch.device | str | None, salt: int) -> Tensor:
        """``[M, n]`` 32-bit hash words for indices 0..n-1 at ``counter``; ``salt`` keeps the
        uniforms behind ``normal`` apart from those that ``uniform`` returns."""
        device = torch.device(device) if device is not None else self._base.device
        if device not in self._on_device:  # copied once per device, not at every draw
            self._on_device[device] = self._base.to(device)
        base = self._on_device[device]
        h = _fold(_fold(_fold(base, counter & _M32), counter >> 32), salt)
        idx = torch.arange(n, dtype=torch.int64, device=base.device)
        return _fold(h[:, None], idx[None, :])

    def uniform(
        self,
        counter: int,
        n: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        salt: int = 0,
    ) -> Tensor:
        """``[M, n]`` uniforms in the open interval (0, 1) with 53 random bits each."""
        w = self._words(counter, n, device, salt)
        hi = _fold(w, 1) >> 5  # 27 bits
        lo = _fold(w, 2) >> 6  # 26 bits
        u = ((hi * (1 << 26) + lo).to(torch.float64) + 0.5) / float(1 << 53)
        return u.to(dtype)

    def normal(
        self, counter: int, n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``[M, n]`` standard normals by the Box-Muller transform of two uniform blocks."""
        u = self.uniform(counter, 2 * n, device, salt=1)
        r = torch.sqrt(-2.0 * torch.log(u[:, :n]))
        return (r * torch.cos(2 * math.pi * u[:, n:])).to(dtype)


class Request(NamedTuple):
    """One block of a step's draws: ``n`` uniforms (``normal=False``) or ``n`` standard normals
    of stream ``stream``, the same numbers as ``CounterRNG(seeds, stream).uniform(counter, n)``
    or ``.normal(counter, n, dtype=float64)``."""

    stream: int
    n: int
    normal: bool


class StepDraws:
    """Every block of a training step's random numbers, for every member, in one batched pass.

    A step draws from several streams (data, source, noise, time) at the same counter; drawn
    one by one, each block repeats the whole chain of integer operations of the hash (about
    130 operators a block). Here the per-(member, block) prefix
    ``h = fold(fold(fold(base(seed, stream), c_lo), c_hi), salt)`` is one ``[M, R]`` tensor,
    the index words of every block are one ``[M, N]`` tensor (N the total count), and the two
    words behind each uniform, ``fold(w, 1)`` and ``fold(w, 2)``, one ``[2, M, N]`` tensor;
    the Box-Muller transform runs once over every normal block. The prefixes depend on the
    counter only through two words, so they are computed for ``chunk`` consecutive counters at
    once (``[L, M, R]``, at most about 32 MB) and a step reads its row. Every value is the one
    :class:`CounterRNG` gives (same words, same float operations elementwise), so switching
    between the two never changes a run.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, requests: Sequence[Request]) -> None:
        self.requests = [Request(int(r.stream), int(r.n), bool(r.normal)) for r in requests]
        per_stream = {s: CounterRNG(seeds, stream=s) for s in sorted({r.stream for r in self.requests})}
        self.n_members = next(iter(per_stream.values())).n_members
        # Prefix of each block: the stream's base, and its salt (0: uniforms, 1: normals).
        self._base = torch.stack([per_stream[r.stream]._base for r in self.requests], dim=1)  # [M, R]
        self._salt = torch.tensor([_mix32(int(r.normal)) + _GOLDEN for r in self.requests], dtype=torch.int64)
        # Columns: uniform blocks, then the first halves of the normal blocks (radii), then
        # their second halves (angles); each column knows its block and its index in it.
        block, index = [], []
        for part in ("uniform", "radius", "angle"):
            for r_i, r in enumerate(self.requests):
                if part == "uniform" and not r.normal:
                    idx = range(r.n)
                elif part != "uniform" and r.normal:
                    idx = range(r.n) if part == "radius" else range(r.n, 2 * r.n)
                else:
                    continue
                block += [r_i] * len(idx)
                index += list(idx)
        idx = torch.tensor(index, dtype=torch.int64)
        self._block = torch.tensor(block, dtype=torch.int64)
        self._index = _mix32(idx & _M32) + _GOLDEN
        self._words12 = torch.tensor([_mix32(1) + _GOLDEN, _mix32(2) + _GOLDEN], dtype=torch.int64)[:, None, None]
        self._shift = torch.tensor([5, 6], dtype=torch.int64)[:, None, None]
        self.n_uniform = sum(r.n for r in self.requests if not r.normal)
        self.n_normal = sum(r.n for r in self.requests if r.normal)
        self.chunk = max(1, min(4096, 2**22 // max(1, self._base.numel())))
        self._on_device: dict[torch.device, tuple[Tensor, ...]] = {}
        self._prefix: tuple[torch.device, int, Tensor] | None = None  # (device, first counter, [L, M, R])

    def _constants(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._on_device:  # copied once per device, not at every step
            self._on_device[device] = tuple(
                v.to(device) for v in (self._base, self._salt, self._block, self._index, self._words12, self._shift)
            )
        return self._on_device[device]

    def _prefixes(self, first: int, device: torch.device) -> Tensor:
        """``[L, M, R]`` block prefixes for counters ``first .. first + L - 1``."""
        base, salt = self._constants(device)[:2]
        c = first + torch.arange(self.chunk, dtype=torch.int64, device=device)[:, None, None]
        h = _combine(base, _mix32(c & _M32) + _GOLDEN)
        last = first + self.chunk - 1
        if first >> 32 == last >> 32:  # the high word is one integer for the whole chunk
            h = _combine(h, _mix32(first >> 32) + _GOLDEN)
        else:
            h = _combine(h, _mix32(c >> 32) + _GOLDEN)
        return _combine(h, salt)

    def draw(self, counter: int, device: torch.device | str | None = None) -> list[Tensor]:
        """The blocks at ``counter``, in request order: float64 ``[M, n]`` each."""
        if counter < 0:
            raise ValueError(f"counter={counter} is not allowed: counters are >= 0")
        device = torch.device(device or "cpu")
        block, index, words12, shift = self._constants(device)[2:]
        if self._prefix is None or self._prefix[0] != device or not 0 <= counter - self._prefix[1] < self.chunk:
            self._prefix = (device, counter, self._prefixes(counter, device))
        h = self._prefix[2][counter - self._prefix[1]]  # [M, R]
        w = _combine(h[:, block], index)  # [M, N]
        hl = _combine(w, words12) >> shift  # [2, M, N]: 27 and 26 random bits
        u = ((hl[0] * (1 << 26) + hl[1]).to(torch.float64) + 0.5) / float(1 << 53)
        nu, nn_ = self.n_uniform, self.n_normal
        z = torch.sqrt(-2.0 * torch.log(u[:, nu : nu + nn_])) * torch.cos(2 * math.pi * u[:, nu + nn_ :])
        out, at_u, at_z = [], 0, 0
        for r in self.requests:
            if r.normal:
                out.append(z[:, at_z : at_z + r.n])
                at_z += r.n
            else:
                out.append(u[:, at_u : at_u + r.n])
                at_u += r.n
        return out


class Served:
    """One stream's blocks of a step, already drawn by :class:`StepDraws`, served through
    :class:`CounterRNG`'s ``uniform``/``normal`` interface (for code written against it, such
    as ``Benchmark.sample_members``); asking for any other block is an error, not a new draw."""

    def __init__(self, n_members: int, counter: int, uniform: Tensor | None = None, normal: Tensor | None = None) -> None:
        self.n_members, self.counter = n_members, counter
        self._uniform, self._normal = uniform, normal

    def _get(self, block: Tensor | None, what: str, counter: int, n: int) -> Tensor:
        if block is None or counter != self.counter or block.shape[1] != n:
            have = None if block is None else block.shape[1]
            raise ValueError(f"{what}(counter={counter}, n={n}) is not allowed: this step drew {what} n={have} at counter {self.counter}")
        return block

    def uniform(self, counter: int, n: int, device=None, dtype: torch.dtype = torch.float64, salt: int = 0) -> Tensor:
        return self._get(self._uniform if salt == 0 else None, "uniform", counter, n).to(dtype)

    def normal(self, counter: int, n: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self._get(self._normal, "normal", counter, n).to(dtype)
