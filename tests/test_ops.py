"""The cost of a training step in operators: at most 300 aten operators a step, and the
count does not grow with the number of members or of member groups (issue 14). Counted with
a dispatch mode, forward, backward, optimiser and sampler work included, on a step of an
adaptive sampler's steady state (its table rebuilt after the previous step's update).

Measured (8 or 32 members, without / with clipping): uniform, logit_normal, arcsine 186 / 191,
stratified 187 / 192, loss_second_moment 234 / 239, grad_norm 256 / 261, var_opt 286 / 291
(its per-sample norms in Adam's metric 26 of them, its update 58), var_opt_neyman 288 / 293,
var_opt with metric="euclid" 273 / 278."""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fmstudy.models import MLPConfig, VelocityEnsemble, per_sample_grad_sq, per_sample_grad_sq_adam
from fmstudy.train import TrainConfig, build_run

BASE = dict(benchmark="gmm8", hidden=32, depth=3, batch_size=64, n_bins=6, probe_per_bin=16, steps=20, device="cpu", feedback_every=100)
LIMIT = 300
LSM = {"name": "loss_second_moment"}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(chunk: int | None = None, **kw) -> int:
    """Operators of the fourth step: by then an adaptive sampler has been updated by a step
    (an Adam-metric one needs Adam's first step) and the counted step rebuilds its table."""
    run, step = build_run(TrainConfig(**{**BASE, **kw}))
    if chunk is not None:
        step.draws.chunk = chunk
    for _ in range(3):
        step()
    with _Count() as count:
        step()
    return sum(count.ops.values())


def fixed_pack(m: int) -> list[dict]:
    samplers = [{"name": "uniform"}, {"name": "logit_normal", "reweight": False}, {"name": "beta", "a": 2.0, "b": 2.0}]
    return [{"seed": i, "sampler": samplers[i % 3]} for i in range(m)]


SAMPLERS = ["uniform", "stratified", "logit_normal", "arcsine", "loss_second_moment", "grad_norm", "learning_progress", "oracle_qstar",
            "var_opt", "var_opt_neyman", {"name": "var_opt", "metric": "euclid"}]


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
def test_a_step_costs_at_most_300_operators_and_no_more_for_more_members(sampler, grad_clip):
    """Per-sample fed samplers (loss_second_moment, grad_norm, var_opt) update at every step, so
    these are their sampler-update steps; per-bin fed ones (learning_progress, oracle_qstar) draw
    from their tables here (their feedback steps: the next test)."""
    spec = {"name": sampler} if isinstance(sampler, str) else sampler
    counts = {m: ops_per_step(seeds=tuple(range(m)), sampler=spec, grad_clip=grad_clip) for m in (1, 8, 32)}
    assert max(counts.values()) <= LIMIT, counts
    assert counts[8] == counts[32], counts  # M = 1 reshapes contiguous blocks without a copy


@pytest.mark.parametrize("sampler", [{"name": "learning_progress"}, {"name": "oracle_qstar"}, {"name": "oracle_excess"}])
def test_a_per_bin_feedback_step_costs_the_same_for_more_members(sampler):
    """With feedback_every=1 every step measures the model on the fixed probes (learning_progress
    449, oracle_excess 927 operators with 8 or 32 members) or the variance account on fresh
    probes (oracle_qstar 2715): a pass per bin, in fmstudy.signals and fmstudy.meter, a
    checkpoint-like measurement that feedback_every (50 by default) spaces out. The sampler's
    own update is a few dozen of them; none of it grows with the number of members."""
    counts = {m: ops_per_step(seeds=tuple(range(m)), sampler=sampler, feedback_every=1) for m in (8, 32)}
    assert counts[8] == counts[32] > ops_per_step(seeds=tuple(range(8)), sampler=sampler), counts


def test_three_sampler_groups_cost_what_one_does():
    one = ops_per_step(seeds=tuple(range(6)), sampler={"name": "logit_normal", "reweight": False})
    three = ops_per_step(members=fixed_pack(6))
    assert three <= LIMIT and three == one, (one, three)
    assert ops_per_step(members=fixed_pack(24)) == three


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_a_pack_of_samplers_and_rates_costs_what_one_adaptive_group_does(grad_clip):
    """Fixed samplers and one adaptive sampler at two, then four learning rates: the groups of
    the adaptive sampler are updated as one (fmstudy.member_samplers units), whatever the number
    of members or rates: with loss_second_moment 238 / 243 operators, var_opt 290 / 295,
    var_opt_neyman (stratified among unstratified members) 292 / 297."""
    fixed = [{"name": "uniform"}, {"name": "logit_normal", "reweight": False}, {"name": "beta", "a": 2.0, "b": 2.0}]

    def pack(m: int, rates: list[float], adaptive: dict) -> list[dict]:
        return [{"seed": i, "sampler": [*fixed, adaptive][i % 4], "lr": rates[(i // 4) % len(rates)]} for i in range(m)]

    for adaptive in (LSM, {"name": "var_opt"}, {"name": "var_opt_neyman"}):
        rates = ([1e-3, 3e-3], [1e-3, 2e-3, 3e-3, 4e-3]) if adaptive is LSM else ([1e-3, 3e-3],)
        counts = {(m, len(r)): ops_per_step(members=pack(m, r, adaptive), grad_clip=grad_clip) for m in (8, 32) for r in rates}
        assert max(counts.values()) <= LIMIT and len(set(counts.values())) == 1, (adaptive, counts)
    mixed = [{"seed": i, "sampler": {"name": ["uniform", "grad_norm"][i % 2]}, "lr": [1e-3, 3e-3][i // 2 % 2]} for i in range(32)]
    assert ops_per_step(members=mixed[:8], grad_clip=grad_clip) == ops_per_step(members=mixed, grad_clip=grad_clip) <= LIMIT


def test_every_sampler_in_one_pack_costs_the_same_for_more_members():
    """A pack of every adaptive kind at two rates costs the sum of the kinds' updates (487
    operators clipped): over the limit, each kind's update its own, and the same for 8 or 32 members."""
    kinds = ["uniform", "loss_second_moment", "learning_progress", "var_opt", "var_opt_neyman", "grad_norm", "oracle_qstar"]
    members = [{"seed": i, "sampler": {"name": kinds[i % 7]}, "lr": [1e-3, 3e-3][i % 2]} for i in range(32)]
    assert ops_per_step(members=members[:8], grad_clip=1.0) == ops_per_step(members=members, grad_clip=1.0)


def test_the_step_that_starts_a_chunk_of_prefixes():
    """chunk=1: every step computes its own block prefixes (67 operators in fmstudy.rng, paid
    once per chunk of up to 4096 steps). With a fixed sampler that step stays under the limit,
    clipped too (258); with an adaptive sampler's update it goes past it (loss_second_moment
    306 clipped, var_opt 358): ordinary steps are held to it."""
    ordinary, first = ops_per_step(seeds=(0, 1, 2, 3)), ops_per_step(chunk=1, seeds=(0, 1, 2, 3))
    assert first <= LIMIT and 40 < first - ordinary < 80, (ordinary, first)
    assert ops_per_step(chunk=1, seeds=(0, 1, 2, 3), grad_clip=1.0) <= LIMIT


def test_the_counter_can_fail():
    """The count sees every operator: a step with clipping costs more than one without."""
    assert ops_per_step(seeds=(0, 1), grad_clip=1.0) > ops_per_step(seeds=(0, 1))


def _layer_by_layer(trace, deltas, precond=None, index=None):
    """The per-sample norms one layer at a time: fmstudy.models' formulas before they were batched."""
    total = None
    for k, ((a, _), d) in enumerate(zip(trace, deltas)):
        a, d = (a, d) if index is None else (a[:, index], d[:, index])
        if precond is None:
            part = (a.pow(2).sum(-1) + 1) * d.pow(2).sum(-1)
        else:
            part = (torch.bmm(a.pow(2), precond[0][k]) * d.pow(2)).sum(-1) + (d.pow(2) * precond[1][k][:, None, :]).sum(-1)
        total = part if total is None else total + part
    return total


@pytest.mark.parametrize("cfg", [MLPConfig(2, 32, 3), MLPConfig(3, 8, 1), MLPConfig(15, 32, 2), MLPConfig(16, 16, 2, n_freqs=2)], ids=str)
def test_the_batched_per_sample_norms_are_the_numbers_of_one_layer_at_a_time(cfg):
    """Fewer operators, the same numbers bit for bit: tensors of one shape stacked (an input of
    width 15 + 1 + 16 = 32 joins the hidden layers' inputs, an output as wide as the hidden layers
    joins theirs), rows summed each on its own, layers added in order."""
    g = torch.Generator().manual_seed(0)
    ens, trace = VelocityEnsemble(cfg, [0, 1, 2]), []
    x, t = torch.randn(3, 64, cfg.dim, generator=g), torch.rand(3, 64, generator=g)
    loss = ((ens(x, t, trace=trace, retain=False) - 1) ** 2).mean(-1)
    deltas = torch.autograd.grad(loss.sum(), [pre for _, pre in trace])
    assert not any(pre.retains_grad for _, pre in trace) and all(a.requires_grad for a, _ in trace[1:])  # retain=False
    precond = ([torch.rand(w.shape, generator=g) + 0.5 for w in ens.weights], [torch.rand(b.shape, generator=g) + 0.5 for b in ens.biases])
    with torch.no_grad():
        assert torch.equal(per_sample_grad_sq(trace, deltas), _layer_by_layer(trace, deltas))
        for index in (None, torch.arange(3, 64, 8), slice(3, None, 8)):
            want = _layer_by_layer(trace, deltas, precond, index)
            assert torch.equal(per_sample_grad_sq_adam(trace, precond, deltas, index=index), want), index
        wide = [b[:, None, :].expand(3, 8, b.shape[1]) for b in precond[1]]  # P_b already broadcast, as the step passes it
        assert torch.equal(per_sample_grad_sq_adam(trace, (precond[0], wide), deltas, index=slice(3, None, 8)), want)
