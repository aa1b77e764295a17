"""Fixed proposals (STUDY.md section 4): each family tabulated once from its exact CDF, so
that draws (inverse CDF) and ``density`` read one table and the weights (4.2) are exact."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

from .checks import check_float
from .sampler_base import TimeSampler

__all__ = ["Uniform", "LogitNormal", "Mode", "Beta", "Arcsine", "UShaped"]


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
