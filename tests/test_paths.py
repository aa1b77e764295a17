"""The Brownian-bridge path against its definition, recomputed by hand (STUDY.md section 1)."""

import math

import pytest
import torch
from scipy import integrate

from fmstudy.paths import BrownianBridge

SIGMAS = [0.0, 0.3, 1.0, 2.5]


def draw(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = 3 * torch.randn(shape, generator=g, dtype=torch.float64) + 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x0, x1, eps, t


@pytest.mark.parametrize("sigma", SIGMAS)
def test_target_is_the_time_derivative_of_the_path(sigma):
    """u_t = d/dt (mu_t + s_t eps) at fixed (x0, x1, eps), by a central finite difference."""
    path = BrownianBridge(sigma)
    x0, x1, eps, t = draw((64, 3))
    h = 1e-6

    def position(tt):  # mu_t + s_t eps written out from the definition, not the library
        tt = tt[:, None]
        return (1 - tt) * x0 + tt * x1 + sigma * torch.sqrt(tt * (1 - tt)) * eps

    fd = (position(t + h) - position(t - h)) / (2 * h)
    ut = path.sample(x0, x1, t, eps).ut
    torch.testing.assert_close(ut, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_sample_replays_the_formulas_and_torchcfm_form(sigma):
    """Replay the generator and recompute x_t and u_t by hand; u_t also equals torchcfm's
    ``x1 - x0 + (1 - 2t) / (2 t (1 - t)) (x_t - mu_t)``."""
    path = BrownianBridge(sigma, t_eps=1e-3)
    x0, x1, eps, t = draw((32, 2), seed=1)
    out = path.sample(x0, x1, t, eps)
    tt = t[:, None]
    mu = (1 - tt) * x0 + tt * x1
    xt = mu + sigma * torch.sqrt(tt * (1 - tt)) * eps
    torch.testing.assert_close(out.xt, xt, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.mean, mu, rtol=0, atol=1e-12)
    cfm = x1 - x0 + (1 - 2 * tt) / (2 * tt * (1 - tt)) * (xt - mu)
    torch.testing.assert_close(out.ut, cfm, rtol=1e-10, atol=1e-10)


def test_straight_path_when_sigma_is_zero():
    x0, x1, eps, t = draw((16, 4), seed=2)
    out = BrownianBridge(0.0).sample(x0, x1, t, eps)
    assert torch.equal(out.ut, x1 - x0)
    torch.testing.assert_close(out.xt, (1 - t[:, None]) * x0 + t[:, None] * x1)
    # Endpoints are allowed on the straight path: x_0 = x0 and x_1 = x1 exactly.
    ends = BrownianBridge(0.0).sample(x0[:2], x1[:2], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(ends.xt[0], x0[0]) and torch.equal(ends.xt[1], x1[1])


def test_time_broadcasts_over_batch_member_and_event_shapes():
    path = BrownianBridge(0.7, t_eps=0.01)
    x0, x1, eps, t = draw((8, 5), seed=3)
    a = path.sample(x0, x1, t, eps).xt
    b = path.sample(x0, x1, t[:, None], eps).xt
    assert torch.equal(a, b)
    # A scalar t equals a constant vector t.
    c = path.sample(x0, x1, 0.25, eps).xt
    d = path.sample(x0, x1, torch.full((8,), 0.25, dtype=torch.float64), eps).xt
    assert torch.equal(c, d)
    # Ensemble layout [M, B, d] with t of shape [M, B]: each member is its own batch.
    m = torch.stack([x0, x1])
    tm = torch.stack([t, t.flip(0)])
    out = path.sample(m, m.flip(0), tm, torch.stack([eps, eps])).xt
    torch.testing.assert_close(out[1], path.sample(x1, x0, t.flip(0), eps).xt)
    # Images [B, C, H, W] with t of shape [B].
    img = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    out = path.sample(img, -img, torch.full((4,), 0.5, dtype=torch.float64), img).xt
    torch.testing.assert_close(out, 0.7 * 0.5 * img)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.9])
def test_noise_second_moment_against_monte_carlo(t):
    path = BrownianBridge(1.3)
    g = torch.Generator().manual_seed(4)
    eps = torch.randn(400_000, generator=g, dtype=torch.float64)
    mc = ((path.d_std(t) * eps) ** 2).mean()
    exact = 1.3**2 * (1 - 2 * t) ** 2 / (4 * t * (1 - t))
    assert float(path.noise_second_moment(t)) == pytest.approx(exact, rel=1e-12)
    assert float(mc) == pytest.approx(exact, rel=0.02, abs=1e-12)


@pytest.mark.parametrize("t_eps", [1e-1, 1e-2, 1e-4])
def test_noise_second_moment_integral_closed_form_and_divergence(t_eps):
    path = BrownianBridge(0.8, t_eps=t_eps)
    quad, _ = integrate.quad(lambda s: float(path.noise_second_moment(s)), t_eps, 1 - t_eps, limit=200)
    assert path.noise_second_moment_integral() == pytest.approx(quad, rel=1e-7)
    # STUDY.md's asymptote sigma^2 (ln(1/eps)/2 - 1), approached as t_eps -> 0.
    asym = 0.8**2 * (math.log(1 / t_eps) / 2 - 1)
    assert abs(path.noise_second_moment_integral() - asym) < 0.8**2 * 2.5 * t_eps
    assert BrownianBridge(0.8).noise_second_moment_integral(0.0) == math.inf


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: BrownianBridge(-0.1), ["sigma=-0.1", ">= 0"]),
        (lambda: BrownianBridge(float("nan")), ["sigma=nan"]),
        (lambda: BrownianBridge(0.5, t_eps=0.5), ["t_eps=0.5", "[0, 0.5)"]),
        (lambda: BrownianBridge(0.5, t_eps=-0.01), ["t_eps=-0.01"]),
    ],
)
def test_bad_parameters_are_refused_in_one_line(make, words):
    with pytest.raises(ValueError) as err:
        make()
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_times_and_shapes_are_refused_in_one_line():
    x = torch.zeros(3, 2)
    cases = [
        (BrownianBridge(0.0), dict(t=torch.tensor([0.1, 1.2, 0.3])), ["t=1.2", "[0, 1]"]),
        (BrownianBridge(0.0), dict(t=torch.tensor([-0.5, 0.2, 0.3])), ["t=-0.5", "[0, 1]"]),
        (BrownianBridge(0.5, t_eps=0.01), dict(t=torch.tensor([0.005, 0.5, 0.5])), ["t=0.005", "t_eps"]),
        (BrownianBridge(0.5), dict(t=torch.tensor([0.0, 0.5, 0.5])), ["t=0 ", "singular"]),
        (BrownianBridge(0.5), dict(t=torch.full((4,), 0.5)), ["(4,)", "(3, 2)"]),
        (BrownianBridge(0.5), dict(t=0.5, x1=torch.zeros(3, 3)), ["(3, 3)", "same shape"]),
        (BrownianBridge(0.5), dict(t=0.5, eps=None), ["eps=None"]),
    ]
    for path, kw, words in cases:
        args = dict(x0=x, x1=x, eps=torch.zeros_like(x))
        args.update(kw)
        with pytest.raises(ValueError) as err:
            path.sample(args["x0"], args["x1"], args["t"], args["eps"])
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg


# -- the Rao-Blackwellised target E[u_t | x1, x_t] ------------------------------------------
def rb_by_hand(sigma, t):
    """c_t, and the conditional variance of u_t given (x1, x_t) per dimension, from the joint
    Gaussian law of (u_t - x1, x_t - t x1) = (-x0 + s'_t eps, (1 - t) x0 + s_t eps)."""
    s = sigma * math.sqrt(t * (1 - t))
    ds = sigma * (1 - 2 * t) / (2 * math.sqrt(t * (1 - t)))
    var_n, cov, var_u = (1 - t) ** 2 + s**2, -(1 - t) + s * ds, 1 + ds**2
    return cov / var_n, var_u - cov**2 / var_n


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.85])
def test_rb_target_is_the_conditional_mean_for_non_gaussian_data(sigma, t):
    n = 200_000
    g = torch.Generator().manual_seed(11)
    x1 = torch.exp(torch.randn(n, 1, generator=g, dtype=torch.float64)) - 2  # skewed, not Gaussian
    x0, eps = torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)
    path = BrownianBridge(sigma, 0.01)
    s = path.sample(x0, x1, torch.full((n,), t, dtype=torch.float64), eps)
    rb = path.rb_target(x1, s.xt, t)
    c, cond_var = rb_by_hand(sigma, t)
    torch.testing.assert_close(path.rb_coefficient(t), torch.tensor(c, dtype=torch.float64))
    resid = (s.ut - rb)[:, 0]
    if sigma == 0:  # given x1 and x_t, x0 is known: nothing is left to average
        torch.testing.assert_close(rb, s.ut, rtol=1e-12, atol=1e-9)
        return
    # The residual is orthogonal to functions of (x1, x_t), has mean 0 and the conditional variance.
    xt, a = s.xt[:, 0], x1[:, 0]
    for f in (torch.ones_like(xt), xt, a, xt**2, a * xt, torch.sin(3 * xt)):
        prod = resid * f
        assert abs(float(prod.mean())) < 5 * float(prod.std()) / math.sqrt(n)
    assert abs(float(resid.pow(2).mean()) / cond_var - 1) < 0.02


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_rb_loss_differs_by_a_constant_and_keeps_the_oracle_minimiser(sigma):
    """Paired Monte Carlo on a Gaussian mixture: L_u - L_rb is the same for two models and the
    oracle and equals E[Var(u_t | x1, x_t)] per dimension; L_rb(model) - L_rb(v*) is the excess."""
    from mixtures import mixture_2d

    from fmstudy.models import MLPConfig, VelocityMLP
    from fmstudy.oracle import BridgeOracle

    path = BrownianBridge(sigma, 0.01)
    oracle = BridgeOracle(mixture_2d(), path)
    models = [VelocityMLP(MLPConfig(dim=2, hidden=16, depth=2, n_freqs=2), seed=s).double() for s in (0, 1)]
    n = 100_000
    g = torch.Generator().manual_seed(5)
    for t in (0.2, 0.5, 0.8):
        x1 = oracle.mixture.sample(n, g, dtype=torch.float64)
        x0, eps = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
        tt = torch.full((n,), t, dtype=torch.float64)
        s = path.sample(x0, x1, tt, eps)
        rb = path.rb_target(x1, s.xt, tt)
        star = oracle.velocity(s.xt, tt)
        with torch.no_grad():
            preds = [m(s.xt, tt) for m in models] + [star]
        diffs = [((v - s.ut) ** 2).mean(-1) - ((v - rb) ** 2).mean(-1) for v in preds]
        _, cond_var = rb_by_hand(sigma, t)
        for d in diffs:
            assert abs(float(d.mean()) - cond_var) < 5 * float(d.std()) / math.sqrt(n)
        for d in diffs[1:]:  # paired: the model-dependent part has mean zero
            assert abs(float((d - diffs[0]).mean())) < 5 * float((d - diffs[0]).std()) / math.sqrt(n)
        for v in preds[:2]:
            gap = ((v - rb) ** 2).mean(-1) - ((star - rb) ** 2).mean(-1) - ((v - star) ** 2).mean(-1)
            assert abs(float(gap.mean())) < 5 * float(gap.std()) / math.sqrt(n)


def test_rb_target_lowers_the_per_sample_gradient_variance():
    """Same expected gradient (the target's conditional mean is the same), less variance."""
    from torch.func import functional_call, grad, vmap

    from fmstudy.models import MLPConfig, VelocityMLP

    path = BrownianBridge(1.0, 0.02)
    model = VelocityMLP(MLPConfig(dim=2, hidden=8, depth=2, n_freqs=2), seed=3).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    n = 8192
    g = torch.Generator().manual_seed(2)
    x1 = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64).sign() + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0, eps = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.96 + 0.02
    s = path.sample(x0, x1, t, eps)

    def loss(p, x, tt, u):
        return ((functional_call(model, p, (x[None], tt[None])) - u[None]) ** 2).mean()

    def flat(target):
        per = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, s.xt, t, target)
        return torch.cat([v.flatten(1) for v in per.values()], 1)

    g_u, g_rb = flat(s.ut), flat(path.rb_target(x1, s.xt, t))
    dev_u = (g_u - g_u.mean(0)).pow(2).sum(1)
    dev_rb = (g_rb - g_rb.mean(0)).pow(2).sum(1)
    gap = dev_u - dev_rb  # paired, per sample
    se = float(gap.std()) / math.sqrt(n)
    assert float(gap.mean()) > 10 * se
    # Rao-Blackwell is Pythagoras: tr Cov(g_u) = tr Cov(g_rb) + E||g_u - g_rb||^2.
    assert abs(float(gap.mean() - (g_u - g_rb).pow(2).sum(1).mean())) < 5 * se
    # The expected gradients agree (paired difference within its Monte-Carlo error, per coordinate).
    diff = g_u - g_rb
    z = diff.mean(0) / (diff.std(0) / math.sqrt(n))
    assert float(z.abs().max()) < 5
