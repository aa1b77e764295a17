"""FLOP counts against a hand count and torch's FlopCounterMode on the real models."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fmstudy import models
from fmstudy.flops import backward_flops, forward_flops, norm_flops, training_flops
from fmstudy.models import MLPConfig, VelocityEnsemble, VelocityMLP


def test_hand_count_of_a_small_mlp():
    cfg = MLPConfig(dim=2, hidden=4, depth=2, n_freqs=1)  # widths 5 (2 + 1 + 2), 4, 4, 2
    assert forward_flops(cfg) == 2 * (5 * 4 + 4 * 4 + 4 * 2)
    assert backward_flops(cfg) == 2 * (5 * 4 + 4 * 4 + 4 * 2) + 2 * (4 * 4 + 4 * 2)
    assert norm_flops(cfg, "euclid") == 2 * (5 + 4 + 1) + 2 * (4 + 4 + 1) + 2 * (4 + 2 + 1)
    assert norm_flops(cfg, "adam") == norm_flops(cfg, "euclid") + forward_flops(cfg)
    assert norm_flops(cfg, "none") == 0
    with pytest.raises(ValueError, match="norm='l1' is not allowed"):
        norm_flops(cfg, "l1")


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", [MLPConfig(dim=2, hidden=32, depth=3), MLPConfig(dim=8, hidden=64, depth=2, n_freqs=4)])
def test_forward_and_backward_flops_equal_torchs_count_on_the_models(cfg):
    n, m = 7, 3
    mlp = VelocityMLP(cfg, seed=0)
    out = []
    assert _counted(lambda: out.append(mlp(torch.randn(n, cfg.dim), torch.rand(n)))) == n * forward_flops(cfg)
    assert _counted(lambda: out[0].pow(2).sum().backward()) == n * backward_flops(cfg)
    ens = VelocityEnsemble(cfg, range(m))
    out = []
    assert _counted(lambda: out.append(ens(torch.randn(m, n, cfg.dim), torch.rand(m, n)))) == m * n * forward_flops(cfg)
    assert _counted(lambda: out[0].pow(2).sum().backward()) == m * n * backward_flops(cfg)


def test_adam_norm_costs_one_forward_pass_of_matrix_products():
    if not hasattr(models, "per_sample_grad_sq_adam"):
        pytest.skip("fmstudy.models has no per_sample_grad_sq_adam yet")
    cfg, n, m = MLPConfig(dim=3, hidden=16, depth=2), 5, 2
    ens = VelocityEnsemble(cfg, range(m))
    trace: list = []
    ens(torch.randn(m, n, cfg.dim), torch.rand(m, n), trace=trace).pow(2).sum().backward()
    precond = ([torch.rand_like(w) for w in ens.weights], [torch.rand_like(b) for b in ens.biases])
    counted = _counted(lambda: models.per_sample_grad_sq_adam(trace, precond))
    assert counted == m * n * (norm_flops(cfg, "adam") - norm_flops(cfg, "euclid"))


def test_training_flops_adds_the_samplers_extra_passes():
    cfg = MLPConfig(dim=2, hidden=8, depth=2)
    f, b, ne = forward_flops(cfg), backward_flops(cfg), norm_flops(cfg, "euclid")
    steps = np.array([0, 10, 20])
    got = training_flops(cfg, steps, 4, extra_forward=[0, 100, 200], extra_backward=[0, 50, 100], train_norm="euclid")
    want = steps * 4 * (f + b + ne) + np.array([0, 100, 200]) * f + np.array([0, 50, 100]) * (b + ne)
    np.testing.assert_array_equal(got, want)
    assert training_flops(cfg, 5, 2)[()] == 5 * 2 * (f + b)


def test_norms_on_a_subset_of_the_batch_are_charged_for_that_subset():
    cfg = MLPConfig(dim=2, hidden=16, depth=2)
    f, b, na = forward_flops(cfg), backward_flops(cfg), norm_flops(cfg, "adam")
    steps = np.array([0, 10, 20])
    got = training_flops(cfg, steps, 64, train_norm="adam", norm_fraction=1 / 8)
    np.testing.assert_allclose(got, steps * 64 * (f + b + na / 8))
    # every eighth sample of a 64-batch: 8 norms a step, as the trainer computes them
    assert got[1] - training_flops(cfg, steps, 64)[1] == pytest.approx(10 * 8 * na)
