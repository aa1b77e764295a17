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
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["CounterRNG"]

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
    k = _mix32(k & _M32)
    return _mix32((h ^ (k + _GOLDEN + ((h << 6) & _M32) + (h >> 2))) & _M32)


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
