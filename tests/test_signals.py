"""Per-bin signals against an independent computation: per-sample gradients from torch.func."""

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
