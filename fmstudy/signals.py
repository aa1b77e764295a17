"""The training signal across t, measured per t-bin on fixed probe sets (STUDY.md section 5).

For bin k with probes ``(t_i, x0_i, x1_i, eps_i)``, i = 1..P (the same points at every
checkpoint, for every run and schedule), and per-sample loss ``l_i = ||v(x_t, t) - u_t||^2 / d``
with gradient ``g_i = grad_theta l_i``:

    loss_k         = mean_i l_i
    excess_k       = mean_i ||v(x_t, t) - v*(x_t, t)||^2 / d                   (oracle only)
    irreducible_k  = mean_i (E||u_t||^2/d at t_i - ||v*(x_t, t_i)||^2 / d)      (oracle only)
    S_k            = mean_i ||g_i||^2,   gbar = mean_i g_i
    noise_k        = P / (P - 1) (S_k - ||gbar||^2)        unbiased tr Cov(g)        (5.1)
    signal_k       = ||gbar||^2 - noise_k / P              unbiased ||E g||^2        (5.2)
    snr_k          = max(signal_k, 0) / noise_k            gradient signal-to-noise  (5.3)
    target_var_k   = per-dimension variance of u_t over the bin's probes

Per-sample gradient norms are exact (:func:`fmstudy.models.per_sample_grad_sq`), obtained from
the same backward pass that gives ``gbar``: one forward and one backward per bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import ProbeSet
from .models import VelocityEnsemble, per_sample_grad_sq
from .oracle import BridgeOracle
from .paths import BrownianBridge

__all__ = ["BinSignals", "measure_bins", "probe_irreducible"]


@dataclass(frozen=True)
class BinSignals:
    """Per-bin measurements, ``[M, K]`` (members x t-bins); ``None`` where not measured."""

    loss: Tensor
    grad_norm_mean: Tensor | None = None
    grad_norm_var: Tensor | None = None
    grad_sq: Tensor | None = None  # S_k
    grad_signal: Tensor | None = None  # (5.2)
    grad_noise: Tensor | None = None  # (5.1)
    grad_snr: Tensor | None = None  # (5.3)
    excess: Tensor | None = None
    target_var: Tensor | None = None  # [K], the same for every member

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _probe_batch(path: BrownianBridge, probes: ProbeSet, k: int, like: Tensor):
    """Bin k's probes on ``like``'s device and dtype, pushed through the path."""
    t, x0, x1, eps = (v[k].to(like) for v in (probes.t, probes.x0, probes.x1, probes.eps))
    return t, path.sample(x0, x1, t, eps, check=False)


def measure_bins(
    model: VelocityEnsemble,
    path: BrownianBridge,
    probes: ProbeSet,
    oracle: BridgeOracle | None = None,
    gradients: bool = True,
) -> BinSignals:
    """Measure the signals of every bin for every member (see the module docstring).

    ``gradients=False`` measures losses only (forward passes, no backward). The model's
    ``.grad`` fields are left cleared.
    """
    like = model.weights[0]
    params = list(model.parameters())
    out: dict[str, list[Tensor]] = {}

    def put(name: str, value: Tensor) -> None:
        out.setdefault(name, []).append(value.detach())

    for k in range(probes.n_bins):
        t, s = _probe_batch(path, probes, k, like)
        p = t.numel()
        put("target_var", s.ut.var(dim=0).mean())
        trace: list | None = [] if gradients else None
        with torch.set_grad_enabled(gradients):
            v = model(s.xt, t, trace=trace)  # [M, P, d]: the same probes for every member
            per_sample = ((v - s.ut) ** 2).mean(-1)
            put("loss", per_sample.mean(1))
        if oracle is not None:
            with torch.no_grad():
                put("excess", ((v.detach() - oracle.velocity(s.xt, t)) ** 2).mean(-1).mean(1))
        if not gradients:
            continue
        for q in params:
            q.grad = None
        per_sample.mean(1).sum().backward()
        gbar_sq = sum(q.grad.pow(2).flatten(1).sum(1) for q in params)  # [M]
        g_sq = per_sample_grad_sq(trace) * p**2  # d(mean)/d(l_i) = 1/P, undone here
        g_norm = g_sq.sqrt()
        second = g_sq.mean(1)
        noise = p / (p - 1) * (second - gbar_sq)
        signal = gbar_sq - noise / p
        put("grad_sq", second)
        put("grad_norm_mean", g_norm.mean(1))
        put("grad_norm_var", g_norm.var(1))
        put("grad_noise", noise)
        put("grad_signal", signal)
        put("grad_snr", signal.clamp(min=0) / noise.clamp(min=1e-30))
        for q in params:
            q.grad = None
    stacked = {name: torch.stack(vals, dim=-1) for name, vals in out.items()}
    return BinSignals(**stacked)


def probe_irreducible(oracle: BridgeOracle, path: BrownianBridge, probes: ProbeSet) -> Tensor:
    """Irreducible loss per bin on the probes, ``[K]``: the exact ``E||u_t||^2/d`` at each probe
    time minus ``||v*(x_t, t)||^2 / d`` at each probe point (the oracle's estimator, on the
    fixed points, so that loss = irreducible + excess holds per bin up to probe noise)."""
    values = []
    for k in range(probes.n_bins):
        t, s = _probe_batch(path, probes, k, torch.zeros((), dtype=torch.float64))
        v = oracle.velocity(s.xt, t)
        values.append((oracle.target_second_moment(t) - (v**2).mean(-1)).mean())
    return torch.stack(values)
