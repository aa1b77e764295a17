"""The squared Frechet distance between Gaussians fitted to two feature sets (STUDY.md section 6).

``gaussian_frechet`` is the closed form between two Gaussians, ``frechet_distance`` the quantity
FID reports: it fits them to two feature sets (in this study the features of
:mod:`fmstudy.feature_classifier`). ``_one_cpu_thread`` runs such small work on one thread.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .metric_base import _F64, _pair

__all__ = ["frechet_distance", "gaussian_frechet"]


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run small CPU work (128 x 128 eigendecompositions, batches of 64-128 rows) on one
    intra-op thread, restoring the caller's setting afterwards. On a busy machine the spin-waits
    of idle threads made it far slower (measured with 2 threads: a 128 x 128 eigh 0.01 s ->
    1.4 s, digits training 4 s -> 26 s), and work this small gains nothing from threads."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sym_eig(a: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the symmetric part of a PSD matrix; eigenvalues below the rounding
    level (k * eps * largest) are set to 0, so a rank-deficient covariance adds no sqrt(1e-16) noise."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    tol = a.shape[0] * torch.finfo(_F64).eps * w.abs().max().clamp_min(1e-300)
    return torch.where(w > tol, w, torch.zeros_like(w)), v


def gaussian_frechet(mu_x: Tensor, cov_x: Tensor, mu_y: Tensor, cov_y: Tensor) -> float:
    """Squared Frechet (W2) distance between N(mu_x, S_x) and N(mu_y, S_y):

        ||mu_x - mu_y||^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^{1/2} S_y S_x^{1/2})^{1/2})

    via two symmetric eigendecompositions: S_x^{1/2} = V diag(sqrt w) V^T, then the trace term
    is the sum of sqrt of the (real, >= 0) eigenvalues of the symmetric S_x^{1/2} S_y S_x^{1/2}."""
    mu_x, mu_y = (torch.as_tensor(v, dtype=_F64).reshape(-1) for v in (mu_x, mu_y))
    cov_x, cov_y = (torch.as_tensor(c, dtype=_F64) for c in (cov_x, cov_y))
    k = mu_x.shape[0]
    if mu_y.shape[0] != k or cov_x.shape != (k, k) or cov_y.shape != (k, k):
        raise ValueError(
            f"shapes mu_x {list(mu_x.shape)}, cov_x {list(cov_x.shape)}, mu_y {list(mu_y.shape)}, cov_y {list(cov_y.shape)} "
            f"are not allowed: expected [k], [k, k], [k], [k, k]"
        )
    cov_y = cov_y.to(cov_x.device)
    with _one_cpu_thread(cov_x.device):
        w, v = _sym_eig(cov_x)
        root_x = (v * w.sqrt()) @ v.T
        inner, _ = _sym_eig(root_x @ cov_y @ root_x)
    val = ((mu_x - mu_y.to(mu_x.device)) ** 2).sum() + cov_x.trace() + cov_y.trace() - 2 * inner.sqrt().sum()
    return max(float(val), 0.0)  # >= 0 mathematically; rounding can leave -1e-15


def frechet_distance(feat_x: Tensor, feat_y: Tensor) -> float:
    """Squared Frechet distance (the quantity FID reports) between Gaussians fitted to two
    feature sets: sample means and covariances with the 1/(n - 1) normalisation."""
    fx, fy = _pair(feat_x, feat_y, min_rows=2)

    def stats(f: Tensor) -> tuple[Tensor, Tensor]:
        mu = f.mean(0)
        c = f - mu
        return mu, c.T @ c / (f.shape[0] - 1)

    return gaussian_frechet(*stats(fx), *stats(fy))
