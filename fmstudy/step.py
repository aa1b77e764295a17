"""One training step of an ensemble run (STUDY.md section 4), every member at once.

    u                    all of the step's uniforms and normals, one fused hash pass
    x1, x0, eps, (t, w)  data, source and bridge noise per member stream; times from each
                         member group's sampler (one batched inverse CDF)
    l_b = ||v(x_t, t_b) - y_b||^2 / d,   L = mean_b w_b l_b,   L_plain = mean_b l_b
                         (y = u_t, or E[u_t | x1, x_t] with target "rb"; an objective-changing
                         weighting, if any, replaces L by its own reduction of (l, t, w))
    freeze members whose L is not finite or exceeds max_loss (decided on the device)
    g_i <- g_i min(1, c / (||g_i|| + 1e-12))   per-member clipping (grad_clip = c > 0)
    theta <- Adam(theta, g) with per-member lr; EMA

The step reads nothing back from the device, so a GPU keeps queueing kernels; its operator
count does not grow with the number of members or of member groups with fixed samplers or
one adaptive sampler's groups at several rates (fmstudy.member_samplers units; tests/test_ops.py). The last step's per-sample losses and times stay in ``last`` for code
that wants them (variance accounts, samplers fed from outside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import per_sample_grad_sq, per_sample_grad_sq_adam
from .rng import Request, Served, StepDraws
from .run_state import RunState
from .samplers import Feedback, TimeDraw
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
        self._seed: Tensor | None = None  # d sum_i L_i / d L_i: ones, made once
        self._alive: tuple[Tensor, Tensor] | None = None  # (run.alive, its column view)
        self._x0_eps: tuple[Tensor, ...] | None = None  # float32 buffers of x0 and eps, and their [M, B d] views
        self._zero = torch.zeros((), dtype=run.flat.grad.dtype, device=run.device)  # a frozen member's gradient
        self._pb: tuple[list[Tensor], int, list[Tensor]] | None = None  # (P_b views, n, broadcast views)
        self._clip = torch.tensor(cfg.grad_clip, dtype=torch.float32, device=run.device)  # the clipping norm c

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
        counters = [c for _, _, c in run.samplers.kinds]  # read without a sync of the groups' states
        if any(c != s for c in counters):
            raise ValueError(f"sampler counters {counters} are not allowed: they must equal the step {s}")
        u_time, u_data, z_data, z_source, z_noise = self.draws.draw(s, dev)
        x1 = run.bench.sample_members(Served(m, s, uniform=u_data, normal=z_data), s, b, dev)
        x0, eps = self._normals(z_source, z_noise, (m, b, d))
        draw = run.samplers.sample_from(u_time)  # a column block of the draws: sample_from makes it contiguous
        ps = run.path.sample(x0, x1, draw.t, eps, check=False)
        target = run.path.rb_target(x1, ps.xt, draw.t) if cfg.target == "rb" else ps.ut
        trace: list | None = [] if self.wants_grad_norm or self.wants_adam_norm else None
        # The trace's gradients come from autograd.grad (_backward): none retained, no inputs detached.
        # mse_loss is (v - y)^2 and its backward 2 (v - y) g, the numbers of ** 2 and its backward, in one operator each.
        per_sample = F.mse_loss(run.model(ps.xt, draw.t, trace=trace, retain=False), target, reduction="none").mean(-1)  # [M, B]
        if run.weighting is None:
            member_loss = (draw.weight * per_sample).mean(1)
        else:
            member_loss = run.weighting(per_sample, draw.t, draw.weight)
        plain = per_sample.detach()
        with torch.no_grad():  # records, outside the graph: no detached copies to make
            run.train_loss[:, s] = member_loss
            torch.mean(plain, 1, out=run.train_loss_unweighted[:, s])  # written in place: no copy

        # Freezing is decided on the device, with no host synchronisation: a frozen member's
        # gradient is zeroed (it may be NaN) and its Adam step is zero.
        # L >= 0, so "L <= max_loss" is false exactly when L is NaN, +inf or too large;
        # on booleans alive > ok is alive & ~ok, and alive & ~(alive & ~ok) = alive & ok.
        ok = member_loss <= cfg.max_loss
        run.diverged_step = run.diverged_step.masked_fill(run.alive > ok, s)
        run.alive &= ok

        flat = run.flat  # its gradient buffer is written by _backward, not by accumulation into .grad
        # Adam's metric as it stands before this step's update (read from its state: bit-exact on resume)
        precond = run.precond(scratch=True) if self.wants_adam_norm else None
        deltas = self._backward(member_loss, trace)
        torch.where(self._column(run.alive), flat.grad, self._zero, out=flat.grad)  # a frozen member's rows: 0
        if cfg.grad_clip > 0:
            # ||g_i|| over member i's row of the flat gradient, one operator whatever the number
            # of layers; a row is reduced by one thread on its own (torch's last-dimension norm),
            # so it does not depend on the other members or on the number of threads.
            # scale min(1, c / (||g|| + 1e-12)) = c / max(||g|| + 1e-12, c), one division
            norm = torch.linalg.vector_norm(flat.grad, dim=1, keepdim=True)  # [M, 1]
            flat.grad.mul_(torch.div(self._clip, (norm + 1e-12).clamp(min=cfg.grad_clip)))
        run.opt.step(self._factors(s), run.alive, ema=(run.ema_flat, 1 - cfg.ema_decay))
        if run.weighting_opt is not None:
            run.weighting_opt.step()

        self.last = StepOutput(draw.t, draw.weight, plain)
        if run.samplers.adaptive:
            with torch.no_grad():  # the traced inputs are not detached (retain=False): nothing here is recorded
                self._feed(draw, plain, trace, deltas, precond)
            if (s + 1) % cfg.feedback_every == 0:
                self.bin_feedback()
        run.step += 1

    def _normals(self, z_source: Tensor, z_noise: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
        """The source and bridge-noise normals in float32, ``[M, B, d]``: cast into two buffers made
        once (one copy each; the step keeps neither past its own use, so the next step may overwrite)."""
        if self._x0_eps is None or self._x0_eps[0].shape != shape:
            bufs = [torch.empty(shape, dtype=torch.float32, device=z_source.device) for _ in range(2)]
            self._x0_eps = (*bufs, *(x.view(shape[0], -1) for x in bufs))
        x0, eps, x0_rows, eps_rows = self._x0_eps
        x0_rows.copy_(z_source)
        eps_rows.copy_(z_noise)
        return x0, eps

    def _column(self, alive: Tensor) -> Tensor:
        """``alive[:, None]``, a view made once per alive tensor (``alive &=`` keeps it; a load replaces it)."""
        if self._alive is None or self._alive[0] is not alive:
            self._alive = (alive, alive[:, None])
        return self._alive[1]

    def _feed(self, draw: TimeDraw, plain: Tensor, trace: list | None, deltas: list[Tensor] | None,
              precond: tuple[list[Tensor], list[Tensor]] | None) -> None:
        """The adaptive samplers' per-sample feedback: losses, and the per-sample gradient norms
        of the unweighted losses (d L / d l_b = w_b / B undone) for the samplers that read them."""
        run = self.run
        cfg, s, b = run.config, run.step, run.config.batch_size
        grad_norm = None
        if self.wants_grad_norm:
            grad_norm = per_sample_grad_sq(trace, deltas).sqrt() * b / draw.weight
        run.samplers.update(Feedback(t=draw.t, loss=plain, grad_norm=grad_norm), per_sample=True)
        if precond is not None:  # every norm_stride-th sample, a rotating subset
            idx = slice(s % cfg.norm_stride, None, cfg.norm_stride)  # a view: the samples of arange(start, B, stride)
            n = len(range(b)[idx])
            sq = per_sample_grad_sq_adam(trace, self._wide(precond, n), deltas, index=idx) * (b / draw.weight[:, idx]) ** 2
            run.samplers.update(Feedback(t=draw.t[:, idx], grad_sq_adam=sq), per_sample=True)

    def _wide(self, precond: tuple[list[Tensor], list[Tensor]], n: int) -> tuple[list[Tensor], list[Tensor]]:
        """``(P_W, P_b)`` with each ``P_b [M, out]`` broadcast to ``[M, n, out]``: views of the run's
        scratch preconditioner (rewritten in place at each step), made once per n."""
        if self._pb is None or self._pb[0] is not precond[1] or self._pb[1] != n:
            self._pb = (precond[1], n, [p[:, None, :].expand(p.shape[0], n, p.shape[1]) for p in precond[1]])
        return precond[0], self._pb[2]

    def _backward(self, member_loss: Tensor, trace: list | None) -> list[Tensor] | None:
        """Gradients of ``sum_i L_i`` written to the flat buffer (and to the weighting's
        parameters); returns the traced layers' pre-activation gradients (None without a trace).

        One ``autograd.grad`` seeded with ones (d sum_i L_i / d L_i = 1) and one copy into the
        buffer: no sum, no zeroing, no addition per parameter. The numbers are those of
        zeroing and accumulating (0 + g = g) but for the sign of a zero gradient, which no
        later operation tells apart (g^2, lerp from m with m != -0, norms)."""
        run = self.run
        if self._seed is None or self._seed.shape != member_loss.shape or self._seed.dtype != member_loss.dtype:
            self._seed = torch.ones_like(member_loss)
        pres = [pre for _, pre in trace] if trace is not None else []
        extra = list(run.weighting.parameters()) if run.weighting_opt is not None else []
        n = len(run.flat.params)
        grads = torch.autograd.grad(member_loss, [*run.flat.params, *pres, *extra], grad_outputs=self._seed, materialize_grads=True)
        torch._foreach_copy_(run.flat.grads, grads[:n])
        for p, g in zip(extra, grads[n + len(pres) :]):
            p.grad = g
        return list(grads[n : n + len(pres)]) if trace is not None else None

    def bin_feedback(self) -> None:
        """Per-bin measurements for the groups whose samplers ask for them, counted as each
        such member's extra work: the variance samplers (``var_opt``, ``oracle_qstar``) get the
        moments of the variance account on fresh probes (4.5); the others the fixed probes'
        signals (:func:`fmstudy.signals.measure_bins`)."""
        run = self.run
        fixed_fields = {"bin_loss", "bin_excess", "bin_grad_mean_sq", "bin_grad_sq"}
        kinds = run.samplers.kinds
        fresh = [name in _FRESH_MOMENTS and bool({f for f in req if f.startswith("bin_")}) for name, req, _ in kinds]
        needs = [set() if f else req & fixed_fields for (_, req, _), f in zip(kinds, fresh)]
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
            name = next(k[0] for k, r in zip(kinds, needs) if "bin_excess" in r)
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
