"""The variance account (STUDY.md 4.5) against Monte Carlo over a finite population of
per-sample gradients, Cauchy-Schwarz optimality on random moments, and the jackknife's errors
against the spread of repeated estimates."""

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from fmstudy.models import MLPConfig, VelocityMLP
from fmstudy.paths import BrownianBridge
from fmstudy.variance import (
    GradientMoments,
    account_with_errors,
    neyman_proposal,
    optimal_proposal,
    proposal_variance,
    stratified_variance,
    variance_account,
)


@pytest.fixture(scope="module")
def population():
    """Per-sample gradients of a small model at K bins x n points (the finite population that
    a minibatch draws from: a bin by q, then a point uniformly within the bin)."""
    k, n = 4, 40
    g = torch.Generator().manual_seed(3)
    edges = torch.linspace(0.02, 0.98, k + 1, dtype=torch.float64)
    t = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * torch.rand(k, n, generator=g, dtype=torch.float64)
    x0, x1, eps = (torch.randn(k, n, 2, generator=g, dtype=torch.float64) for _ in range(3))
    x1 = 3 * x1 + 4 * torch.arange(k, dtype=torch.float64)[:, None, None]  # bins differ in mean gradient
    s = BrownianBridge(0.8, 0.02).sample(x0, x1, t, eps)
    model = VelocityMLP(MLPConfig(dim=2, hidden=8, depth=1, n_freqs=2), seed=1).double()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p, x, tt, u):
        return ((functional_call(model, p, (x[None], tt[None])) - u[None]) ** 2).mean()

    per = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, s.xt.reshape(-1, 2), t.reshape(-1), s.ut.reshape(-1, 2))
    return torch.cat([v.flatten(1) for v in per.values()], 1).reshape(k, n, -1)  # [K, n, D]


def truth(pop):
    k = pop.shape[0]
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    second = pop.pow(2).sum(-1).mean(1)
    g_k = pop.mean(1)
    noise = (pop - g_k[:, None]).pow(2).sum(-1).mean(1)  # population within-bin variance
    full = (p[:, None] * g_k).sum(0)
    return p, second, noise, full


def monte_carlo(pop, q, batch, draws, stratified, seed=0):
    """B * tr Cov of the reweighted minibatch gradient (and its mean), by repeated draws."""
    k, n, _ = pop.shape
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / k
    if stratified:  # exactly B q_k draws in bin k
        counts = (batch * q).round().long()
        assert int(counts.sum()) == batch and torch.allclose(counts.double(), batch * q)
        bins = torch.repeat_interleave(torch.arange(k), counts).expand(draws, batch)
    else:
        bins = torch.multinomial(q.expand(draws, k), batch, replacement=True, generator=g)
    idx = torch.randint(n, (draws, batch), generator=g)
    w = (p / q)[bins]
    est = (w[..., None] * pop[bins, idx]).mean(1)  # [draws, D]
    return batch * (est - est.mean(0)).pow(2).sum(-1).mean() * draws / (draws - 1), est.mean(0)


@pytest.mark.parametrize("which", ["uniform", "optimal", "skewed", "neyman"])
def test_formula_equals_monte_carlo_variance(population, which):
    p, second, noise, full = truth(population)
    q = {
        "uniform": p,
        "optimal": optimal_proposal(p, second),
        "skewed": torch.tensor([0.05, 0.15, 0.25, 0.55], dtype=torch.float64),
        "neyman": neyman_proposal(p, noise),
    }[which]
    v_formula = proposal_variance(p, second, full.pow(2).sum(), q)
    v_mc, mean = monte_carlo(population, q, batch=8, draws=40000, stratified=False)
    assert full.pow(2).sum() > 0.3 * v_formula  # dropping ||G||^2 would fail the 5% check
    # Relative error of a variance from 40000 draws: a few per cent at these kurtoses.
    assert abs(float(v_mc / v_formula) - 1) < 0.05, (which, float(v_mc), float(v_formula))
    assert float((mean - full).norm() / full.norm()) < 0.05  # unbiased for G


def test_stratified_formula_equals_monte_carlo(population):
    p, second, noise, full = truth(population)
    for q in (p, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)):
        v_formula = stratified_variance(p, noise, q)
        # The between-bin part is far above the tolerance, so the unstratified formula would fail.
        assert proposal_variance(p, second, full.pow(2).sum(), q) > 1.2 * v_formula
        v_mc, mean = monte_carlo(population, q, batch=20, draws=40000, stratified=True)
        assert abs(float(v_mc / v_formula) - 1) < 0.05
        assert float((mean - full).norm() / full.norm()) < 0.05


def random_moments(gen, m, k, dim=5):
    """Moments built from vectors: G_k random, N_k > 0, so S_k = N_k + ||G_k||^2, G = sum p G_k."""
    p = torch.rand(m, k, generator=gen, dtype=torch.float64) + 0.1
    p = p / p.sum(1, keepdim=True)
    g_k = torch.randn(m, k, dim, generator=gen, dtype=torch.float64) * torch.rand(m, k, 1, generator=gen, dtype=torch.float64) * 3
    noise = torch.rand(m, k, generator=gen, dtype=torch.float64) ** 3 * 10 + 1e-3
    second = noise + g_k.pow(2).sum(-1)
    full_sq = (p[..., None] * g_k).sum(1).pow(2).sum(-1)
    return p, second, noise, full_sq


def test_optimal_proposal_beats_every_other_on_random_moments():
    gen = torch.Generator().manual_seed(7)
    p, second, noise, full_sq = random_moments(gen, 2000, 6)
    q_star = optimal_proposal(p, second)
    v_star = proposal_variance(p, second, full_sq, q_star)
    torch.testing.assert_close(v_star, (p * second.sqrt()).sum(1) ** 2 - full_sq)
    for _ in range(20):  # random proposals, from near-degenerate to near-uniform
        q = torch.rand(2000, 6, generator=gen, dtype=torch.float64) ** 4 + 1e-3
        q = q / q.sum(1, keepdim=True)
        assert bool((proposal_variance(p, second, full_sq, q) >= v_star - 1e-9 * v_star.abs()).all())
        # Neyman is optimal among stratified allocations.
        assert bool((stratified_variance(p, noise, q) >= stratified_variance(p, noise, neyman_proposal(p, noise)) * (1 - 1e-12)).all())
    # Small perturbations of q* can only increase V: q* is the minimiser, not a stationary point elsewhere.
    bump = q_star * (1 + 0.01 * torch.randn(2000, 6, generator=gen, dtype=torch.float64))
    assert bool((proposal_variance(p, second, full_sq, bump / bump.sum(1, keepdim=True)) >= v_star).all())


def test_neyman_with_stratified_draws_beats_optimal_when_bins_differ():
    gen = torch.Generator().manual_seed(8)
    p, second, noise, full_sq = random_moments(gen, 500, 5)
    acc = variance_account(p, second, noise, full_sq)
    between = acc["between"]
    assert bool((between > 0).all())  # the G_k differ, so stratifying removes something
    assert bool((acc["v_neyman"] < acc["v_opt"]).all())
    assert bool((acc["ceiling"] >= 1 - 1e-12).all()) and bool((acc["ceiling_strat"] >= acc["ceiling"]).all())
    # Without between-bin spread (all G_k equal to G) the stratified and plain accounts agree.
    same = torch.zeros_like(second)
    acc0 = variance_account(p, noise, noise, same.sum(1))
    torch.testing.assert_close(acc0["v_uniform"], acc0["v_strat_uniform"])


def test_jackknife_errors_match_the_spread_of_repeated_estimates():
    """Truth known; R groups of noisy unbiased moments; over many repetitions (the member axis)
    the spread of each estimate matches its mean standard error, and for linear quantities the
    jackknife is exactly sd / sqrt(R)."""
    gen = torch.Generator().manual_seed(9)
    reps, r, k = 4000, 8, 5
    p, second, noise, full_sq = (x[:1] for x in random_moments(gen, 1, k))
    mean_sq = second - noise

    def noisy(x, rel):
        return x * (1 + rel * torch.randn(r, reps, *x.shape[1:], generator=gen, dtype=torch.float64))

    moments = GradientMoments(noisy(second, 0.3), noisy(noise, 0.3), noisy(mean_sq, 0.3), noisy(full_sq, 0.3), p[0], 16)
    q = torch.tensor([[0.4, 0.3, 0.1, 0.1, 0.1]], dtype=torch.float64)
    out = account_with_errors(moments, {"mine": q})
    pooled = moments.pooled()
    linear = proposal_variance(p[0], pooled["second"], pooled["full_sq"], q)
    torch.testing.assert_close(out["v_mine"], linear)
    each = proposal_variance(p[0], moments.second, moments.full_sq, q)  # [R, reps]
    torch.testing.assert_close(out["v_mine_se"], each.std(0) / math.sqrt(r))
    for name in ("v_uniform", "v_opt", "ceiling", "gain_mine", "v_neyman"):
        spread, se = float(out[name].std()), float(out[f"{name}_se"].mean())
        assert 0.85 < se / spread < 1.15, (name, se, spread)
    with pytest.raises(ValueError, match="groups=1"):
        account_with_errors(GradientMoments(*(x[:1] for x in (moments.second, moments.noise, moments.mean_sq, moments.full_sq)), p[0], 16))
