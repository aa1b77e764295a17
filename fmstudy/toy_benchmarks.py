"""The 2-D toy benchmarks without an oracle (STUDY.md section 3): moons, checkerboard and
spirals. Built through the registry, :func:`fmstudy.data.get_benchmark`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .benchmark_base import Benchmark, _Draw, _finish

__all__: list[str] = []  # the builders are private: fmstudy.data's registry calls them


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
