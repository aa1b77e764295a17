"""Training FLOPs per ensemble member, so that schedules can be compared at equal compute
(STUDY.md section 6: "compute matched in FLOPs"; extra passes of a sampler counted).

The velocity MLP of :mod:`fmstudy.models` has layer widths w_0 = dim + 1 + 2 n_freqs (the
input concat(x, e(t)), M.3), w_1 = ... = w_depth = hidden and w_{depth+1} = dim. A
multiply-add is 2 FLOPs; per sample

    forward    F = 2 sum_{l=1}^{L} w_{l-1} w_l                                             (F.1)
    backward   B = 2 sum_{l=1}^{L} w_{l-1} w_l + 2 sum_{l=2}^{L} w_{l-1} w_l = 2 F - 2 w_0 w_1   (F.2)

(weight gradients in every layer, input gradients in all but the first: the network's input
needs none), which is what torch's FlopCounterMode counts on the real model (tests/test_flops.py).
Biases, SiLU, the time embedding and the loss are O(width) per sample and not counted; Adam's
update is O(parameters) per step, the same for every sampler, and not counted either.
Per-sample gradient norms from the layer trace (``fmstudy.models.per_sample_grad_sq``):

    Euclidean  N_e = sum_l 2 (w_{l-1} + w_l + 1)      (||a||^2, ||delta||^2, product and sum)  (F.3)
    Adam       N_a = N_e + sum_l 2 w_{l-1} w_l = N_e + F   (one matrix product per layer)      (F.4)

A run's training FLOPs up to step s, with batch size b and the sampler's extra per-member
forward and backward samples E_f(s), E_b(s) (the run's ``extra_forward``/``extra_backward``):

    C(s) = s b (F + B + N_train) + E_f(s) F + E_b(s) (B + N_extra)                           (F.5)

with N_train the norm the sampler asks of every training sample (0 for most samplers) and
N_extra the one measured on the probes with every extra backward sample (Euclidean, plus
Adam's for samplers that ask for it). Held-out and probe measurements at checkpoints are the
same for every sampler and are not training: they are not counted.
"""

from __future__ import annotations

import numpy as np

from .models import MLPConfig

__all__ = ["NORMS", "backward_flops", "forward_flops", "layer_widths", "norm_flops", "training_flops"]

NORMS = ("none", "euclid", "adam")


def layer_widths(config: MLPConfig) -> list[int]:
    """[w_0, ..., w_L]: the MLP's input, hidden and output widths."""
    return [config.in_features] + [config.hidden] * config.depth + [config.dim]


def _macs(config: MLPConfig) -> list[int]:
    w = layer_widths(config)
    return [a * b for a, b in zip(w[:-1], w[1:])]


def forward_flops(config: MLPConfig) -> int:
    """F (F.1): FLOPs of one sample's forward pass."""
    return 2 * sum(_macs(config))


def backward_flops(config: MLPConfig) -> int:
    """B (F.2): FLOPs of one sample's backward pass (weight and input gradients)."""
    macs = _macs(config)
    return 2 * sum(macs) + 2 * sum(macs[1:])


def norm_flops(config: MLPConfig, norm: str) -> int:
    """N_e (F.3) for ``"euclid"``, N_a (F.4) for ``"adam"``, 0 for ``"none"``: FLOPs of one
    sample's gradient norm from the layer trace."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not allowed: norm must be one of {', '.join(NORMS)}")
    if norm == "none":
        return 0
    w = layer_widths(config)
    euclid = sum(2 * (a + b + 1) for a, b in zip(w[:-1], w[1:]))
    return euclid + (forward_flops(config) if norm == "adam" else 0)


def training_flops(
    config: MLPConfig,
    steps: np.ndarray | int,
    batch_size: int,
    extra_forward: np.ndarray | int = 0,
    extra_backward: np.ndarray | int = 0,
    train_norm: str = "none",
    extra_norm: str = "euclid",
    norm_fraction: float = 1.0,
) -> np.ndarray:
    """C(s) (F.5): training FLOPs per member up to each of ``steps`` (e.g. a run's checkpoint
    steps, with its ``extra_forward``/``extra_backward`` at those checkpoints).
    ``norm_fraction``: the share of training samples whose norm is computed (the trainer takes
    Adam-metric norms on every ``norm_stride``-th sample only: 1 / norm_stride)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed: batch_size must be an integer >= 1")
    f, b = forward_flops(config), backward_flops(config)
    per_sample = f + b + norm_flops(config, train_norm) * norm_fraction
    steps, ef, eb = (np.asarray(v, dtype=float) for v in (steps, extra_forward, extra_backward))
    return steps * batch_size * per_sample + ef * f + eb * (b + norm_flops(config, extra_norm))
