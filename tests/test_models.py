"""Tests for fmstudy.models: time embedding, seeded MLP, and the batched ensemble."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmstudy.models import MLPConfig, VelocityEnsemble, VelocityMLP, time_embedding

CFG = MLPConfig(dim=2, hidden=16, depth=3, n_freqs=4, max_freq=50.0)
SEEDS = [0, 1, 2]


def _separate_forward(models: list[VelocityMLP], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reference: run each model on its own slice and stack (x [M,N,d] or [N,d])."""
    outs = []
    for i, m in enumerate(models):
        xi = x[i] if x.dim() == 3 else x
        ti = t[i] if t.dim() == 2 else t
        outs.append(m(xi, ti))
    return torch.stack(outs)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"hidden": 0}, "hidden=0"),
        ({"depth": -1}, "depth=-1"),
        ({"n_freqs": 0}, "n_freqs=0"),
        ({"hidden": 2.5}, "hidden=2.5"),
        ({"max_freq": 0.0}, "max_freq=0.0"),
        ({"max_freq": float("nan")}, "max_freq=nan"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as exc:
        MLPConfig(dim=2, **kwargs)
    msg = str(exc.value)
    assert needle in msg
    assert "\n" not in msg


def test_config_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match=r"dim=0"):
        MLPConfig(dim=0)


# ---------------------------------------------------------------- time embedding


@pytest.mark.parametrize(("n_freqs", "max_freq"), [(4, 50.0), (1, 100.0), (8, 100.0)])
def test_time_embedding_matches_formula(n_freqs: int, max_freq: float) -> None:
    ts = np.array([0.0, 0.013, 0.25, 0.5, 0.77, 1.0])
    got = time_embedding(torch.tensor(ts, dtype=torch.float64), n_freqs, max_freq).numpy()
    assert got.shape == (len(ts), 1 + 2 * n_freqs)
    if n_freqs == 1:
        w = np.array([1.0])
    else:
        w = np.array([max_freq ** ((j - 1) / (n_freqs - 1)) for j in range(1, n_freqs + 1)])
    assert w[0] == pytest.approx(1.0) and w[-1] == pytest.approx(max_freq if n_freqs > 1 else 1.0)
    for row, t in zip(got, ts):
        expected = np.concatenate([[t], np.sin(w * t), np.cos(w * t)])
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-12)


def test_time_embedding_shapes_and_dtype() -> None:
    t = torch.rand(3, 5)
    e = time_embedding(t, 6, 10.0)
    assert e.shape == (3, 5, 13) and e.dtype == torch.float32
    torch.testing.assert_close(e[..., 0], t)
    assert time_embedding(0.5, 2, 10.0).shape == (5,)


# ---------------------------------------------------------------- seeded MLP


def test_seeded_mlp_is_deterministic_and_seed_dependent() -> None:
    a, b, c = VelocityMLP(CFG, seed=7), VelocityMLP(CFG, seed=7), VelocityMLP(CFG, seed=8)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert len(pa) == 2 * (CFG.depth + 1)
    assert all(torch.equal(u, v) for u, v in zip(pa, pb))
    assert all(not torch.equal(u, v) for u, v in zip(pa, pc))


def test_seeded_mlp_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    VelocityMLP(CFG, seed=3)
    VelocityEnsemble(CFG, SEEDS).member(1)
    assert torch.equal(before, torch.get_rng_state())


def test_unseeded_mlp_uses_global_rng() -> None:
    torch.manual_seed(5)
    a = VelocityMLP(CFG)
    torch.manual_seed(5)
    b = VelocityMLP(CFG)
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters()))


def test_init_within_fan_in_bound() -> None:
    cfg = MLPConfig(dim=3, hidden=64, depth=2, n_freqs=8)
    model = VelocityMLP(cfg, seed=0)
    for layer in model.layers:
        bound = 1.0 / math.sqrt(layer.in_features)
        for p in (layer.weight, layer.bias):
            assert p.abs().max().item() <= bound
        # and actually spreads over the interval (not, say, all zeros or a tiny range)
        assert layer.weight.abs().max().item() > 0.9 * bound
        assert abs(layer.weight.mean().item()) < 0.1 * bound
    # uniform on [-a, a] has std a / sqrt(3)
    w = model.layers[1].weight
    assert w.std().item() == pytest.approx(1.0 / math.sqrt(64) / math.sqrt(3), rel=0.05)
    # biases use the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) law: pool b / bound over layers
    scaled = torch.cat([layer.bias * math.sqrt(layer.in_features) for layer in model.layers])
    assert scaled.abs().max().item() > 0.9
    assert scaled.std().item() == pytest.approx(1.0 / math.sqrt(3), rel=0.15)


def test_mlp_forward_shapes() -> None:
    model = VelocityMLP(CFG, seed=0)
    x = torch.randn(5, 2)
    assert model(x, torch.rand(5)).shape == (5, 2)
    assert model(x, 0.3).shape == (5, 2)
    xb = torch.randn(4, 5, 2)
    assert model(xb, torch.rand(4, 5)).shape == (4, 5, 2)
    # t of shape [N] broadcast over the leading batch dims equals explicit expansion
    t = torch.rand(5)
    torch.testing.assert_close(model(xb, t), model(xb, t.expand(4, 5)))
    torch.testing.assert_close(model(x, 0.3), model(x, torch.full((5,), 0.3)))


# ---------------------------------------------------------------- ensemble forward


@pytest.mark.parametrize("shared_batch", [False, True])
def test_ensemble_forward_matches_separate_models(shared_batch: bool) -> None:
    torch.manual_seed(0)
    models = [VelocityMLP(CFG, s) for s in SEEDS]
    ens = VelocityEnsemble(CFG, SEEDS)
    assert ens.n_members == 3
    n = 33
    x = torch.randn(n, 2) if shared_batch else torch.randn(3, n, 2)
    t = torch.rand(n) if shared_batch else torch.rand(3, n)
    out = ens(x, t)
    ref = _separate_forward(models, x, t)
    assert out.shape == (3, n, 2)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    # float64: much tighter agreement
    ens64 = ens.double()
    models64 = [m.double() for m in models]
    out64 = ens64(x.double(), t.double())
    ref64 = _separate_forward(models64, x.double(), t.double())
    assert out64.dtype == torch.float64
    assert torch.allclose(out64, ref64, atol=1e-12, rtol=0)


def test_ensemble_mixed_t_forms() -> None:
    ens = VelocityEnsemble(CFG, SEEDS)
    x = torch.randn(3, 7, 2)
    t = torch.rand(7)
    torch.testing.assert_close(ens(x, t), ens(x, t.expand(3, 7)))
    torch.testing.assert_close(ens(x, 0.4), ens(x, torch.full((7,), 0.4)))


def test_ensemble_member_round_trip_and_from_models() -> None:
    models = [VelocityMLP(CFG, s) for s in SEEDS]
    ens = VelocityEnsemble(CFG, SEEDS)
    ens2 = VelocityEnsemble.from_models(models)
    for p, q in zip(ens.parameters(), ens2.parameters()):
        assert torch.equal(p, q)
    for i, m in enumerate(models):
        mi = ens.member(i)
        assert isinstance(mi, VelocityMLP) and mi.config == CFG
        for p, q in zip(mi.parameters(), m.parameters()):
            assert torch.equal(p, q)
        # standalone: editing the copy does not touch the ensemble
        with torch.no_grad():
            next(mi.parameters()).add_(1.0)
        assert torch.equal(ens.weights[0][i], models[i].layers[0].weight.T)
    # round trip through from_models(member(i) ...)
    ens3 = VelocityEnsemble.from_models([ens.member(i) for i in range(3)])
    for p, q in zip(ens.parameters(), ens3.parameters()):
        assert torch.equal(p, q)


def test_ensemble_param_shapes() -> None:
    ens = VelocityEnsemble(CFG, SEEDS)
    ins = [CFG.in_features, 16, 16, 16]
    outs = [16, 16, 16, 2]
    assert [tuple(w.shape) for w in ens.weights] == [(3, i, o) for i, o in zip(ins, outs)]
    assert [tuple(b.shape) for b in ens.biases] == [(3, o) for o in outs]


# ---------------------------------------------------------------- training equivalence


def _member_params(ens: VelocityEnsemble, i: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for w, b in zip(ens.weights, ens.biases):
        out += [w[i].T, b[i]]
    return out


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_training_equivalence_with_adam(dtype: torch.dtype, atol: float) -> None:
    # float32 note: Adam divides by sqrt(v), so ~1e-7 roundoff differences between the
    # batched and per-model matmuls are amplified for near-zero gradient entries (over
    # other seeds / wider nets up to ~4e-5 after 5 steps); float64 shows the equivalence
    # is exact up to roundoff.
    torch.manual_seed(1)
    m_, n, d = 3, 64, CFG.dim
    models = [VelocityMLP(CFG, s).to(dtype) for s in SEEDS]
    ens = VelocityEnsemble(CFG, SEEDS).to(dtype)
    opt_e = torch.optim.Adam(ens.parameters(), lr=1e-2)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    for _ in range(5):
        x = torch.randn(m_, n, d, dtype=dtype)
        t = torch.rand(m_, n, dtype=dtype)
        target = torch.randn(m_, n, d, dtype=dtype)
        opt_e.zero_grad()
        loss_e = ((ens(x, t) - target) ** 2).mean(dim=(1, 2)).sum()
        loss_e.backward()
        opt_e.step()
        for i, (model, opt) in enumerate(zip(models, opts)):
            opt.zero_grad()
            loss = ((model(x[i], t[i]) - target[i]) ** 2).mean()
            loss.backward()
            opt.step()
    max_diff = 0.0
    for i, model in enumerate(models):
        for p_e, p_s in zip(_member_params(ens, i), model.parameters()):
            max_diff = max(max_diff, (p_e - p_s).abs().max().item())
            assert torch.allclose(p_e, p_s, atol=atol, rtol=0)
        # parameters actually moved away from the seeded init
        fresh = VelocityMLP(CFG, SEEDS[i]).to(dtype)
        assert not torch.allclose(next(model.parameters()), next(fresh.parameters()), atol=1e-3)
        # member(i) round-trips the trained weights
        for p, q in zip(ens.member(i).parameters(), _member_params(ens, i)):
            assert torch.equal(p, q)
    assert max_diff < atol


def test_member_gradients_independent_of_other_members_data() -> None:
    torch.manual_seed(2)
    ens = VelocityEnsemble(CFG, SEEDS)
    x, t, target = torch.randn(3, 20, 2), torch.rand(3, 20), torch.randn(3, 20, 2)

    def grads(x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        ens.zero_grad()
        ((ens(x, t) - target) ** 2).mean(dim=(1, 2)).sum().backward()
        return [p.grad.clone() for p in ens.parameters()]

    g0 = grads(x, t, target)
    x2, t2, target2 = x.clone(), t.clone(), target.clone()
    x2[1] += 1.0
    t2[1] = torch.rand(20)
    target2[1] -= 2.0
    g1 = grads(x2, t2, target2)
    for a, b in zip(g0, g1):
        assert torch.allclose(a[0], b[0], atol=1e-7, rtol=0)  # member 0 unaffected
        assert torch.allclose(a[2], b[2], atol=1e-7, rtol=0)  # member 2 unaffected
    assert any(not torch.allclose(a[1], b[1]) for a, b in zip(g0, g1))  # member 1 did change


# ---------------------------------------------------------------- bad inputs


def _one_line_value_error(fn, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert needle in msg, msg


def test_mlp_rejects_bad_shapes() -> None:
    model = VelocityMLP(CFG, seed=0)
    _one_line_value_error(lambda: model(torch.randn(5, 3), torch.rand(5)), "[5, 3]")
    _one_line_value_error(lambda: model(torch.randn(5, 2), torch.rand(4)), "[4]")
    _one_line_value_error(lambda: model(torch.randn(5, 2), torch.rand(2, 5)), "[2, 5]")


def test_ensemble_rejects_bad_shapes() -> None:
    ens = VelocityEnsemble(CFG, SEEDS)
    _one_line_value_error(lambda: ens(torch.randn(4, 5, 2), torch.rand(5)), "[4, 5, 2]")
    _one_line_value_error(lambda: ens(torch.randn(3, 5, 3), torch.rand(5)), "[3, 5, 3]")
    _one_line_value_error(lambda: ens(torch.randn(5, 2), torch.rand(6)), "[6]")
    _one_line_value_error(lambda: ens(torch.randn(3, 5, 2), torch.rand(4, 5)), "[4, 5]")
    _one_line_value_error(lambda: ens(torch.randn(2, 3, 5, 2), torch.rand(5)), "[2, 3, 5, 2]")
    _one_line_value_error(lambda: VelocityEnsemble(CFG, []), "seeds=[]")
    _one_line_value_error(lambda: ens.member(3), "i=3")


def test_from_models_rejects_mixed_configs() -> None:
    other = MLPConfig(dim=2, hidden=8)
    _one_line_value_error(
        lambda: VelocityEnsemble.from_models([VelocityMLP(CFG, 0), VelocityMLP(other, 1)]),
        "different configs",
    )


def test_per_sample_grad_norms_match_torch_func():
    """The traced outer-product identity against per-sample gradients from torch.func."""
    from torch.func import functional_call, grad, vmap

    from fmstudy.models import per_sample_grad_sq

    cfg = MLPConfig(dim=3, hidden=8, depth=2, n_freqs=2)
    ens = VelocityEnsemble(cfg, seeds=[0, 1]).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.rand(2, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    trace = []
    loss = ((ens(x, t, trace=trace) - y) ** 2).mean(-1)  # [M, N]
    loss.sum().backward()
    got = per_sample_grad_sq(trace)
    for i in range(2):
        single = ens.member(i).double()
        params = {k: v.detach() for k, v in single.named_parameters()}

        def sample_loss(p, xi, ti, yi):
            return ((functional_call(single, p, (xi[None], ti[None])) - yi[None]) ** 2).mean()

        per = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0))(params, x[i], t[i], y[i])
        ref = sum(v.flatten(1).pow(2).sum(1) for v in per.values())
        torch.testing.assert_close(got[i], ref, rtol=1e-10, atol=1e-12)


def test_per_sample_grad_sq_adam_matches_explicit_gradients():
    """g^T P g from the trace against per-sample gradients from torch.func, with P Adam's
    preconditioner after a few steps, itself checked against v recomputed by hand."""
    from torch.func import functional_call, grad, vmap

    from fmstudy.models import adam_preconditioner, per_sample_grad_sq, per_sample_grad_sq_adam

    cfg = MLPConfig(dim=3, hidden=8, depth=2, n_freqs=2)
    ens = VelocityEnsemble(cfg, seeds=[0, 1]).double()
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adam_preconditioner(opt, ens)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.rand(2, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    v = [torch.zeros_like(p) for p in ens.parameters()]
    for _ in range(3):
        opt.zero_grad()
        ((ens(x, t) - y) ** 2).mean(-1).sum().backward()
        v = [0.9 * a + 0.1 * p.grad**2 for a, p in zip(v, ens.parameters())]
        opt.step()
    pw, pb = adam_preconditioner(opt, ens)
    expect = [1 / ((a / (1 - 0.9**3)).sqrt() + 1e-6) for a in v]
    for got, ref in zip(pw + pb, expect):  # parameters() lists the weights, then the biases
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)

    trace = []
    loss = ((ens(x, t, trace=trace) - y) ** 2).mean(-1)
    deltas = torch.autograd.grad(loss.sum(), [pre for _, pre in trace])
    got = per_sample_grad_sq_adam(trace, (pw, pb), deltas)
    index = torch.tensor([1, 4])
    torch.testing.assert_close(per_sample_grad_sq_adam(trace, (pw, pb), deltas, index=index), got[:, index], rtol=1e-14, atol=0)
    ones = ([torch.ones_like(w) for w in pw], [torch.ones_like(b) for b in pb])
    torch.testing.assert_close(per_sample_grad_sq_adam(trace, ones, deltas), per_sample_grad_sq(trace, deltas), rtol=1e-12, atol=0)
    for i in range(2):
        single = ens.member(i).double()
        params = {k: p.detach() for k, p in single.named_parameters()}
        diag = {f"layers.{j}.weight": pw[j][i].T for j in range(3)} | {f"layers.{j}.bias": pb[j][i] for j in range(3)}

        def sample_loss(p, xi, ti, yi):
            return ((functional_call(single, p, (xi[None], ti[None])) - yi[None]) ** 2).mean()

        per = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0))(params, x[i], t[i], y[i])
        ref = sum((per[k].pow(2) * diag[k]).flatten(1).sum(1) for k in per)
        torch.testing.assert_close(got[i], ref, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(got[i], per_sample_grad_sq(trace, deltas)[i])  # the metric matters


def test_adam_preconditioner_reads_the_ensemble_adam_too():
    """fmstudy.adam.EnsembleAdam mirrors torch's state layout: the same gradients give the same P."""
    from fmstudy.adam import EnsembleAdam, FlatParams
    from fmstudy.models import adam_preconditioner

    cfg = MLPConfig(dim=2, hidden=8, depth=2, n_freqs=2)
    ours, ref = VelocityEnsemble(cfg, seeds=[0, 1]).double(), VelocityEnsemble(cfg, seeds=[0, 1]).double()
    flat = FlatParams(ours)
    opt = EnsembleAdam(flat, lr=[1e-2, 1e-2], betas=(0.8, 0.9), eps=1e-6)
    torch_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 5, 2, generator=g, dtype=torch.float64), torch.rand(2, 5, generator=g, dtype=torch.float64)
    for _ in range(2):
        # Into the flat gradient buffer as the engine writes it (fmstudy.step): autograd.grad, then a copy. A
        # backward would accumulate into the parameters' .grad, strided views of that member-major buffer.
        for buffer, grad in zip(flat.grads, torch.autograd.grad((ours(x, t) ** 2).mean(-1).sum(), flat.params)):
            buffer.copy_(grad)
        opt.step([1.0], torch.ones(2, dtype=torch.bool))
        torch_opt.zero_grad()
        (ref(x, t) ** 2).mean(-1).sum().backward()
        torch_opt.step()
    for a, b in zip(sum(adam_preconditioner(opt, ours), []), sum(adam_preconditioner(torch_opt, ref), [])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
