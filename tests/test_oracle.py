"""The Gaussian-mixture oracle against independent computations (STUDY.md section 2):
a closed form at sigma = 0 written with scipy, binned Monte-Carlo estimates of E[u_t | x_t]
that never call the oracle, Monte-Carlo loss decompositions, and transport of noise to data."""

import math

import numpy as np
import pytest
import torch
from mixtures import mixture_1d, mixture_2d
from scipy import stats

from fmstudy.oracle import BridgeOracle, GaussianMixture
from fmstudy.paths import BrownianBridge


def path_samples(mixture, path, t, n, seed):
    """(x_t, u_t) drawn from the definitions in STUDY.md section 1, without the library."""
    g = torch.Generator().manual_seed(seed)
    x1 = mixture.sample(n, g, dtype=torch.float64)
    x0 = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    eps = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    s = path.sigma
    xt = (1 - t) * x0 + t * x1 + s * math.sqrt(t * (1 - t)) * eps
    ut = x1 - x0 + s * (1 - 2 * t) / (2 * math.sqrt(t * (1 - t))) * eps
    return xt, ut


def test_mixture_log_prob_and_moments_against_scipy():
    mix = mixture_2d()
    x = torch.randn(50, 2, dtype=torch.float64) * 3
    ref = np.log(
        sum(
            float(w) * stats.multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
            for w, m, c in zip(mix.weights, mix.means, mix.covs)
        )
    )
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10)
    draws = mix.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(draws.mean(0), mix.weights @ mix.means, atol=0.02)
    np.testing.assert_allclose(torch.cov(draws.T), mix.covariance(), atol=0.05)
    assert (draws**2).sum(1).mean() / 2 == pytest.approx(mix.second_moment(), rel=0.01)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.9, 0.999])
def test_sigma_zero_matches_closed_form_written_with_scipy(t):
    """sigma = 0: v*(x, t) = (E[x1 | x_t = x] - x) / (1 - t), with the posterior computed
    directly from Bayes' rule (scipy densities, dense linear solves)."""
    mix = mixture_2d()
    oracle = BridgeOracle(mix, BrownianBridge(0.0))
    x = torch.randn(40, 2, dtype=torch.float64) * 3
    vt = (1 - t) ** 2
    dens, cond = [], []
    for w, m, c in zip(mix.weights.numpy(), mix.means.numpy(), mix.covs.numpy()):
        a = t**2 * c + vt * np.eye(2)
        dens.append(w * stats.multivariate_normal(t * m, a).pdf(x.numpy()))
        cond.append(m + (t * c @ np.linalg.solve(a, (x.numpy() - t * m).T)).T)
    r = np.array(dens) / np.sum(dens, axis=0)
    post = np.einsum("kn,knd->nd", r, np.array(cond))
    np.testing.assert_allclose(oracle.posterior_mean(x, t).numpy(), post, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(oracle.velocity(x, t).numpy(), (post - x.numpy()) / (1 - t), rtol=1e-7, atol=1e-7)


def test_score_is_the_gradient_of_log_prob():
    mix = mixture_2d()
    oracle = BridgeOracle(mix, BrownianBridge(0.8))
    x = (torch.randn(30, 2, dtype=torch.float64) * 3).requires_grad_()
    t = torch.rand(30, dtype=torch.float64)
    (grad,) = torch.autograd.grad(oracle.log_prob(x, t).sum(), x)
    torch.testing.assert_close(oracle.score(x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def binned_check(xt, ut, v, bins):
    """Per-bin means of u_t and of v*(x_t): equal when v* = E[u_t | x_t]. Returns the largest
    |difference| in standard errors and the count-weighted mean absolute difference."""
    flat = bins.reshape(-1)
    n_bins = int(flat.max()) + 1
    count = torch.bincount(flat, minlength=n_bins).double()
    keep = count >= 400
    zs, errs, ws = [], [], []
    for dim in range(ut.shape[1]):
        su = torch.bincount(flat, ut[:, dim], n_bins)
        su2 = torch.bincount(flat, ut[:, dim] ** 2, n_bins)
        sv = torch.bincount(flat, v[:, dim], n_bins)
        mu, mv = su[keep] / count[keep], sv[keep] / count[keep]
        se = torch.sqrt((su2[keep] / count[keep] - mu**2) / count[keep])
        zs.append(((mu - mv) / se).abs().max())
        errs.append((mu - mv).abs())
        ws.append(count[keep])
    err = float((torch.cat(errs) * torch.cat(ws)).sum() / torch.cat(ws).sum())
    return float(torch.stack(zs).max()), err, int(keep.sum())


@pytest.mark.parametrize("sigma,t", [(0.0, 0.4), (0.7, 0.4), (1.5, 0.15), (1.0, 0.85)])
def test_velocity_matches_binned_monte_carlo_1d(sigma, t):
    mix = mixture_1d()
    path = BrownianBridge(sigma)
    xt, ut = path_samples(mix, path, t, 2_000_000, seed=10)
    bins = torch.bucketize(xt[:, 0], torch.linspace(-8, 8, 321, dtype=torch.float64))
    v = BridgeOracle(mix, path).velocity(xt, t)
    z, err, used = binned_check(xt, ut, v, bins)
    assert used > 100
    assert z < 5.0, (z, err)  # ~300 bins: the largest of 300 standard normals is rarely above 4
    # A field that is wrong by a little is caught: shift v* by a tenth of u_t's spread and the check fails.
    z_wrong, _, _ = binned_check(xt, ut, v + 0.1 * ut.std(), bins)
    assert z_wrong > 8.0


@pytest.mark.parametrize("sigma,t", [(0.0, 0.5), (1.0, 0.6), (2.0, 0.3)])
def test_velocity_matches_binned_monte_carlo_2d(sigma, t):
    mix = mixture_2d()
    path = BrownianBridge(sigma)
    xt, ut = path_samples(mix, path, t, 2_000_000, seed=11)
    edges = torch.linspace(-6, 6, 61, dtype=torch.float64)
    ix = torch.bucketize(xt[:, 0].contiguous(), edges)
    iy = torch.bucketize(xt[:, 1].contiguous(), edges)
    v = BridgeOracle(mix, path).velocity(xt, t)
    z, err, used = binned_check(xt, ut, v, ix * 62 + iy)
    assert used > 100
    assert z < 5.5, (z, err)


@pytest.mark.parametrize("sigma,t", [(0.0, 0.3), (0.5, 0.5), (1.0, 0.05), (1.0, 0.97)])
def test_irreducible_loss_against_monte_carlo(sigma, t):
    """The oracle's estimate (exact E||u||^2 minus E||v*||^2) against two others: the plain
    Monte-Carlo mean of ||u_t - v*(x_t)||^2, and in 1-D the within-bin variance of u_t,
    which uses no oracle at all."""
    mix = mixture_2d()
    path = BrownianBridge(sigma)
    oracle = BridgeOracle(mix, path)
    value = float(oracle.irreducible_loss(t, n=200_000, generator=torch.Generator().manual_seed(2)))
    xt, ut = path_samples(mix, path, t, 400_000, seed=12)
    sq = ((ut - oracle.velocity(xt, t)) ** 2).mean(1)
    mc, se = float(sq.mean()), float(sq.std() / math.sqrt(len(sq)))
    assert abs(value - mc) < 4 * se + 1e-3 * abs(mc), (value, mc, se)

    mix1 = mixture_1d()
    oracle1 = BridgeOracle(mix1, path)
    xt, ut = path_samples(mix1, path, t, 2_000_000, seed=13)
    bins = torch.bucketize(xt[:, 0], torch.linspace(-8, 8, 1601, dtype=torch.float64))
    count = torch.bincount(bins).double()
    mean_u = torch.bincount(bins, ut[:, 0]) / count.clamp(min=1)
    within = float(((ut[:, 0] - mean_u[bins]) ** 2).mean())
    exact = float(oracle1.irreducible_loss(t, n=400_000, generator=torch.Generator().manual_seed(3)))
    assert within == pytest.approx(exact, rel=0.02, abs=2e-3), (within, exact)


def test_loss_decomposes_into_irreducible_plus_excess():
    """E||v - u_t||^2 = irreducible(t) + excess(t) for a model v that is not v*."""
    mix = mixture_2d()
    path = BrownianBridge(0.6)
    oracle = BridgeOracle(mix, path)
    t = 0.35

    def model(x, tt):
        return 0.5 * x - 1.0

    xt, ut = path_samples(mix, path, t, 400_000, seed=14)
    loss = ((model(xt, t) - ut) ** 2).mean(1)
    g = torch.Generator().manual_seed(5)
    total = float(oracle.irreducible_loss(t, 200_000, g) + oracle.excess_loss(model, t, n=200_000, generator=g))
    assert total == pytest.approx(float(loss.mean()), abs=4 * float(loss.std()) / math.sqrt(len(loss)))


def test_excess_and_integrated_excess_of_shifted_fields():
    """excess(v* + a) = ||a||^2 / d; integrated over [0, 1] for v* + t a it is ||a||^2 / (3 d).
    An ensemble-shaped model output [M, N, d] gives one value per member."""
    mix = mixture_2d()
    oracle = BridgeOracle(mix, BrownianBridge(0.9))
    a = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert float(oracle.excess_loss(oracle.velocity, 0.4, n=256)) == pytest.approx(0.0, abs=1e-20)
    shifted = float(oracle.excess_loss(lambda x, t: oracle.velocity(x, t) + a, 0.4, n=256))
    assert shifted == pytest.approx(0.125, rel=1e-10)

    def ensemble(x, t):
        return torch.stack([oracle.velocity(x, t) + k * t[..., None] * a for k in range(3)])

    got = oracle.integrated_excess(ensemble, n_nodes=8, n=64)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.25 / 6, 0.25 * 4 / 6], dtype=torch.float64))


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_true_velocity_transports_noise_to_the_mixture(sigma):
    """Integrate dx/dt = v*(x, t) from x(0) ~ N(0, I) to t = 1 (RK4, written here), then compare
    with fresh mixture samples by the energy distance, against the floor between two real sets."""
    mix = mixture_2d()
    oracle = BridgeOracle(mix, BrownianBridge(sigma))
    g = torch.Generator().manual_seed(20)
    n, steps = 1500, 200
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = oracle.velocity(x, t)
        k2 = oracle.velocity(x + h / 2 * k1, t + h / 2)
        k3 = oracle.velocity(x + h / 2 * k2, t + h / 2)
        k4 = oracle.velocity(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def energy(a, b):
        return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())

    real = mix.sample(n, g, dtype=torch.float64)
    floors = [energy(mix.sample(n, g, dtype=torch.float64), mix.sample(n, g, dtype=torch.float64)) for _ in range(8)]
    assert energy(x, real) < max(floors) * 1.5 + 1e-3, (energy(x, real), floors)
    # A wrong field fails the same check: transport with a mistaken sign of b_t.
    wrong = BridgeOracle(mix, BrownianBridge(sigma))
    wrong.b = lambda tt: -BridgeOracle.b(oracle, tt)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    for i in range(steps):
        y = y + h * wrong.velocity(y, i * h)
    assert energy(y, real) > 5 * max(floors)


def test_oracle_bad_input_is_refused_in_one_line():
    mix = mixture_2d()
    oracle = BridgeOracle(mix, BrownianBridge(0.5))
    cases = [
        (lambda: oracle.velocity(torch.zeros(4, 2), 1.5), ["t=1.5", "[0, 1]"]),
        (lambda: oracle.velocity(torch.zeros(4, 3), 0.5), ["(4, 3)", "d=2"]),
        (lambda: oracle.velocity(torch.zeros(4, 2), torch.full((5,), 0.5)), ["(5,)", "(4,)"]),
        (lambda: GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2)), ["weights=", "sum to 1"]),
        (lambda: GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 2), -torch.ones(2)), ["eigenvalue", "positive definite"]),
        (lambda: oracle.integrated_excess(oracle.velocity, t_range=(0.5, 0.2)), ["t_range=(0.5, 0.2)"]),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
