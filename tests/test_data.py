"""Benchmarks (STUDY.md section 3): shapes, fixed held-out and probe sets, seeded sampling,
the statistics of the generative processes, the finite datasets' splits, offline generation
and one-line refusals of bad input."""

import math
import random
import socket

import numpy as np
import pytest
import torch
from errors import one_line_error

from fmstudy.benchmark_base import Benchmark
from fmstudy.data import benchmark_names, get_benchmark
from fmstudy.oracle import BridgeOracle
from fmstudy.paths import BrownianBridge

NAMES = ["gmm8", "gmm-d", "moons", "checkerboard", "spirals", "digits", "mnist1d"]
DIMS = {"gmm8": 2, "gmm-d": 8, "moons": 2, "checkerboard": 2, "spirals": 2, "digits": 64, "mnist1d": 40}
_BUILT: dict[str, Benchmark] = {}


def bench(name: str) -> Benchmark:
    """Default-option benchmarks, built once per session (mnist1d generation takes seconds)."""
    if name not in _BUILT:
        _BUILT[name] = get_benchmark(name)
    return _BUILT[name]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_knows_every_benchmark():
    assert benchmark_names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_finite_values(name):
    b = bench(name)
    d = DIMS[name]
    assert b.name == name and b.dim == d and b.seed == 0 and b.options["seed"] == 0
    assert b.heldout.ndim == 2 and b.heldout.shape[1] == d and b.heldout.shape[0] >= 1
    x = b.sample(300, gen(1))
    p = b.probes(n_bins=7, per_bin=5)
    assert x.shape == (300, d)
    assert p.edges.shape == (8,) and p.t.shape == (7, 5) and p.centers.shape == (7,)
    assert p.x0.shape == p.x1.shape == p.eps.shape == (7, 5, d)
    for tensor in (b.heldout, x, p.edges, p.t, p.x0, p.x1, p.eps):
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()
    assert b.model_depth >= 1 and b.model_hidden >= 1
    assert b.sample(0, gen(1)).shape == (0, d)


def test_suggested_model_sizes():
    sizes = {name: (bench(name).model_hidden, bench(name).model_depth) for name in NAMES}
    assert sizes == {
        "gmm8": (128, 3), "moons": (128, 3), "checkerboard": (128, 3), "spirals": (128, 3),
        "gmm-d": (256, 3), "digits": (512, 4), "mnist1d": (512, 4),
    }


def test_options_record_defaults_and_overrides():
    assert get_benchmark("gmm8").options == {"n_heldout": 5000, "radius": 5.0, "seed": 0, "var": 0.1}
    b = get_benchmark("gmm-d", dim=4, seed=3, n_heldout=10)
    assert b.options == {"dim": 4, "n_components": 8, "n_heldout": 10, "seed": 3}
    assert b.seed == 3 and b.dim == 4 and b.heldout.shape == (10, 4)
    assert get_benchmark("moons", noise=0).options["noise"] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_heldout_and_probes_are_fixed(name):
    a, b = bench(name), get_benchmark(name)
    assert torch.equal(a.heldout, b.heldout)
    pa, pb = a.probes(n_bins=6, per_bin=9, t_eps=0.01), b.probes(n_bins=6, per_bin=9, t_eps=0.01)
    for key in ("edges", "t", "x0", "x1", "eps"):
        assert torch.equal(getattr(pa, key), getattr(pb, key)), key
    # A different data seed moves the held-out set and the probes.
    c = get_benchmark(name, seed=1, **({"num_samples": 1000} if name == "mnist1d" else {}))
    assert not torch.equal(c.probes(n_bins=6, per_bin=9).x0, pa.x0)
    if c.heldout.shape == a.heldout.shape:
        assert not torch.equal(c.heldout, a.heldout)


@pytest.mark.parametrize("name", NAMES)
def test_sample_depends_only_on_the_generator(name):
    b = bench(name)
    torch_state = torch.get_rng_state()
    x1, x2, x3 = b.sample(500, gen(5)), b.sample(500, gen(5)), b.sample(500, gen(6))
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)
    b.probes(n_bins=3, per_bin=4)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the global torch RNG is never used


@pytest.mark.parametrize("t_eps", [0.0, 0.05, 0.3])
def test_probe_times_lie_inside_their_bins(t_eps):
    p = bench("gmm8").probes(n_bins=20, per_bin=512, t_eps=t_eps)
    assert torch.allclose(p.edges.double(), torch.linspace(t_eps, 1 - t_eps, 21, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(p.centers, (p.edges[:-1] + p.edges[1:]) / 2)
    assert (p.t > p.edges[:-1, None]).all() and (p.t < p.edges[1:, None]).all()
    assert (p.t > 0).all() and (p.t < 1).all()
    # Uniform within each bin: the within-bin position has mean 1/2 and variance 1/12.
    pos = (p.t - p.edges[:-1, None]) / (p.edges[1:, None] - p.edges[:-1, None])
    assert abs(pos.mean().item() - 0.5) < 0.01 and abs(pos.var().item() - 1 / 12) < 0.005


def test_probe_noise_is_standard_normal_and_x1_is_data():
    b = bench("gmm8")
    p = b.probes()
    for z in (p.x0, p.eps):
        assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    assert not torch.equal(p.x0, p.eps)
    radius = p.x1.norm(dim=-1)
    assert abs(radius.mean().item() - 5) < 0.05
    # The x0/x1/eps draws do not depend on t_eps (only the times move).
    q = b.probes(t_eps=0.1)
    assert torch.equal(p.x0, q.x0) and torch.equal(p.x1, q.x1) and torch.equal(p.eps, q.eps)
    # Held-out points and probes come from different streams.
    assert not torch.equal(b.heldout[:10], p.x1.reshape(-1, 2)[:10])


def test_gmm8_statistics_and_log_prob():
    b = bench("gmm8")
    x = b.sample(20000, gen(0)).double()
    assert x.mean(0).abs().max().item() < 0.1
    assert abs(x.norm(dim=-1).mean().item() - 5) < 0.05
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    centres = 5 * torch.stack([angles.cos(), angles.sin()], -1)
    nearest = torch.cdist(x, centres).argmin(-1)
    for k in range(8):
        pts = x[nearest == k]
        assert abs(len(pts) / len(x) - 1 / 8) < 0.01
        var = pts.var(0)
        assert (var - 0.1).abs().max().item() < 0.01, (k, var)
    expected = math.log(1 / 8) - math.log(2 * math.pi * 0.1)  # log(1/8 N(0; 0, 0.1 I)) in 2-D
    lp = b.mixture.log_prob(centres)
    assert torch.allclose(lp, torch.full((8,), expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_gmm8_exposes_var_and_radius():
    b = get_benchmark("gmm8", var=0.5, radius=2.0)
    assert torch.allclose(b.mixture.covs, 0.5 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2))
    assert torch.allclose(b.mixture.means.norm(dim=-1), torch.full((8,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("dim", [8, 32])
def test_gmm_d_sample_covariance_matches_closed_form(dim):
    b = get_benchmark("gmm-d", dim=dim) if dim != 8 else bench("gmm-d")
    m = b.mixture
    assert m.dim == dim and m.n_components == 8
    x = b.sample(50000, gen(2)).double()
    cov = torch.cov(x.T)
    exact = m.covariance()
    rel = torch.linalg.norm(cov - exact) / torch.linalg.norm(exact)
    assert rel.item() < 0.05, rel.item()
    assert (x.mean(0) - m.weights @ m.means).abs().max().item() < 0.05
    # The construction: eigenvalues in [0.05, 0.5], weights bounded away from 0, radii in [2, 4].
    assert m.evals.min().item() >= 0.05 - 1e-9 and m.evals.max().item() <= 0.5 + 1e-9
    assert m.weights.min().item() > 0.5 / (1.5 * 8) - 1e-9
    radii = m.means.norm(dim=-1)
    assert radii.min().item() >= 2 - 1e-9 and radii.max().item() <= 4 + 1e-9


@pytest.mark.parametrize("name", ["gmm8", "gmm-d"])
def test_mixture_draws_are_the_same_with_and_without_row_masks(name):
    """The GPU's unmasked transform (every component on every row, then a selection) and
    the CPU's masked one give the same points, each from the component its uniform picks."""
    m = bench(name).mixture
    g = gen(5)
    u = torch.rand(4000, generator=g, dtype=torch.float64)
    z = torch.randn(4000, m.dim, generator=g, dtype=torch.float64)
    masked, unmasked = m.transform(u, z, masked=True), m.transform(u, z, masked=False)
    torch.testing.assert_close(unmasked, masked, rtol=0, atol=1e-12)
    k = torch.searchsorted(m.weights.cumsum(0), u, right=True)
    by_hand = m.means[k] + torch.einsum("nij,nj->ni", m.evecs[k], z * m.evals[k].sqrt())
    torch.testing.assert_close(masked, by_hand, rtol=0, atol=1e-12)


def test_gmm_d_is_deterministic_per_seed():
    a, b, c = get_benchmark("gmm-d", seed=4), get_benchmark("gmm-d", seed=4), get_benchmark("gmm-d", seed=5)
    assert torch.equal(a.mixture.means, b.mixture.means) and torch.equal(a.mixture.covs, b.mixture.covs)
    assert not torch.allclose(a.mixture.means, c.mixture.means)
    assert not torch.allclose(a.mixture.covs, c.mixture.covs)


def test_oracle_only_for_mixtures():
    path = BrownianBridge(0.5)
    o = bench("gmm8").oracle(path)
    assert isinstance(o, BridgeOracle) and o.mixture is bench("gmm8").mixture and o.path is path
    assert isinstance(bench("gmm-d").oracle(path), BridgeOracle)
    for name in ("moons", "checkerboard", "spirals", "digits", "mnist1d"):
        assert bench(name).mixture is None
        with pytest.raises(ValueError) as err:
            bench(name).oracle(path)
        assert str(err.value) == f"benchmark '{name}' has no oracle: oracle benchmarks are gmm-d, gmm8"


def test_two_d_toys_have_their_shapes():
    x = bench("checkerboard").sample(20000, gen(0))
    assert x.abs().max().item() <= 4
    cells = torch.floor((x + 4) / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the dark squares
    assert len(torch.unique(cells, dim=0)) == 8

    m = bench("moons").sample(20000, gen(0))
    assert m.mean(0).abs().max().item() < 0.05
    assert m[:, 0].abs().max().item() < 4.0 and m[:, 1].abs().max().item() < 2.5  # 3 and 1.5 + noise
    clean = get_benchmark("moons", noise=0.0).sample(2000, gen(0)).double() / 2 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    upper = ((clean**2).sum(-1) - 1).abs() < 1e-5
    lower = (((clean - torch.tensor([1.0, 0.5], dtype=torch.float64)) ** 2).sum(-1) - 1).abs() < 1e-5
    assert (upper | lower).all() and 0.45 < upper.double().mean().item() < 0.55

    s = get_benchmark("spirals", noise=0.0).sample(20000, gen(0))
    r = s.norm(dim=-1)
    assert 3.9 < r.max().item() <= 4.0 + 1e-5
    assert torch.allclose(s.mean(0), torch.zeros(2), atol=0.1)  # two arms, one the other rotated by pi


def is_row_of(x, pool):
    return (x[:, None, :] == pool[None, :, :]).all(-1).any(-1)


def test_digits_scaling_and_split():
    b = bench("digits")
    assert b.heldout.shape == (297, 64) and b.train.shape == (1500, 64)
    assert b.heldout.min().item() >= -1 and b.heldout.max().item() <= 1
    assert b.train.min().item() == -1 and b.train.max().item() == 1
    held, train = set(b.heldout_index.tolist()), set(b.train_index.tolist())
    assert not held & train and held | train == set(range(1797))
    from sklearn.datasets import load_digits

    data = load_digits()
    src = torch.tensor(data.data, dtype=torch.float32) / 8 - 1
    assert torch.equal(b.heldout, src[b.heldout_index]) and torch.equal(b.train, src[b.train_index])
    assert torch.equal(b.heldout_labels, torch.tensor(data.target)[b.heldout_index])
    assert b.train_labels.shape == (1500,)
    # Training draws are rows of the pool.
    x = b.sample(200, gen(3))
    assert is_row_of(x, b.train).all()
    assert get_benchmark("digits", n_heldout=100).heldout.shape == (100, 64)


def test_mnist1d_defaults_and_labels():
    b = bench("mnist1d")
    assert b.heldout.shape == (1000, 40) and b.train.shape == (4000, 40)
    assert b.heldout_labels.shape == (1000,) and set(b.train_labels.tolist()) == set(range(10))
    assert abs(torch.cat([b.train, b.heldout]).std().item() - 1) < 1e-3  # the generator standardises
    x = b.sample(100, gen(0))
    assert is_row_of(x, b.train).all()


def test_mnist1d_leaves_the_global_rngs_alone():
    # A seed no other test uses, so the generator really runs (the arrays are cached).
    np.random.seed(123)
    random.seed(123)
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    b = get_benchmark("mnist1d", seed=77, num_samples=1000)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert b.heldout.shape == (200, 40)


def test_every_benchmark_builds_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in NAMES:
        options = {"seed": 2024, "num_samples": 1000} if name == "mnist1d" else {}  # fresh: no cache
        b = get_benchmark(name, **options)
        assert b.sample(10, gen(0)).shape == (10, DIMS[name])


def test_unknown_benchmark_lists_known_names():
    msg = one_line_error(get_benchmark, "foo")
    assert msg == "unknown benchmark 'foo': known benchmarks are checkerboard, digits, gmm-d, gmm8, mnist1d, moons, spirals"


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("gmm-d", {"dim": 0}, "dim=0"),
        ("gmm-d", {"dim": 2.5}, "dim=2.5"),
        ("gmm-d", {"n_components": 0}, "n_components=0"),
        ("gmm8", {"var": -1.0}, "var=-1.0"),
        ("gmm8", {"radius": float("inf")}, "radius=inf"),
        ("moons", {"n_heldout": 0}, "n_heldout=0"),
        ("spirals", {"noise": float("nan")}, "noise=nan"),
        ("digits", {"n_heldout": 1797}, "n_heldout=1797"),
        ("digits", {"seed": -1}, "seed=-1"),
        ("digits", {"seed": True}, "seed=True"),
        ("mnist1d", {"num_samples": 55}, "num_samples=55"),
        ("gmm8", {"foo": 1}, "'foo'"),
        ("moons", {"dim": 3}, "'dim'"),
        ("mnist1d", {"n_heldout": 10}, "'n_heldout'"),
    ],
)
def test_bad_options_are_refused_in_one_line(name, options, expected):
    msg = one_line_error(get_benchmark, name, **options)
    assert expected in msg and name in msg


def test_unknown_option_lists_allowed_ones():
    msg = one_line_error(get_benchmark, "gmm8", foo=1)
    assert msg == "unknown option 'foo' for benchmark 'gmm8': allowed options are n_heldout, radius, seed, var"


@pytest.mark.parametrize(
    "kwargs, expected",
    [({"n_bins": 0}, "n_bins=0"), ({"per_bin": 0}, "per_bin=0"), ({"t_eps": 0.5}, "t_eps=0.5"), ({"t_eps": -0.1}, "t_eps=-0.1")],
)
def test_bad_probe_arguments_are_refused_in_one_line(kwargs, expected):
    assert expected in one_line_error(bench("gmm8").probes, **kwargs)


def test_bad_sample_arguments_are_refused_in_one_line():
    b = bench("moons")
    assert "n=-1" in one_line_error(b.sample, -1, gen(0))
    assert "generator=None" in one_line_error(b.sample, 5, None)


@pytest.mark.parametrize("name", ["gmm8", "moons", "checkerboard", "spirals", "digits"])
def test_member_streams_depend_on_the_member_seed_only(name):
    """sample_members: member i's draws do not change with M, and follow the same law as
    Benchmark.sample (compared by per-dimension Kolmogorov-Smirnov on 4000 points)."""
    from scipy import stats

    from fmstudy.rng import CounterRNG

    b = get_benchmark(name)
    big = b.sample_members(CounterRNG([7, 8, 9]), counter=3, n=4000)
    small = b.sample_members(CounterRNG([7]), counter=3, n=4000)
    assert big.shape == (3, 4000, b.dim) and big.dtype == torch.float32
    assert torch.equal(big[0], small[0])
    assert not torch.equal(big[0], big[1])
    assert not torch.equal(small[0], b.sample_members(CounterRNG([7]), counter=4, n=4000)[0])
    ref = b.sample(4000, torch.Generator().manual_seed(1))
    for j in range(min(b.dim, 4)):
        assert stats.ks_2samp(big[0, :, j].numpy(), ref[:, j].numpy()).pvalue > 1e-3
