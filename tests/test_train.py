"""The training engine: it learns, members train as they would alone, resume reproduces the
uninterrupted run, and a diverging member is frozen and recorded while the others go on."""

import math
import traceback

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fmstudy.results import SCHEMA, read_netcdf, split_pack, write_netcdf
from fmstudy.train import TrainConfig, build_run, cell_configs, checkpoint_steps, train

SMALL = dict(benchmark="gmm8", hidden=32, depth=2, batch_size=64, n_bins=6, probe_per_bin=16, n_checkpoints=4, device="cpu")


def small(**kw):
    return TrainConfig(**{**SMALL, **kw})


def test_a_few_hundred_steps_lower_the_integrated_excess():
    cfg = small(sigma=0.3, seeds=(0, 1), steps=400, lr=3e-3, hidden=64, batch_size=128, ema_decay=0.9, probe_per_bin=256)
    ds = train(cfg, progress=False).dataset
    first, last = ds.integrated_excess.isel(checkpoint=0), ds.integrated_excess.isel(checkpoint=-1)
    assert bool((last < 0.25 * first).all()), (first.values, last.values)
    # The decomposition on the probes: loss = irreducible + excess, up to the probe noise of
    # the cross term 2 (v - v*).(v* - u), whose mean is zero; averaged over 48 bin-checkpoints.
    gap = ds.loss - ds.irreducible - ds.excess
    assert abs(float(gap.mean())) < 0.05 * float(ds.loss.mean()), float(gap.mean())


@pytest.mark.parametrize("sampler", [{"name": "uniform"}, {"name": "grad_norm"}, {"name": "learning_progress"}])
def test_members_of_an_ensemble_train_as_they_would_alone(sampler):
    kw = dict(sigma=0.5, steps=40, sampler=sampler, feedback_every=10)
    together = train(small(seeds=(3, 4, 5), **kw), progress=False)
    alone = train(small(seeds=(4,), **kw), progress=False)
    a, b = together.dataset, alone.dataset
    np.testing.assert_allclose(a.train_loss.sel(member=4), b.train_loss.sel(member=4), rtol=1e-5, atol=1e-6)
    for p, q in zip(together.model.parameters(), alone.model.parameters()):
        torch.testing.assert_close(p[1], q[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.loss.sel(member=4), b.loss.sel(member=4), rtol=1e-4)


@pytest.mark.parametrize("sampler", [{"name": "uniform"}, {"name": "loss_second_moment"}, {"name": "info_snr"}])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, sampler):
    cfg = small(sigma=0.4, seeds=(0, 1), steps=30, sampler=sampler, feedback_every=5)
    whole = train(cfg, progress=False).dataset
    ckpt = tmp_path / "run.pt"
    part = train(cfg, checkpoint=ckpt, stop_at=13, progress=False)
    assert not part.complete and part.dataset is None and ckpt.exists()
    resumed = train(cfg, checkpoint=ckpt, progress=False).dataset
    timing = {"train_seconds"}
    for name in whole.data_vars:
        if name not in timing:
            np.testing.assert_array_equal(whole[name].values, resumed[name].values, err_msg=name)
    # A checkpoint from other options is refused rather than silently mixed in.
    with pytest.raises(ValueError, match="other options"):
        train(small(sigma=0.4, seeds=(0, 1), steps=31, sampler=sampler), checkpoint=ckpt, progress=False)


def test_a_planted_divergence_freezes_only_that_member(monkeypatch):
    from fmstudy.benchmark_base import Benchmark

    original = Benchmark.sample_members

    def poisoned(self, rng, counter, n, device=None):
        x = original(self, rng, counter, n, device)
        if counter == 7 and rng.n_members == 3:
            x[1] = math.inf  # member 1's data explodes at step 7
        return x

    cfg = small(sigma=0.2, seeds=(0, 1, 2), steps=20)
    clean = train(cfg, progress=False)
    monkeypatch.setattr(Benchmark, "sample_members", poisoned)
    hit = train(cfg, progress=False)
    ds = hit.dataset
    assert ds.diverged_step.values.tolist() == [-1, 7, -1]
    # The others are untouched: the same losses as the clean run, to the bit.
    for i in (0, 2):
        np.testing.assert_array_equal(ds.train_loss.values[i], clean.dataset.train_loss.values[i])
    # Member 1 kept the parameters it had when it diverged, and they are finite.
    clean7 = train(small(sigma=0.2, seeds=(0, 1, 2), steps=20), stop_at=7, progress=False).model
    for p, q in zip(hit.model.parameters(), clean7.parameters()):
        assert torch.equal(p[1], q[1]) and bool(torch.isfinite(p[1]).all())


def test_dataset_follows_the_schema_and_round_trips_through_netcdf(tmp_path):
    cfg = small(sigma=0.0, seeds=(0, 1), steps=10)
    ds = train(cfg, progress=False).dataset
    for name, var in ds.data_vars.items():
        assert tuple(var.dims) == SCHEMA[name][0]
    assert list(ds.checkpoint.values) == checkpoint_steps(10, 4)
    assert '"sigma": 0.0' in ds.attrs["config"] and ds.attrs["seeds"] == "[0, 1]"
    assert ds.attrs["fmstudy_version"] and ds.attrs["device"] == "cpu"
    path = write_netcdf(ds, tmp_path / "cell.nc")
    back = read_netcdf(path)
    np.testing.assert_array_equal(back.loss.values, ds.loss.values)
    assert back.attrs["config"] == ds.attrs["config"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_q_records_the_samplers_density_per_bin():
    cfg = small(steps=4, sampler={"name": "beta", "a": 2.0, "b": 2.0})
    ds = train(cfg, progress=False).dataset
    q = ds.q.isel(member=0, checkpoint=0).values
    lo, hi = ds.t_lo.values, ds.t_hi.values
    from scipy import stats

    a, b = cfg.t_eps, 1 - cfg.t_eps
    law = stats.beta(2, 2)
    expected = (law.cdf(hi) - law.cdf(lo)) / (law.cdf(b) - law.cdf(a)) / (hi - lo)
    np.testing.assert_allclose(q, expected, rtol=1e-3)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(steps=0), ["steps=0", ">= 1"]),
        (dict(lr=-1.0), ["lr=-1.0"]),
        (dict(sigma=-0.5), ["sigma=-0.5"]),
        (dict(decay="linear"), ["decay='linear'"]),
        (dict(seeds=(1, 1)), ["seeds=[1, 1]", "distinct"]),
        (dict(ema_decay=1.0), ["ema_decay=1.0"]),
    ],
)
def test_bad_options_are_refused_in_one_line(kw, words):
    with pytest.raises(ValueError) as err:
        small(**kw)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_benchmark_or_sampler_is_refused_before_training():
    with pytest.raises(ValueError, match="unknown benchmark"):
        train(small(benchmark="nope"), progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        train(small(sampler={"name": "nope"}), progress=False)


class _HostReads(TorchDispatchMode):
    """Records the operators that read a tensor's values back to the host: on a GPU each one
    waits for every queued kernel. Adam's step counter is a host tensor (non-capturable
    Adam keeps it there), so its reads cost nothing and are not counted."""

    READS = {"_local_scalar_dense", "lift_fresh", "lift_fresh_copy", "nonzero", "masked_select", "repeat_interleave", "_unique2", "unique_consecutive", "equal"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name.startswith("index") and any(getattr(i, "dtype", None) == torch.bool for i in (args[1] if isinstance(args[1], (list, tuple)) else ()))
        stack = traceback.extract_stack()
        if (name in self.READS or masked) and not any("torch/optim" in f.filename for f in stack):
            where = next((f for f in reversed(stack) if "fmstudy" in f.filename), stack[-1])
            self.seen.append(f"{name} at {where.filename}:{where.lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal", "loss_second_moment", "grad_norm", "info_snr", "oracle_excess", "var_opt", "var_opt_neyman"])
def test_a_training_step_never_waits_for_the_device(monkeypatch, sampler):
    """Between checkpoints and feedback passes, a step queues work and reads nothing back.
    On a CPU the mixture's masked transform is switched for the unmasked one a GPU uses."""
    from fmstudy.oracle import GaussianMixture

    original = GaussianMixture.transform
    monkeypatch.setattr(GaussianMixture, "transform", lambda self, u, z, masked=None: original(self, u, z, masked=False))
    run, step = build_run(small(seeds=(0, 1), steps=10, sampler={"name": sampler}, feedback_every=100, grad_clip=1.0))
    step()
    with _HostReads() as reads:
        step()
    assert reads.seen == []
    # A pack of groups with different samplers (two with adaptive state) reads nothing either.
    members = [{"seed": 0, "sampler": {"name": sampler}}, {"seed": 0, "sampler": {"name": "grad_norm"}, "lr": 2e-3}, {"seed": 1}]
    run, step = build_run(small(members=members, steps=10, feedback_every=100, grad_clip=1.0))
    step()
    with _HostReads() as reads:
        step()
    assert reads.seen == []
    # The probe itself can fail: a divergence check written as bool(...) is caught.
    with _HostReads() as reads:
        bool(run.alive.all())
    assert reads.seen


# -- heterogeneous ensembles (packs of grid cells) -------------------------------------------
PACK = [
    {"seed": 3, "sampler": {"name": "uniform"}},
    {"seed": 4, "sampler": {"name": "uniform"}},
    {"seed": 3, "sampler": {"name": "loss_second_moment", "history": 4}, "lr": 3e-3},  # adaptive
    {"seed": 5, "sampler": {"name": "logit_normal", "reweight": False}},  # unweighted
    {"seed": 4, "sampler": {"name": "loss_second_moment", "history": 4}, "lr": 3e-3},
    {"seed": 3, "sampler": {"name": "learning_progress"}, "lr": 3e-3},  # adaptive, fed per bin
]
PACK_KW = dict(sigma=0.5, steps=30, feedback_every=5, grad_clip=2.0, warmup_steps=3)


def _same_cell(packed, alone):
    """Two cell Datasets equal in every number and attribute, timing aside."""
    timing = {"wall_seconds", "setup_seconds"}
    assert set(packed.data_vars) == set(alone.data_vars)
    for name in alone.data_vars:
        if "adam" in name:
            # The variance account in Adam's metric sums float32 products whose blocking follows
            # the number of members (2e-5 apart between a pack and one member alone); training
            # and every other measurement are bit-exact.
            scale = np.nanmax(np.abs(alone[name.removesuffix("_bias").removesuffix("_se")].values))
            np.testing.assert_allclose(packed[name].values, alone[name].values, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
        elif name != "train_seconds":
            np.testing.assert_array_equal(packed[name].values, alone[name].values, err_msg=name)
    for name in alone.coords:
        np.testing.assert_array_equal(packed[name].values, alone[name].values, err_msg=name)
    assert {k: v for k, v in packed.attrs.items() if k not in timing} == {k: v for k, v in alone.attrs.items() if k not in timing}


def test_a_pack_member_is_the_member_trained_alone_to_the_bit():
    """Fixed, adaptive (per-sample and per-bin fed), unweighted samplers and two learning
    rates in one run: each cell split from the pack equals that cell run on its own."""
    cfg = small(members=PACK, **PACK_KW)
    packed = train(cfg, progress=False)
    cells = split_pack(packed.dataset)
    assert [list(c.member.values) for c in cells] == [[3, 4], [3, 4], [5], [3]]
    for (idx, cell_cfg), part in zip(cell_configs(cfg), cells):
        alone = train(cell_cfg, progress=False)
        _same_cell(part, alone.dataset)
        for p, q in zip(packed.model.parameters(), alone.model.parameters()):
            assert torch.equal(p[idx], q)
        for p, q in zip(packed.ema_model.parameters(), alone.ema_model.parameters()):
            assert torch.equal(p[idx], q)
    # The adaptive groups really adapted, so the comparison covered their state.
    assert float(np.abs(cells[1].q.isel(checkpoint=-1) - 1).max()) > 0.05


def test_members_with_one_seed_see_the_same_data_whatever_their_sampler_or_lr(monkeypatch):
    from fmstudy.paths import BrownianBridge

    seen = []
    original = BrownianBridge.sample

    def spy(self, x0, x1, t, eps, check=True):
        seen.append((x0.clone(), x1.clone(), t.clone(), eps.clone()))
        return original(self, x0, x1, t, eps, check=check)

    members = [{"seed": 7, "sampler": {"name": "uniform"}}, {"seed": 8}, {"seed": 7, "sampler": {"name": "beta", "a": 2.0, "b": 2.0}, "lr": 1e-2}]
    run, step = build_run(small(members=members, steps=5))
    monkeypatch.setattr(BrownianBridge, "sample", spy)
    for _ in range(3):
        step()
    for x0, x1, t, eps in seen:
        for x in (x0, x1, eps):
            assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])
        assert not torch.equal(t[0], t[2])  # their samplers differ, their times too
    # The streams are the member's own: those of a plain run of that seed alone, and its data
    # those of Benchmark.sample_members on the seed's counter stream.
    _, alone_step = build_run(small(seeds=(7,), steps=5))
    first = seen[0]
    seen.clear()
    alone_step()
    for x, y in zip(first, seen[0]):
        assert torch.equal(x[0], y[0])
    from fmstudy.rng import CounterRNG

    data_stream = 2
    assert torch.equal(seen[0][1][0], run.bench.sample_members(CounterRNG([7], data_stream), 0, 64)[0])


def test_a_pack_resumes_to_the_same_numbers(tmp_path):
    cfg = small(members=PACK[:4], **PACK_KW)
    whole = train(cfg, progress=False).dataset
    ckpt = tmp_path / "pack.pt"
    assert not train(cfg, checkpoint=ckpt, stop_at=12, progress=False).complete
    resumed = train(cfg, checkpoint=ckpt, progress=False).dataset
    for name in whole.data_vars:
        if name != "train_seconds":
            np.testing.assert_array_equal(whole[name].values, resumed[name].values, err_msg=name)


def test_the_unweighted_loss_is_the_plain_mean_of_the_per_sample_losses():
    # Without reweighting the weights are 1: both records agree exactly.
    plain = train(small(steps=6, sampler={"name": "beta", "a": 2.0, "b": 2.0, "reweight": False}), progress=False).dataset
    np.testing.assert_array_equal(plain.train_loss.values, plain.train_loss_unweighted.values)
    # With weights w = 1 / ((b - a) q(t)) they differ; recomputed from the step's own losses.
    run, step = build_run(small(steps=3, sampler={"name": "beta", "a": 2.0, "b": 2.0}))
    step()
    last = step.last
    torch.testing.assert_close(run.train_loss_unweighted[:, 0], last.per_sample.mean(1), rtol=0, atol=0)
    torch.testing.assert_close(run.train_loss[:, 0], (last.weight * last.per_sample).mean(1), rtol=0, atol=0)
    assert not torch.equal(run.train_loss[:, 0], run.train_loss_unweighted[:, 0])


def test_a_plain_run_splits_into_itself_and_keeps_its_record():
    cfg = small(seeds=(0, 1), steps=4)
    ds = train(cfg, progress=False).dataset
    assert split_pack(ds) == [ds]
    assert "members" not in ds.attrs["config"] and "groups" not in ds.attrs


@pytest.mark.parametrize(
    "members, words",
    [
        ([], ["members=[]"]),
        ([{"seed": 1, "colour": "red"}], ["member 0", "'seed'"]),
        ([{"seed": -1}], ["seed=-1"]),
        ([{"seed": 1, "lr": 0.0}], ["lr=0.0"]),
        ([{"seed": 1}, {"seed": 1}], ["member 1", "repeats"]),
        ([{"seed": 1, "sampler": {"m": 1}}], ["member 0", "'name'"]),
    ],
)
def test_bad_members_are_refused_in_one_line(members, words):
    with pytest.raises(ValueError) as err:
        small(members=members)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_the_ensemble_adam_is_torch_adam_with_a_learning_rate_per_member():
    """Member i of EnsembleAdam with lr_i equals torch.optim.Adam(lr_i) on member i alone."""
    from fmstudy.adam import EnsembleAdam, FlatParams
    from fmstudy.models import MLPConfig, VelocityEnsemble

    lrs = [1e-3, 5e-3]
    model = VelocityEnsemble(MLPConfig(2, 16, 2), [0, 1])
    alone = [VelocityEnsemble(MLPConfig(2, 16, 2), [s]) for s in (0, 1)]
    opts = [torch.optim.Adam(a.parameters(), lr=lr) for a, lr in zip(alone, lrs)]
    flat = FlatParams(model)
    adam = EnsembleAdam(flat, lrs)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 32, 2, generator=g), torch.rand(2, 32, generator=g)
    for k in range(5):
        decay = 0.5 * (1 + math.cos(math.pi * k / 5))
        # the gradient written into the flat buffer as the engine writes it (fmstudy.step): autograd.grad, then a copy
        for buffer, grad in zip(flat.grads, torch.autograd.grad((model(x, t) ** 2).mean(-1).mean(1).sum(), flat.params)):
            buffer.copy_(grad)
        adam.step((1.0, decay), torch.ones(2, dtype=torch.bool))
        for i, (a, opt, lr) in enumerate(zip(alone, opts, lrs)):
            opt.zero_grad()
            (a(x[i : i + 1], t[i : i + 1]) ** 2).mean(-1).mean(1).sum().backward()
            for group in opt.param_groups:
                group["lr"] = lr * 1.0 * decay
            opt.step()
    for i, a in enumerate(alone):
        for p, q in zip(model.parameters(), a.parameters()):
            assert torch.equal(p[i], q[0])
    # A member that is not kept does not move, though its moments do.
    before = flat.data.clone()
    flat.grad.fill_(1.0)
    adam.step((1.0,), torch.tensor([False, True]))
    assert torch.equal(flat.data[0], before[0]) and not torch.equal(flat.data[1], before[1])


def test_cell_labels_keep_cells_with_the_same_sampler_apart(tmp_path):
    from fmstudy.results import cell_labels

    members = [{"seed": 0, "cell": "a"}, {"seed": 1, "cell": "b"}, {"seed": 0, "cell": "b"}, {"seed": 2, "cell": "a"}]
    ds = train(small(members=members, steps=3), progress=False).dataset
    # A pack's file (a seed twice on the member axis) reads back and splits the same.
    back = read_netcdf(write_netcdf(ds, tmp_path / "pack.nc"))
    for x, y in zip(split_pack(back), split_pack(ds)):
        _same_cell(x, y)
    cells = split_pack(ds)
    assert cell_labels(ds) == ["a", "b"]
    assert [list(c.member.values) for c in cells] == [[0, 2], [1, 0]]
    assert all("cell" not in c.attrs["config"] and "members" not in c.attrs["config"] for c in cells)
    with pytest.raises(ValueError, match="cell=3"):
        small(members=[{"seed": 0, "cell": 3}])


def test_adam_in_blocks_of_members_gives_the_same_numbers():
    from fmstudy.adam import EnsembleAdam, FlatParams
    from fmstudy.models import MLPConfig, VelocityEnsemble

    flats, adams, emas = [], [], []
    for rows in (None, 2):  # one block; blocks of two members (the CPU's choice for big buffers)
        model = VelocityEnsemble(MLPConfig(2, 16, 2), [0, 1, 2, 3, 4])
        flat = FlatParams(model)
        adam = EnsembleAdam(flat, [1e-3, 2e-3, 3e-3, 4e-3, 5e-3])
        adam.rows = rows or adam.rows
        flats.append(flat), adams.append(adam), emas.append(flat.data.clone())
    g = torch.Generator().manual_seed(1)
    keep = torch.tensor([True, True, False, True, True])
    for _ in range(4):
        grad = torch.randn(flats[0].grad.shape, generator=g)
        for flat, adam, ema in zip(flats, adams, emas):
            flat.grad.copy_(grad)
            adam.step((0.5,), keep, ema=(ema, 0.1))
    assert adams[0].rows >= 5 and adams[1].rows == 2
    assert torch.equal(flats[0].data, flats[1].data) and torch.equal(emas[0], emas[1])
    assert torch.equal(adams[0].exp_avg_sq, adams[1].exp_avg_sq)
