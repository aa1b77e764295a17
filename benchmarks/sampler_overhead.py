"""Cost of drawing t and updating a sampler's state against one ensemble training step.

Target (issues 3 and 11): sampling plus update for M = 1024 members, B = 256 is at most 5% of
one training step of the ensemble on the same device. The training step is the real one's
work: forward with the per-sample trace, backward, Adam. Step (A) and sampler (B) are timed in
this process, interleaved A B A B ... for ``--repeats`` rounds of ``--inner`` calls each, and
the ratio B/A of each round is reported as its median and range over the rounds (so a drift
of the machine hits both alike). The ratio, not the seconds, is the result.

For ``var_opt`` the per-sample squared norms in Adam's metric are a cost of the trainer, not of
the sampler, but they are what the sampler needs; the ``+norms/s`` lines add reading Adam's
preconditioner and ``per_sample_grad_sq_adam`` (one batched product per layer) for every s-th
sample of the batch to its update (s = 1: all B).

The variance account's measurement (:func:`fmstudy.signals.measure_variance`, fresh probes,
both metrics) is timed the same way with ``--account PER_BIN GROUPS``; its ratio is in steps
(e.g. 8.0 = eight training steps), to be divided by the checkpoint cadence.

    python benchmarks/sampler_overhead.py [--members 1024] [--batch 256] [--device cpu|cuda]
        [--samplers var_opt,var_opt_neyman,...] [--account 64 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmstudy.data import get_benchmark
from fmstudy.models import MLPConfig, VelocityEnsemble, adam_preconditioner, per_sample_grad_sq_adam
from fmstudy.paths import BrownianBridge
from fmstudy.samplers import Feedback, make_sampler, sampler_names
from fmstudy.signals import fresh_probes, measure_variance, variance_record


def interleaved(step, other, repeats: int, inner: int, sync) -> tuple[float, list[float]]:
    """Median seconds of ``step`` and the ratios other/step of each round, A B A B ..."""
    step(), other()
    sync()
    steps, ratios = [], []
    for _ in range(repeats):
        times = []
        for fn in (step, other):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times.append((time.perf_counter() - start) / inner)
        steps.append(times[0])
        ratios.append(times[1] / times[0])
    return statistics.median(steps), ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--samplers", default="", help="comma-separated names (default: all)")
    parser.add_argument("--account", type=int, nargs=2, metavar=("PER_BIN", "GROUPS"), help="also time the variance account")
    parser.add_argument("--bins", type=int, default=20, help="--account: t-bins")
    parser.add_argument("--precond-every", type=int, default=10, help="var_opt +norms: steps between reads of Adam's state")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 8, 16], help="var_opt: Adam-metric norms of every s-th sample")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error(f"--repeats={args.repeats} is not allowed: at least 3 rounds give a median and a range")
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    m, b = args.members, args.batch

    bench = get_benchmark("gmm8")
    path = BrownianBridge(sigma=0.5, t_eps=1e-3)
    model = VelocityEnsemble(MLPConfig(dim=bench.dim, hidden=bench.model_hidden, depth=bench.model_depth), seeds=range(m)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x1 = bench.sample(m * b, torch.Generator().manual_seed(0)).reshape(m, b, -1).to(dev)
    x0, eps = torch.randn_like(x1), torch.randn_like(x1)
    t = torch.rand(m, b, device=dev) * 0.998 + 1e-3
    last: dict[str, list] = {}

    def train_step() -> None:
        s = path.sample(x0, x1, t, eps, check=False)
        trace: list = []
        loss = ((model(s.xt, t, trace=trace) - s.ut) ** 2).mean(-1)  # [M, B]
        opt.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()
        opt.step()
        last["trace"] = trace

    train_step()  # Adam has state from here on
    print(f"device={dev} members={m} batch={b} hidden={bench.model_hidden} depth={bench.model_depth}")
    print(f"{'sampler':<22} {'step ms':>8} {'ratio median':>13} {'range':>17}")
    loss = torch.rand(m, b, device=dev)
    grad_norm = torch.rand(m, b, device=dev)
    names = [n for n in args.samplers.split(",") if n] or sampler_names()
    for name in names:
        sampler = make_sampler(name, seeds=range(m), t_eps=path.t_eps, device=dev)
        k = getattr(sampler, "n_bins", 20)
        bins = torch.rand(m, k, device=dev) + 0.5
        variants = [(name, 0)]
        if name.startswith("var_opt"):
            variants += [(f"{name} +norms/{s}", s) for s in args.strides]
        for label, stride in variants:

            def sample_and_update(stride=stride, sampler=sampler, bins=bins) -> None:
                draw = sampler.sample(b)
                tt, sq = draw.t, grad_norm
                if stride:  # the trainer's share: Adam's metric from the step's own trace, every stride-th sample
                    index = torch.arange(0, b, stride, device=dev)
                    # Adam's v moves on a time scale of 1 / (1 - beta2) = 1000 steps: P is re-read
                    # every --precond-every steps (elementwise over all parameters, like Adam itself).
                    last["calls"] = last.get("calls", 0) + 1
                    if "precond" not in last or last["calls"] % args.precond_every == 0:
                        last["precond"] = adam_preconditioner(opt, model)
                    sq = per_sample_grad_sq_adam(last["trace"], last["precond"], index=index) * b**2
                    tt = draw.t[:, index]
                sampler.update(
                    Feedback(t=tt, loss=loss, grad_norm=grad_norm, grad_sq_adam=sq, bin_loss=bins, bin_excess=bins,
                             bin_grad_mean_sq=bins, bin_grad_sq=2 * bins, bin_grad_mean_sq_adam=bins, bin_grad_sq_adam=2 * bins)
                )

            step, ratios = interleaved(train_step, sample_and_update, args.repeats, args.inner, sync)
            med = statistics.median(ratios)
            print(f"{label:<22} {step * 1e3:>8.2f} {med:>12.1%} {min(ratios):>8.1%}-{max(ratios):.1%}")
    if args.account:
        per_bin, groups = args.account
        probes = fresh_probes(bench, args.bins, per_bin, path.t_eps, key=0)
        for label, adam in (("euclid", False), ("euclid+adam", True)):

            def account(adam=adam) -> None:
                precond = adam_preconditioner(opt, model) if adam else None
                variance_record(*measure_variance(model, path, probes, groups=groups, precond=precond, bins_per_pass=4))

            step, ratios = interleaved(train_step, account, args.repeats, 1, sync)
            print(f"account {label} K={args.bins} per_bin={per_bin} groups={groups}: {statistics.median(ratios):.1f} steps "
                  f"(range {min(ratios):.1f}-{max(ratios):.1f}), step {step * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
