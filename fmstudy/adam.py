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
    """The parameters of ``module`` (each ``[M, ...]``) seated in one flat buffer ``data``,
    their gradients in ``grad``; ``member_of[j]`` is the member that element j belongs to."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())
        m = self.params[0].shape[0]
        with torch.no_grad():
            self.data = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.data)
        member, at = [], 0
        for p in self.params:
            n = p.numel()
            p.data = self.data[at : at + n].view_as(p)
            member.append(torch.arange(m, device=p.device).repeat_interleave(n // m))
            at += n
        self.member_of = torch.cat(member)
        self.n_members = m
        self.grads = [self.grad[a : a + p.numel()].view_as(p) for a, p in zip(self._offsets(), self.params)]
        self.seat_grads()

    def _offsets(self) -> list[int]:
        sizes = [p.numel() for p in self.params]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def seat_grads(self) -> None:
        """Make each parameter's ``.grad`` its view of ``grad`` again, so that backward
        accumulates there; code that clears gradients (``p.grad = None``, as the probe
        measurements do) unseats them. Cheap: it compares pointers, no device work."""
        for p, g in zip(self.params, self.grads):
            if p.grad is None or p.grad.data_ptr() != g.data_ptr():
                p.grad = g

    def seat(self, other: nn.Module) -> Tensor:
        """Seat ``other`` (the same architecture, e.g. the EMA copy) in its own flat buffer, returned."""
        params = list(other.parameters())
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])
        at = 0
        for p in params:
            p.data = flat[at : at + p.numel()].view_as(p)
            at += p.numel()
        return flat

    def per_element(self, x: Tensor) -> Tensor:
        """A per-member tensor ``[M]`` spread to every element of the buffer."""
        return x[self.member_of]


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
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        self.steps = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.flat.params, "betas": self.betas, "eps": self.eps, "amsgrad": False}]

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        out, at = {}, 0
        for p in self.flat.params:
            n = p.numel()
            view = lambda buf: buf[at : at + n].view_as(p)  # noqa: E731
            out[p] = {"step": torch.tensor(float(self.steps)), "exp_avg": view(self.exp_avg), "exp_avg_sq": view(self.exp_avg_sq)}
            at += n
        return out

    def step(self, factors: Sequence[float], keep: Tensor) -> None:
        """One update with learning rates ``lr * factors[0] * factors[1] ...`` (multiplied in
        that order, as a Python float would be) for members where ``keep [M]`` holds."""
        beta1, beta2 = self.betas
        self.steps += 1
        k = float(self.steps)
        g = self.flat.grad
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / ((1 - beta2**k) ** 0.5)).add_(self.eps)
        lr = self._neg_lr  # -(x y) = (-x) y and -(x / y) = (-x) / y exactly: the sign moves first
        for f in factors:
            if f != 1.0:  # x * 1.0 = x exactly: a multiplication saved
                lr = lr * f
        step = (lr / (1 - beta1**k) * keep).to(self.flat.data.dtype)  # [M]; kept members only
        self.flat.data.add_(self.exp_avg * self.flat.per_element(step) / denom)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
