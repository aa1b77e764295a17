"""The engine on a CUDA device: the same numbers as on the CPU, within float32 rounding, and a
training step that never makes the host wait. Skipped where no GPU is visible (CI has none);
``bash benchmarks/gpu_checks.sh`` runs these with the GPU benchmarks."""

import math
import os

import numpy as np
import pytest
import torch

from fmstudy.data import get_benchmark
from fmstudy.evaluate import sample_quality
from fmstudy.rng import CounterRNG
from fmstudy.train import TrainConfig, build_run, train

if os.environ.get("FMSTUDY_REQUIRE_CUDA") == "1" and not torch.cuda.is_available():
    # Set by benchmarks/gpu_checks.sh: there a missing GPU is an error, not nine skips.
    pytest.fail("FMSTUDY_REQUIRE_CUDA=1 but torch sees no CUDA device", pytrace=False)
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = dict(benchmark="gmm8", hidden=32, depth=2, batch_size=64, n_bins=6, probe_per_bin=16, n_checkpoints=4)


def small(**kw):
    return TrainConfig(**{**SMALL, **kw})


def test_counter_streams_are_bit_identical_on_cpu_and_gpu():
    rng = CounterRNG([0, 3, 2**40 + 1], stream=2)
    for counter in (0, 17, 2**35 + 5):
        assert torch.equal(rng.uniform(counter, 1000), rng.uniform(counter, 1000, "cuda").cpu())
        # Box-Muller's log and cos may round differently on the two devices.
        torch.testing.assert_close(rng.normal(counter, 1000), rng.normal(counter, 1000, "cuda").cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gmm8", "gmm-d", "moons"])
def test_member_data_on_gpu_match_the_cpu(name):
    bench, rng = get_benchmark(name), CounterRNG([1, 2])
    cpu, gpu = bench.sample_members(rng, 5, 3000), bench.sample_members(rng, 5, 3000, "cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", [{"name": "uniform"}, {"name": "grad_norm"}, {"name": "info_snr"}])
def test_gpu_training_follows_the_cpu_run(sampler):
    """float32 on two devices: the same run, apart from rounding that training amplifies
    slowly; compared over the first 30 steps."""
    kw = dict(sigma=0.5, seeds=(0, 1), steps=30, sampler=sampler, feedback_every=10)
    cpu = train(small(device="cpu", **kw), progress=False).dataset
    gpu = train(small(device="cuda", **kw), progress=False).dataset
    np.testing.assert_allclose(gpu.train_loss.values, cpu.train_loss.values, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(gpu.loss.values, cpu.loss.values, rtol=5e-3)
    assert gpu.attrs["device"] == torch.cuda.get_device_name() and gpu.attrs["tf32"] == 0


def test_a_planted_divergence_on_the_gpu_freezes_only_that_member(monkeypatch):
    from fmstudy.benchmark_base import Benchmark

    original = Benchmark.sample_members

    def poisoned(self, rng, counter, n, device=None):
        x = original(self, rng, counter, n, device)
        if counter == 7 and rng.n_members == 3:
            x[1] = math.inf
        return x

    monkeypatch.setattr(Benchmark, "sample_members", poisoned)
    ds = train(small(sigma=0.2, seeds=(0, 1, 2), steps=20, device="cuda"), progress=False).dataset
    assert ds.diverged_step.values.tolist() == [-1, 7, -1]
    assert np.isfinite(ds.train_loss.values[[0, 2]]).all()


@pytest.mark.parametrize("sampler", ["uniform", "loss_second_moment", "grad_norm", "info_snr", "oracle_excess"])
def test_a_gpu_training_step_never_synchronises(sampler):
    """CUDA's own check: any operation that makes the host wait for the device raises."""
    run, step = build_run(small(seeds=(0, 1), steps=10, sampler={"name": sampler}, feedback_every=100, grad_clip=1.0, device="cuda"))
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert bool(run.alive.all())


def test_sample_quality_of_a_gpu_model():
    result = train(small(sigma=0.5, seeds=(0, 1), steps=20, device="cuda"), progress=False)
    bench = get_benchmark("gmm8")
    quality = sample_quality(result.ema_model, bench, n_samples=200, ode_steps=8, w2_points=200, nll_points=50, floor_repeats=2)
    for name, values in quality.as_arrays().items():
        assert np.isfinite(values).all(), name
