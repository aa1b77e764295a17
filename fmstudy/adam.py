"""Adam for an ensemble whose members have their own learning rates, on flat buffers.

The ensemble's parameters (``[M, ...]`` tensors, member i's slice its own model) are re-seated
as views of one flat buffer (``FlatParams``), and so are their gradients and the EMA copy;
every optimiser operation is then one elementwise operation on the whole buffer, whatever the
number of layers or members. For member i with learning rate ``lr_i``, at step k = 1, 2, ...
(Kingma and Ba, Algorithm 1, in torch's arithmetic):

    m    <- lerp(m, g, 1 - beta1)                        = beta1 m + (1 - beta1) g
    v    <- beta2 v + (1 - beta2) g^2
    d    =  sqrt(v) / sqrt(1 - beta2^k) + eps
    theta <- theta + (-(lr_i s) / (1 - beta1^k)) m / d        (s: the schedule factors)

each written as ``torch.optim.Adam``'s single-tensor implementation writes it (the same float
operations in the same order), so a member gets the numbers it would get from torch's Adam
alone, and the elementwise buffers make them independent of the other members. A member that
is not ``keep`` gets a zero step: its parameters do not move, provided its moments are finite
(the engine zeroes a frozen member's gradient, which may be NaN, before the step).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["FlatParams", "EnsembleAdam"]


class FlatParams:
    """The parameters of ``module`` (each ``[M, ...]``) seated in one member-major buffer
    ``data [M, P]`` (row i: member i's P numbers), their gradients in ``grad [M, P]``. A
    per-member quantity ``x [M]`` then reaches every number of its member as ``x[:, None]``,
    a broadcast, without an index pass over the buffer."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())
        self.n_members = self.params[0].shape[0]
        self.data = self._flatten(self.params)
        self.grad = torch.zeros_like(self.data)
        self.grads = self._seat(self.params, self.grad, data=False)
        self._seat(self.params, self.data)
        self.seat_grads()

    def _flatten(self, params: list[Tensor]) -> Tensor:
        with torch.no_grad():
            return torch.cat([p.detach().reshape(self.n_members, -1) for p in params], dim=1).contiguous()

    def _seat(self, params: list[Tensor], flat: Tensor, data: bool = True) -> list[Tensor]:
        """Views of ``flat``'s column blocks shaped as ``params`` (and seated as their data)."""
        views, at = [], 0
        for p in params:
            n = p.numel() // self.n_members
            view = flat[:, at : at + n].view(p.shape)  # rows strided by P: a view, not a copy
            if data:
                p.data = view
            views.append(view)
            at += n
        return views

    def seat_grads(self) -> None:
        """Make each parameter's ``.grad`` its view of ``grad`` again, so that backward
        accumulates there; code that clears gradients (``p.grad = None``, as the probe
        measurements do) unseats them. Cheap: it compares pointers, no device work."""
        for p, g in zip(self.params, self.grads):
            if p.grad is None or p.grad.data_ptr() != g.data_ptr():
                p.grad = g

    def seat(self, other: nn.Module) -> Tensor:
        """Seat ``other`` (the same architecture, e.g. the EMA copy) in its own buffer, returned."""
        params = list(other.parameters())
        flat = self._flatten(params)
        self._seat(params, flat)
        return flat

    def views(self, flat: Tensor) -> list[Tensor]:
        """``flat`` (a buffer shaped like ``data``) as one tensor per parameter."""
        return self._seat(self.params, flat, data=False)


class EnsembleAdam:
    """Adam over a :class:`FlatParams` with one learning rate per member (``lr [M]``).

    ``param_groups`` and ``state`` mirror ``torch.optim.Adam``'s layout (views of the flat
    moments), for code that reads an optimiser's second moments."""

    def __init__(self, flat: FlatParams, lr: Sequence[float] | Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.flat, self.betas, self.eps = flat, (float(betas[0]), float(betas[1])), float(eps)
        self.lr = torch.as_tensor(lr, dtype=torch.float64).to(flat.data.device)
        if self.lr.shape != (flat.n_members,):
            raise ValueError(f"lr of shape {list(self.lr.shape)} is not allowed: give one learning rate per member ({flat.n_members})")
        self._neg_lr = -self.lr
        # Members per block: about 4 MB of each buffer on a CPU (the update makes ten passes,
        # which a block that stays in cache serves from there), everything on a GPU.
        p = flat.data.shape[1]
        self.rows = flat.n_members if flat.data.device.type != "cpu" else max(1, (1 << 20) // max(p, 1))
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        self.steps = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.flat.params, "betas": self.betas, "eps": self.eps, "amsgrad": False}]

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        views = zip(self.flat.params, self.flat.views(self.exp_avg), self.flat.views(self.exp_avg_sq))
        # the step as a Python number: a tensor made here would be a host transfer in every step that reads it
        return {p: {"step": float(self.steps), "exp_avg": m, "exp_avg_sq": v} for p, m, v in views}

    def step(self, factors: Sequence[float], keep: Tensor, ema: tuple[Tensor, float] | None = None) -> None:
        """One update with learning rates ``lr * factors[0] * factors[1] ...`` (multiplied in
        that order, as a Python float would be) for members where ``keep [M]`` holds; then
        ``ema = (buffer, w)``, if given, moves as ``buffer <- lerp(buffer, data, w)``.

        On a CPU the buffers are walked in blocks of members small enough to stay in cache
        across the update's ten passes (blocks of ``rows`` members, one block when the
        buffers are small); on a GPU in one block. Every operation is elementwise, so the
        blocking changes no number."""
        beta1, beta2 = self.betas
        self.steps += 1
        k = float(self.steps)
        bc2_sqrt = (1 - beta2**k) ** 0.5
        lr = self._neg_lr  # -(x y) = (-x) y and -(x / y) = (-x) / y exactly: the sign moves first
        for f in factors:
            if f != 1.0:  # x * 1.0 = x exactly: a multiplication saved
                lr = lr * f
        step = (lr / (1 - beta1**k) * keep).to(self.flat.data.dtype)[:, None]  # [M, 1]; kept members only
        buffers = (self.flat.grad, self.flat.data, self.exp_avg, self.exp_avg_sq, step, ema[0] if ema else None)
        m = self.flat.n_members
        blocks = [buffers] if self.rows >= m else [
            tuple(None if b is None else b[r0 : r0 + self.rows] for b in buffers) for r0 in range(0, m, self.rows)
        ]
        for g, data, m1, m2, st, average in blocks:
            m1.lerp_(g, 1 - beta1)
            m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (m2.sqrt() / bc2_sqrt).add_(self.eps)
            # addcdiv computes data + 1 * x / denom; 1 * x = x exactly, so this is torch's
            # data + (-step_size * m) / denom with the division and addition in one pass.
            data.addcdiv_(m1 * st, denom)
            if average is not None:
                average.lerp_(data, ema[1])

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
