"""Small Gaussian mixtures shared by the oracle and solver tests."""

import torch

from fmstudy.oracle import GaussianMixture


def mixture_1d() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[-3.0], [0.5], [4.0]]), torch.tensor([0.3, 0.8, 0.1]))


def mixture_2d(seed: int = 0) -> GaussianMixture:
    """Three components with full, anisotropic covariances."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(-1, -2) * 0.3 + 0.05 * torch.eye(2, dtype=torch.float64)
    means = torch.tensor([[-3.0, 0.0], [2.0, 2.5], [1.5, -3.0]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.3, 0.3, 0.4]), means, covs)
