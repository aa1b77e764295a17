"""Objective-changing weightings: Min-SNR on the bridge against its definition via the oracle's
data prediction, its normalisation by scipy quadrature, and the EDM2-style learned weighting's
optimum in closed form."""

import math

import pytest
import torch
from mixtures import mixture_2d
from scipy import integrate

from fmstudy.paths import BrownianBridge
from fmstudy.weighting import ClampedSNR, UncertaintyWeighting, bridge_snr, data_error_factor, make_weighting


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.5])
def test_data_prediction_from_the_oracle_velocity_is_the_posterior_mean(sigma):
    """x1_hat = (v - c_t x) / (1 - t c_t) turns v* into E[x1 | x_t]: so a velocity error e is a
    data-prediction error e / (1 - t c_t), the factor Min-SNR's weight is converted with."""
    from fmstudy.oracle import BridgeOracle

    path = BrownianBridge(sigma, 0.01)
    oracle = BridgeOracle(mixture_2d(), path)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    t = torch.rand(50, generator=g, dtype=torch.float64) * 0.9 + 0.05
    c = path.rb_coefficient(t)[:, None]
    x1_hat = (oracle.velocity(x, t) - c * x) / data_error_factor(t, sigma)[:, None]
    torch.testing.assert_close(x1_hat, oracle.posterior_mean(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(data_error_factor(t, sigma), 1 - t * path.rb_coefficient(t))


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.5])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weight_is_its_definition_with_unit_mean(sigma, gamma):
    path = BrownianBridge(sigma, 0.01)
    w = ClampedSNR(path, gamma)
    t = torch.linspace(0.01, 0.99, 97, dtype=torch.float64)
    raw = torch.minimum(bridge_snr(t, sigma), torch.tensor(gamma, dtype=torch.float64)) / data_error_factor(t, sigma) ** 2
    # The normaliser, by adaptive quadrature of the definition (with the kink at SNR = gamma).
    f = lambda s: float(min(bridge_snr(s, sigma), gamma) / data_error_factor(s, sigma) ** 2)  # noqa: E731
    z = integrate.quad(f, 0.01, 0.99, limit=200)[0] / 0.98
    torch.testing.assert_close(w.weight(t), raw / z, rtol=1e-6, atol=0)
    if sigma == 0:  # min(t^2, gamma (1 - t)^2) / Z
        torch.testing.assert_close(w.weight(t) * z, torch.minimum(t**2, gamma * (1 - t) ** 2), rtol=1e-10, atol=0)
        assert torch.isfinite(ClampedSNR(BrownianBridge(0.0, 0.0), gamma).weight(torch.tensor([0.0, 1.0]))).all()
    per_sample = torch.rand(2, 97, dtype=torch.float64)
    torch.testing.assert_close(w(per_sample, t.expand(2, -1)), (w.weight(t) * per_sample).mean(-1))
    assert w.describe()["unbiased"] is False and "changed" in w.describe()["objective"]


def test_uncertainty_weighting_is_optimal_at_the_log_bin_loss():
    """For fixed losses the loss is minimised at u_k = log(mean loss of bin k): there the
    gradient in u vanishes and the Hessian is positive; members do not interact."""
    torch.manual_seed(0)
    m, k = 3, 4
    uw = UncertaintyWeighting(m, k, 0.0, 1.0).double()
    t = torch.rand(m, 400, dtype=torch.float64)
    loss = torch.rand(m, 400, dtype=torch.float64) * (1 + 5 * t)
    bins = uw.bin_of(t)
    mean = torch.stack([torch.stack([loss[i][bins[i] == j].mean() for j in range(k)]) for i in range(m)])
    with torch.no_grad():
        uw.u.copy_(mean.log())
    (grad,) = torch.autograd.grad(uw(loss, t).sum(), uw.u)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0)
    best = uw(loss, t)
    with torch.no_grad():
        uw.u.add_(0.1 * torch.randn(m, k, dtype=torch.float64))
    assert bool((uw(loss, t) > best).all())
    # Member 0's loss does not depend on member 1's table.
    (grad,) = torch.autograd.grad(uw(loss, t)[0], uw.u)
    assert float(grad[1:].abs().max()) == 0.0
    assert uw.describe()["unbiased"] is False


def test_make_weighting_builds_and_refuses():
    path = BrownianBridge(1.0, 0.01)
    assert isinstance(make_weighting({"name": "min_snr", "gamma": 3.0}, path, 2, 5), ClampedSNR)
    uw = make_weighting("uncertainty", path, 2, 5)
    assert uw.u.shape == (2, 5) and float(uw.edges[0]) == 0.01
    for spec, words in (({"name": "none"}, ["'none'", "min_snr"]), ({"name": "min_snr", "k": 1}, ["'k'"]), ({"name": "min_snr", "gamma": 0}, ["gamma=0"])):
        with pytest.raises(ValueError) as err:
            make_weighting(spec, path, 2, 5)
        assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)
    assert math.isclose(float(bridge_snr(0.5, 0.0)), 1.0)
