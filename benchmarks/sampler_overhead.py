"""Cost of drawing t (and updating adaptive state) against one ensemble training step.

Target (issue 3): sampling plus update for M = 1024 members, B = 256 is at most 5% of one
training step of the ensemble on the same device. Both are timed in this process; the
ratio, not the seconds, is the result.

    python benchmarks/sampler_overhead.py [--members 1024] [--batch 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmstudy.data import get_benchmark
from fmstudy.models import MLPConfig, VelocityEnsemble
from fmstudy.paths import BrownianBridge
from fmstudy.samplers import Feedback, make_sampler, sampler_names


def timed(fn, repeats: int, sync) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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

    def train_step() -> None:
        s = path.sample(x0, x1, t, eps, check=False)
        loss = ((model(s.xt, t) - s.ut) ** 2).mean(-1)  # [M, B]
        opt.zero_grad(set_to_none=True)
        loss.mean(1).sum().backward()
        opt.step()

    step = timed(train_step, args.repeats, sync)
    print(f"device={dev} members={m} batch={b} train step: {step * 1e3:.2f} ms")
    print(f"{'sampler':<20} {'sample+update ms':>17} {'ratio to step':>14}")
    loss = torch.rand(m, b, device=dev)
    grad_norm = torch.rand(m, b, device=dev)
    for name in sampler_names():
        sampler = make_sampler(name, seeds=range(m), t_eps=path.t_eps, device=dev)
        k = getattr(sampler, "n_bins", 20)
        bins = torch.rand(m, k, device=dev) + 0.5

        def sample_and_update() -> None:
            draw = sampler.sample(b)
            sampler.update(
                Feedback(t=draw.t, loss=loss, grad_norm=grad_norm, bin_loss=bins, bin_excess=bins, bin_grad_mean_sq=bins, bin_grad_sq=2 * bins)
            )

        cost = timed(sample_and_update, args.repeats, sync)
        print(f"{name:<20} {cost * 1e3:>17.2f} {cost / step:>13.1%}")


if __name__ == "__main__":
    main()
