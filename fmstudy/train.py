"""Training engine: all seeds of a grid cell trained as one batched ensemble (STUDY.md sections 4-6).

Each member has its own model (a slice of :class:`~fmstudy.models.VelocityEnsemble`), its own
data, noise and time streams (counter-based, keyed by its seed, so it trains exactly as it
would alone) and its own sampler state. One step, for every member at once:

    x1 ~ data, x0 ~ N(0, I), eps ~ N(0, I), (t, w) ~ sampler
    l_b   = ||v_theta(x_t, t_b) - u_t||^2 / d                      per-sample loss
    L     = mean_b w_b l_b                                         the fixed objective's estimate
    theta <- Adam(theta, grad L), per-member gradient clipping, EMA of theta

The ensemble loss is the sum of the members' L, so gradients (and Adam, which is elementwise)
act on each member as on a separate model. A member whose L is not finite or exceeds
``max_loss`` is frozen at that step (its parameters stop changing) and its step recorded;
the others go on. Checkpoints hold everything needed to resume to the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from . import __version__
from .checks import check_float, check_int
from .data import get_benchmark
from .models import MLPConfig, VelocityEnsemble, per_sample_grad_sq
from .paths import BrownianBridge
from .results import atomic_write, build_dataset
from .rng import CounterRNG
from .samplers import SAMPLERS, Feedback, TimeSampler, make_sampler
from .signals import measure_bins, probe_irreducible

__all__ = ["TrainConfig", "TrainResult", "train", "checkpoint_steps"]

_DATA, _SOURCE, _NOISE = 2, 3, 4  # CounterRNG streams (1 is the time sampler's)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run; a run is a function of this and nothing else."""

    benchmark: str = "gmm8"
    benchmark_options: Mapping[str, Any] = field(default_factory=dict)
    sigma: float = 0.0
    t_eps: float = 1e-3
    sampler: Mapping[str, Any] = field(default_factory=lambda: {"name": "uniform"})
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 0
    decay: str = "cosine"  # or "none"
    grad_clip: float = 0.0  # per-member global norm; 0 turns clipping off
    ema_decay: float = 0.999
    hidden: int | None = None  # None: the benchmark's suggestion
    depth: int | None = None
    n_bins: int = 20
    probe_per_bin: int = 256
    n_checkpoints: int = 12
    feedback_every: int = 50  # steps between per-bin feedback for samplers that need it
    max_loss: float = 1e6
    device: str = "auto"
    tf32: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "benchmark_options", dict(self.benchmark_options))
        object.__setattr__(self, "sampler", dict(self.sampler))
        ints = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "n_bins": 2, "probe_per_bin": 2, "n_checkpoints": 2, "feedback_every": 1}
        for name, lo in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo))
        for name, lo, hi, kw in (
            ("lr", 0.0, math.inf, {"lo_open": True}),
            ("max_loss", 0.0, math.inf, {"lo_open": True}),
            ("grad_clip", 0.0, math.inf, {"why": " (0 turns clipping off)"}),
            ("ema_decay", 0.0, 1.0, {"hi_open": True}),
        ):
            object.__setattr__(self, name, check_float(name, getattr(self, name), lo, hi, **kw))
        if self.decay not in ("cosine", "none"):
            raise ValueError(f"decay={self.decay!r} is not allowed: decay must be 'cosine' or 'none'")
        if self.device != "auto" and torch.device(self.device).type not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not allowed: device must be 'auto', 'cpu' or 'cuda[:i]'")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds={list(self.seeds)} is not allowed: give distinct integers >= 0, at least one")
        BrownianBridge(self.sigma, self.t_eps)  # validates sigma and t_eps

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        return out


@dataclass
class TrainResult:
    """The run's Dataset (``fmstudy.results`` schema), its final model and EMA model, the
    sampler, and whether the run reached its last step (False after ``stop_at``)."""

    dataset: xr.Dataset | None
    model: VelocityEnsemble
    ema_model: VelocityEnsemble
    sampler: TimeSampler
    complete: bool


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` roughly log-spaced steps from 0 to ``steps`` (both included): dense early, where
    the signal changes fastest."""
    raw = np.unique(np.round(np.geomspace(1, steps + 1, n)).astype(int) - 1)
    return sorted(set(raw.tolist()) | {0, steps})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Run:
    """The state of one run: everything a checkpoint must hold lives here."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = cfg = config
        self.device = _device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.bench = get_benchmark(cfg.benchmark, **cfg.benchmark_options)
        self.path = BrownianBridge(cfg.sigma, cfg.t_eps)
        self.oracle = self.bench.oracle(self.path) if self.bench.mixture is not None else None
        self.probes = self.bench.probes(cfg.n_bins, cfg.probe_per_bin, cfg.t_eps)
        spec = dict(cfg.sampler)
        if "n_bins" in getattr(SAMPLERS.get(spec.get("name")), "options", ()):
            spec.setdefault("n_bins", cfg.n_bins)  # adaptive bins are the probe bins
        self.sampler = make_sampler(spec, cfg.seeds, cfg.t_eps, self.device)
        if getattr(self.sampler, "n_bins", cfg.n_bins) != cfg.n_bins:
            raise ValueError(
                f"sampler n_bins={self.sampler.n_bins} is not allowed: adaptive samplers use the run's n_bins={cfg.n_bins}"
            )
        mlp = MLPConfig(dim=self.bench.dim, hidden=cfg.hidden or self.bench.model_hidden, depth=cfg.depth or self.bench.model_depth)
        self.model = VelocityEnsemble(mlp, cfg.seeds).to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.streams = {k: CounterRNG(cfg.seeds, stream=s) for k, s in (("data", _DATA), ("source", _SOURCE), ("noise", _NOISE))}
        m = len(cfg.seeds)
        self.step = 0
        self.alive = torch.ones(m, dtype=torch.bool, device=self.device)
        self.diverged_step = torch.full((m,), -1, dtype=torch.int64, device=self.device)
        self.train_loss = torch.full((m, cfg.steps), math.nan, dtype=torch.float32, device=self.device)
        self.records: dict[str, list[Any]] = {}
        self.train_seconds = 0.0
        self.extra = {"forward": 0, "backward": 0}
        self.checkpoints = checkpoint_steps(cfg.steps, cfg.n_checkpoints)
        self._heldout = self._heldout_batch()
        self._quadrature = None
        if self.oracle is not None:  # fixed points: every checkpoint measured on the same x_t
            g = torch.Generator().manual_seed(self.bench.seed + 104729)
            self._quadrature = self.oracle.quadrature(n_nodes=16, n=512, generator=g).to(self.device)

    # -- what a run measures ---------------------------------------------------------------
    def _heldout_batch(self):
        """Fixed held-out points with fixed (x0, eps) and stratified uniform t over [a, b]."""
        x1 = self.bench.heldout[:2048]
        g = torch.Generator().manual_seed(self.bench.seed + 7919)
        n, d = x1.shape
        a, b = self.path.t_range
        t = a + (b - a) * (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) / n
        x0 = torch.randn(n, d, generator=g)
        eps = torch.randn(n, d, generator=g)
        s = self.path.sample(x0, x1, t.float(), eps)
        return s.xt.to(self.device), t.float().to(self.device), s.ut.to(self.device)

    @torch.no_grad()
    def _objective(self, model: VelocityEnsemble) -> torch.Tensor:
        xt, t, ut = self._heldout
        return ((model(xt, t) - ut) ** 2).mean(-1).mean(1)

    def record_checkpoint(self) -> None:
        """Per-bin signals and whole-model metrics at the current step."""
        rec: dict[str, Any] = measure_bins(self.model, self.path, self.probes, self.oracle).as_dict()
        target_var = rec.pop("target_var")
        if "target_var" not in self.records:
            self.records["target_var"] = target_var.cpu()
            if self.oracle is not None:
                self.records["irreducible"] = probe_irreducible(self.oracle, self.path, self.probes)
        edges = self.probes.edges.to(torch.float64)
        rec["q"] = self.sampler.bin_mass(edges) / edges.diff().to(self.device)
        rec["heldout_objective"] = self._objective(self.model)
        rec["heldout_objective_ema"] = self._objective(self.ema_model)
        if self._quadrature is not None:
            rec["integrated_excess"] = self._quadrature.evaluate(self.model)
            rec["integrated_excess_ema"] = self._quadrature.evaluate(self.ema_model)
        rec["train_seconds"] = torch.tensor(self.train_seconds)
        rec["samples_seen"] = torch.tensor(self.step * self.config.batch_size)
        rec["extra_forward"] = torch.tensor(self.extra["forward"])
        rec["extra_backward"] = torch.tensor(self.extra["backward"])
        for key, value in rec.items():
            self.records.setdefault(key, []).append(value.detach().cpu().to(torch.float64))

    # -- one training step -------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        cfg = self.config
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) if cfg.decay == "cosine" else 1.0
        return cfg.lr * warm * decay

    def train_step(self) -> None:
        cfg, s, dev = self.config, self.step, self.device
        m, b, d = len(cfg.seeds), cfg.batch_size, self.bench.dim
        x1 = self.bench.sample_members(self.streams["data"], s, b, dev)
        x0 = self.streams["source"].normal(s, b * d, dev).view(m, b, d)
        eps = self.streams["noise"].normal(s, b * d, dev).view(m, b, d)
        draw = self.sampler.sample(b)
        ps = self.path.sample(x0, x1, draw.t, eps, check=False)
        wants_grad_norm = "grad_norm" in self.sampler.requires
        trace: list | None = [] if wants_grad_norm else None
        per_sample = ((self.model(ps.xt, draw.t, trace=trace) - ps.ut) ** 2).mean(-1)  # [M, B]
        member_loss = (draw.weight * per_sample).mean(1)
        self.train_loss[:, s] = member_loss.detach()

        # Freezing is decided on the device, with no host synchronisation, so a GPU keeps
        # queueing kernels: every step keeps a copy of the parameters and puts the frozen
        # members' copies back after Adam (which moves a parameter even at zero gradient).
        bad = self.alive & ~(torch.isfinite(member_loss) & (member_loss <= cfg.max_loss))
        self.diverged_step = torch.where(bad, s, self.diverged_step)
        self.alive &= ~bad

        self.opt.zero_grad(set_to_none=True)
        member_loss.sum().backward()
        params = list(self.model.parameters())
        alive = [self.alive.view(-1, *([1] * (p.dim() - 1))) for p in params]
        before = [p.detach().clone() for p in params]
        for p, keep in zip(params, alive):  # a diverged member's gradient may be NaN
            p.grad.masked_fill_(~keep, 0.0)
        if cfg.grad_clip > 0:
            norm = torch.sqrt(sum(p.grad.pow(2).flatten(1).sum(1) for p in params))  # [M]
            scale = (cfg.grad_clip / (norm + 1e-12)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))
        for group in self.opt.param_groups:
            group["lr"] = self._lr(s)
        self.opt.step()
        with torch.no_grad():
            for p, keep, old in zip(params, alive, before):
                p.copy_(torch.where(keep, p, old))
            for e, p in zip(self.ema_model.parameters(), params):
                e.lerp_(p, 1 - cfg.ema_decay)

        if self.sampler.adaptive:
            grad_norm = None
            if wants_grad_norm:  # d L / d l_b = w_b / B: undo it to get grad of l_b itself
                grad_norm = per_sample_grad_sq(trace).sqrt() * b / draw.weight
            self.sampler.update(Feedback(t=draw.t, loss=per_sample.detach(), grad_norm=grad_norm))
            if (s + 1) % cfg.feedback_every == 0:
                self._bin_feedback()
        self.step += 1

    def _bin_feedback(self) -> None:
        """Per-bin measurements on the probes for samplers that ask for them; counted as extra work."""
        req = self.sampler.requires
        if not req & {"bin_loss", "bin_excess", "bin_grad_mean_sq", "bin_grad_sq"}:
            return
        grads = bool(req & {"bin_grad_mean_sq", "bin_grad_sq"})
        oracle = self.oracle if "bin_excess" in req else None
        if "bin_excess" in req and oracle is None:
            raise ValueError(f"sampler {self.sampler.name!r} needs an oracle: benchmark {self.bench.name!r} has none")
        sig = measure_bins(self.model, self.path, self.probes, oracle, gradients=grads)
        n = self.probes.n_bins * self.probes.per_bin
        self.extra["forward"] += n
        self.extra["backward"] += n if grads else 0
        self.sampler.update(
            Feedback(bin_loss=sig.loss, bin_excess=sig.excess, bin_grad_mean_sq=sig.grad_signal, bin_grad_sq=sig.grad_sq)
        )

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.as_dict(),
            "fmstudy_version": __version__,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema_model": self.ema_model.state_dict(),
            "opt": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(),
            "alive": self.alive,
            "diverged_step": self.diverged_step,
            "train_loss": self.train_loss,
            "records": self.records,
            "train_seconds": self.train_seconds,
            "extra": self.extra,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        if state["config"] != self.config.as_dict():
            raise ValueError("checkpoint was written by a run with other options: refusing to resume from it")
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema_model"])
        self.opt.load_state_dict(state["opt"])
        self.sampler.load_state_dict(state["sampler"])
        self.alive = state["alive"].to(self.device)
        self.diverged_step = state["diverged_step"].to(self.device)
        self.train_loss = state["train_loss"].to(self.device)
        self.records = state["records"]
        self.train_seconds = state["train_seconds"]
        self.extra = dict(state["extra"])

    def dataset(self, wall_seconds: float, setup_seconds: float) -> xr.Dataset:
        cfg = self.config
        arrays: dict[str, Any] = {}
        for key, values in self.records.items():
            if isinstance(values, torch.Tensor):  # per-bin constants of the probes, [K]
                arrays[key] = values.numpy()
            else:  # one entry per checkpoint: scalars, [M] or [M, K] -> [C], [M, C], [M, C, K]
                arrays[key] = torch.stack(values, dim=min(values[0].ndim, 1)).numpy()
        arrays["train_loss"] = self.train_loss.cpu().numpy()
        arrays["diverged_step"] = self.diverged_step.cpu().numpy()
        attrs = {
            "config": cfg.as_dict(),
            "seeds": list(cfg.seeds),
            "sampler": self.sampler.describe(),
            "unbiased": int(self.sampler.unbiased),
            "benchmark_options": self.bench.options,
            "fmstudy_version": __version__,
            "torch_version": torch.__version__,
            "device": self.device.type if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "tf32": int(self.config.tf32 and self.device.type == "cuda"),
            "host": platform.node(),
            "wall_seconds": wall_seconds,  # the whole call: set-up, training, checkpoints
            "setup_seconds": setup_seconds,  # benchmark, probes, models and optimiser built (or loaded)
        }
        return build_dataset(arrays, list(cfg.seeds), cfg.steps, self.checkpoints, self.probes.edges.double().numpy(), attrs)


def train(
    config: TrainConfig,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train every seed of ``config`` as one ensemble and measure it at log-spaced checkpoints.

    Args:
        checkpoint: file to resume from (when it exists and was written with the same
            options) and to save to every ``checkpoint_every`` steps and on stopping.
        stop_at: stop after this many steps (an interruption for tests or time-limited jobs);
            the result then has ``complete=False`` and no dataset.
        progress: show a tqdm bar with steps and model-steps per second.
    """
    start_wall = time.perf_counter()
    run = _Run(config)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        run.load(torch.load(path, map_location=run.device, weights_only=False))
    setup_seconds = time.perf_counter() - start_wall
    cfg, m = run.config, len(config.seeds)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = tqdm(total=cfg.steps, initial=run.step, unit="step", disable=not progress, desc=f"{cfg.benchmark} {cfg.sampler.get('name')}")
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)

    def clock() -> float:  # the device's queue drained: only between segments of steps
        sync()
        return time.perf_counter()

    # Training time is summed over the stretches of steps between checkpoint measurements
    # and saves, so the device is synchronised there and not at every step.
    tic, done = clock(), run.step
    loop_start = tic
    while run.step < end:
        if run.step in run.checkpoints and len(run.records.get("loss", [])) == run.checkpoints.index(run.step):
            run.train_seconds += clock() - tic
            run.record_checkpoint()
            tic = clock()
        run.train_step()
        bar.update(1)
        if bar.n % 20 == 0 or run.step == end:
            bar.set_postfix(model_steps_per_s=f"{m * (run.step - done) / max(time.perf_counter() - loop_start, 1e-9):.0f}", refresh=False)
        if path is not None and checkpoint_every and run.step % checkpoint_every == 0:
            run.train_seconds += clock() - tic
            atomic_write(path, functools.partial(torch.save, run.state()))
            tic = clock()
    run.train_seconds += clock() - tic
    bar.close()
    if run.step < cfg.steps:
        if path is not None:
            atomic_write(path, functools.partial(torch.save, run.state()))
        return TrainResult(None, run.model, run.ema_model, run.sampler, complete=False)
    if len(run.records.get("loss", [])) < len(run.checkpoints):
        run.record_checkpoint()
    if path is not None:
        atomic_write(path, functools.partial(torch.save, run.state()))
    return TrainResult(run.dataset(time.perf_counter() - start_wall, setup_seconds), run.model, run.ema_model, run.sampler, complete=True)
