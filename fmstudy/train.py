"""Training engine: the members of a run trained as one batched ensemble (STUDY.md sections 4-6).

Each member has its own model (a slice of :class:`~fmstudy.models.VelocityEnsemble`), its own
data, noise and time streams (counter-based, keyed by its seed, so it trains exactly as it
would alone), its own learning rate and its group's sampler (members may differ in seed,
sampler and learning rate: a pack of grid cells). One step, for every member at once:

    x1 ~ data, x0 ~ N(0, I), eps ~ N(0, I), (t, w) ~ sampler
    l_b   = ||v_theta(x_t, t_b) - u_t||^2 / d                      per-sample loss
    L     = mean_b w_b l_b                                         the fixed objective's estimate
    theta <- Adam(theta, grad L), per-member gradient clipping, EMA of theta

The ensemble loss is the sum of the members' L, so gradients (and Adam, which is elementwise)
act on each member as on a separate model: on a CPU a member's numbers are, to the bit, those
it gets alone. A member whose L is not finite or exceeds ``max_loss`` is frozen at that step
(its parameters stop changing) and its step recorded; the others go on. Checkpoints hold
everything needed to resume to the same numbers. The pieces: :mod:`fmstudy.run_state` (what a
checkpoint holds), :mod:`fmstudy.step` (one step), :mod:`fmstudy.meter` (checkpoint measurements).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import xarray as xr
from tqdm import tqdm

from .checks import check_float, check_int
from .member_samplers import MemberSamplers
from .models import VelocityEnsemble
from .paths import BrownianBridge
from .results import atomic_write
from .run_state import RunState, checkpoint_steps
from .samplers import TimeSampler
from .step import TrainStep
from .weighting import make_weighting

__all__ = ["TrainConfig", "TrainResult", "train", "checkpoint_steps", "cell_configs", "member_groups", "build_run"]


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
    # The variance account (STUDY.md 4.5) at every checkpoint on fresh probes: probe_per_bin
    # points per bin split into this many independent groups (standard errors); 0 turns it off.
    variance_groups: int = 4
    # Per-sample squared norms in Adam's metric for samplers fed by them (var_opt): every
    # norm_stride-th sample of the batch (a rotating subset), to bound their cost.
    norm_stride: int = 8
    # "plain": u_t; "rb": the Rao-Blackwellised E[u_t | x1, x_t] (same minimiser, less noise for sigma > 0).
    target: str = "plain"
    # An objective-changing weighting of t (fmstudy.weighting: {"name": "min_snr", "gamma": 5}
    # or {"name": "uncertainty"}), applied on top of the sampler's weights; None or {}: none.
    weighting: Mapping[str, Any] | None = None
    # A heterogeneous ensemble (a pack of grid cells): one entry per member, {"seed": int,
    # "sampler": spec, "lr": float}, sampler and lr defaulting to the run's; seeds then
    # follow from it. None: every seed of ``seeds`` with the run's sampler and lr.
    members: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if self.members is not None:
            object.__setattr__(self, "members", _check_members(self.members, self.sampler, self.lr))
            object.__setattr__(self, "seeds", tuple(m["seed"] for m in self.members))
        # each seed a real integer: 1.5 would train seed 1 while the record says 1.5
        object.__setattr__(self, "seeds", tuple(check_int("seed", s, 0) for s in self.seeds))
        object.__setattr__(self, "benchmark_options", dict(self.benchmark_options))
        object.__setattr__(self, "sampler", dict(self.sampler))
        ints = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "n_bins": 2, "probe_per_bin": 2, "n_checkpoints": 2, "feedback_every": 1,
                "variance_groups": 0, "norm_stride": 1}
        for name, lo in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo))
        for name, lo, hi, kw in (
            ("lr", 0.0, math.inf, {"lo_open": True}),
            ("max_loss", 0.0, math.inf, {"lo_open": True}),
            ("grad_clip", 0.0, math.inf, {"why": " (0 turns clipping off)"}),
            ("ema_decay", 0.0, 1.0, {"hi_open": True}),
        ):
            object.__setattr__(self, name, check_float(name, getattr(self, name), lo, hi, **kw))
        if self.variance_groups and (self.variance_groups < 2 or self.probe_per_bin % self.variance_groups
                                     or self.probe_per_bin // self.variance_groups < 2):
            raise ValueError(f"variance_groups={self.variance_groups} is not allowed with probe_per_bin={self.probe_per_bin}: "
                             "give 0 (no account) or at least 2 groups that divide probe_per_bin, 2 or more probes each")
        fresh = {"var_opt_neyman", "oracle_qstar", "oracle_qstar_neyman"} & {
            str(s.get("name")) for s in [self.sampler, *[m.get("sampler", {}) for m in (self.members or ())]] if isinstance(s, Mapping)}
        if fresh and not self.variance_groups and self.probe_per_bin % 4:
            raise ValueError(f"probe_per_bin={self.probe_per_bin} is not allowed for sampler {sorted(fresh)[0]!r} without the variance "
                             "account: its fresh-probe moments use 4 groups, so give a multiple of 4 (or set variance_groups)")
        if self.target not in ("plain", "rb"):
            raise ValueError(f"target={self.target!r} is not allowed: target must be 'plain' (u_t) or 'rb' (E[u_t | x1, x_t])")
        if isinstance(self.weighting, Mapping):  # {} (a grid file's "none") is None
            object.__setattr__(self, "weighting", dict(self.weighting) or None)
        if self.weighting is not None:
            make_weighting(self.weighting, BrownianBridge(self.sigma, self.t_eps), 1, self.n_bins)  # one-line errors
            if self.members is not None and len({m.get("lr", self.lr) for m in self.members}) > 1:
                # a learned weighting has one optimiser at one rate: a member would not learn as it would alone
                raise ValueError("weighting with members of different lr is not allowed: pack only cells with one lr when a weighting is set")
        if self.decay not in ("cosine", "none"):
            raise ValueError(f"decay={self.decay!r} is not allowed: decay must be 'cosine' or 'none'")
        for name in ("hidden", "depth"):  # None: the benchmark's suggestion
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        try:
            dev = None if self.device == "auto" else torch.device(self.device)
        except (RuntimeError, TypeError):  # torch's own error for a name it does not know
            dev = torch.device("meta")
        if dev is not None and dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not allowed: device must be 'auto', 'cpu' or 'cuda[:i]'")
        if dev is not None and dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device={self.device!r} is not allowed: this machine has {torch.cuda.device_count()} CUDA devices "
                             "(use 'auto' or 'cpu')")
        if not self.seeds or (self.members is None and len(set(self.seeds)) != len(self.seeds)) or min(self.seeds) < 0:
            raise ValueError(f"seeds={list(self.seeds)} is not allowed: give distinct integers >= 0, at least one")
        BrownianBridge(self.sigma, self.t_eps)  # validates sigma and t_eps

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        if self.members is None:
            del out["members"]  # a plain run's record is what it was before packs existed
        else:
            out["members"] = [dict(m) for m in self.members]
        return out


@dataclass
class TrainResult:
    """The run's Dataset (``fmstudy.results`` schema), its final model and EMA model, the
    sampler, and whether the run reached its last step (False after ``stop_at``)."""

    dataset: xr.Dataset | None
    model: VelocityEnsemble
    ema_model: VelocityEnsemble
    sampler: TimeSampler | MemberSamplers  # a plain run's sampler; a pack's groups
    complete: bool


def _check_members(members: Any, sampler: Mapping[str, Any], lr: Any) -> tuple[dict[str, Any], ...]:
    """Each member as ``{"seed", "sampler", "lr"}`` (the run's sampler and lr by default), and
    ``"cell"`` (a label) where given; one-line errors for anything else. Two members may share
    a seed (a paired design) only if they differ in sampler, lr or cell."""
    if isinstance(members, (str, Mapping)) or not hasattr(members, "__iter__") or not list(members):
        raise ValueError(f"members={members!r} is not allowed: give a list of {{seed, sampler, lr}} entries, at least one")
    out, seen = [], set()
    for i, m in enumerate(members):
        if not isinstance(m, Mapping) or "seed" not in m or set(m) - {"seed", "sampler", "lr", "cell"}:
            raise ValueError(f"member {i} = {m!r} is not allowed: give a mapping with 'seed' and optionally 'sampler', 'lr', 'cell'")
        if not isinstance(m.get("cell", ""), str):
            raise ValueError(f"member {i} cell={m['cell']!r} is not allowed: a cell label is a string")
        spec = m.get("sampler", sampler)
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"member {i} sampler={spec!r} is not allowed: give a sampler spec with a 'name'")
        one = {"seed": check_int("seed", m["seed"], 0), "sampler": dict(spec), "lr": check_float("lr", m.get("lr", lr), 0.0, lo_open=True)}
        if "cell" in m:
            one["cell"] = m["cell"]
        key = (one["seed"], _spec_key(one["sampler"]), one["lr"], one.get("cell"))
        if key in seen:
            raise ValueError(f"member {i} = {one} is not allowed: it repeats an earlier member (same seed, sampler, lr and cell)")
        seen.add(key)
        out.append(one)
    return tuple(out)


def _spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(spec), sort_keys=True, default=str)


def member_groups(config: TrainConfig) -> list[tuple[list[int], dict[str, Any], float, str | None]]:
    """The run's groups of members that share a sampler spec, lr and cell label, in order of
    first appearance: ``(member indices, sampler spec, lr, cell label or None)``. A plain run
    is one group. Each group is one grid cell: one sampler state, one result."""
    if config.members is None:
        return [(list(range(len(config.seeds))), dict(config.sampler), config.lr, None)]
    groups: dict[tuple, tuple[list[int], dict[str, Any], float, str | None]] = {}
    for i, m in enumerate(config.members):
        key = (_spec_key(m["sampler"]), m["lr"], m.get("cell"))
        groups.setdefault(key, ([], m["sampler"], m["lr"], m.get("cell")))[0].append(i)
    return list(groups.values())


def cell_configs(config: TrainConfig) -> list[tuple[list[int], TrainConfig]]:
    """Each group of a run as the plain run that would train those members alone."""
    return [
        (idx, dataclasses.replace(config, members=None, seeds=tuple(config.seeds[i] for i in idx), sampler=spec, lr=lr))
        for idx, spec, lr, _ in member_groups(config)
    ]


def build_run(config: TrainConfig) -> tuple[RunState, TrainStep]:
    """A run's state and its step, built and not yet started (for tests and probes)."""
    run = RunState(config, cell_configs(config))
    return run, TrainStep(run)


def train(
    config: TrainConfig,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train every member of ``config`` as one ensemble and measure it at log-spaced checkpoints.

    Args:
        checkpoint: file to resume from (when it exists and was written with the same
            options) and to save to every ``checkpoint_every`` steps and on stopping.
        stop_at: stop after this many steps (an interruption for tests or time-limited jobs);
            the result then has ``complete=False`` and no dataset.
        progress: show a tqdm bar with steps and model-steps per second.
    """
    start_wall = time.perf_counter()
    run, step = build_run(config)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        run.load(torch.load(path, map_location=run.device, weights_only=False))
    setup_seconds = time.perf_counter() - start_wall
    cfg, m = run.config, len(config.seeds)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    name = cfg.sampler.get("name") if cfg.members is None else f"{len(run.groups)} groups"
    bar = tqdm(total=cfg.steps, initial=run.step, unit="step", disable=not progress, desc=f"{cfg.benchmark} {name}")
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)

    def clock() -> float:  # the device's queue drained: only between segments of steps
        sync()
        return time.perf_counter()

    def save() -> None:
        atomic_write(path, functools.partial(torch.save, run.state()))

    # Training time is summed over the stretches of steps between checkpoint measurements
    # and saves, so the device is synchronised there and not at every step.
    tic, done = clock(), run.step
    loop_start = tic
    while run.step < end:
        if run.step in run.checkpoints and run.meter.n_taken == run.checkpoints.index(run.step):
            run.train_seconds += clock() - tic
            run.measure()
            tic = clock()
        step()
        bar.update(1)
        if bar.n % 20 == 0 or run.step == end:
            bar.set_postfix(model_steps_per_s=f"{m * (run.step - done) / max(time.perf_counter() - loop_start, 1e-9):.0f}", refresh=False)
        if path is not None and checkpoint_every and run.step % checkpoint_every == 0:
            run.train_seconds += clock() - tic
            save()
            tic = clock()
    run.train_seconds += clock() - tic
    bar.close()
    sampler = run.samplers.samplers[0] if cfg.members is None else run.samplers
    if run.step < cfg.steps:
        if path is not None:
            save()
        return TrainResult(None, run.model, run.ema_model, sampler, complete=False)
    if run.meter.n_taken < len(run.checkpoints):
        run.measure()
    if path is not None:
        save()
    dataset = run.dataset(time.perf_counter() - start_wall, setup_seconds)
    return TrainResult(dataset, run.model, run.ema_model, sampler, complete=True)
