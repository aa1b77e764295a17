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

The variance account (STUDY.md 4.5) is measured by :func:`measure_variance` on FRESH probes
(:func:`fresh_probes`, a new draw for every key the caller passes, independent of the fixed
probes, the held-out set and the quadrature points), split into R groups so that every
quantity gets a standard error (:func:`fmstudy.variance.account_with_errors`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .benchmark_base import Benchmark, ProbeSet
from .checks import check_int
from .models import VelocityEnsemble, per_sample_grad_sq, per_sample_grad_sq_adam
from .oracle import BridgeOracle
from .paths import BrownianBridge
from .variance import GradientMoments, account_with_errors

__all__ = ["BinSignals", "fresh_probes", "measure_bins", "measure_variance", "probe_irreducible", "variance_record"]


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


# -- the variance account on fresh probes ----------------------------------------------------
def fresh_probes(bench: Benchmark, n_bins: int, per_bin: int, t_eps: float, key: int) -> ProbeSet:
    """A new probe set for each ``key`` (e.g. the training step): ``per_bin`` points with t
    uniform in each of ``n_bins`` equal bins of ``[t_eps, 1 - t_eps]``, x0 and eps standard
    normal, x1 training data. Seeded by a hash of (benchmark, sizes, key) under its own purpose
    name, so it shares no random numbers with the fixed probes, the held-out set, the oracle's
    quadrature or another key; a run's measurements stay a function of its parameters."""
    n_bins, per_bin, key = check_int("n_bins", n_bins, 1), check_int("per_bin", per_bin, 1), check_int("key", key, 0)
    digest = hashlib.sha256(repr(("fresh-probes", bench.name, bench.seed, n_bins, per_bin, float(t_eps), key)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    edges = torch.linspace(float(t_eps), 1.0 - float(t_eps), n_bins + 1, dtype=torch.float64)
    u = torch.rand(n_bins, per_bin, generator=g, dtype=torch.float64)
    t = (edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * u).float()
    # float32 rounding may land on an edge (or on 0 or 1): keep t strictly inside its bin.
    e32 = edges.float()
    t = torch.minimum(torch.maximum(t, torch.nextafter(e32[:-1], e32[1:])[:, None]), torch.nextafter(e32[1:], e32[:-1])[:, None])
    shape = (n_bins, per_bin, bench.dim)
    x0 = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    x1 = bench.sample(n_bins * per_bin, g).reshape(shape)
    return ProbeSet(edges=e32, t=t, x0=x0, x1=x1, eps=eps)


def measure_variance(
    model: VelocityEnsemble,
    path: BrownianBridge,
    probes: ProbeSet,
    groups: int = 8,
    precond: tuple[list[Tensor], list[Tensor]] | None = None,
    bins_per_pass: int = 1,
    target: str = "plain",
) -> tuple[GradientMoments, GradientMoments | None]:
    """Unbiased gradient moments per bin for the variance account (4.5), Euclidean and, with
    Adam's ``precond`` (:func:`fmstudy.models.adam_preconditioner`), in Adam's metric.

    Each bin's ``per_bin`` probes are split into ``groups`` groups of P (R = groups independent
    probe sets). For group r and bin k, with per-sample gradients ``g_i`` of the unweighted loss
    ``l_i`` and the group's bin mean ``gbar_rk``:

        S_rk    = mean_i ||g_i||^2                                   unbiased E[||g||^2 | k]
        N_rk    = P / (P - 1) (S_rk - ||gbar_rk||^2)                 unbiased S_k - ||G_k||^2
        G2_rk   = ||gbar_rk||^2 - N_rk / P                           unbiased ||G_k||^2
        G2_r    = ||sum_k p_k gbar_rk||^2 - sum_k p_k^2 N_rk / P     unbiased ||G||^2

    (the last because the bins' means are independent, so ``E||sum p gbar||^2 = ||G||^2 +
    sum p^2 N / P``). Per-sample norms come from the trace, bin means from one batched product
    per layer and group (no per-sample gradient is stored). Cost: ``n_bins / bins_per_pass``
    forward and backward passes of ``bins_per_pass * per_bin`` points per member; memory grows
    with ``bins_per_pass * groups * M * (weights)``. The model's ``.grad`` is not touched.
    ``target``: the regression target of the estimator being accounted for, ``"plain"`` (u_t)
    or ``"rb"`` (the Rao-Blackwellised ``E[u_t | x1, x_t]``, :meth:`BrownianBridge.rb_target`).
    """
    if target not in ("plain", "rb"):
        raise ValueError(f"target={target!r} is not allowed: target must be 'plain' or 'rb'")
    groups = check_int("groups", groups, 2)
    bins_per_pass = check_int("bins_per_pass", bins_per_pass, 1)
    k_all, per = probes.n_bins, probes.per_bin
    if per % groups or per // groups < 2:
        raise ValueError(f"per_bin={per} is not allowed with groups={groups}: it must be a multiple of groups, at least 2 per group")
    p_size = per // groups
    like = model.weights[0]
    m = model.n_members
    # Probe bins are equal (linspace): p_k = 1/K exactly (float32 edges would round it).
    mass = torch.full((k_all,), 1.0 / k_all, dtype=torch.float64, device=like.device)
    metrics = ["euclid"] + (["adam"] if precond is not None else [])
    second = {x: [] for x in metrics}
    cell_sq = {x: [] for x in metrics}
    full_w = [torch.zeros(m, groups, *w.shape[1:], dtype=like.dtype, device=like.device) for w in model.weights]
    full_b = [torch.zeros(m, groups, b.shape[1], dtype=like.dtype, device=like.device) for b in model.biases]
    for k0 in range(0, k_all, bins_per_pass):
        c = min(bins_per_pass, k_all - k0)
        # Samples ordered (group, bin, probe): each cell is a block of P and each group's samples
        # of this pass are contiguous, so no activation is ever copied to regroup it.
        t, x0, x1, eps = (
            v[k0 : k0 + c].reshape(c, groups, p_size, *v.shape[2:]).transpose(0, 1).reshape(c * per, *v.shape[2:]).to(like)
            for v in (probes.t, probes.x0, probes.x1, probes.eps)
        )
        s = path.sample(x0, x1, t, eps, check=False)
        y = path.rb_target(x1, s.xt, t) if target == "rb" else s.ut
        trace: list = []
        with torch.enable_grad():
            per_sample = ((model(s.xt, t, trace=trace) - y) ** 2).mean(-1)  # [M, c * per]
            deltas = torch.autograd.grad(per_sample.sum(), [pre for _, pre in trace])
        norms = {"euclid": per_sample_grad_sq(trace, deltas)}
        if precond is not None:
            norms["adam"] = per_sample_grad_sq_adam(trace, precond, deltas)
        for x in metrics:
            second[x].append(norms[x].double().view(m, groups, c, p_size).mean(-1))
        sq = {x: torch.zeros(m, groups * c, dtype=torch.float64, device=like.device) for x in metrics}
        for layer, ((a, _), delta) in enumerate(zip(trace, deltas)):
            cell_a = a.view(m, groups * c, p_size, -1)
            cell_d = delta.view(m, groups * c, p_size, -1)
            n_in, n_out = cell_a.shape[-1], cell_d.shape[-1]
            g_b = cell_d.mean(2)
            flat = None
            if precond is not None or p_size * (n_in + n_out) >= n_in * n_out:
                # The cell means [M, cells, in, out]: needed for a diagonal metric, which does
                # not factor over (in, out), and cheaper than Gram matrices when P is large.
                flat = torch.matmul(cell_a.transpose(-1, -2), cell_d).flatten(-2) / p_size
                sq["euclid"] += (torch.linalg.vector_norm(flat, dim=-1) ** 2 + torch.linalg.vector_norm(g_b, dim=-1) ** 2).double()
            else:
                # ||gbar_cell||^2 = sum_ij (a_i . a_j + 1)(delta_i . delta_j) / P^2 (the 1 is the
                # bias's input): two P x P Gram matrices per cell, cheap for small P.
                gram = (torch.matmul(cell_a, cell_a.transpose(-1, -2)) + 1) * torch.matmul(cell_d, cell_d.transpose(-1, -2))
                sq["euclid"] += gram.sum((-1, -2)).double() / p_size**2
            if precond is not None:
                pw, pb = precond[0][layer], precond[1][layer]
                adam = torch.bmm(flat * flat, pw.flatten(-2)[..., None])[..., 0] + torch.bmm(g_b * g_b, pb[..., None])[..., 0]
                sq["adam"] += adam.double()
            # Each group's sum of a_i delta_i^T over this pass; scaled by p_k / P = 1/(K P) at the end.
            group_a = a.view(m, groups, c * p_size, -1)
            group_d = delta.view(m, groups, c * p_size, -1)
            full_w[layer] += torch.matmul(group_a.transpose(-1, -2), group_d)
            full_b[layer] += group_d.sum(2)
        for x in metrics:
            cell_sq[x].append(sq[x].view(m, groups, c))
    full_w = [w / (k_all * p_size) for w in full_w]
    full_b = [b / (k_all * p_size) for b in full_b]
    out = []
    for x in metrics:
        pw_all = precond if x == "adam" else ([None] * len(full_w), [None] * len(full_b))
        full = torch.zeros(m, groups, dtype=torch.float64, device=like.device)
        for w, b, pw, pb in zip(full_w, full_b, *pw_all):
            if pw is None:
                full += w.double().pow(2).sum((-1, -2)) + b.double().pow(2).sum(-1)
            else:
                full += (w.pow(2) * pw[:, None]).double().sum((-1, -2)) + (b.pow(2) * pb[:, None]).double().sum(-1)
        sec = torch.cat(second[x], 2).transpose(0, 1)  # [R, M, K]
        gbar_sq = torch.cat(cell_sq[x], 2).transpose(0, 1)
        noise = p_size / (p_size - 1) * (sec - gbar_sq)
        mass64 = mass.double()
        full_sq = full.T - (mass64**2 * noise).sum(-1) / p_size
        out.append(GradientMoments(sec, noise, gbar_sq - noise / p_size, full_sq, mass64, p_size))
    return out[0], (out[1] if precond is not None else None)


def variance_record(
    euclid: GradientMoments, adam: GradientMoments | None, proposals: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """What a checkpoint stores and what the variance samplers are fed, from
    :func:`measure_variance`: the account with standard errors and jackknife biases
    (:func:`fmstudy.variance.account_with_errors`, ``[M]`` each) under ``var_`` (Euclidean) and
    ``var_adam_`` (Adam's metric), the pooled per-bin moments ``[M, K]`` under the
    :class:`~fmstudy.samplers.Feedback` names (``bin_grad_sq``, ``bin_grad_mean_sq`` and their
    ``_adam`` twins) and the within-bin spread ``bin_grad_noise(_adam)``, each with ``_se``
    (standard deviation over the R independent groups / sqrt(R)). ``proposals``: name ->
    bin masses ``[M, K]`` (e.g. the run's current ``sampler.bin_mass(edges)``)."""
    out: dict[str, Tensor] = {}
    for suffix, moments in (("", euclid), ("_adam", adam)):
        if moments is None:
            continue
        r = moments.groups
        for name, field in (("bin_grad_sq", "second"), ("bin_grad_mean_sq", "mean_sq"), ("bin_grad_noise", "noise")):
            values = getattr(moments, field)  # [R, M, K]: independent groups, so se = sd / sqrt(R)
            out[name + suffix] = values.mean(0)
            out[f"{name}{suffix}_se"] = values.std(0) / r**0.5
        prefix = "var_adam_" if suffix else "var_"
        for name, value in account_with_errors(moments, proposals).items():
            out[prefix + name] = value
    return out
