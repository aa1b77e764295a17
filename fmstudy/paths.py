"""The Brownian-bridge probability path between noise and data (STUDY.md section 1).

Conventions: t runs from 0 (source ``x0 ~ N(0, I)``) to 1 (data ``x1``). Given an
endpoint pair ``(x0, x1)`` and a standard normal ``eps``, the bridge with diffusion level
``sigma >= 0`` is

    mu_t  = (1 - t) x0 + t x1                                            (1.1)
    s_t   = sigma * sqrt(t (1 - t))                                      (1.2)
    x_t   = mu_t + s_t eps                                               (1.3)
    u_t   = d/dt x_t = x1 - x0 + s'_t eps,
    s'_t  = sigma (1 - 2t) / (2 sqrt(t (1 - t)))                         (1.4)

``sigma = 0`` is the straight (rectified-flow) path. The path takes t as input and never
samples it: allocating t over [t_eps, 1 - t_eps] is the job of ``fmstudy.samplers``.

For ``sigma > 0`` the target's noise part ``s'_t eps`` has per-dimension second moment
``s'_t^2 = sigma^2 (1 - 2t)^2 / (4 t (1 - t))`` (1.5), which is not integrable at the
endpoints; ``t_eps`` is the explicit, recorded truncation that keeps it finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_float

__all__ = ["BrownianBridge", "PathSample", "as_time", "broadcast_time", "check_unit_interval"]


def as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """Return ``t`` as a tensor on ``like``'s device and dtype; without ``like`` a tensor is
    returned as it is and a float becomes a 0-dim float64 tensor (exact coefficients)."""
    if like is None:
        return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def check_unit_interval(t: Tensor) -> tuple[float, float]:
    """Refuse any t outside [0, 1] (or NaN) in one line; return ``(min t, max t)``."""
    if t.numel() == 0:
        return 0.5, 0.5
    lo, hi = float(t.min()), float(t.max())
    if torch.isnan(t).any():
        raise ValueError("t=nan is not allowed: t must lie in [0, 1]")
    if lo < 0 or hi > 1:
        bad = lo if lo < 0 else hi
        raise ValueError(f"t={bad:.6g} is outside [0, 1]: t must lie in [0, 1]")
    return lo, hi


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """View ``t`` so that it broadcasts over data ``x`` of shape ``[*batch, *event]``.

    Allowed: a scalar; ``t.shape == x.shape[:k]`` for some k (e.g. ``[B]`` over ``[B, d]``,
    ``[M, B]`` over ``[M, B, d]``); or ``t.ndim == x.ndim`` with trailing singleton
    dimensions (e.g. ``[B, 1]`` over ``[B, d]``). Anything else is a shape mismatch.
    """
    if t.ndim == 0:
        return t
    if t.ndim <= x.ndim and tuple(t.shape) == tuple(x.shape[: t.ndim]):
        return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
    if t.ndim == x.ndim and all(a == b or a == 1 for a, b in zip(t.shape, x.shape)):
        return t
    raise ValueError(
        f"t of shape {tuple(t.shape)} does not broadcast over data of shape {tuple(x.shape)}: "
        f"allowed are a scalar, shape {tuple(x.shape[:1])} (a leading prefix of the data shape) "
        f"or {tuple(x.shape[:1]) + (1,) * (x.ndim - 1)}"
    )


@dataclass(frozen=True)
class PathSample:
    """One draw from the path at given ``(x0, x1, t, eps)``; every field has the data's shape
    except ``t``, which is broadcast-ready (``[B, 1, ...]``)."""

    t: Tensor
    x0: Tensor
    x1: Tensor
    eps: Tensor
    mean: Tensor  # mu_t, eq. (1.1)
    std: Tensor  # s_t, eq. (1.2), broadcast-ready like t
    xt: Tensor  # eq. (1.3)
    ut: Tensor  # conditional target velocity, eq. (1.4)


class BrownianBridge:
    """Brownian bridge from ``x0`` to ``x1`` with diffusion ``sigma`` (eqs. 1.1-1.4).

    Args:
        sigma: diffusion level, ``sigma >= 0``; 0 gives the straight path.
        t_eps: truncation of the time domain to ``[t_eps, 1 - t_eps]``, ``0 <= t_eps < 0.5``.
            With ``sigma > 0`` the target diverges at t = 0 and t = 1, so ``sample`` refuses
            those two points whatever ``t_eps`` is.
    """

    def __init__(self, sigma: float = 0.0, t_eps: float = 0.0) -> None:
        self.sigma = check_float("sigma", sigma, 0.0)
        self.t_eps = check_float("t_eps", t_eps, 0.0, 0.5, hi_open=True)

    def __repr__(self) -> str:
        return f"BrownianBridge(sigma={self.sigma}, t_eps={self.t_eps})"

    @property
    def t_range(self) -> tuple[float, float]:
        """The time domain ``(t_eps, 1 - t_eps)`` that samplers draw from."""
        return self.t_eps, 1.0 - self.t_eps

    # -- the path's coefficients, functions of t only -------------------------------------
    def std(self, t: Tensor | float) -> Tensor:
        """``s_t = sigma sqrt(t (1 - t))`` (1.2)."""
        t = as_time(t)
        return self.sigma * torch.sqrt(t * (1 - t))

    def d_std(self, t: Tensor | float) -> Tensor:
        """``s'_t = sigma (1 - 2t) / (2 sqrt(t (1 - t)))`` (1.4); zero when sigma = 0."""
        t = as_time(t)
        if self.sigma == 0:
            return torch.zeros_like(t)
        return self.sigma * (1 - 2 * t) / (2 * torch.sqrt(t * (1 - t)))

    def noise_second_moment(self, t: Tensor | float) -> Tensor:
        """Per-dimension ``E[(s'_t eps_i)^2] = sigma^2 (1 - 2t)^2 / (4 t (1 - t))`` (1.5)."""
        t = as_time(t)
        if self.sigma == 0:
            return torch.zeros_like(t)
        return self.sigma**2 * (1 - 2 * t) ** 2 / (4 * t * (1 - t))

    def noise_second_moment_integral(self, t_eps: float | None = None) -> float:
        """``int_{t_eps}^{1 - t_eps}`` of (1.5) in closed form.

        Since ``(1 - 2t)^2 = 1 - 4 t (1 - t)``, the integrand is ``sigma^2 (1/(4t(1-t)) - 1)``
        and the integral is ``sigma^2 (ln((1 - t_eps) / t_eps) / 2 - (1 - 2 t_eps))``, which
        grows like ``sigma^2 (ln(1/t_eps)/2 - 1)`` and diverges as ``t_eps -> 0``.
        """
        t_eps = self.t_eps if t_eps is None else float(t_eps)
        if self.sigma == 0:
            return 0.0
        if not (0.0 < t_eps < 0.5):
            return math.inf if t_eps == 0.0 else math.nan
        return self.sigma**2 * (0.5 * math.log((1 - t_eps) / t_eps) - (1 - 2 * t_eps))

    def rb_coefficient(self, t: Tensor | float) -> Tensor:
        """``c_t = b_t / v_t`` with ``v_t = (1 - t)^2 + sigma^2 t (1 - t)`` and
        ``b_t = -(1 - t) + sigma^2 (1 - 2t) / 2`` (STUDY.md section 2); finite for t < 1."""
        t = as_time(t)
        v = (1 - t) ** 2 + self.sigma**2 * t * (1 - t)
        return (-(1 - t) + self.sigma**2 * (1 - 2 * t) / 2) / v

    def rb_target(self, x1: Tensor, xt: Tensor, t: Tensor | float) -> Tensor:
        """The Rao-Blackwellised target ``E[u_t | x1, x_t] = x1 + c_t (x_t - t x1)`` (1.6).

        Given x1, ``n_t = x_t - t x1 = (1 - t) x0 + s_t eps`` and ``u_t - x1 = -x0 + s'_t eps``
        are jointly Gaussian with per-dimension variance ``v_t`` and covariance
        ``-(1 - t) + s_t s'_t = b_t``, so the conditional mean is ``x1 + (b_t / v_t) n_t`` for
        ANY data distribution (no oracle). Since ``E[rb | x_t] = E[u_t | x_t] = v*``, the loss
        with it differs from the loss with ``u_t`` by ``E||u_t - rb||^2``, a constant in the
        model, and its per-sample gradients have less variance (Rao-Blackwell). ``t < 1``.
        """
        t = broadcast_time(as_time(t, x1), x1)
        return x1 + self.rb_coefficient(t) * (xt - t * x1)

    # -- functions of the endpoints ---------------------------------------------------------
    def mean(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """``mu_t = (1 - t) x0 + t x1`` (1.1), with ``t`` broadcast over the data."""
        t = broadcast_time(as_time(t, x0), x0)
        return (1 - t) * x0 + t * x1

    def d_mean(self, x0: Tensor, x1: Tensor) -> Tensor:
        """``d mu_t / dt = x1 - x0``, independent of t."""
        return x1 - x0

    def check_time(self, t: Tensor) -> None:
        """Refuse t outside [0, 1], outside ``[t_eps, 1 - t_eps]``, or at a singular endpoint.

        One ``.item()`` synchronisation; hot loops that draw t from a validated sampler may
        pass ``check=False`` to :meth:`sample`.
        """
        lo, hi = check_unit_interval(t)
        if lo < self.t_eps or hi > 1 - self.t_eps:
            bad = lo if lo < self.t_eps else hi
            raise ValueError(
                f"t={bad:.6g} is outside the path's domain [t_eps, 1 - t_eps] = "
                f"[{self.t_eps}, {1 - self.t_eps}]"
            )
        if self.sigma > 0 and (lo == 0.0 or hi == 1.0):
            bad = lo if lo == 0.0 else hi
            raise ValueError(
                f"t={bad:.6g} is a singular endpoint of the bridge with sigma={self.sigma}: "
                "t must lie in (0, 1); set t_eps > 0"
            )

    def sample(
        self, x0: Tensor, x1: Tensor, t: Tensor | float, eps: Tensor | None = None, check: bool = True
    ) -> PathSample:
        """Evaluate ``x_t`` (1.3) and the conditional target ``u_t`` (1.4).

        Args:
            x0: source points, shape ``[B, ...]``.
            x1: data points, same shape as ``x0``.
            t: times, a scalar, shape ``[B]`` (or a longer prefix of the data shape, e.g.
                ``[M, B]`` for an ensemble) or ``[B, 1, ...]``.
            eps: standard normal noise of the data's shape; required when ``sigma > 0``
                (the path never draws randomness itself), ignored (may be None) when 0.
            check: validate t's range (one device synchronisation).
        """
        if x0.shape != x1.shape:
            raise ValueError(
                f"x0 of shape {tuple(x0.shape)} and x1 of shape {tuple(x1.shape)} differ: "
                "they must have the same shape"
            )
        if eps is None:
            if self.sigma > 0:
                raise ValueError(f"eps=None is not allowed with sigma={self.sigma}: pass noise of shape {tuple(x0.shape)}")
            eps = torch.zeros_like(x0)
        elif eps.shape != x0.shape:
            raise ValueError(
                f"eps of shape {tuple(eps.shape)} is not allowed: it must have the data's shape {tuple(x0.shape)}"
            )
        t = broadcast_time(as_time(t, x0), x0)
        if check:
            self.check_time(t)
        mean = (1 - t) * x0 + t * x1
        if self.sigma == 0:
            return PathSample(t, x0, x1, eps, mean, torch.zeros_like(t), mean, x1 - x0)
        std = self.std(t)
        return PathSample(t, x0, x1, eps, mean, std, mean + std * eps, x1 - x0 + self.d_std(t) * eps)
