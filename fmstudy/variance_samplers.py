"""Samplers built on the variance account (STUDY.md section 4.5, :mod:`fmstudy.variance`).

- ``var_opt``: online q*_k ∝ p_k sqrt(S_k), S_k estimated from the training batch's own
  per-sample squared gradient norms (no extra passes), with noise-aware shrinkage;
  ``neyman=True`` allocates by the within-bin spread instead and is meant with stratified draws.
- ``oracle_qstar``: q* (or Neyman) from per-bin moments the trainer measures on many fresh
  probes at each feedback: the upper bound of unbiased allocation over these bins.
- ``info_snr``: kept because the book reads earlier runs of it; see its docstring for what it
  optimises (not the fixed objective's variance).

With equal bins p_k = 1/K, so ``q ∝ p sqrt(S)`` is ``q ∝ sqrt(S)``. ``update`` never synchronises
with the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .adaptive_samplers import _Binned, _Smoothed
from .checks import check_int
from .sampler_base import Feedback

__all__ = ["VarOpt", "OracleQStar", "InfoSNR"]

_METRICS = {"adam": ("grad_sq_adam", "bin_grad_sq_adam", "bin_grad_mean_sq_adam"), "euclid": ("grad_norm", "bin_grad_sq", "bin_grad_mean_sq")}
_HUGE = 1e300  # the standard error of a bin without enough data: fully shrunk


def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise ValueError(f"metric={metric!r} is not allowed: use one of {', '.join(_METRICS)}")
    return metric


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: it must be true or false")
    return value


class VarOpt(_Binned):
    """Online variance-optimal allocation, ``q_k ∝ sqrt(S_k)`` (4.5b), in Adam's metric by default.

    Fed each step with the batch's per-sample squared gradient norms ``x_b`` of the unweighted
    per-sample loss (``g_b^T P g_b`` with ``metric="adam"``, field ``grad_sq_adam``; ``||g_b||^2``
    with ``metric="euclid"``, field ``grad_norm``) and their times. Within a bin the draws are
    uniform whatever q is, so the bin's mean of x is unbiased for S_k.

    Tracking: exponentially forgotten sums per (member, bin), with ``gamma = 1 - 1/horizon``
    per update: ``n = sum w``, ``n2 = sum w^2``, ``s1 = sum w x``, ``s2 = sum w x^2``; the mean
    ``m_k = s1/n`` has squared standard error ``se_k^2 = var_k n2 / n^2`` with the weighted
    within-bin variance ``var_k = (s2 - s1^2/n) / (n - n2/n)``.

    Shrinkage (empirical Bayes, James-Stein): ``m_k ~ N(S_k, se_k^2)``, ``S_k ~ N(mu, tau^2)``
    across bins; ``mu`` is the mean of the bins' m_k and ``tau^2 = max(0, Var_k(m_k) -
    mean_k se_k^2)`` (moments), and

        S_hat_k = mu + tau^2 / (tau^2 + se_k^2) (m_k - mu),

    so a bin whose mean is noisy against the spread between bins is pulled to the pooled mean
    (at the start, every bin: the proposal begins uniform and leaves it as evidence accrues).
    Bins with an effective count ``n^2/n2`` below ``min_samples`` are fully shrunk.

    ``neyman=True`` allocates ``q_k ∝ sqrt(max(S_hat_k - ||G_k||^2, 0))`` (4.5d), optimal with
    draws stratified over bins (use ``stratified=True``; the alias ``var_opt_neyman`` sets both).
    Per-sample norms alone cannot give the bin means ``||G_k||^2`` (that needs gradient
    vectors, or pairwise products of per-sample gradients, a cost of order B^2 per layer), so
    ``||G_k||^2`` is taken from per-bin feedback (``bin_grad_mean_sq_adam`` or
    ``bin_grad_mean_sq``, e.g. from :func:`fmstudy.signals.measure_variance`) whenever the trainer
    sends it, the latest measurement replacing the previous; until then it is 0 and the Neyman
    allocation equals q* (an upper bound of N_k).
    """

    name = "var_opt"
    options = _Binned.options + ("metric", "neyman", "horizon", "min_samples")

    def __init__(self, seeds, metric: str = "adam", neyman: bool = False, horizon: int = 100, min_samples: int = 8, **kw):
        self.metric = _check_metric(metric)
        self.neyman = _check_bool("neyman", neyman)
        self.horizon = check_int("horizon", horizon, 1)
        self.min_samples = check_int("min_samples", min_samples, 2)
        super().__init__(seeds, **kw)
        # Neyman also reads ||G_k||^2 from per-bin feedback, which the trainer sends only to
        # samplers that ask for it.
        self.requires = frozenset({"t", _METRICS[metric][0]} | ({_METRICS[metric][2]} if neyman else set()))
        zeros = torch.zeros(self.n_members, self.n_bins, dtype=torch.float64, device=self.device)
        self.sums = torch.zeros(4, self.n_members, self.n_bins, dtype=torch.float64, device=self.device)  # n, n2, s1, s2
        self.mean_sq = zeros  # ||G_k||^2 from the latest per-bin feedback (Neyman only)
        gamma = 1.0 - 1.0 / self.horizon
        # The forgetting factors of (n, n2, s1, s2), made once: Python floats, the same float64 numbers.
        self._decay = torch.tensor([gamma, gamma**2, gamma, gamma], dtype=torch.float64, device=self.device)[:, None, None]
        # estimate's masked sums, one where and one sum over the bins: where a bin has enough data
        # (1, 1, m, se2, se2), else (0, 0, 0, 0, huge), then minus (0, 1, 0, 0, 0), floored at (1, 1, -inf...)
        f64 = dict(dtype=torch.float64, device=self.device)
        self._fill = torch.tensor([0.0, 0.0, 0.0, 0.0, _HUGE], **f64)[:, None, None]
        self._off = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], **f64)[:, None, None]
        self._lo = torch.tensor([1.0, 1.0, -torch.inf, -torch.inf, -torch.inf], **f64)[:, None, None]
        self._ones = torch.ones(self.n_members, self.n_bins, **f64)
        self._buffers: tuple[Tensor, ...] | None = None  # update's, made once per batch shape

    def estimate(self) -> Tensor:
        """The shrunk second moments ``S_hat [M, K]`` (class docstring).

        Alike operations on ``[M, K]`` tables go as one on a stack of them: elementwise, and
        each row summed on its own, so the numbers of one table at a time. x - 0 = x, and a
        floor of -inf leaves a number (NaN too) as it is."""
        rows = torch.cat([self.sums, self.sums * self.sums])  # n, n2, s1, s2, and their squares
        n, n2, _, s2, n_sq, _, _, _ = rows.unbind()
        have = n > 0
        nc = n.clamp(min=1e-300)  # a divisor; where n = 0 the quotient is not used
        _, n2_n, m, _, _, _, s1_sq_n, _ = (rows / nc).unbind()  # n2 / n, s1 / n, s1^2 / n
        m = torch.where(have, m, self._zero)
        var = ((s2 - s1_sq_n) / (n - n2_n).clamp(min=1e-300)).clamp(min=0)
        enough = have & (n_sq >= self.min_samples * n2)
        v = var * n2 / nc**2
        cells = torch.where(enough, torch.stack([self._ones, self._ones, m, v, v]), self._fill)
        se2 = cells.unbind()[4]
        count, less, m_sum, se2_sum, _ = (cells.sum(-1, keepdim=True) - self._off).clamp(min=self._lo).unbind()
        mu = m_sum / count  # count = max(#enough, 1), less = max(#enough - 1, 1)
        dev = m - mu
        spread = torch.where(enough, dev**2, self._zero).sum(1, keepdim=True) / less
        tau2 = (spread - se2_sum / count).clamp(min=0)
        shrink = tau2 / (tau2 + se2).clamp(min=1e-300)
        return mu + shrink * dev

    def update(self, feedback: Feedback) -> None:
        field, _, mean_field = _METRICS[self.metric]
        got = self._needs(feedback, mean_field)
        if got is not None:
            self.mean_sq = got[0].clamp(min=0)
        got = self._needs(feedback, "t") if getattr(feedback, field) is not None else None
        if got is not None:
            self._add(got[0], getattr(feedback, field))
        s_hat = self.estimate()
        # mean_sq >= 0 (clamped), so max(max(S, 0) - mean_sq, 0) = max(S - mean_sq, 0): one floor
        s_hat = (s_hat - self.mean_sq).clamp(min=0) if self.neyman else s_hat.clamp(min=0)
        self._set_probs(s_hat.sqrt())

    def _add(self, t: Tensor, x: Tensor) -> None:
        """Forget, then add the batch's ``(1, 1, x, x^2)`` to the sums of each sample's (member, bin).

        The rows to add and the keys live in buffers made once: x goes in as float64 (the cast
        of a copy), x^2 is written there, and one index_add_ adds each (row, key) cell's values
        in batch order onto zeros, as a fresh tensor would."""
        if x.shape != t.shape:
            field = _METRICS[self.metric][0]
            raise ValueError(f"feedback {field} of shape {list(x.shape)} is not allowed: it must be {list(t.shape)}, as t")
        m, k = self.n_members, self.n_bins
        if self._buffers is None or self._buffers[4].shape != t.shape:
            rows = torch.ones(4, t.numel(), dtype=torch.float64, device=self.device)
            key, new = torch.empty(t.numel(), dtype=torch.int64, device=self.device), rows.new_empty(4, m * k)
            self._buffers = (rows, rows[2].view(t.shape), rows[3].view(t.shape), key, key.view(t.shape), new, new.view(4, m, k))
        rows, x1, x2, key, key2, new, new3 = self._buffers
        torch.add(self._row, self.bin_of(t), out=key2)
        x1.copy_(torch.as_tensor(x))
        if self.metric == "euclid":  # the feedback is ||g_b||: its square
            x1.pow_(2)
        torch.mul(x1, x1, out=x2)
        new.zero_().index_add_(1, key, rows)
        self.sums = self.sums * self._decay + new3

    def _state(self) -> dict[str, Tensor]:
        return {"probs": self.probs, "sums": self.sums, "mean_sq": self.mean_sq}

    def _family(self) -> dict[str, Any]:
        return {"metric": self.metric, "neyman": self.neyman, "horizon": self.horizon, "min_samples": self.min_samples}


class OracleQStar(_Smoothed):
    """The oracle allocation ``q_k ∝ sqrt(S_k)`` (4.5b), or with ``neyman=True``
    ``q_k ∝ sqrt(max(S_k - ||G_k||^2, 0))`` (4.5d, for stratified draws), set at each per-bin
    feedback from moments the trainer measures on many FRESH probes
    (:func:`fmstudy.signals.measure_variance`: ``bin_grad_sq_adam``/``bin_grad_mean_sq_adam``
    with ``metric="adam"``, ``bin_grad_sq``/``bin_grad_mean_sq`` with ``"euclid"``). Those extra
    passes are the trainer's to count. It is the bound that unbiased allocation over these bins
    can reach, up to the probes' error; ``smoothing = 1`` (default) uses the latest measurement.
    """

    name = "oracle_qstar"
    options = _Smoothed.options + ("metric", "neyman")

    def __init__(self, seeds, metric: str = "adam", neyman: bool = False, smoothing: float = 1.0, **kw):
        self.metric = _check_metric(metric)
        self.neyman = _check_bool("neyman", neyman)
        super().__init__(seeds, smoothing=smoothing, **kw)
        _, second, mean = _METRICS[metric]
        self.requires = frozenset({second, mean} if neyman else {second})

    def update(self, feedback: Feedback) -> None:
        _, second, mean = _METRICS[self.metric]
        got = self._needs(feedback, *((second, mean) if self.neyman else (second,)))
        if got is None:
            return
        target = got[0] - got[1].clamp(min=0) if self.neyman else got[0]
        self._smooth(target.clamp(min=0))
        self._set_probs(self.score.sqrt())

    def _params(self) -> dict[str, Any]:
        return {"metric": self.metric, "neyman": self.neyman}


class InfoSNR(_Smoothed):
    """``q_k ∝ ||G_k||^4 / S_k`` from per-bin gradient moments (kept for the book's earlier runs).

    What it optimises: one bin's OWN loss decrease under a plain SGD step on one sample of that
    bin. To second order with curvature beta, a step of size eta changes bin k's loss by
    ``-eta ||G_k||^2 + beta eta^2 S_k / 2``; at the best eta the decrease is

        Delta_k = ||G_k||^4 / (2 beta S_k)                                               (4.4)

    and the proposal puts samples in proportion to it. This is NOT the variance-optimal
    allocation for the fixed objective (that is q* ∝ sqrt(S_k), :class:`VarOpt` and
    :class:`OracleQStar`): with importance weights (4.2) every q gives the same expected
    gradient and only V(q) (4.5a) differs, which (4.4) does not minimise; training uses Adam,
    not SGD, and the weight 1/q is outside the derivation. Its score needs ``||G_k||^2``, which
    a few dozen probes per bin do not resolve (the unbiased estimate is often <= 0), so with
    fixed probes it follows estimator noise.
    """

    name = "info_snr"
    requires = frozenset({"bin_grad_mean_sq", "bin_grad_sq"})

    def update(self, feedback: Feedback) -> None:
        got = self._needs(feedback, "bin_grad_mean_sq", "bin_grad_sq")
        if got is None:
            return
        signal, second = got
        signal = signal.clamp(min=0)
        self._smooth(signal**2 / second.clamp(min=1e-300))
        self._set_probs(self.score)
