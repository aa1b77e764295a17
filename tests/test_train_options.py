"""The trainer's study options: checkpoints after warm-up, the variance account at every
checkpoint on fresh probes, the samplers fed by it, the Rao-Blackwellised target and the
objective-changing weightings (STUDY.md 4.5, 5, 6)."""

import json

import numpy as np
import pytest
import torch

from fmstudy.data import get_benchmark
from fmstudy.signals import fresh_probes
from fmstudy.train import TrainConfig, build_run, checkpoint_steps, train

SMALL = dict(benchmark="gmm8", hidden=32, depth=2, batch_size=64, n_bins=6, probe_per_bin=16, n_checkpoints=4, device="cpu")


def small(**kw):
    return TrainConfig(**{**SMALL, **kw})


def test_checkpoints_start_after_warm_up_and_are_linear_late():
    assert checkpoint_steps(1000, 8, 50) == [0, 50, 158, 500, 625, 750, 875, 1000]
    c = checkpoint_steps(3000, 12, 100)
    assert c[:2] == [0, 100] and c[-1] == 3000
    late = np.diff([x for x in c if x >= 1500])
    assert late.min() == late.max()  # equally spaced in the second half
    assert checkpoint_steps(10, 4) == sorted(set(checkpoint_steps(10, 4)))  # short runs: distinct steps


def test_the_variance_account_is_measured_at_every_checkpoint_on_fresh_probes():
    cfg = small(sigma=1.0, seeds=(0, 1), steps=12, warmup_steps=2, variance_groups=4)
    ds = train(cfg, progress=False).dataset
    assert list(ds.checkpoint.values) == checkpoint_steps(12, 4, 2)
    assert np.isfinite(ds.var_v_uniform.values).all() and np.isfinite(ds.var_ceiling_se.values).all()
    # Adam's metric exists from its first step on, not at step 0
    assert np.isnan(ds.var_adam_ceiling.values[:, 0]).all() and np.isfinite(ds.var_adam_ceiling.values[:, 1:]).all()
    # Cauchy-Schwarz on the pooled estimates: no proposal beats q*, so R >= 1; uniform's own gain is 1
    assert (ds.var_ceiling.values >= 1 - 1e-12).all() and (ds.var_ceiling_strat.values >= ds.var_ceiling.values - 1e-12).all()
    np.testing.assert_allclose(ds.var_gain_run.values, 1.0, rtol=1e-6)  # q = p up to the float32 bin edges
    # every checkpoint on its own probes: the per-bin second moments of the untrained model are
    # those of fresh probe set 0, and the fixed probe set is another sample
    bench = get_benchmark("gmm8")
    p0, p1 = (fresh_probes(bench, 6, 16, cfg.t_eps, key=k) for k in (0, 1))
    assert not torch.equal(p0.x0, p1.x0) and not torch.equal(p0.x0, bench.probes(6, 16, cfg.t_eps).x0)
    run, _ = build_run(cfg)
    rec = run.meter.account(run.model, torch.full((2, 6), 1 / 6, dtype=torch.float64), key=0)
    np.testing.assert_array_equal(ds.bin_grad_sq.values[:, 0], rec["bin_grad_sq"].numpy())


def test_the_account_can_be_turned_off_and_bad_groups_are_refused():
    ds = train(small(steps=4, variance_groups=0), progress=False).dataset
    assert "var_ceiling" not in ds
    with pytest.raises(ValueError, match="variance_groups=3 is not allowed with probe_per_bin=16"):
        small(variance_groups=3)


def test_the_rao_blackwellised_target_lowers_the_loss_by_the_conditional_variance():
    """At the same model and data, l_plain - l_rb averages E||u_t - E[u_t | x1, x_t]||^2 / d =
    1 + s'^2 - c_t^2 v_t per dimension (the variance of u_t given x1 and x_t); at sigma = 0 the
    two targets are the same."""
    for sigma in (0.0, 1.0):
        losses = {}
        for target in ("plain", "rb"):
            run, step = build_run(small(sigma=sigma, seeds=(0,), steps=2, batch_size=8192, target=target))
            step()
            losses[target] = step.last.per_sample[0].double()
            t = step.last.t[0].double()
        diff = losses["plain"] - losses["rb"]
        if sigma == 0.0:
            assert float(diff.abs().max()) < 1e-4 * float(losses["plain"].mean())
            continue
        s = sigma * torch.sqrt(t * (1 - t))
        ds_ = sigma * (1 - 2 * t) / (2 * torch.sqrt(t * (1 - t)))
        v = (1 - t) ** 2 + s**2
        c = (-(1 - t) + sigma**2 * (1 - 2 * t) / 2) / v
        expected = (1 + ds_**2 - c**2 * v).mean()
        se = diff.std() / diff.numel() ** 0.5
        assert abs(float(diff.mean() - expected)) < 5 * float(se)
        assert float(expected) > 10 * float(se)  # the effect is resolved


def test_weightings_change_the_objective_are_recorded_and_resume(tmp_path):
    ds = train(small(steps=4, weighting={"name": "min_snr", "gamma": 5.0}), progress=False).dataset
    assert ds.attrs["unbiased"] == 0 and json.loads(ds.attrs["weighting"])["name"] == "min_snr"  # attributes hold JSON
    cfg = small(sigma=0.5, seeds=(0, 1), steps=20, feedback_every=5, weighting={"name": "uncertainty"}, sampler={"name": "var_opt"})
    whole = train(cfg, progress=False)
    assert np.isfinite(whole.dataset.train_loss.values).all()  # trains to the end
    ckpt = tmp_path / "run.pt"
    train(cfg, checkpoint=ckpt, stop_at=9, progress=False)
    resumed = train(cfg, checkpoint=ckpt, progress=False).dataset
    for name in whole.dataset.data_vars:
        if name != "train_seconds":
            np.testing.assert_array_equal(whole.dataset[name].values, resumed[name].values, err_msg=name)
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        small(weighting={"name": "snr"})
    with pytest.raises(ValueError, match="target='x' is not allowed"):
        small(target="x")


def test_the_uncertainty_weighting_learns_its_table():
    run, step = build_run(small(sigma=1.0, steps=30, weighting={"name": "uncertainty"}))
    for _ in range(30):
        step()
    assert float(run.weighting.u.detach().abs().max()) > 1e-3


def test_variance_samplers_adapt_and_their_probe_work_is_counted():
    k, per_bin, every, steps = 6, 16, 5, 20
    opt = train(small(sigma=1.0, seeds=(0,), steps=steps, sampler={"name": "var_opt"}), progress=False).dataset
    assert float(np.abs(opt.q.values[0, -1] - 1).max()) > 0.01  # moved off uniform
    assert float(opt.extra_forward.values[-1]) == 0  # fed by the batch's own norms
    star = train(small(sigma=1.0, seeds=(0,), steps=steps, sampler={"name": "oracle_qstar"}, feedback_every=every), progress=False).dataset
    fed = steps // every  # feedback after steps 5, 10, 15 and 20, before the last checkpoint
    assert float(star.extra_forward.values[-1]) == float(star.extra_backward.values[-1]) == fed * k * per_bin
    assert float(np.abs(star.q.values[0, -1] - 1).max()) > 0.01


def test_the_account_of_a_rao_blackwellised_run_is_of_its_own_estimator():
    masses = torch.full((1, 6), 1 / 6, dtype=torch.float64)
    accounts = {}
    for target in ("plain", "rb"):
        run, _ = build_run(small(sigma=1.0, seeds=(0,), steps=4, target=target))
        accounts[target] = run.meter.account(run.model, masses, key=0)
    # same model, same fresh probes: removing the target's conditional noise lowers the gradient variance
    assert float(accounts["rb"]["var_v_uniform"][0]) < float(accounts["plain"]["var_v_uniform"][0])


def test_var_opt_is_fed_the_adam_metric_norms_of_the_unweighted_per_sample_loss():
    """Against per-sample gradients from torch.func on each member alone: the norms g^T P g
    that the step feeds var_opt, with P read before the step's update, on the rotating subset,
    under a planted non-uniform proposal (so the weights 1/q are not all 1)."""
    from torch.func import functional_call, grad, vmap

    from fmstudy.models import adam_preconditioner

    cfg = small(sigma=0.7, seeds=(0, 1), steps=20, batch_size=32, hidden=16, sampler={"name": "var_opt", "floor": 0.05}, norm_stride=4)
    run, step = build_run(cfg)
    sampler = run.samplers.samplers[0]
    for _ in range(3):
        step()
    sampler.probs = torch.tensor([[0.02, 0.05, 0.1, 0.2, 0.3, 0.33]] * 2, dtype=torch.float64)
    run.samplers._tables = None
    seen, fed = {}, []
    sample, update = run.path.sample, run.samplers.update
    run.path.sample = lambda *a, **k: seen.setdefault("ps", sample(*a, **k))
    run.samplers.update = lambda fb, **k: (fed.append(fb), update(fb, **k))[1]
    before = [p.detach().clone() for p in [*run.model.weights, *run.model.biases]]
    pw, pb = (list(x) for x in adam_preconditioner(run.opt, run.model))
    at = run.step
    step()
    got = next(f for f in fed if f.grad_sq_adam is not None).grad_sq_adam
    ps, t = seen["ps"], step.last.t
    idx = torch.arange(at % cfg.norm_stride, cfg.batch_size, cfg.norm_stride)
    assert not torch.allclose(step.last.weight[:, idx], torch.ones_like(step.last.weight[:, idx]))
    n_layers = len(run.model.weights)
    for i in range(2):
        single = run.model.member(i)
        with torch.no_grad():
            for layer, w, b in zip(single.layers, before[:n_layers], before[n_layers:]):
                layer.weight.copy_(w[i].T)
                layer.bias.copy_(b[i])
        names = [n for n, _ in single.named_parameters()]
        params = {n: q.detach() for n, q in single.named_parameters()}
        diag = torch.cat([x.flatten() for pair in zip(pw, pb) for x in (pair[0][i].T, pair[1][i])])

        def loss(q, x, tt, u):
            return ((functional_call(single, q, (x[None], tt[None])) - u[None]) ** 2).mean()

        g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, ps.xt[i], t[i], ps.ut[i])
        flat = torch.cat([g[n].flatten(1) for n in names], 1)
        torch.testing.assert_close(got[i].float(), (flat**2 * diag).sum(-1)[idx], rtol=1e-4, atol=0)
