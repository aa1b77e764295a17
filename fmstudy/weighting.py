"""Loss weightings over t that CHANGE the objective (STUDY.md section 4.5, last paragraph).

An unbiased sampler keeps ``L = E_{t ~ U} l(t)`` (4.1). A weighting ``lambda(t) > 0`` trains
``L_lambda = E_{t ~ U} lambda(t) l(t)`` instead: a different objective with the same minimiser
``v*`` (a model that can reach ``v*`` minimises every ``l(t)`` at once), so the exact integrated
excess compares them all. Their records say so: ``unbiased = False`` and an ``objective`` text.

Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy") weights the error of the DATA prediction by ``min(SNR_t, gamma)``. On the bridge,
``x_t = t x1 + n_t`` with ``n_t = (1 - t) x0 + s_t eps`` independent of x1 with per-dimension
variance ``v_t = (1 - t)^2 + sigma^2 t (1 - t)`` (STUDY.md section 2), and we define

    SNR_t = t^2 / v_t          (signal power of x1 in x_t over the noise power, per unit data variance)   (W.1)

(``sigma = 0``: ``(t / (1 - t))^2``, the rectified-flow SNR). Since ``v* = c_t x + (1 - t c_t)
E[x1 | x_t]``, a velocity ``v`` implies the data prediction ``(v - c_t x_t) / (1 - t c_t)``, so
data-prediction error = velocity error / ``(1 - t c_t)``, with ``1 - t c_t = ((1 - t) +
sigma^2 t / 2) / v_t > 0``. Min-SNR in velocity units is therefore

    lambda(t) = min(SNR_t, gamma) / (1 - t c_t)^2 / Z                                 (W.2)

(``sigma = 0``: ``min(t^2, gamma (1 - t)^2) / Z``), with Z making its mean over [a, b] one so
that the loss keeps its scale.

Learned uncertainty weighting (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", EDM2): a learned log-variance ``u(t)`` and the loss

    l / exp(u(t)) + u(t)                                                              (W.3)

here with u a table over K equal bins per member (EDM2 uses a small network of the noise
level). For fixed theta the optimal ``u_k = log L_k`` (bin k's mean loss), at which the gradient
in theta is ``sum_k p_k grad L_k / L_k = grad sum_k p_k log L_k``: each bin is weighted by the
inverse of its current loss. The trainer adds the module's parameters to its optimiser.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_float, check_int
from .paths import BrownianBridge, as_time

__all__ = ["bridge_snr", "data_error_factor", "ClampedSNR", "UncertaintyWeighting", "WEIGHTINGS", "make_weighting"]


def bridge_snr(t: Tensor | float, sigma: float) -> Tensor:
    """``SNR_t = t^2 / ((1 - t)^2 + sigma^2 t (1 - t))`` (W.1)."""
    t = as_time(t)
    return t**2 / ((1 - t) ** 2 + sigma**2 * t * (1 - t))


def data_error_factor(t: Tensor | float, sigma: float) -> Tensor:
    """``1 - t c_t = ((1 - t) + sigma^2 t / 2) / v_t``: velocity error = this times data-prediction error."""
    t = as_time(t)
    return ((1 - t) + sigma**2 * t / 2) / ((1 - t) ** 2 + sigma**2 * t * (1 - t))


def _reduce(per_sample: Tensor, weight: Tensor | None, factor: Tensor) -> Tensor:
    w = factor if weight is None else weight * factor
    return (w * per_sample).mean(-1)


class ClampedSNR(nn.Module):
    """Min-SNR-gamma on the bridge, ``lambda(t)`` of (W.2), normalised to mean 1 over ``path``'s
    time domain. ``forward(per_sample [M, B], t [M, B], weight [M, B] or None) -> [M]`` is
    ``mean_b weight_b lambda(t_b) l_b`` (use it with uniform draws; ``weight`` is the sampler's)."""

    unbiased = False

    def __init__(self, path: BrownianBridge, gamma: float = 5.0) -> None:
        super().__init__()
        self.gamma = check_float("gamma", gamma, 0.0, lo_open=True)
        self.sigma = path.sigma
        lo, hi = path.t_range
        grid = np.linspace(lo, hi, 200_001)
        raw = self._raw(torch.tensor(grid, dtype=torch.float64)).numpy()
        self.norm = float(np.trapezoid(raw, grid) / (hi - lo)) if hi > lo else 1.0

    def _raw(self, t: Tensor) -> Tensor:
        """Unnormalised (W.2): with ``v_t = (1 - t)((1 - t) + sigma^2 t)`` and ``D = (1 - t) +
        sigma^2 t / 2``, ``min(t^2 / v, gamma) v^2 / D^2 = min(t^2, gamma v) (1 - t)((1 - t) +
        sigma^2 t) / D^2``; for sigma = 0 the last factor is exactly 1 (finite at t = 1)."""
        t = t.to(torch.float64)
        s2 = self.sigma**2
        v = (1 - t) ** 2 + s2 * t * (1 - t)
        if s2 == 0:
            return torch.minimum(t**2, self.gamma * v)
        return torch.minimum(t**2, self.gamma * v) * (1 - t) * ((1 - t) + s2 * t) / ((1 - t) + s2 * t / 2) ** 2

    def weight(self, t: Tensor) -> Tensor:
        """``lambda(t)`` (W.2) in t's dtype."""
        return (self._raw(t) / self.norm).to(t.dtype)

    def forward(self, per_sample: Tensor, t: Tensor, weight: Tensor | None = None) -> Tensor:
        return _reduce(per_sample, weight, self.weight(t))

    def describe(self) -> dict[str, Any]:
        return {
            "name": "min_snr",
            "gamma": self.gamma,
            "unbiased": False,
            "objective": "changed: E_U[lambda(t) l(t)], lambda = min(SNR_t, gamma) / (1 - t c_t)^2 / Z, SNR_t = t^2 / v_t",
        }


class UncertaintyWeighting(nn.Module):
    """EDM2-style learned weighting (W.3): ``u`` ``[M, K]`` (zeros at the start) over K equal bins
    of ``[t_lo, t_hi]``. ``forward(per_sample [M, B], t [M, B], weight) -> [M]`` is
    ``mean_b weight_b (l_b exp(-u_k(b)) + u_k(b))``; member i's loss depends on ``u[i]`` only."""

    unbiased = False

    def __init__(self, n_members: int, n_bins: int, t_lo: float = 0.0, t_hi: float = 1.0) -> None:
        super().__init__()
        self.n_bins = check_int("n_bins", n_bins, 1)
        t_lo = check_float("t_lo", t_lo, 0.0, 1.0)
        t_hi = check_float("t_hi", t_hi, t_lo, 1.0, lo_open=True)
        self.u = nn.Parameter(torch.zeros(check_int("n_members", n_members, 1), self.n_bins))
        self.register_buffer("edges", torch.linspace(t_lo, t_hi, self.n_bins + 1, dtype=torch.float64))

    def bin_of(self, t: Tensor) -> Tensor:
        return (torch.searchsorted(self.edges, t.to(torch.float64).contiguous(), right=True) - 1).clamp(0, self.n_bins - 1)

    def forward(self, per_sample: Tensor, t: Tensor, weight: Tensor | None = None) -> Tensor:
        u = self.u.to(per_sample.dtype).gather(1, self.bin_of(t))
        terms = per_sample * torch.exp(-u) + u
        return terms.mean(-1) if weight is None else (weight * terms).mean(-1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "uncertainty",
            "n_bins": self.n_bins,
            "unbiased": False,
            "objective": "changed: E_U[l(t) / exp(u(t)) + u(t)] with a learned per-bin u; at the optimal u, sum_k p_k log L_k",
        }


WEIGHTINGS = ("min_snr", "uncertainty")


def make_weighting(spec: Mapping[str, Any] | str, path: BrownianBridge, n_members: int, n_bins: int) -> nn.Module:
    """``{"name": "min_snr", "gamma": 5.0}`` or ``{"name": "uncertainty"}`` (bins: the run's)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    allowed = {"min_snr": {"gamma"}, "uncertainty": set()}
    if name not in allowed:
        raise ValueError(f"unknown weighting {name!r}: known weightings are {', '.join(WEIGHTINGS)}")
    unknown = sorted(set(spec) - allowed[name])
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for weighting {name!r}: allowed are {sorted(allowed[name])}")
    if name == "min_snr":
        return ClampedSNR(path, **spec)
    lo, hi = path.t_range
    return UncertaintyWeighting(n_members, n_bins, lo, hi)
