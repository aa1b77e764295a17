"""Per-bin signals against an independent computation: per-sample gradients from torch.func."""

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from fmstudy.data import get_benchmark
from fmstudy.models import MLPConfig, VelocityEnsemble
from fmstudy.paths import BrownianBridge
from fmstudy.signals import measure_bins, probe_irreducible


def test_gradient_statistics_match_per_sample_gradients():
    bench = get_benchmark("gmm8")
    probes = bench.probes(n_bins=3, per_bin=24, t_eps=0.01)
    path = BrownianBridge(0.7, 0.01)
    ens = VelocityEnsemble(MLPConfig(dim=2, hidden=16, depth=2, n_freqs=2), seeds=[0, 1]).double()
    sig = measure_bins(ens, path, probes, bench.oracle(path))
    for k in range(3):
        s = path.sample(probes.x0[k].double(), probes.x1[k].double(), probes.t[k].double(), probes.eps[k].double())
        for i in range(2):
            single = ens.member(i).double()
            params = {n: p.detach() for n, p in single.named_parameters()}

            def loss(p, x, t, u):
                return ((functional_call(single, p, (x[None], t[None])) - u[None]) ** 2).mean()

            g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, s.xt, probes.t[k].double(), s.ut)
            flat = torch.cat([v.flatten(1) for v in g.values()], dim=1)  # [P, n_params]
            p = flat.shape[0]
            mean = flat.mean(0)
            cov_trace = ((flat - mean) ** 2).sum(1).sum() / (p - 1)  # unbiased tr Cov(g)
            torch.testing.assert_close(sig.grad_noise[i, k], cov_trace, rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(sig.grad_signal[i, k], mean.pow(2).sum() - cov_trace / p, rtol=1e-8, atol=1e-10)
            norms = flat.norm(dim=1)
            torch.testing.assert_close(sig.grad_norm_mean[i, k], norms.mean(), rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(sig.grad_norm_var[i, k], norms.var(), rtol=1e-8, atol=1e-10)
            with torch.no_grad():
                per = ((single(s.xt, probes.t[k].double()) - s.ut) ** 2).mean(-1)
            torch.testing.assert_close(sig.loss[i, k], per.mean(), rtol=1e-10, atol=1e-12)
    # Gradients were cleared, so measuring never leaks into a training step.
    assert all(p.grad is None for p in ens.parameters())
    # Oracle terms on the same probes: loss - irreducible - excess is the probe-noise cross term,
    # whose magnitude is bounded by Cauchy-Schwarz.
    irr = probe_irreducible(bench.oracle(path), path, probes)
    assert irr.shape == (3,) and bool((irr > 0).all())
    assert bool(((sig.loss - irr - sig.excess).abs() <= 2 * (irr * sig.excess).sqrt() + 0.5 * irr).all())


def test_variance_moments_match_per_sample_gradients():
    """measure_variance's S, N, ||G_k||^2 and ||G||^2 (Euclidean and in a diagonal metric P)
    against per-sample gradient vectors from torch.func, grouped by hand."""
    from fmstudy.signals import fresh_probes, measure_variance

    bench = get_benchmark("gmm8")
    k, groups, per = 3, 2, 6
    probes = fresh_probes(bench, n_bins=k, per_bin=per, t_eps=0.01, key=5)
    path = BrownianBridge(0.7, 0.01)
    ens = VelocityEnsemble(MLPConfig(dim=2, hidden=6, depth=2, n_freqs=2), seeds=[0, 1]).double()
    gen = torch.Generator().manual_seed(1)
    pw = [torch.rand(w.shape, generator=gen, dtype=torch.float64) + 0.1 for w in ens.weights]
    pb = [torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.1 for b in ens.biases]
    euclid, adam = measure_variance(ens, path, probes, groups=groups, precond=(pw, pb), bins_per_pass=2)
    assert euclid.second.shape == (groups, 2, k) and euclid.full_sq.shape == (groups, 2)
    # Without a metric the Euclidean cell norms come from Gram matrices where P is small: the same.
    alone, none = measure_variance(ens, path, probes, groups=groups, bins_per_pass=1)
    assert none is None
    for name in ("second", "noise", "mean_sq", "full_sq"):
        torch.testing.assert_close(getattr(alone, name), getattr(euclid, name), rtol=1e-10, atol=1e-12)
    p = per // groups
    for i in range(2):
        single = ens.member(i).double()
        params = {n: q.detach() for n, q in single.named_parameters()}
        # nn.Linear stores W as [out, in]; the ensemble as [in, out].
        diag = torch.cat([x.flatten() for pair in zip(pw, pb) for x in (pair[0][i].T, pair[1][i])])
        names = [n for n, _ in single.named_parameters()]
        assert names == [f"layers.{j}.{w}" for j in range(3) for w in ("weight", "bias")]

        def loss(q, x, t, u):
            return ((functional_call(single, q, (x[None], t[None])) - u[None]) ** 2).mean()

        means = torch.zeros(groups, k, diag.numel(), dtype=torch.float64)
        for b in range(k):
            t = probes.t[b].double()
            s = path.sample(probes.x0[b].double(), probes.x1[b].double(), t, probes.eps[b].double())
            g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, s.xt, t, s.ut)
            flat = torch.cat([g[n].flatten(1) for n in names], 1).view(groups, p, -1)
            means[:, b] = flat.mean(1)
            for metric, got, weight in (("e", euclid, torch.ones_like(diag)), ("a", adam, diag)):
                sq = (flat**2 * weight).sum(-1)  # [R, P]
                sec = sq.mean(1)
                cell = (flat.mean(1) ** 2 * weight).sum(-1)
                noise = ((flat - flat.mean(1, keepdim=True)) ** 2 * weight).sum(-1).sum(1) / (p - 1)
                torch.testing.assert_close(got.second[:, i, b], sec, rtol=1e-9, atol=1e-12)
                torch.testing.assert_close(got.noise[:, i, b], noise, rtol=1e-8, atol=1e-10)
                torch.testing.assert_close(got.mean_sq[:, i, b], cell - noise / p, rtol=1e-8, atol=1e-10)
        mass = 1.0 / k
        for got, weight in ((euclid, torch.ones_like(diag)), (adam, diag)):
            full = ((mass * means.sum(1)) ** 2 * weight).sum(-1)
            torch.testing.assert_close(got.full_sq[:, i], full - mass**2 * got.noise[:, i].sum(-1) / p, rtol=1e-8, atol=1e-10)
    assert all(q.grad is None for q in ens.parameters())


def test_fresh_probes_are_new_for_each_key_and_inside_their_bins():
    from fmstudy.signals import fresh_probes

    bench = get_benchmark("gmm8")
    a, b, again = (fresh_probes(bench, 4, 16, 0.01, key) for key in (0, 1, 0))
    fixed = bench.probes(4, 16, 0.01)
    for name in ("t", "x0", "x1", "eps"):
        assert torch.equal(getattr(a, name), getattr(again, name))
        assert not torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(fixed, name))
    assert bool((a.t > a.edges[:-1, None]).all()) and bool((a.t < a.edges[1:, None]).all())
    assert a.x1.shape == (4, 16, 2)


@pytest.mark.parametrize("proposal", ["uniform", "skewed", "optimal"])
def test_measured_account_predicts_the_minibatch_gradient_variance(proposal):
    """End to end: V(q) from measure_variance on fresh probes equals B times the Monte-Carlo
    variance of the reweighted minibatch gradient of real sampler draws (continuous t, fresh
    data), within their combined errors."""
    from fmstudy.samplers import Feedback, make_sampler
    from fmstudy.signals import fresh_probes, measure_variance, variance_record

    bench = get_benchmark("gmm8")
    path = BrownianBridge(0.5, 0.02)
    k, batch, draws = 4, 8, 3000
    ens = VelocityEnsemble(MLPConfig(dim=2, hidden=8, depth=1, n_freqs=2), seeds=[0]).double()
    euclid, _ = measure_variance(ens, path, fresh_probes(bench, k, 2048, 0.02, key=0), groups=8, bins_per_pass=4)
    sampler = make_sampler({"name": "oracle_qstar", "n_bins": k, "floor": 0.0, "metric": "euclid"}, [3], t_eps=0.02)
    if proposal == "skewed":
        sampler.update(Feedback(bin_grad_sq=torch.tensor([[9.0, 1.0, 4.0, 0.25]], dtype=torch.float64)))
    if proposal == "optimal":  # the oracle q* from the measured S_k: its V is the account's V(q*)
        sampler.update(Feedback(bin_grad_sq=euclid.pooled()["second"]))
    q = sampler.bin_mass(sampler.edges)
    assert (proposal == "uniform") == bool(torch.allclose(q, torch.full_like(q, 1 / k)))
    rec = variance_record(euclid, None, {"q": q})
    predicted, se = float(rec["var_v_q"][0]), float(rec["var_v_q_se"][0])
    if proposal == "optimal":
        torch.testing.assert_close(rec["var_v_q"], rec["var_v_opt"])

    draw = sampler.sample(batch * draws, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    n = batch * draws
    x1 = bench.sample(n, g).double()
    x0, eps = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = draw.t[0]
    s = path.sample(x0, x1, t, eps)
    single = ens.member(0).double()
    params = {name: p.detach() for name, p in single.named_parameters()}

    def loss(p, x, tt, u):
        return ((functional_call(single, p, (x[None], tt[None])) - u[None]) ** 2).mean()

    per = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, s.xt, t, s.ut)
    flat = torch.cat([v.flatten(1) for v in per.values()], 1) * draw.weight[0][:, None]
    est = flat.view(draws, batch, -1).mean(1)
    mc = batch * (est - est.mean(0)).pow(2).sum(-1).sum() / (draws - 1)
    per_draw = batch * (est - est.mean(0)).pow(2).sum(-1)
    mc_se = float(per_draw.std()) / math.sqrt(draws)
    assert abs(float(mc) - predicted) < 4 * math.sqrt(se**2 + mc_se**2), (float(mc), predicted, se, mc_se)
    assert se < 0.1 * predicted and mc_se < 0.1 * predicted  # resolved: the check has teeth
    assert {"bin_grad_sq", "bin_grad_mean_sq", "var_ceiling", "var_ceiling_se", "var_gain_q", "bin_grad_sq_se"} <= set(rec)
    torch.testing.assert_close(rec["bin_grad_sq_se"], euclid.second.std(0) / math.sqrt(8))
