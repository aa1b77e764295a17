"""Velocity models v_theta(x, t) for flow matching: a single MLP and a batched ensemble.

Both models compute, for a point ``x`` in R^d and a time ``t`` in [0, 1],

    e(t)    = [t, sin(w_1 t), ..., sin(w_K t), cos(w_1 t), ..., cos(w_K t)]      (M.1)
    w_j     = max_freq ** ((j - 1) / (K - 1)),  j = 1..K  (w_1 = 1 when K = 1)    (M.2)
    h_0     = concat(x, e(t))                                                      (M.3)
    h_l     = SiLU(h_{l-1} W_l + b_l),  l = 1..depth                               (M.4)
    v(x, t) = h_depth W_out + b_out                                                (M.5)

``VelocityEnsemble`` holds M such networks with every weight stacked along a leading
member axis and evaluates all of them with one ``torch.baddbmm`` per layer, so member i
is numerically the same model as ``VelocityMLP(config, seeds[i])``. With a loss that is
a sum over members, gradients (and any elementwise optimiser such as Adam) act on each
member exactly as on a separate model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_float, check_int

__all__ = ["MLPConfig", "VelocityEnsemble", "VelocityMLP", "adam_preconditioner", "per_sample_grad_sq", "per_sample_grad_sq_adam",
           "time_embedding"]


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of a velocity MLP: data ``dim``, ``depth`` hidden layers of width
    ``hidden``, and a time embedding with ``n_freqs`` frequencies up to ``max_freq``."""

    dim: int
    hidden: int = 128
    depth: int = 3
    n_freqs: int = 8
    max_freq: float = 100.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "n_freqs"):
            check_int(name, getattr(self, name), 1)
        check_float("max_freq", self.max_freq, 0.0, lo_open=True)

    @property
    def in_features(self) -> int:
        """Width of the network input ``concat(x, e(t))``: ``dim + 1 + 2 * n_freqs``."""
        return self.dim + 1 + 2 * self.n_freqs


@functools.lru_cache(maxsize=None)
def _frequencies(n_freqs: int, max_freq: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``w_j`` of (M.2), ``[K]`` in ``dtype``: made once (the same numbers at every call), an
    ordinary tensor even if first asked for under inference_mode."""
    with torch.inference_mode(False):
        return float(max_freq) ** (torch.arange(n_freqs, dtype=dtype, device=device) / max(n_freqs - 1, 1))


def time_embedding(t: Tensor | float, n_freqs: int, max_freq: float) -> Tensor:
    """Fourier features of time, (M.1)-(M.2):

        e(t) = [t, sin(w_1 t), ..., sin(w_K t), cos(w_1 t), ..., cos(w_K t)],
        w_j  = max_freq ** ((j - 1) / (K - 1))   (geometric from 1 to max_freq, rad/unit t),

    with ``K = n_freqs``. Returns shape ``t.shape + (1 + 2 * n_freqs,)`` in t's dtype
    (a Python float becomes a float32 scalar tensor).
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    angles = t.unsqueeze(-1) * _frequencies(n_freqs, max_freq, t.dtype, t.device)
    return torch.cat([t.unsqueeze(-1), torch.sin(angles), torch.cos(angles)], dim=-1)


def _shape_error(what: str, got: tuple[int, ...], allowed: str) -> ValueError:
    return ValueError(f"{what} has shape {list(got)}, which is not allowed: {allowed}")


class VelocityMLP(nn.Module):
    """A single velocity network v(x, t), equations (M.1)-(M.5).

    With ``seed`` given, every weight and bias is drawn from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (nn.Linear's default distribution) using a
    private ``torch.Generator(seed)``, layer by layer (weight then bias), leaving torch's
    global RNG untouched. With ``seed=None`` nn.Linear's default initialisation is used.
    """

    def __init__(self, config: MLPConfig, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_features] + [config.hidden] * config.depth + [config.dim]
        self.layers = nn.ModuleList(nn.utils.skip_init(nn.Linear, fan_in, fan_out) for fan_in, fan_out in zip(widths[:-1], widths[1:]))
        if seed is None:
            for layer in self.layers:
                layer.reset_parameters()
        else:
            gen = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                for layer in self.layers:
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Velocity at ``x`` (shape [..., N, d]) and ``t`` (broadcastable to
        ``x.shape[:-1]``, e.g. [N], [..., N] or a float); returns [..., N, d]."""
        d = self.config.dim
        if x.dim() < 1 or x.shape[-1] != d:
            raise _shape_error("x", tuple(x.shape), f"x must have shape [..., N, {d}]")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        try:
            ok = torch.broadcast_shapes(t.shape, x.shape[:-1]) == x.shape[:-1]
        except RuntimeError:
            ok = False
        if not ok:
            raise _shape_error("t", tuple(t.shape), f"t must broadcast to x.shape[:-1]={list(x.shape[:-1])} (x has shape {list(x.shape)})")
        cfg = self.config
        emb = time_embedding(t.expand(x.shape[:-1]), cfg.n_freqs, cfg.max_freq)
        h = torch.cat([x, emb], dim=-1)
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return self.layers[-1](h)


class VelocityEnsemble(nn.Module):
    """M velocity MLPs evaluated together; member i equals ``VelocityMLP(config, seeds[i])``.

    Layer l stores ``weights[l]`` of shape [M, in, out] (the transpose of nn.Linear's
    [out, in]) and ``biases[l]`` of shape [M, out]; the forward pass is
    ``h <- SiLU(baddbmm(b[:, None, :], h, W))`` per hidden layer, with no loop over members.
    """

    weights: nn.ParameterList
    biases: nn.ParameterList

    def __init__(self, config: MLPConfig, seeds: Sequence[int]) -> None:
        super().__init__()
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds=[] is not allowed: an ensemble needs at least one seed")
        self._load([VelocityMLP(config, s) for s in seeds])

    @classmethod
    def from_models(cls, models: Sequence[VelocityMLP]) -> VelocityEnsemble:
        """Stack already-built models (all with the same config) into an ensemble."""
        models = list(models)
        if not models:
            raise ValueError("models=[] is not allowed: an ensemble needs at least one model")
        configs = {m.config for m in models}
        if len(configs) != 1:
            raise ValueError(f"models have {len(configs)} different configs, which is not allowed: all members must share one MLPConfig")
        ens = cls.__new__(cls)
        nn.Module.__init__(ens)
        ens._load(models)
        return ens

    def _load(self, models: list[VelocityMLP]) -> None:
        self.config = models[0].config
        n = len(models[0].layers)
        with torch.no_grad():
            # nn.Linear stores [out, in]; the ensemble stores [M, in, out] for baddbmm.
            self.weights = nn.ParameterList(nn.Parameter(torch.stack([m.layers[k].weight.detach().T for m in models])) for k in range(n))
            self.biases = nn.ParameterList(nn.Parameter(torch.stack([m.layers[k].bias.detach() for m in models])) for k in range(n))

    @property
    def n_members(self) -> int:
        """Number of members M."""
        return self.weights[0].shape[0]

    def member(self, i: int) -> VelocityMLP:
        """A standalone copy of member ``i`` (same dtype and device, detached from the ensemble)."""
        m = self.n_members
        if not -m <= i < m:
            raise ValueError(f"i={i} is not allowed: member index must be in [0, {m})")
        w0 = self.weights[0]
        model = VelocityMLP(self.config, seed=0).to(dtype=w0.dtype, device=w0.device)
        with torch.no_grad():
            for layer, w, b in zip(model.layers, self.weights, self.biases):
                layer.weight.copy_(w[i].T)
                layer.bias.copy_(b[i])
        return model

    def forward(self, x: Tensor, t: Tensor | float, trace: list[tuple[Tensor, Tensor]] | None = None, retain: bool = True) -> Tensor:
        """Velocities of all members. ``x``: [M, N, d] (one batch per member) or [N, d] (shared batch);
        ``t``: [M, N], [N] (or anything broadcastable to [M, N]). Returns [M, N, d].

        With a list ``trace``, each layer appends ``(input, pre-activation)`` and the
        pre-activation keeps its gradient, so that after a backward pass the exact per-sample
        gradient norms are available without another pass (:func:`per_sample_grad_sq`).
        ``retain=False`` is for a caller that takes the pre-activations' gradients itself (``torch.autograd.grad``)
        and reads the inputs under ``no_grad``: no retained gradient (a copy a layer), no detached input (a view)."""
        m, d = self.n_members, self.config.dim
        if x.dim() not in (2, 3) or x.shape[-1] != d or (x.dim() == 3 and x.shape[0] != m):
            raise _shape_error("x", tuple(x.shape), f"x must have shape [{m}, N, {d}] or [N, {d}]")
        n = x.shape[-2]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        try:
            ok = t.dim() <= 2 and torch.broadcast_shapes(t.shape, (m, n)) == (m, n)
        except RuntimeError:
            ok = False
        if not ok:
            raise _shape_error("t", tuple(t.shape), f"t must have shape [{m}, {n}] or [{n}]")
        cfg = self.config
        x, t = x if x.dim() == 3 else x.expand(m, n, d), t if t.shape == (m, n) else t.expand(m, n)
        tu = t.unsqueeze(-1)
        angles = tu * _frequencies(cfg.n_freqs, cfg.max_freq, t.dtype, t.device)
        h = torch.cat([x, tu, torch.sin(angles), torch.cos(angles)], dim=-1)  # (M.3): concat(x, e(t)) in one copy
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            pre = torch.baddbmm(b.unsqueeze(1), h, w)
            if trace is not None and pre.requires_grad:
                if retain:
                    pre.retain_grad()
                trace.append((h.detach() if retain else h, pre))
            h = F.silu(pre) if k < last else pre
        return h


def _deltas(trace: list[tuple[Tensor, Tensor]], deltas: Sequence[Tensor] | None) -> list[Tensor]:
    if deltas is not None and len(deltas) != len(trace):
        raise ValueError(f"{len(deltas)} deltas for {len(trace)} traced layers are not allowed: give one per layer")
    return [pre.grad for _, pre in trace] if deltas is None else list(deltas)


def _alike(keys: Sequence[Any]) -> list[list[int]]:
    """The positions of equal keys, grouped, in order of first appearance."""
    at: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        at.setdefault(key, []).append(i)
    return list(at.values())


def _squares(xs: Sequence[Tensor], index: Tensor | slice | None = None, rows: bool = False) -> list[Tensor]:
    """``x[:, index] ** 2`` for each x (its row sums ``sum(-1)`` with ``rows``). Tensors of one
    shape are stacked and sliced, squared and summed as one: elementwise work, and rows reduced
    each on its own, so the numbers of one by one in fewer operators."""
    out = list(xs)
    for at in _alike([x.shape for x in xs]):
        x = torch.stack([xs[i] for i in at]) if len(at) > 1 else xs[at[0]]
        x = (x if index is None else x[..., index, :]).pow(2)
        x = x.sum(-1) if rows else x
        for i, y in zip(at, x.unbind() if len(at) > 1 else [x]):
            out[i] = y
    return out


def per_sample_grad_sq(trace: list[tuple[Tensor, Tensor]], deltas: Sequence[Tensor] | None = None) -> Tensor:
    """Squared norm of each sample's share of the parameter gradient, ``[M, N]``.

    Sample n enters layer l once, so its share of the weight gradient is the outer product ``a_n delta_n^T``
    (input times the gradient of the pre-activation) and of the bias ``delta_n``; hence
    ``||g_n||^2 = sum_l (||a_n||^2 + 1) ||delta_n||^2`` exactly (layers added in order). Call after ``backward``
    on a loss that was traced by ``VelocityEnsemble.forward(..., trace=...)``, or pass the pre-activation
    gradients ``deltas`` (e.g. from ``torch.autograd.grad``)."""
    sums = _squares([a for a, _ in trace] + _deltas(trace, deltas), rows=True)
    return functools.reduce(torch.add, [(a + 1) * d for a, d in zip(sums[: len(trace)], sums[len(trace) :])])


def per_sample_grad_sq_adam(trace: list[tuple[Tensor, Tensor]], precond: tuple[Sequence[Tensor], Sequence[Tensor]],
                            deltas: Sequence[Tensor] | None = None, index: Tensor | slice | None = None) -> Tensor:
    """Each sample's squared gradient norm in a diagonal metric, ``g_n^T P g_n``, ``[M, N]``.

    With the weight gradient ``a_n delta_n^T`` and a diagonal ``P`` (``P_W [M, in, out]`` per weight, ``P_b [M, out]``
    per bias, as from :func:`adam_preconditioner`, or ``P_b`` already broadcast to ``[M, n, out]``),

        g_n^T P g_n = sum_l (a_n^2)^T P_W (delta_n^2) + (delta_n^2)^T P_b,

    one batched matrix product per layer (the cost of a forward pass), exact: per layer the two sums over
    ``out``, each row on its own, then added; the layers added in order. The layers of one width do it as one
    product ``[X_l; P_b] * delta^2`` (``X_l = a^2 P_W``), summed over ``out`` and then over the pair (two
    numbers: their sum). Same trace and ``deltas`` as :func:`per_sample_grad_sq`. ``index`` (sample positions
    ``[n]``, or a slice) restricts the work to those samples and returns ``[M, n]``: the cost falls by N/n."""
    p_w, p_b = precond
    if len(p_w) != len(trace) or len(p_b) != len(trace):
        raise ValueError(f"a preconditioner for {len(p_w)} layers is not allowed: the trace has {len(trace)}")
    sq = _squares([a for a, _ in trace] + _deltas(trace, deltas), index)
    a2, d2 = sq[: len(trace)], sq[len(trace) :]
    parts = list(d2)
    for at in _alike([d.shape[-1] for d in d2]):
        xs = [torch.bmm(a2[k].to(p_w[k].dtype), p_w[k]).to(d2[k].dtype) for k in at]
        pbs = [(p_b[k] if p_b[k].dim() == 3 else p_b[k][:, None, :].expand_as(d2[k])).to(d2[k].dtype) for k in at]
        pair = torch.stack(xs + pbs)  # [2, M, n, out] for one layer, else viewed as [2, layers, M, n, out]
        pair, d = (pair, d2[at[0]]) if len(at) == 1 else (pair.view(2, len(at), *d2[at[0]].shape), torch.stack([d2[k] for k in at]))
        part = (pair * d).sum(-1).sum(0)
        for k, y in zip(at, part.unbind() if len(at) > 1 else [part]):
            parts[k] = y
    return functools.reduce(torch.add, parts)


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: VelocityEnsemble) -> tuple[list[Tensor], list[Tensor]]:
    """Adam's current diagonal preconditioner ``P = 1 / (sqrt(v_hat) + eps)`` for the model's
    weights and biases, ``v_hat = exp_avg_sq / (1 - beta2^step)`` (``max_exp_avg_sq`` with
    amsgrad), read from ``optimizer.state`` (``torch.optim.Adam`` or :class:`fmstudy.adam.EnsembleAdam`,
    which mirrors that layout): the metric in which Adam's step is a gradient
    step, ``theta <- theta - lr P m_hat``. Returns ``(P_W per layer, P_b per layer)``.
    Before Adam's first step there is no ``v``, and that is a ``ValueError``."""
    groups = {id(q): g for g in optimizer.param_groups for q in g["params"]}
    states = optimizer.state  # read once: an optimiser may build it on access (fmstudy.adam)

    def one(param: Tensor) -> Tensor:
        state = states.get(param, {})
        if id(param) not in groups or "exp_avg_sq" not in state:
            raise ValueError("optimizer state without exp_avg_sq is not allowed: take one Adam step before reading its preconditioner")
        group = groups[id(param)]
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        v_hat = v / (1 - group["betas"][1] ** float(state["step"]))
        return 1.0 / (v_hat.sqrt() + group["eps"])

    return [one(w) for w in model.weights], [one(b) for b in model.biases]
