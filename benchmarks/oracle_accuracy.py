"""How close the exact oracle is to Monte Carlo that never calls it (numbers for the record).

For a 1-D three-component mixture and the 2-D gmm8 benchmark, at several (sigma, t):
draw (x0, x1, eps) from the definitions, bin x_t finely, and compare the per-bin mean of u_t
with the per-bin mean of v*(x_t) (equal when v* = E[u_t | x_t]); report the largest
difference in standard errors and the count-weighted mean absolute difference. Then the
irreducible loss: the oracle's estimate against the plain Monte-Carlo mean of
||u_t - v*(x_t)||^2 / d.

    python benchmarks/oracle_accuracy.py [--n 2000000]
"""

from __future__ import annotations

import argparse
import math

import torch

from fmstudy.data import get_benchmark
from fmstudy.oracle import BridgeOracle, GaussianMixture
from fmstudy.paths import BrownianBridge


def draws(mixture: GaussianMixture, sigma: float, t: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x1 = mixture.sample(n, g, dtype=torch.float64)
    x0 = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    eps = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    xt = (1 - t) * x0 + t * x1 + sigma * math.sqrt(t * (1 - t)) * eps
    ut = x1 - x0 + sigma * (1 - 2 * t) / (2 * math.sqrt(t * (1 - t))) * eps
    return xt, ut


def binned_errors(xt: torch.Tensor, ut: torch.Tensor, v: torch.Tensor, width: float) -> tuple[float, float]:
    """(max |z| over bins with >= 400 points, count-weighted mean |mean u - mean v*|)."""
    cells = torch.floor(xt / width).long()
    cells = cells - cells.min(0).values
    key = cells[:, 0] if xt.shape[1] == 1 else cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
    _, key = torch.unique(key, return_inverse=True)
    count = torch.bincount(key).double()
    keep = count >= 400
    zmax, num, den = 0.0, 0.0, 0.0
    for j in range(ut.shape[1]):
        mu = torch.bincount(key, ut[:, j])[keep] / count[keep]
        mv = torch.bincount(key, v[:, j])[keep] / count[keep]
        var = torch.bincount(key, ut[:, j] ** 2)[keep] / count[keep] - mu**2
        zmax = max(zmax, float(((mu - mv) / (var / count[keep]).sqrt()).abs().max()))
        num += float(((mu - mv).abs() * count[keep]).sum())
        den += float(count[keep].sum())
    return zmax, num / den


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    args = parser.parse_args()
    one_d = GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[-3.0], [0.5], [4.0]]), torch.tensor([0.3, 0.8, 0.1]))
    cases = [("1-D mixture", one_d, 0.05), ("gmm8", get_benchmark("gmm8").mixture, 0.2)]
    print(f"{'data':<12} {'sigma':>5} {'t':>5} {'max |z|':>8} {'mean |err|':>11} {'irreducible':>12} {'s.e.':>8} {'MC':>10} {'MC s.e.':>8}")
    for name, mixture, width in cases:
        for sigma, t in [(0.0, 0.4), (0.5, 0.5), (1.0, 0.15), (1.0, 0.85)]:
            oracle = BridgeOracle(mixture, BrownianBridge(sigma))
            xt, ut = draws(mixture, sigma, t, args.n, seed=1)
            v = oracle.velocity(xt, t)
            zmax, err = binned_errors(xt, ut, v, width)
            sq = ((ut - v) ** 2).mean(1)
            m = args.n // 4
            irr = float(oracle.irreducible_loss(t, n=m, generator=torch.Generator().manual_seed(2)))
            # The oracle's estimator is exact E||u||^2/d minus a mean of ||v*||^2/d: its s.e.
            marginal = oracle.sample_marginal(t, m, torch.Generator().manual_seed(2)).double()
            irr_se = float((oracle.velocity(marginal, t) ** 2).mean(-1).std()) / math.sqrt(m)
            mc_se = float(sq.std()) / math.sqrt(len(sq))
            print(
                f"{name:<12} {sigma:>5} {t:>5} {zmax:>8.2f} {err:>11.2e} {irr:>12.5f} {irr_se:>8.1e} {float(sq.mean()):>10.5f} {mc_se:>8.1e}"
            )


if __name__ == "__main__":
    main()
