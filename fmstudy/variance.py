"""The variance account of time allocation (STUDY.md section 4.5), batched over members.

With importance weights ``w = p_k / q_k`` (4.2) the expected gradient of every unbiased
allocation is the fixed objective's gradient ``G``; allocation changes only the estimator's
variance. Over K bins with uniform masses ``p_k``, proposal masses ``q_k``, second moments
``S_k = E[||g||^2 | bin k]``, bin means ``G_k`` (so ``G = sum_k p_k G_k``) and within-bin spread
``N_k = S_k - ||G_k||^2``, the variance (trace of the covariance) per sample is

    V(q)        = sum_k p_k^2 S_k / q_k - ||G||^2                                   (4.5a)
    q*_k        ∝ p_k sqrt(S_k),   V(q*) = (sum_k p_k sqrt(S_k))^2 - ||G||^2         (4.5b)
    R           = V(uniform) / V(q*) >= 1     (the ceiling of any unbiased allocation) (4.5c)

(4.5b) is Cauchy-Schwarz: ``(sum p sqrt S)^2 = (sum sqrt(q) * p sqrt(S)/sqrt(q))^2 <= sum p^2 S/q``.
With draws stratified over bins (``B q_k`` draws in bin k) the between-bin part drops out:

    V_strat(q)  = sum_k p_k^2 N_k / q_k,   Neyman: q_k ∝ p_k sqrt(N_k),
    V_strat(Neyman) = (sum_k p_k sqrt(N_k))^2                                          (4.5d)

and ``V(q) - V_strat(q) = sum_k p_k^2 ||G_k||^2 / q_k - ||G||^2 >= 0`` (Cauchy-Schwarz again).
Every function takes tensors with the bins last (``[..., K]``, e.g. ``[M, K]`` or
``[R, M, K]``) and returns ``[...]``. The same account holds in any fixed metric: with Adam's
preconditioner P read ``||g||^2`` as ``g^T P g`` (:func:`fmstudy.models.per_sample_grad_sq_adam`).

Standard errors (:func:`account_with_errors`). The measurement
(:func:`fmstudy.signals.measure_variance`) returns unbiased per-bin estimates from R independent
groups of fresh probes. Every quantity above is a smooth function of the means of those
estimates, so its error is taken by the delete-one-group jackknife over the R groups,
``se^2 = (R - 1)/R sum_r (theta_(-r) - theta_bar)^2``. We chose it over a delta method because
it needs no derivative of each ratio and no model of the correlation between ``S_k``, ``N_k``
and ``||G||^2`` (they come from the same probes): it is exact (``sd / sqrt(R)``) for the linear
quantities (V(q) for a fixed q) and first-order correct for the ratios (R, gains) and for
V(q*), whose plug-in has an O(1/n) bias from the square roots (``E sqrt(S_hat) <= sqrt(S)``),
small against its error at the probe counts used; the jackknife's bias estimate
``(R - 1)(theta_bar - theta)`` is returned so a reader can check that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

__all__ = [
    "GradientMoments",
    "proposal_variance",
    "stratified_variance",
    "optimal_proposal",
    "neyman_proposal",
    "variance_account",
    "account_with_errors",
]


def _normalise(score: Tensor) -> Tensor:
    total = score.sum(-1, keepdim=True)
    # A member whose scores are all zero gets the uniform proposal rather than 0/0.
    uniform = torch.full_like(score, 1.0 / score.shape[-1])
    return torch.where(total > 0, score / total.clamp(min=1e-300), uniform)


def proposal_variance(p: Tensor, second: Tensor, full_sq: Tensor, q: Tensor) -> Tensor:
    """``V(q) = sum_k p_k^2 S_k / q_k - ||G||^2`` (4.5a): ``p, second, q [..., K]``, ``full_sq [...]``."""
    return (p**2 * second / q).sum(-1) - full_sq


def stratified_variance(p: Tensor, noise: Tensor, q: Tensor) -> Tensor:
    """``V_strat(q) = sum_k p_k^2 N_k / q_k`` (4.5d), with ``N_k = S_k - ||G_k||^2``."""
    return (p**2 * noise / q).sum(-1)


def optimal_proposal(p: Tensor, second: Tensor) -> Tensor:
    """``q*_k ∝ p_k sqrt(S_k)`` (4.5b); negative estimates of S count as 0."""
    return _normalise(p * second.clamp(min=0).sqrt())


def neyman_proposal(p: Tensor, noise: Tensor) -> Tensor:
    """The Neyman allocation ``q_k ∝ p_k sqrt(N_k)`` (4.5d); negative estimates count as 0."""
    return _normalise(p * noise.clamp(min=0).sqrt())


def variance_account(
    p: Tensor, second: Tensor, noise: Tensor, full_sq: Tensor, proposals: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The whole account (4.5a-d) for given moments; ``p [K]`` or ``[..., K]``.

    Returns ``v_uniform``, ``v_opt`` (V(q*)), ``ceiling`` (R, 4.5c), ``v_strat_uniform``
    (stratified draws with q = p), ``v_neyman`` and ``ceiling_strat`` (V(uniform)/V(Neyman),
    what stratified allocation can reach), ``between`` (``V(uniform) - V_strat(uniform)``, the
    between-bin part), ``full_sq`` (``||G||^2``), and for each named proposal ``q [..., K]``: ``v_<name>``,
    ``gain_<name> = V(uniform)/V(q)`` (its predicted reduction of gradient noise, > 1 is a
    gain) and ``v_strat_<name>``.
    """
    p = p.expand_as(second)
    v_uniform = proposal_variance(p, second, full_sq, p)
    v_opt = proposal_variance(p, second, full_sq, optimal_proposal(p, second))
    v_strat_uniform = stratified_variance(p, noise, p)
    v_neyman = (p * noise.clamp(min=0).sqrt()).sum(-1) ** 2
    out = {
        "v_uniform": v_uniform,
        "v_opt": v_opt,
        "ceiling": v_uniform / v_opt,
        "v_strat_uniform": v_strat_uniform,
        "v_neyman": v_neyman,
        "ceiling_strat": v_uniform / v_neyman,
        "between": v_uniform - v_strat_uniform,
        "full_sq": full_sq.expand_as(v_uniform),  # ||G||^2: the signal of the noise scale V(uniform) / ||G||^2
    }
    for name, q in (proposals or {}).items():
        q = q.to(second).expand_as(second)
        v = proposal_variance(p, second, full_sq, q)
        out[f"v_{name}"] = v
        out[f"gain_{name}"] = v_uniform / v
        out[f"v_strat_{name}"] = stratified_variance(p, noise, q)
    return out


@dataclass(frozen=True)
class GradientMoments:
    """Unbiased per-bin gradient moments from R independent probe groups of P probes per bin.

    ``second`` (S_k), ``noise`` (N_k, unbiased within-bin ``tr Cov``) and ``mean_sq``
    (unbiased ``||G_k||^2``) are ``[R, M, K]``; ``full_sq`` (unbiased ``||G||^2``) is ``[R, M]``;
    ``p`` the bins' uniform masses ``[K]``; ``per_group`` = P.
    """

    second: Tensor
    noise: Tensor
    mean_sq: Tensor
    full_sq: Tensor
    p: Tensor
    per_group: int

    @property
    def groups(self) -> int:
        return self.second.shape[0]

    def pooled(self) -> dict[str, Tensor]:
        """Means over the groups (still unbiased), ``[M, K]`` and ``[M]``."""
        return {k: getattr(self, k).mean(0) for k in ("second", "noise", "mean_sq", "full_sq")}


def account_with_errors(
    moments: GradientMoments, proposals: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """:func:`variance_account` of the pooled moments (``name``, ``[M]``) with, for every
    quantity, its jackknife standard error over the R groups (``name_se``) and the jackknife
    estimate of its bias (``name_bias``, about 0 for the linear ones): module docstring."""
    r = moments.groups
    if r < 2:
        raise ValueError(f"groups={r} is not allowed: standard errors need at least 2 probe groups")
    fields = ("second", "noise", "mean_sq", "full_sq")
    full = [getattr(moments, f) for f in fields]
    pooled = [x.mean(0) for x in full]
    # Leave-one-group-out means, all R at once: (R * mean - x_r) / (R - 1).
    loo = [(r * m - x) / (r - 1) for m, x in zip(pooled, full)]
    p = moments.p.to(pooled[0])
    value = variance_account(p, pooled[0], pooled[1], pooled[3], proposals)
    jack = variance_account(p, loo[0], loo[1], loo[3], {k: q[None] for k, q in (proposals or {}).items()})
    out: dict[str, Tensor] = {}
    for name, v in value.items():
        reps = jack[name]
        mean = reps.mean(0)
        out[name] = v
        out[f"{name}_se"] = ((r - 1) / r * ((reps - mean) ** 2).sum(0)).sqrt()
        out[f"{name}_bias"] = (r - 1) * (mean - v)
    return out
