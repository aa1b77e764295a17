"""Exact marginal velocity of the Brownian bridge for Gaussian-mixture data (STUDY.md section 2).

Data ``x1 ~ sum_k pi_k N(m_k, S_k)``, source ``x0 ~ N(0, I)`` independent, path
:class:`~fmstudy.paths.BrownianBridge` with diffusion ``sigma``. Write ``x_t = t x1 + n_t`` with
``n_t = (1 - t) x0 + s_t eps ~ N(0, v_t I)``:

    v_t = (1 - t)^2 + sigma^2 t (1 - t)                                          (2.1)
    x_t | k ~ N(t m_k, A_k),   A_k = t^2 S_k + v_t I                              (2.2)
    E[u_t | x1, x_t] = x1 + c_t (x_t - t x1),  c_t = b_t / v_t,
    b_t = -(1 - t) + sigma^2 (1 - 2t) / 2                                         (2.3)

and the marginal velocity ``v*(x, t) = E[u_t | x_t = x] = c_t x + (1 - t c_t) E[x1 | x_t = x]``.
Because ``x - t E[x1 | x] = v_t sum_k r_k A_k^{-1} (x - t m_k)``, this equals

    v*(x, t) = sum_k r_k(x) [ m_k + (t S_k + b_t I) A_k^{-1} (x - t m_k) ]         (2.4)
             = E[x1 | x_t = x] - b_t grad_x log p_t(x),

with responsibilities ``r_k(x)`` from (2.2). Form (2.4) never divides by ``v_t``, so it stays
finite on the whole of [0, 1] (at t = 1 it needs S_k positive definite, which we require).
Each ``S_k = U_k diag(lambda_k) U_k^T`` is diagonalised once, after which (2.4) is a sum of
diagonal operations in each component's eigenbasis for any per-sample t. Everything is
evaluated in float64 and returned in the input's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .paths import BrownianBridge, as_time, check_unit_interval

__all__ = ["GaussianMixture", "BridgeOracle", "ExcessQuadrature"]

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


class GaussianMixture:
    """``sum_k weights[k] N(means[k], covs[k])`` in ``d`` dimensions.

    Args:
        weights: ``[K]``, positive, summing to 1 (within 1e-6).
        means: ``[K, d]``.
        covs: ``[K, d, d]`` symmetric positive definite (``[K, d]`` is read as diagonals,
            ``[K]`` as isotropic variances).
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        m = torch.as_tensor(means, dtype=torch.float64)
        if w.ndim != 1 or m.ndim != 2 or m.shape[0] != w.shape[0]:
            raise ValueError(
                f"weights of shape {tuple(w.shape)} and means of shape {tuple(m.shape)} are not allowed: "
                "weights must be [K] and means [K, d]"
            )
        if not torch.all(w > 0) or abs(float(w.sum()) - 1) > 1e-6:
            raise ValueError(f"weights={_one_line(w.tolist())} are not allowed: they must be > 0 and sum to 1")
        k, d = m.shape
        c = torch.as_tensor(covs, dtype=torch.float64)
        if c.shape == (k,):
            c = c[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif c.shape == (k, d):
            c = torch.diag_embed(c)
        if c.shape != (k, d, d):
            raise ValueError(
                f"covs of shape {tuple(c.shape)} is not allowed: it must be [K, d, d], [K, d] or [K] with K={k}, d={d}"
            )
        if not torch.allclose(c, c.transpose(-1, -2), atol=1e-10):
            raise ValueError("covs are not symmetric: each covariance must be symmetric positive definite")
        evals, evecs = torch.linalg.eigh(c)
        if not torch.all(evals > 0):
            raise ValueError(
                f"covs have eigenvalue {float(evals.min()):.3g}: each covariance must be positive definite"
            )
        self.weights, self.means, self.covs = w, m, c
        self.evals, self.evecs = evals, evecs  # S_k = U_k diag(evals_k) U_k^T
        self._on_device: dict[torch.device, tuple[Tensor, ...]] = {}

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def second_moment(self) -> float:
        """Per-dimension ``E ||x1||^2 / d = sum_k pi_k (||m_k||^2 + tr S_k) / d``."""
        per_k = (self.means**2).sum(-1) + self.evals.sum(-1)
        return float((self.weights * per_k).sum()) / self.dim

    def covariance(self) -> Tensor:
        """``Cov(x1) = sum_k pi_k (S_k + m_k m_k^T) - m m^T`` with ``m = E x1``."""
        mean = self.weights @ self.means
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(mean, mean)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Draw ``n`` points (component by multinomial, then ``m_k + U_k diag(sqrt lambda_k) z``)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.transform(u, z).to(dtype)

    def transform(self, u: Tensor, z: Tensor, masked: bool | None = None) -> Tensor:
        """Map base noise to mixture draws: component ``k = F^{-1}(u)`` from the weights' CDF,
        then ``m_k + U_k diag(sqrt lambda_k) z``. ``u [n]`` uniform, ``z [n, d]`` standard
        normal (any source, e.g. per-member counter streams), float64 on any device.

        ``masked`` picks how rows find their component (default: masked on a CPU only). Masked
        transforms only each component's own rows, a K-th of the work, but counting the rows
        synchronises a GPU with the host; unmasked transforms every row by every component and
        selects, which a GPU does without waiting. Both give the same draws (to float64 rounding)."""
        dev = z.device
        if dev not in self._on_device:  # copied once per device, not at every training step
            self._on_device[dev] = tuple(
                v.to(dev) for v in (self.weights.cumsum(0), self.means, self.evecs, self.evals.sqrt())
            )
        cum, means, evecs, scale = self._on_device[dev]
        k = torch.searchsorted(cum, u.contiguous(), right=True).clamp(max=self.n_components - 1)
        if masked is None:
            masked = dev.type == "cpu"
        x = torch.empty_like(z)
        for j in range(self.n_components):  # K is small; avoids an [n, d, d] gather
            rows = k == j
            if masked:
                x[rows] = means[j] + (z[rows] * scale[j]) @ evecs[j].T
            else:
                x = torch.where(rows[:, None], means[j] + (z * scale[j]) @ evecs[j].T, x)
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at ``x`` of shape ``[..., d]``."""
        return _MixtureAtTime(self, x, torch.ones((), dtype=torch.float64), 0.0).log_prob().to(x.dtype)


class _MixtureAtTime:
    """The mixture scaled by t and convolved with ``N(0, v I)``: components ``N(t m_k, A_k)``,
    ``A_k = U_k diag(t^2 lambda_k + v) U_k^T`` (2.2). Holds the eigenbasis coordinates
    ``z_k = U_k^T (x - t m_k)`` and diagonals ``a_k`` shared by density, posterior and velocity."""

    def __init__(self, mixture: GaussianMixture, x: Tensor, t: Tensor, v: Tensor | float) -> None:
        if x.shape[-1] != mixture.dim:
            raise ValueError(
                f"x of shape {tuple(x.shape)} is not allowed: its last dimension must be the mixture's d={mixture.dim}"
            )
        dev = x.device
        self.mix = mixture
        self.means = mixture.means.to(dev)
        self.evecs = mixture.evecs.to(dev)
        evals = mixture.evals.to(dev)
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64, device=dev)[..., None, None]  # [..., 1, 1]
        v = torch.as_tensor(v, dtype=torch.float64, device=dev)[..., None, None]
        self.t = t
        self.diff = x[..., None, :] - t * self.means  # [..., K, d]
        self.z = torch.einsum("...kd,kde->...ke", self.diff, self.evecs)
        self.a = t**2 * evals + v  # [..., K, d]
        self.evals = evals

    def component_log_prob(self) -> Tensor:
        """``log N(x; t m_k, A_k)`` for each k, shape ``[..., K]``."""
        d = self.mix.dim
        quad = (self.z**2 / self.a).sum(-1)
        return -0.5 * (quad + torch.log(self.a).sum(-1) + d * math.log(2 * math.pi))

    def log_joint(self) -> Tensor:
        return torch.log(self.mix.weights.to(self.z.device)) + self.component_log_prob()

    def log_prob(self) -> Tensor:
        return torch.logsumexp(self.log_joint(), dim=-1)

    def responsibilities(self) -> Tensor:
        """``r_k(x) = P(k | x_t = x)``, a softmax in log-space, shape ``[..., K]``."""
        return torch.softmax(self.log_joint(), dim=-1)

    def combine(self, coef: Tensor, offset: Tensor | None) -> Tensor:
        """``sum_k r_k [offset_k + U_k diag(coef_k) z_k]`` for a coefficient ``[..., K, d]``."""
        r = self.responsibilities()
        rotated = torch.einsum("...ke,kde->...kd", coef * self.z, self.evecs)
        if offset is not None:
            rotated = rotated + offset
        return (r[..., None] * rotated).sum(-2)


class BridgeOracle:
    """Exact quantities of the bridge ``path`` for Gaussian-mixture data ``mixture`` (section 2)."""

    def __init__(self, mixture: GaussianMixture, path: BrownianBridge) -> None:
        self.mixture = mixture
        self.path = path

    def __repr__(self) -> str:
        return f"BridgeOracle(K={self.mixture.n_components}, d={self.mixture.dim}, {self.path!r})"

    # -- coefficients of t --------------------------------------------------------------
    def noise_variance(self, t: Tensor | float) -> Tensor:
        """``v_t = (1 - t)^2 + sigma^2 t (1 - t)`` (2.1), per dimension."""
        t = as_time(t)
        return (1 - t) ** 2 + self.path.sigma**2 * t * (1 - t)

    def b(self, t: Tensor | float) -> Tensor:
        """``b_t = -(1 - t) + sigma^2 (1 - 2t) / 2 = c_t v_t`` (2.3)."""
        t = as_time(t)
        return -(1 - t) + self.path.sigma**2 * (1 - 2 * t) / 2

    def _at(self, x: Tensor, t: Tensor | float) -> _MixtureAtTime:
        t = as_time(t, x).to(torch.float64)
        if t.ndim > 0 and tuple(t.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"t of shape {tuple(t.shape)} is not allowed for x of shape {tuple(x.shape)}: "
                f"t must be a scalar or have shape {tuple(x.shape[:-1])}"
            )
        check_unit_interval(t)
        return _MixtureAtTime(self.mixture, x, t, self.noise_variance(t))

    # -- the marginal path p_t ----------------------------------------------------------
    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``log p_t(x)``, the density of ``x_t`` (a mixture of (2.2))."""
        return self._at(x, t).log_prob().to(x.dtype)

    def sample_marginal(
        self, t: Tensor | float, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact draws of ``x_t = t x1 + sqrt(v_t) z``; t scalar gives ``[n, d]``, t of shape
        ``[T]`` gives ``[T, n, d]``."""
        t = as_time(t).to(torch.float64)
        x1 = self.mixture.sample(t.numel() * n, generator, dtype=torch.float64).reshape(*t.shape, n, -1)
        z = torch.randn(x1.shape, generator=generator, dtype=torch.float64)
        tt = t[..., None, None]
        return (tt * x1 + self.noise_variance(tt).sqrt() * z).to(torch.get_default_dtype())

    def posterior_mean(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``E[x1 | x_t = x] = sum_k r_k [m_k + t S_k A_k^{-1} (x - t m_k)]``."""
        at = self._at(x, t)
        return at.combine(at.t * at.evals / at.a, at.means).to(x.dtype)

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``grad_x log p_t(x) = -sum_k r_k A_k^{-1} (x - t m_k)``."""
        at = self._at(x, t)
        return at.combine(-1 / at.a, None).to(x.dtype)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The exact marginal velocity ``v*(x, t) = E[u_t | x_t = x]`` by (2.4).

        Args:
            x: points ``[..., d]``.
            t: a scalar or one time per point, shape ``x.shape[:-1]``, in [0, 1].
        """
        at = self._at(x, t)
        b = self.b(at.t)
        return at.combine((at.t * at.evals + b) / at.a, at.means).to(x.dtype)

    # -- the per-t loss decomposition ----------------------------------------------------
    def target_second_moment(self, t: Tensor | float) -> Tensor:
        """Per-dimension ``E ||u_t||^2 / d = E||x1||^2/d + 1 + s'_t^2`` (x0, x1, eps independent)."""
        t = as_time(t).to(torch.float64)
        return self.mixture.second_moment() + 1 + self.path.noise_second_moment(t)

    def target_variance(self, t: Tensor | float) -> Tensor:
        """Per-dimension ``E ||u_t - E u_t||^2 / d = tr Cov(x1)/d + 1 + s'_t^2`` (``E u_t = E x1``)."""
        t = as_time(t).to(torch.float64)
        tr = float(torch.diagonal(self.mixture.covariance()).sum()) / self.mixture.dim
        return tr + 1 + self.path.noise_second_moment(t)

    def irreducible_loss(
        self, t: Tensor | float, n: int = 4096, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-dimension ``E ||u_t - v*(x_t, t)||^2 / d``, the least loss any model reaches at t.

        Since ``v* = E[u_t | x_t]``, it equals ``E||u_t||^2/d - E||v*(x_t, t)||^2/d``: the first
        term is exact (:meth:`target_second_moment`) and only the second is estimated, from
        ``n`` exact draws of ``x_t`` per time. This keeps the large ``s'_t^2`` part near the
        endpoints free of Monte-Carlo noise (in mid-t, where ``||v*||^2`` varies much, a plain
        mean of ``||u_t - v*||^2`` can be the less noisy one: benchmarks/oracle_accuracy.py
        prints both with their standard errors). t scalar gives a scalar, t [T] gives [T].
        """
        t = as_time(t).to(torch.float64)
        x = self.sample_marginal(t, n, generator).to(torch.float64)
        tt = t[..., None].expand(x.shape[:-1])
        v = self.velocity(x, tt)
        return self.target_second_moment(t) - (v**2).mean(dim=(-1, -2))

    def excess_loss(
        self,
        model: VelocityFn,
        t: Tensor | float,
        x: Tensor | None = None,
        n: int = 4096,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-dimension ``E ||v_theta(x_t, t) - v*(x_t, t)||^2 / d`` at one time t.

        Args:
            model: ``model(x [N, d], t [N]) -> [..., N, d]``; leading dimensions (ensemble
                members) are kept in the result.
            t: a scalar time.
            x: points distributed as ``x_t`` (e.g. a fixed probe set); drawn exactly
                (``n`` of them, from ``generator``) when omitted.
        """
        if x is None:
            x = self.sample_marginal(t, n, generator)
        tt = as_time(t, x).expand(x.shape[:-1])
        with torch.no_grad():
            err = model(x, tt) - self.velocity(x, tt)
        return (err**2).mean(dim=(-1, -2))

    def quadrature(
        self,
        n_nodes: int = 16,
        n: int = 1024,
        generator: torch.Generator | None = None,
        t_range: tuple[float, float] = (0.0, 1.0),
    ) -> "ExcessQuadrature":
        """Fixed points for ``int excess(t) dt`` over ``t_range``: ``n_nodes`` Gauss-Legendre
        nodes (which avoid the endpoints), ``n`` exact draws of ``x_t`` per node, and ``v*``
        there, computed once. With a seeded generator every checkpoint is measured on the same
        points, so differences between checkpoints carry no sampling noise of their own."""
        lo, hi = t_range
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"t_range={t_range} is not allowed: it must satisfy 0 <= lo < hi <= 1")
        nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
        nodes = lo + (hi - lo) * (nodes + 1) / 2
        weights = weights * (hi - lo) / 2
        x = self.sample_marginal(torch.as_tensor(nodes), n, generator)  # [J, n, d]
        t = torch.as_tensor(nodes, dtype=x.dtype)[:, None].expand(n_nodes, n)
        x, t = x.reshape(n_nodes * n, -1), t.reshape(-1)
        return ExcessQuadrature(x, t, self.velocity(x.double(), t.double()), torch.as_tensor(weights), n_nodes)

    def integrated_excess(
        self,
        model: VelocityFn,
        n_nodes: int = 16,
        n: int = 1024,
        generator: torch.Generator | None = None,
        t_range: tuple[float, float] = (0.0, 1.0),
    ) -> Tensor:
        """``int excess(t) dt`` over ``t_range`` by Gauss-Legendre quadrature (:meth:`quadrature`)."""
        return self.quadrature(n_nodes, n, generator, t_range).evaluate(model)


@dataclass(frozen=True)
class ExcessQuadrature:
    """Points ``x [J n, d]`` at times ``t [J n]`` (n per node), the exact ``v*`` there, and the
    Gauss-Legendre weights ``[J]``: ``int excess dt ~ sum_j w_j mean_i ||v - v*||^2 / d``."""

    x: Tensor
    t: Tensor
    target: Tensor
    weights: Tensor
    n_nodes: int

    def to(self, device: torch.device | str) -> "ExcessQuadrature":
        return ExcessQuadrature(self.x.to(device), self.t.to(device), self.target.to(device), self.weights.to(device), self.n_nodes)

    @torch.no_grad()
    def evaluate(self, model: VelocityFn) -> Tensor:
        """One model call on all points; leading (member) dimensions are kept."""
        err = ((model(self.x, self.t).double() - self.target) ** 2).mean(-1)  # [..., J n]
        per_node = err.reshape(*err.shape[:-1], self.n_nodes, -1).mean(-1)
        return (per_node * self.weights).sum(-1)
