"""One training step of an ensemble run (STUDY.md section 4), every member at once.

    u                    all of the step's uniforms and normals, one fused hash pass
    x1, x0, eps, (t, w)  data, source and bridge noise per member stream; times from each
                         member group's sampler (one batched inverse CDF)
    l_b = ||v(x_t, t_b) - y_b||^2 / d,   L = mean_b w_b l_b,   L_plain = mean_b l_b
                         (y = u_t, or E[u_t | x1, x_t] with target "rb"; an objective-changing
                         weighting, if any, replaces L by its own reduction of (l, t, w))
    freeze members whose L is not finite or exceeds max_loss (decided on the device)
    theta <- Adam(theta, grad sum_i L_i) with per-member lr; per-member clipping; EMA

The step reads nothing back from the device, so a GPU keeps queueing kernels; its operator
count does not grow with the number of members or of member groups with fixed samplers
(tests/test_ops.py). The last step's per-sample losses and times stay in ``last`` for code
that wants them (variance accounts, samplers fed from outside).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .models import per_sample_grad_sq, per_sample_grad_sq_adam
from .rng import Request, Served, StepDraws
from .run_state import RunState
from .samplers import Feedback
from .signals import measure_bins

__all__ = ["TrainStep", "StepOutput"]

_FRESH_MOMENTS = ("var_opt", "oracle_qstar")  # samplers fed the variance account's moments on fresh probes
_FEEDBACK_KEY = 1 << 40  # fresh-probe keys of feedback (checkpoints use 0, 1, 2...)
_TIME, _DATA, _SOURCE, _NOISE = 1, 2, 3, 4  # CounterRNG streams; 1 is the samplers' time stream


@dataclass(frozen=True)
class StepOutput:
    """What a step saw, ``[M, B]``: times, importance weights, unweighted per-sample losses."""

    t: Tensor
    weight: Tensor
    per_sample: Tensor


class TrainStep:
    """Callable that advances ``run`` by one step."""

    def __init__(self, run: RunState) -> None:
        self.run = run
        cfg, draw = run.config, run.bench._draw
        b, d = cfg.batch_size, run.bench.dim
        for s in run.samplers.samplers:
            if s.rng.stream != _TIME:
                raise ValueError(f"sampler {s.name!r} draws from stream {s.rng.stream}: the engine fuses stream {_TIME}")
        self.draws = StepDraws(
            cfg.seeds,
            [Request(_TIME, b, False), Request(_DATA, b * draw.n_uniform, False), Request(_DATA, b * draw.n_normal, True),
             Request(_SOURCE, b * d, True), Request(_NOISE, b * d, True)],
        )
        self.wants_grad_norm = "grad_norm" in run.samplers.requires
        self.wants_adam_norm = "grad_sq_adam" in run.samplers.requires
        self.last: StepOutput | None = None

    def _factors(self, step: int) -> tuple[float, float]:
        """Warm-up and cosine decay of the learning rate at ``step``."""
        cfg = self.run.config
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) if cfg.decay == "cosine" else 1.0
        return warm, decay

    def __call__(self) -> None:
        run = self.run
        cfg, s, dev = run.config, run.step, run.device
        m, b, d = len(cfg.seeds), cfg.batch_size, run.bench.dim
        if any(x.counter != s for x in run.samplers.samplers):
            raise ValueError(f"sampler counters {[x.counter for x in run.samplers.samplers]} are not allowed: they must equal the step {s}")
        u_time, u_data, z_data, z_source, z_noise = self.draws.draw(s, dev)
        x1 = run.bench.sample_members(Served(m, s, uniform=u_data, normal=z_data), s, b, dev)
        x0 = z_source.to(torch.float32).reshape(m, b, d)
        eps = z_noise.to(torch.float32).reshape(m, b, d)
        draw = run.samplers.sample_from(u_time.contiguous())
        ps = run.path.sample(x0, x1, draw.t, eps, check=False)
        target = run.path.rb_target(x1, ps.xt, draw.t) if cfg.target == "rb" else ps.ut
        trace: list | None = [] if self.wants_grad_norm or self.wants_adam_norm else None
        per_sample = ((run.model(ps.xt, draw.t, trace=trace) - target) ** 2).mean(-1)  # [M, B]
        if run.weighting is None:
            member_loss = (draw.weight * per_sample).mean(1)
        else:
            member_loss = run.weighting(per_sample, draw.t, draw.weight)
        run.train_loss[:, s] = member_loss.detach()
        run.train_loss_unweighted[:, s] = per_sample.detach().mean(1)

        # Freezing is decided on the device, with no host synchronisation: a frozen member's
        # gradient is zeroed (it may be NaN) and its Adam step is zero.
        # L >= 0, so "L <= max_loss" is false exactly when L is NaN, +inf or too large.
        bad = run.alive & ~(member_loss <= cfg.max_loss)
        run.diverged_step = torch.where(bad, s, run.diverged_step)
        run.alive &= ~bad

        flat = run.flat
        flat.seat_grads()
        flat.grad.zero_()
        if run.weighting_opt is not None:
            run.weighting_opt.zero_grad(set_to_none=False)
        # Adam's metric as it stands before this step's update (read from its state: bit-exact on resume)
        precond = run.precond() if self.wants_adam_norm and s > 0 else None
        with warnings.catch_warnings():
            # Parameters and gradients are strided views of member-major buffers on purpose
            # (fmstudy.adam.FlatParams); autograd's notice that such gradients break its
            # layout contract (it then adds in place, which the buffer needs) is not news.
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            member_loss.sum().backward()
        flat.grad.masked_fill_(~run.alive[:, None], 0.0)
        if cfg.grad_clip > 0:
            squares = torch._foreach_mul(flat.grads, flat.grads)  # one operator for every layer
            norm = torch.sqrt(sum(q.sum(dim=tuple(range(1, q.dim()))) for q in squares))  # [M]
            scale = (cfg.grad_clip / (norm + 1e-12)).clamp(max=1.0)
            flat.grad.mul_(scale[:, None])
        run.opt.step(self._factors(s), run.alive, ema=(run.ema_flat, 1 - cfg.ema_decay))
        if run.weighting_opt is not None:
            run.weighting_opt.step()

        per_sample = per_sample.detach()
        self.last = StepOutput(draw.t, draw.weight, per_sample)
        if run.samplers.adaptive:
            grad_norm = None
            if self.wants_grad_norm:  # d L / d l_b = w_b / B: undo it to get grad of l_b itself
                grad_norm = per_sample_grad_sq(trace).sqrt() * b / draw.weight
            run.samplers.update(Feedback(t=draw.t, loss=per_sample, grad_norm=grad_norm), per_sample=True)
            if precond is not None:  # every norm_stride-th sample, a rotating subset; d L / d l_b = w_b / B undone
                idx = torch.arange(s % cfg.norm_stride, b, cfg.norm_stride, device=dev)
                sq = per_sample_grad_sq_adam(trace, precond, index=idx) * (b / draw.weight.index_select(1, idx)) ** 2
                run.samplers.update(Feedback(t=draw.t.index_select(1, idx), grad_sq_adam=sq), per_sample=True)
            if (s + 1) % cfg.feedback_every == 0:
                self.bin_feedback()
        run.step += 1

    def bin_feedback(self) -> None:
        """Per-bin measurements for the groups whose samplers ask for them, counted as each
        such member's extra work: the variance samplers (``var_opt``, ``oracle_qstar``) get the
        moments of the variance account on fresh probes (4.5); the others the fixed probes'
        signals (:func:`fmstudy.signals.measure_bins`)."""
        run = self.run
        fixed_fields = {"bin_loss", "bin_excess", "bin_grad_mean_sq", "bin_grad_sq"}
        fresh = [s.name in _FRESH_MOMENTS and bool({f for f in s.requires if f.startswith("bin_")}) for s in run.samplers.samplers]
        needs = [set() if f else s.requires & fixed_fields for s, f in zip(run.samplers.samplers, fresh)]
        n = run.probes.n_bins * run.probes.per_bin
        if any(fresh):
            groups = run.meter.account_groups or 4
            rec = run.meter.account(run.model, run.samplers.bin_mass(run.probes.edges.to(torch.float64)), key=_FEEDBACK_KEY + run.step,
                                    precond=run.precond(), groups=groups)
            for idx, f in zip(run.groups, fresh):
                for i in idx:
                    run.extra["forward"][i] += n if f else 0
                    run.extra["backward"][i] += n if f else 0
            names = ("bin_grad_sq", "bin_grad_mean_sq", "bin_grad_sq_adam", "bin_grad_mean_sq_adam")
            run.samplers.update(Feedback(**{k: rec[k] for k in names}), per_sample=False, only=fresh)
        if not any(needs):
            return
        grads = any(r & {"bin_grad_mean_sq", "bin_grad_sq"} for r in needs)
        excess = any("bin_excess" in r for r in needs)
        if excess and run.oracle is None:
            name = next(s.name for s, r in zip(run.samplers.samplers, needs) if "bin_excess" in r)
            raise ValueError(f"sampler {name!r} needs an oracle: benchmark {run.bench.name!r} has none")
        sig = measure_bins(run.model, run.path, run.probes, run.oracle if excess else None, gradients=grads)
        for idx, r in zip(run.groups, needs):
            for i in idx:
                run.extra["forward"][i] += n if r else 0
                run.extra["backward"][i] += n if r & {"bin_grad_mean_sq", "bin_grad_sq"} else 0
        run.samplers.update(
            Feedback(bin_loss=sig.loss, bin_excess=sig.excess, bin_grad_mean_sq=sig.grad_signal, bin_grad_sq=sig.grad_sq),
            per_sample=False, only=[bool(r) for r in needs],
        )
