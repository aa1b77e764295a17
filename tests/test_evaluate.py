"""End-of-run sample quality (fmstudy.evaluate, STUDY.md section 6): the exact oracle field
reaches the noise floor and the true NLL, a wrong field is far above it, a Gaussian flow's NLL
matches the closed form, a NaN member is isolated, results round-trip through netCDF."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from fmstudy.data import get_benchmark
from fmstudy.evaluate import add_sample_quality, sample_quality
from fmstudy.models import MLPConfig, VelocityEnsemble
from fmstudy.oracle import BridgeOracle, GaussianMixture
from fmstudy.paths import BrownianBridge
from fmstudy.results import SCHEMA, build_dataset, read_netcdf, write_netcdf

FAST = {"n_samples": 400, "ode_steps": 20, "method": "rk4", "w2_points": 400, "nll_points": 200, "floor_repeats": 5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Copies:
    """An ensemble of ``m`` identical copies of ``velocity``: [B, d] or [M, B, d] -> [M, B, d].
    Members listed in ``nan_members`` return NaN (a diverged member)."""

    def __init__(self, velocity, m: int, nan_members: tuple[int, ...] = ()) -> None:
        self.velocity, self.m, self.nan = velocity, m, list(nan_members)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        v = self.velocity(x, t).expand(self.m, *x.shape[-2:]).clone()
        v[self.nan] = math.nan
        return v


@dataclass
class GaussBench:
    """A benchmark-like object: data N(mu, s^2 I) in d dimensions, as a one-component mixture."""

    mu: Tensor
    s: float
    name: str = "gauss"
    train_labels: None = None
    heldout_labels: None = None

    def __post_init__(self) -> None:
        self.dim = len(self.mu)
        self.mixture = GaussianMixture(torch.ones(1), self.mu[None].double(), torch.tensor([self.s**2]))
        self.heldout = self.mixture.sample(1000, torch.Generator().manual_seed(123))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.mixture.sample(n, generator)


@pytest.fixture(scope="module")
def gmm8():
    return get_benchmark("gmm8")


@pytest.fixture(scope="module")
def oracle_quality(gmm8):
    model = Copies(gmm8.oracle(BrownianBridge(0.0, 1e-3)).velocity, 2)
    return sample_quality(model, gmm8, **FAST)


def test_exact_field_reaches_the_floor_and_the_true_nll(oracle_quality):
    q = oracle_quality
    assert set(q.metrics) == {"sw", "mmd", "energy", "w2", "nll"}  # no classifier for gmm8
    assert q.samples.shape == (2, 400, 2)
    for name in ("sw", "mmd", "energy", "w2"):
        mean, std = q.floors[name]
        assert std > 0
        # exact ODE samples are real draws: their metric is one more draw of the floor's
        assert np.all(np.abs(q.metrics[name] - mean) < 4 * std), (name, q.metrics[name], mean, std)
    # the exact flow's density is the data's: NLL by the ODE equals the mixture's own log-density
    assert q.nll_true is not None
    np.testing.assert_allclose(q.metrics["nll"], q.nll_true, atol=5e-3)  # rk4, 20 steps


def test_wrong_field_is_far_above_the_floor(gmm8, oracle_quality):
    zero = Copies(lambda x, t: torch.zeros_like(x), 2)  # samples stay N(0, I): the wrong data
    q = sample_quality(zero, gmm8, **FAST)
    for name in ("sw", "mmd", "energy", "w2"):
        mean, std = q.floors[name]
        assert np.all(q.metrics[name] > mean + 10 * std), (name, q.metrics[name], mean, std)
        assert q.floors[name] == oracle_quality.floors[name]  # the floor does not depend on the model
    # N(0, I) scores a point y at -log N(y; 0, I) = |y|^2/2 + log(2 pi) (zero divergence)
    y = gmm8.heldout[:200].double()
    closed = float(((y**2).sum(1) / 2 + math.log(2 * math.pi)).mean())
    np.testing.assert_allclose(q.metrics["nll"], closed, rtol=1e-5)


def test_gaussian_flow_nll_matches_closed_form():
    bench = GaussBench(torch.tensor([1.5, -0.5]), 0.6)
    model = Copies(BridgeOracle(bench.mixture, BrownianBridge(0.0)).velocity, 2)
    q = sample_quality(model, bench, n_samples=200, ode_steps=40, method="rk4", nll_points=300, floor_repeats=3)
    y = bench.heldout[:300].double()
    closed = float(((y - bench.mu.double()) ** 2).sum(1).mean() / (2 * 0.36) + math.log(2 * math.pi * 0.36))
    np.testing.assert_allclose(q.metrics["nll"], closed, atol=1e-3)
    assert q.nll_true == pytest.approx(closed, rel=1e-7)  # float32 s^2 in the mixture


def test_nan_member_gives_nan_for_that_member_only(gmm8, oracle_quality):
    model = Copies(gmm8.oracle(BrownianBridge(0.0, 1e-3)).velocity, 3, nan_members=(1,))
    q = sample_quality(model, gmm8, **FAST)
    for name, vals in q.metrics.items():
        assert np.isnan(vals[1]) and np.isfinite(vals[[0, 2]]).all(), name
        # the healthy members' values are those of a run without the NaN member
        np.testing.assert_array_equal(vals[[0, 2]], oracle_quality.metrics[name])


def test_ensemble_with_frozen_nan_member_is_deterministic(gmm8):
    ens = VelocityEnsemble(MLPConfig(dim=2, hidden=32, depth=2), [0, 1, 2])
    with torch.no_grad():
        ens.weights[0][2].fill_(math.nan)
    kw = {**FAST, "n_samples": 200, "w2_points": 100, "nll_points": 50, "ode_steps": 5, "method": "heun", "floor_repeats": 2}
    a, b = sample_quality(ens, gmm8, **kw), sample_quality(ens, gmm8, **kw)
    for name in a.metrics:
        assert np.isnan(a.metrics[name][2]) and np.isfinite(a.metrics[name][:2]).all(), name
        assert a.metrics[name].tobytes() == b.metrics[name].tobytes()  # bit-identical, NaN included
    assert a.floors == b.floors


def test_dataset_round_trip(tmp_path, oracle_quality):
    edges = np.linspace(0, 1, 4)
    ds = build_dataset({"diverged_step": np.array([-1, -1])}, [0, 1], 3, [0, 3], edges, {"config": {"x": 1}})
    out = add_sample_quality(ds, oracle_quality, {"weights": "ema"})
    assert "sample_sw" not in ds and "evaluation" not in ds.attrs  # a new dataset; the input is unchanged
    back = read_netcdf(write_netcdf(out, tmp_path / "run.nc"))
    for name, value in oracle_quality.as_arrays().items():
        assert back[name].dims == SCHEMA[name][0]
        assert back[name].attrs["units"] == SCHEMA[name][1]
        np.testing.assert_array_equal(back[name].values, value)
    assert back["floor_w2_std"].values == oracle_quality.floors["w2"][1]
    ev = json.loads(back.attrs["evaluation"])
    assert ev["n_samples"] == 400 and ev["ode_steps"] == 20 and ev["method"] == "rk4" and ev["seed"] == 0
    assert ev["weights"] == "ema"
    with pytest.raises(ValueError, match="has shape"):
        add_sample_quality(build_dataset({}, [0, 1, 2], 3, [0, 3], edges, {}), oracle_quality)


@pytest.mark.parametrize("n", [5001, 1, 0, 2.5, True])
def test_bad_n_samples_refused(gmm8, n):
    with pytest.raises(ValueError, match=rf"^n_samples={n!r} is not allowed: .*\[2, 5000\]") as err:
        sample_quality(Copies(lambda x, t: torch.zeros_like(x), 1), gmm8, n_samples=n)
    assert "\n" not in str(err.value)
