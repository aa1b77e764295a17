"""Time samplers against the densities they claim (scipy), unbiasedness of the importance
weights by Monte Carlo, adaptive behaviour on planted feedback, exact resume, member
independence, and refusal of bad specifications."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from fmstudy.rng import CounterRNG
from fmstudy.samplers import Feedback, make_sampler, sampler_names

T_EPS = 0.01
A, B = T_EPS, 1 - T_EPS

# (spec, the nominal distribution as scipy sees it on (0, 1))
FIXED = [
    ("uniform", stats.uniform(0, 1)),
    ("stratified", stats.uniform(0, 1)),
    ({"name": "beta", "a": 2.0, "b": 5.0}, stats.beta(2.0, 5.0)),
    ("arcsine", stats.beta(0.5, 0.5)),
    ({"name": "u_shaped", "a": 0.3}, stats.beta(0.3, 0.3)),
]


class LogitNormalLaw:
    """scipy-style cdf/pdf of logit t ~ N(m, s^2), written independently of the sampler."""

    def __init__(self, m, s):
        self.m, self.s = m, s

    def cdf(self, t):
        return stats.norm.cdf((np.log(t / (1 - t)) - self.m) / self.s)

    def pdf(self, t):
        return stats.norm.pdf((np.log(t / (1 - t)) - self.m) / self.s) / (self.s * t * (1 - t))


class ModeLaw:
    """SD3 mode sampling: t = f(u) = u + s (cos^2(pi u/2) - 1 + u), density 1 / f'(u)."""

    def __init__(self, s):
        self.s = s

    def f(self, u):
        return u + self.s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)

    def cdf(self, t):
        return np.array([0.0 if x <= 0 else 1.0 if x >= 1 else _root(lambda u: self.f(u) - x) for x in np.atleast_1d(t)])

    def pdf(self, t):
        u = self.cdf(t)
        return 1.0 / (1 + self.s * (1 - np.pi / 2 * np.sin(np.pi * u)))


def _root(fn):
    from scipy.optimize import brentq

    return brentq(fn, 0.0, 1.0, xtol=1e-14)


FIXED += [
    ({"name": "logit_normal", "m": 0.0, "s": 1.0}, LogitNormalLaw(0.0, 1.0)),
    ({"name": "logit_normal", "m": -0.5, "s": 0.6}, LogitNormalLaw(-0.5, 0.6)),
    ({"name": "mode", "scale": 1.29}, ModeLaw(1.29)),
    ({"name": "mode", "scale": -0.5}, ModeLaw(-0.5)),
]
ADAPTIVE = ["loss_second_moment", "grad_norm", "learning_progress", "oracle_excess", "info_snr", "var_opt", "var_opt_neyman", "oracle_qstar"]


def truncated_cdf(law, lo, hi):
    c_lo, c_hi = law.cdf(np.array([lo]))[0], law.cdf(np.array([hi]))[0]
    return lambda t: (law.cdf(np.clip(t, lo, hi)) - c_lo) / (c_hi - c_lo)


@pytest.mark.parametrize("spec,law", FIXED, ids=lambda v: str(v) if not hasattr(v, "cdf") else "")
def test_fixed_draws_match_the_nominal_distribution(spec, law):
    """Kolmogorov-Smirnov at a fixed seed against the family's own CDF truncated to [a, b]."""
    sampler = make_sampler(spec, seeds=[3], t_eps=T_EPS)
    t = sampler.sample(20_000).t.double().numpy()[0]
    assert A <= t.min() and t.max() <= B
    result = stats.kstest(t, truncated_cdf(law, A, B))
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("spec,law", FIXED, ids=lambda v: str(v) if not hasattr(v, "cdf") else "")
def test_fixed_density_integrates_to_one_and_matches_the_pdf(spec, law):
    sampler = make_sampler(spec, seeds=[0, 1], t_eps=T_EPS)
    grid = np.linspace(A, B, 20_001)
    q = sampler.density(torch.tensor(grid)[None].expand(2, -1)).numpy()
    assert np.allclose(q[0], q[1])
    assert integrate.trapezoid(q[0], grid) == pytest.approx(1.0, abs=1e-3)
    # Against the nominal pdf / (mass on [a, b]) at interior points away from the edges.
    pts = np.linspace(A + 0.02, B - 0.02, 97)
    mass = law.cdf(np.array([B]))[0] - law.cdf(np.array([A]))[0]
    nominal = law.pdf(pts) / mass
    got = sampler.density(torch.tensor(pts)[None].expand(2, -1)).numpy()[0]
    np.testing.assert_allclose(got, nominal, rtol=2e-3)
    # Zero outside the domain.
    assert float(sampler.density(torch.tensor([[0.001], [0.999]]))[0, 0]) == 0.0


TEST_FUNCTIONS = {
    "cos": (lambda t: torch.cos(3 * t), lambda a, b: (math.sin(3 * b) - math.sin(3 * a)) / 3),
    "square": (lambda t: t**2, lambda a, b: (b**3 - a**3) / 3),
    "log": (lambda t: -torch.log(t), lambda a, b: (a * math.log(a) - a) - (b * math.log(b) - b)),
}


# Floorless logit-normal proposals have weights up to ~1e3 at t_eps = 0.01: the estimate is
# unbiased but so heavy-tailed that a 4-standard-error check is meaningless; they are tested
# with a floor, which bounds the weights by 1 / floor.
BOUNDED_WEIGHTS = [s for s, _ in FIXED if not (isinstance(s, dict) and s["name"] == "logit_normal")] + [
    {"name": "logit_normal", "m": 0.0, "s": 1.0, "floor": 0.05},
    {"name": "logit_normal", "m": 0.3, "s": 0.7, "floor": 0.1},
]


@pytest.mark.parametrize("spec", BOUNDED_WEIGHTS)
def test_reweighted_draws_estimate_the_uniform_objective(spec):
    """E_q[w f(t)] = (1 / (b - a)) int_a^b f, for several f, within 4 standard errors."""
    sampler = make_sampler(spec, seeds=list(range(8)), t_eps=T_EPS)
    assert sampler.unbiased
    draw = sampler.sample(25_000, dtype=torch.float64)
    for name, (f, integral) in TEST_FUNCTIONS.items():
        values = (draw.weight * f(draw.t)).reshape(-1)
        est, se = float(values.mean()), float(values.std() / math.sqrt(values.numel()))
        truth = integral(A, B) / (B - A)
        assert abs(est - truth) < 4 * se + 1e-12, (name, est, truth, se)


def test_without_reweighting_the_weights_are_one_and_the_sampler_says_biased():
    sampler = make_sampler({"name": "beta", "a": 2, "b": 5, "reweight": False}, seeds=[0, 1], t_eps=T_EPS)
    draw = sampler.sample(1000)
    assert torch.equal(draw.weight, torch.ones_like(draw.weight))
    assert not sampler.unbiased and sampler.describe()["unbiased"] is False
    # Truncation without a floor cannot be made unbiased either, and a floor restores it.
    assert not make_sampler({"name": "uniform", "truncate": [0.2, 0.8]}, [0], T_EPS).unbiased
    assert make_sampler({"name": "uniform", "truncate": [0.2, 0.8], "floor": 0.1}, [0], T_EPS).unbiased


def test_truncation_confines_draws_and_renormalises():
    sampler = make_sampler({"name": "logit_normal", "truncate": [0.2, 0.7]}, seeds=[0], t_eps=T_EPS)
    t = sampler.sample(20_000).t.double().numpy()[0]
    assert 0.2 <= t.min() and t.max() <= 0.7
    assert stats.kstest(t, truncated_cdf(LogitNormalLaw(0.0, 1.0), 0.2, 0.7)).pvalue > 1e-3


def test_stratified_puts_one_draw_in_each_stratum_and_reduces_variance():
    sampler = make_sampler("stratified", seeds=[0, 1, 2], t_eps=0.0)
    t = sampler.sample(64, dtype=torch.float64).t
    strata = torch.floor(t * 64).long()
    assert torch.equal(strata.sort(1).values, torch.arange(64).expand(3, -1))
    iid = make_sampler("uniform", seeds=list(range(200)), t_eps=0.0).sample(64, dtype=torch.float64).t
    strat = make_sampler("stratified", seeds=list(range(200)), t_eps=0.0).sample(64, dtype=torch.float64).t
    f = lambda t: torch.exp(2 * t)  # noqa: E731
    assert f(strat).mean(1).var() < 0.01 * f(iid).mean(1).var()


def test_floor_mixes_in_the_uniform_density():
    base = make_sampler({"name": "beta", "a": 2, "b": 5}, [0], T_EPS)
    mixed = make_sampler({"name": "beta", "a": 2, "b": 5, "floor": 0.3}, [0], T_EPS)
    t = torch.linspace(A, B, 101, dtype=torch.float64)[None]
    torch.testing.assert_close(mixed.density(t), 0.7 * base.density(t) + 0.3 / (B - A))


# -- adaptive samplers ------------------------------------------------------------------------
K = 10
HOT = 7  # the planted informative bin


def planted_feedback(sampler, step, scale=1.0):
    """Feedback in which bin HOT carries far more signal than the others."""
    m = sampler.n_members
    draw = sampler.sample(256, dtype=torch.float64)
    hot = torch.floor((draw.t - A) / (B - A) * K).clamp(max=K - 1) == HOT
    base = torch.full((m, K), 1.0, dtype=torch.float64)
    hot_bins = torch.zeros(m, K, dtype=torch.bool)
    hot_bins[:, HOT] = True
    rate = torch.where(hot_bins, 0.2, 0.01)  # relative loss decrease per checkpoint
    return Feedback(
        t=draw.t,
        loss=torch.where(hot, 9.0, 1.0) * scale,
        grad_norm=torch.where(hot, 5.0, 0.5) * scale,
        bin_loss=base * (1 - rate) ** step,
        bin_excess=torch.where(hot_bins, 4.0, 0.1),
        bin_grad_mean_sq=torch.where(hot_bins, 2.0, 0.2),
        bin_grad_sq=torch.where(hot_bins, 3.0, 3.0),
        grad_sq_adam=torch.where(hot, 25.0, 0.25) * scale**2,
        bin_grad_sq_adam=torch.where(hot_bins, 25.0, 0.25),
        bin_grad_mean_sq_adam=torch.where(hot_bins, 2.0, 0.02),
    )


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_samplers_concentrate_on_a_planted_bin_and_respect_the_floor(name):
    floor = 0.1
    sampler = make_sampler({"name": name, "n_bins": K, "floor": floor}, seeds=[0, 1, 2], t_eps=T_EPS)
    for step in range(30):
        sampler.update(planted_feedback(sampler, step))
    grid = torch.linspace(A, B, 1001, dtype=torch.float64)[None].expand(3, -1)
    q = sampler.density(grid)
    assert float(q.min()) >= floor / (B - A) - 1e-12
    mass = sampler.table()[1].diff(dim=1)  # bin probabilities after the floor
    assert torch.all(mass.argmax(1) == HOT)
    assert torch.all(mass[:, HOT] > 0.3), mass[:, HOT]
    draws = sampler.sample(4000)
    share = (sampler.bin_of(draws.t) == HOT).double().mean()
    assert float(share) == pytest.approx(float(mass[0, HOT]), abs=0.03)


def test_adaptive_probabilities_have_their_closed_forms():
    """Fed constant per-bin values, each rule gives its formula exactly."""
    seeds = [0, 1]
    g = torch.linspace(1.0, 2.0, K, dtype=torch.float64).expand(2, -1)
    mids = (torch.arange(K, dtype=torch.float64) + 0.5) / K * (B - A) + A
    t = mids.repeat(10)[None].expand(2, -1)
    per_sample = g.repeat(1, 10)

    s = make_sampler({"name": "grad_norm", "n_bins": K, "floor": 0.0}, seeds, T_EPS)
    s.update(Feedback(t=t, grad_norm=per_sample))
    torch.testing.assert_close(s.probs, g / g.sum(1, keepdim=True))  # sqrt(E g^2) = g

    s = make_sampler({"name": "oracle_excess", "n_bins": K, "floor": 0.0}, seeds, T_EPS)
    s.update(Feedback(bin_excess=g))
    torch.testing.assert_close(s.probs, g / g.sum(1, keepdim=True))

    s = make_sampler({"name": "info_snr", "n_bins": K, "floor": 0.0}, seeds, T_EPS)
    second = 3.0 * g
    s.update(Feedback(bin_grad_mean_sq=g, bin_grad_sq=second))
    ref = g**2 / second
    torch.testing.assert_close(s.probs, ref / ref.sum(1, keepdim=True))

    s = make_sampler({"name": "learning_progress", "n_bins": K, "floor": 0.0, "temperature": 0.1}, seeds, T_EPS)
    s.update(Feedback(bin_loss=torch.ones(2, K, dtype=torch.float64)))
    assert torch.allclose(s.probs, torch.full((2, K), 1.0 / K, dtype=torch.float64))  # no progress seen yet
    s.update(Feedback(bin_loss=1 - 0.1 * g))
    ref = torch.exp(0.1 * g / 0.1)
    torch.testing.assert_close(s.probs, ref / ref.sum(1, keepdim=True))


def test_loss_history_equals_a_sequential_ring_buffer():
    """The vectorised update against Improved DDPM's one-sample-at-a-time loop."""
    history, m = 4, 3
    sampler = make_sampler({"name": "loss_second_moment", "n_bins": K, "history": history}, list(range(m)), T_EPS)
    gen = torch.Generator().manual_seed(0)
    buffers = [[[] for _ in range(K)] for _ in range(m)]
    for _ in range(6):
        draw = sampler.sample(17, dtype=torch.float64)
        loss = torch.rand(m, 17, generator=gen, dtype=torch.float64)
        sampler.update(Feedback(t=draw.t, loss=loss))
        bins = sampler.bin_of(draw.t)
        for i in range(m):
            for j in range(17):
                buf = buffers[i][int(bins[i, j])]
                buf.append(float(loss[i, j]))
                del buf[:-history]
    for i in range(m):
        warm = all(len(b) == history for b in buffers[i])
        expected = torch.tensor([math.sqrt(np.mean(np.square(b))) if b else 0.0 for b in buffers[i]])
        got = torch.sqrt((sampler.values[i] ** 2).mean(-1))
        if warm:
            torch.testing.assert_close(got, expected, check_dtype=False)
            torch.testing.assert_close(sampler.probs[i], expected / expected.sum(), check_dtype=False)
        else:
            assert torch.allclose(sampler.probs[i], torch.full((K,), 1.0 / K, dtype=torch.float64))
        for k in range(K):
            assert sorted(sampler.values[i, k, : len(buffers[i][k])].tolist()) == pytest.approx(sorted(buffers[i][k]))


@pytest.mark.parametrize("name", ADAPTIVE + ["logit_normal", "stratified"])
def test_resume_from_a_saved_state_is_bit_exact(name):
    spec = {"name": name}
    if name in ADAPTIVE:
        spec["n_bins"] = K
    first = make_sampler(spec, seeds=[5, 6], t_eps=T_EPS)
    for step in range(5):
        first.update(planted_feedback(first, step))
    state = first.state_dict()
    later_a = []
    for step in range(5, 9):
        fb = planted_feedback(first, step)
        later_a.append(fb.t)
        first.update(fb)
    final_a = first.sample(64)

    second = make_sampler(spec, seeds=[5, 6], t_eps=T_EPS)
    second.load_state_dict(state)
    for step in range(5, 9):
        fb = planted_feedback(second, step)
        assert torch.equal(fb.t, later_a[step - 5])
        second.update(fb)
    final_b = second.sample(64)
    assert torch.equal(final_a.t, final_b.t) and torch.equal(final_a.weight, final_b.weight)
    # A state from a different sampler is refused.
    other = make_sampler(spec, seeds=[5, 7], t_eps=T_EPS)
    with pytest.raises(ValueError):
        other.load_state_dict(state)


@pytest.mark.parametrize("name", ["uniform", "logit_normal", "loss_second_moment", "learning_progress", "var_opt", "oracle_qstar"])
def test_members_do_not_depend_on_the_ensemble_size(name):
    seeds = [11, 12, 13, 14, 15]
    spec = {"name": name, "n_bins": K} if name in ADAPTIVE else {"name": name}
    big = make_sampler(spec, seeds=seeds, t_eps=T_EPS)
    small = make_sampler(spec, seeds=seeds[:2], t_eps=T_EPS)
    for step in range(6):
        fb = planted_feedback(big, step)
        fb_small = planted_feedback(small, step)
        assert torch.equal(fb.t[:2], fb_small.t)
        big.update(fb)
        small.update(Feedback(**{k: (v[:2] if v is not None else None) for k, v in vars(fb).items()}))
    assert torch.equal(big.sample(100).t[:2], small.sample(100).t)


def test_counter_rng_streams_are_uniform_and_independent():
    rng = CounterRNG(list(range(4)), stream=0)
    u = rng.uniform(0, 100_000)
    assert 0 < float(u.min()) and float(u.max()) < 1
    for row in u:
        assert stats.kstest(row.numpy(), "uniform").pvalue > 1e-3
    corr = torch.corrcoef(torch.cat([u, rng.uniform(1, 100_000)]))
    off = corr - torch.eye(8, dtype=corr.dtype)
    assert float(off.abs().max()) < 0.015  # 4.7 standard errors at n = 1e5
    z = CounterRNG([9]).normal(0, 100_000)[0]
    assert stats.kstest(z.double().numpy(), "norm").pvalue > 1e-3
    assert not torch.equal(CounterRNG([1], stream=0).uniform(0, 10), CounterRNG([1], stream=1).uniform(0, 10))


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"name": "nope"}, ["'nope'", "uniform", "info_snr"]),
        ({"name": "logit_normal", "s": 0.0}, ["s=0.0", "> 0"]),
        ({"name": "logit_normal", "s": -1}, ["s=-1"]),
        ({"name": "beta", "a": 0.0}, ["a=0.0", "> 0"]),
        ({"name": "beta", "b": -2.0}, ["b=-2.0"]),
        ({"name": "uniform", "floor": 1.5}, ["floor=1.5", "[0, 1]"]),
        ({"name": "grad_norm", "floor": -0.1}, ["floor=-0.1"]),
        ({"name": "loss_second_moment", "n_bins": 1}, ["n_bins=1", ">= 2"]),
        ({"name": "mode", "scale": 3.0}, ["scale=3.0"]),
        ({"name": "uniform", "truncate": [0.8, 0.2]}, ["truncate=[0.8, 0.2]"]),
        ({"name": "uniform", "m": 1.0}, ["'m'", "allowed parameters are"]),
        ({"name": "u_shaped", "a": 1.5}, ["a=1.5", "(0, 1)"]),
    ],
)
def test_bad_specs_are_refused_in_one_line(spec, words):
    with pytest.raises(ValueError) as err:
        make_sampler(spec, seeds=[0], t_eps=T_EPS)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_every_registered_sampler_builds_and_draws_in_the_domain():
    for name in sampler_names():
        sampler = make_sampler(name, seeds=[0, 1], t_eps=T_EPS)
        draw = sampler.sample(32)
        assert draw.t.shape == (2, 32)
        assert bool(((draw.t >= A) & (draw.t <= B)).all()), name
        assert bool(torch.isfinite(draw.weight).all()), name


def test_bin_mass_matches_the_integral_of_the_density():
    sampler = make_sampler({"name": "beta", "a": 2, "b": 3, "floor": 0.2}, [0, 1], T_EPS)
    edges = torch.linspace(A, B, 6, dtype=torch.float64)
    mass = sampler.bin_mass(edges)
    law = stats.beta(2, 3)
    nominal = np.diff(law.cdf(edges.numpy())) / (law.cdf(B) - law.cdf(A))
    expected = 0.8 * nominal + 0.2 * np.diff(edges.numpy()) / (B - A)
    np.testing.assert_allclose(mass[0].numpy(), expected, rtol=1e-4)
    assert torch.allclose(mass.sum(1), torch.ones(2, dtype=torch.float64))


# -- the variance account's samplers (STUDY.md 4.5) -------------------------------------------
def test_var_opt_converges_to_q_star_on_a_planted_second_moment():
    """Per-sample squared norms x = S_k * Exp(1) (so E[x | bin k] = S_k), drawn at the sampler's
    own times: the proposal tends to (1 - floor) sqrt(S) / sum sqrt(S) + floor / K, in both
    metrics (Euclidean via grad_norm = sqrt(x))."""
    m, floor = 3, 0.05
    planted = torch.tensor([1.0, 4.0, 0.25, 9.0, 1.0, 2.0, 30.0, 0.5, 1.0, 16.0], dtype=torch.float64)
    q_star = planted.sqrt() / planted.sqrt().sum()
    expect = (1 - floor) * q_star + floor / K
    for metric in ("adam", "euclid"):
        sampler = make_sampler({"name": "var_opt", "n_bins": K, "floor": floor, "metric": metric}, list(range(m)), T_EPS)
        gen = torch.Generator().manual_seed(4)
        for _ in range(400):
            draw = sampler.sample(256, dtype=torch.float64)
            x = planted[sampler.bin_of(draw.t)] * torch.empty(m, 256, dtype=torch.float64).exponential_(generator=gen)
            fb = Feedback(t=draw.t, grad_sq_adam=x) if metric == "adam" else Feedback(t=draw.t, grad_norm=x.sqrt())
            sampler.update(fb)
        mass = sampler.table()[1].diff(dim=1)
        torch.testing.assert_close(mass, expect.expand(m, -1), rtol=0.06, atol=0)
        # The estimate of S itself, bin by bin (effective counts ~ horizon * B * q_k).
        torch.testing.assert_close(sampler.estimate(), planted.expand(m, -1), rtol=0.15, atol=0)


def test_var_opt_shrinks_noisy_bins_to_the_pooled_mean():
    """Equal true S in every bin and few noisy samples: the shrunk proposal stays much nearer
    uniform than the raw per-bin means would put it; noise-free bins are not shrunk at all."""
    m = 50
    sampler = make_sampler({"name": "var_opt", "n_bins": K, "floor": 0.0, "min_samples": 2}, list(range(m)), T_EPS)
    gen = torch.Generator().manual_seed(5)
    draw = sampler.sample(200, dtype=torch.float64)
    x = torch.empty(m, 200, dtype=torch.float64).exponential_(generator=gen)
    sampler.update(Feedback(t=draw.t, grad_sq_adam=x))
    n, _, s1, _ = sampler.sums
    raw = (s1 / n).sqrt()
    raw = raw / raw.sum(1, keepdim=True)
    uniform = torch.full_like(raw, 1.0 / K)
    assert float((sampler.probs - uniform).abs().mean()) < 0.3 * float((raw - uniform).abs().mean())
    # Constant values within each bin: zero standard errors, so the estimate is the bin mean.
    g = torch.linspace(1.0, 3.0, K, dtype=torch.float64).expand(2, -1)
    mids = (torch.arange(K, dtype=torch.float64) + 0.5) / K * (B - A) + A
    exact = make_sampler({"name": "var_opt", "n_bins": K, "floor": 0.0}, [0, 1], T_EPS)
    exact.update(Feedback(t=mids.repeat(10)[None].expand(2, -1), grad_sq_adam=g.repeat(1, 10)))
    torch.testing.assert_close(exact.probs, g.sqrt() / g.sqrt().sum(1, keepdim=True))


def test_neyman_and_oracle_allocations_have_their_closed_forms():
    g = torch.linspace(1.0, 2.0, K, dtype=torch.float64).expand(2, -1)
    second, mean_sq = 4.0 * g, g
    for metric, fb in (
        ("adam", Feedback(bin_grad_sq_adam=second, bin_grad_mean_sq_adam=mean_sq)),
        ("euclid", Feedback(bin_grad_sq=second, bin_grad_mean_sq=mean_sq)),
    ):
        s = make_sampler({"name": "oracle_qstar", "n_bins": K, "floor": 0.0, "metric": metric}, [0, 1], T_EPS)
        s.update(fb)
        torch.testing.assert_close(s.probs, second.sqrt() / second.sqrt().sum(1, keepdim=True))
        s = make_sampler({"name": "oracle_qstar_neyman", "n_bins": K, "floor": 0.0, "metric": metric}, [0, 1], T_EPS)
        assert s.stratified and s.neyman and s.unbiased
        s.update(fb)
        ref = (second - mean_sq).sqrt()
        torch.testing.assert_close(s.probs, ref / ref.sum(1, keepdim=True))
    # var_opt_neyman: S from the batch's norms, ||G_k||^2 from the latest per-bin feedback.
    s = make_sampler({"name": "var_opt_neyman", "n_bins": K, "floor": 0.0}, [0, 1], T_EPS)
    assert s.stratified and s.requires == {"t", "grad_sq_adam", "bin_grad_mean_sq_adam"}
    mids = (torch.arange(K, dtype=torch.float64) + 0.5) / K * (B - A) + A
    s.update(Feedback(t=mids.repeat(10)[None].expand(2, -1), grad_sq_adam=second.repeat(1, 10)))
    torch.testing.assert_close(s.probs, second.sqrt() / second.sqrt().sum(1, keepdim=True))  # no ||G_k||^2 yet: = q*
    s.update(Feedback(bin_grad_mean_sq_adam=mean_sq))
    ref = (second - mean_sq).sqrt()
    torch.testing.assert_close(s.probs, ref / ref.sum(1, keepdim=True))


def test_variance_samplers_refuse_bad_options():
    for spec, words in (
        ({"name": "var_opt", "metric": "l1"}, ["metric='l1'", "adam", "euclid"]),
        ({"name": "var_opt", "horizon": 0}, ["horizon=0"]),
        ({"name": "oracle_qstar", "neyman": "yes"}, ["neyman='yes'"]),
    ):
        with pytest.raises(ValueError) as err:
            make_sampler(spec, seeds=[0], t_eps=T_EPS)
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_updates_never_read_a_value_back_to_the_host(name):
    """On the meta device tensors have no values: .item(), bool(tensor), nonzero, boolean
    indexing and bincount (whose size is a value) all fail there, so an update that runs on
    meta tensors cannot synchronise a GPU with the host."""
    sampler = make_sampler({"name": name, "n_bins": K}, seeds=[0, 1], t_eps=T_EPS, device="meta")
    per_sample, per_bin = (torch.empty(2, n, dtype=torch.float64, device="meta") for n in (32, K))
    fields = {f: (per_bin if f.startswith("bin_") else per_sample) for f in vars(Feedback())}
    for _ in range(2):
        sampler.update(Feedback(**fields))
    assert sampler.probs.device.type == "meta"
