"""What the sample metrics share (STUDY.md section 6): checked point sets and pairwise sums.

``_points`` turns an input into a float64 ``[n, d]`` tensor or refuses it with a one-line
ValueError; ``_pair`` checks two sets and centres them at the pooled mean. Every metric is
translation invariant, so pairwise sums work on the centred data, which shrinks the
cancellation in ||a||^2 + ||b||^2 - 2 a.b (near-coincident pairs are recomputed exactly).
Pairwise sums are chunked (2 MiB per block), so n = m = 10,000 in d = 64 fits in memory.
Used by :mod:`fmstudy.metrics`, :mod:`fmstudy.frechet` and :mod:`fmstudy.feature_classifier`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__: list[str] = []  # private helpers of the metric modules

_F64 = torch.float64
_BLOCK = 1 << 18  # elements per pairwise block: 2 MiB of float64 stays in cache (~3x faster than 32 MiB)


# -- input checks -------------------------------------------------------------------------
def _points(x: object, name: str, min_rows: int = 1) -> Tensor:
    """``x`` as a float64 ``[n, d]`` tensor, or a one-line ValueError saying what is wrong."""
    if not isinstance(x, (Tensor, np.ndarray)):
        raise ValueError(f"{name} is a {type(x).__name__}: expected a torch.Tensor or numpy array of shape [n, d]")
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] < min_rows or t.shape[1] < 1:
        raise ValueError(f"{name} has shape {list(t.shape)}: expected [n, d] with n >= {min_rows} and d >= 1")
    if t.is_complex():
        raise ValueError(f"{name} has dtype {t.dtype}: expected real values")
    t = t.to(_F64)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (first {t[i, j].item()} at [{i}, {j}]): all values must be finite"
        )
    return t


def _pair(x: object, y: object, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    """Both sets checked, on x's device, and centred at the pooled mean."""
    x, y = _points(x, "x", min_rows), _points(y, "y", min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x is [n, {x.shape[1]}] but y is [m, {y.shape[1]}]: both sets need the same dimension d")
    y = y.to(x.device)
    center = torch.cat([x, y]).mean(0)
    return x - center, y - center


# -- pairwise sums ------------------------------------------------------------------------
def _sq_block(a: Tensor, a2: Tensor, b: Tensor, b2: Tensor) -> Tensor:
    """||a_i - b_j||^2 by the expansion ||a||^2 + ||b||^2 - 2 a.b (one matmul), with the
    entries where it cancels badly (d2 < 1e-6 (max ||a||^2 + max ||b||^2): duplicates, the
    diagonal) recomputed from explicit differences, so equal points give exactly 0 and
    sqrt(d2) carries no sqrt(1e-16) noise."""
    d2 = torch.addmm(a2[:, None] + b2[None, :], a, b.T, alpha=-2).clamp_min_(0)
    i, j = (d2 < 1e-6 * float(a2.max() + b2.max())).nonzero(as_tuple=True)
    if len(i):
        d2[i, j] = ((a[i] - b[j]) ** 2).sum(1)
    return d2


def _pair_sum(a: Tensor, b: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """sum_{i, j} fn(||a_i - b_j||^2) over all ordered pairs, chunked over rows of ``a``;
    ``fn`` maps a block of squared distances to its (possibly vector-valued) sum. With
    ``b=None`` the sum is over pairs of ``a`` itself, computing each block of the upper
    triangle once and counting the off-diagonal blocks twice (a third of the work saved)."""
    other = a if b is None else b
    a2, b2 = (a * a).sum(1), (other * other).sum(1)
    rows = max(1, _BLOCK // other.shape[0])
    total: Tensor | float = 0.0
    for s in range(0, a.shape[0], rows):
        e = min(s + rows, a.shape[0])
        if b is None:
            d2 = _sq_block(a[s:e], a2[s:e], a[s:], a2[s:])
            total = total + fn(d2[:, : e - s]) + 2 * fn(d2[:, e - s :])
        else:
            total = total + fn(_sq_block(a[s:e], a2[s:e], b, b2))
    return torch.as_tensor(total)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """The full ``[n, m]`` matrix ||a_i - b_j||^2 from explicit differences (exact zeros for
    equal rows, never negative), chunked so one block holds at most ``_BLOCK`` numbers."""
    rows = max(1, _BLOCK // (b.shape[0] * b.shape[1]))
    return torch.cat([((a[s : s + rows, None, :] - b[None]) ** 2).sum(-1) for s in range(0, a.shape[0], rows)])
