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
