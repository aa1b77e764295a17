"""The state of a training run: everything a checkpoint holds, and the run's Dataset.

A run's state is its models (raw and EMA, seated in flat buffers), the optimiser's moments,
each member group's sampler state, the members' alive flags and divergence steps, the per-step
losses, the checkpoint meter's records and a few counters. ``state()``/``load()`` round-trip
it so that a resumed run continues with the same numbers, to the bit.
"""

from __future__ import annotations

import copy
import math
import platform
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from . import __version__
from .adam import EnsembleAdam, FlatParams
from .data import get_benchmark
from .member_samplers import MemberSamplers
from .meter import CheckpointMeter
from .models import MLPConfig, VelocityEnsemble
from .paths import BrownianBridge
from .results import build_dataset
from .samplers import make_sampler, sampler_class
from .weighting import make_weighting

__all__ = ["RunState", "checkpoint_steps"]

_FORMAT = 3  # checkpoint layout: flat optimiser moments, per-group sampler states, the weighting's state


def checkpoint_steps(steps: int, n: int, warmup: int = 0) -> list[int]:
    """Step 0 and about ``n - 1`` checkpoints after warm-up: the first half log-spaced from the
    end of warm-up to ``steps / 2`` (early, where the signal changes fastest), the second half
    linear up to ``steps`` (late, where the schedules' curves are compared and speed-ups read:
    log-spaced points there leave one or two checkpoints to interpolate between)."""
    start = min(max(warmup, 1), steps)
    n_log = (n - 1) // 2
    log = np.geomspace(start, max(start, steps / 2), n_log) if n_log else np.zeros(0)
    lin = np.linspace(steps / 2, steps, n - n_log)[1:]
    raw = np.unique(np.round(np.concatenate([[0.0], log, lin])).astype(int))
    return sorted(set(raw.tolist()) | {0, steps})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class RunState:
    """One run, built from its ``config`` (a ``TrainConfig``) and its ``cells``: ``(member
    indices, the plain config of those members alone)`` per group (``train.cell_configs``)."""

    def __init__(self, config: Any, cells: Sequence[tuple[list[int], Any]]) -> None:
        self.config = cfg = config
        self.cells = list(cells)
        self.groups = [idx for idx, _ in self.cells]
        self.device = _device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.bench = get_benchmark(cfg.benchmark, **cfg.benchmark_options)
        self.path = BrownianBridge(cfg.sigma, cfg.t_eps)
        self.oracle = self.bench.oracle(self.path) if self.bench.mixture is not None else None
        self.probes = self.bench.probes(cfg.n_bins, cfg.probe_per_bin, cfg.t_eps)
        m = len(cfg.seeds)
        self.samplers = MemberSamplers([self._sampler(cell) for _, cell in self.cells], self.groups, m, self.device,
                                       make=lambda g, seeds: self._sampler(self.cells[g][1], seeds))
        mlp = MLPConfig(dim=self.bench.dim, hidden=cfg.hidden or self.bench.model_hidden, depth=cfg.depth or self.bench.model_depth)
        self.model = VelocityEnsemble(mlp, cfg.seeds).to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.flat = FlatParams(self.model)
        self.ema_flat = self.flat.seat(self.ema_model)
        lr = [0.0] * m
        for idx, cell in self.cells:
            for i in idx:
                lr[i] = cell.lr
        self.opt = EnsembleAdam(self.flat, lr)
        self._scratch: tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None  # precond(scratch=True)
        self.step = 0
        self.alive = torch.ones(m, dtype=torch.bool, device=self.device)
        self.diverged_step = torch.full((m,), -1, dtype=torch.int64, device=self.device)
        # Per step: the importance-weighted loss (the fixed objective's estimate) and the
        # plain mean of the per-sample losses (what loss-spike counts read).
        self.train_loss = torch.full((m, cfg.steps), math.nan, dtype=torch.float32, device=self.device)
        self.train_loss_unweighted = torch.full_like(self.train_loss, math.nan)
        self.train_seconds = 0.0
        self.extra = {"forward": [0] * m, "backward": [0] * m}  # per member: its sampler's probe work
        self.checkpoints = checkpoint_steps(cfg.steps, cfg.n_checkpoints, cfg.warmup_steps)
        self.meter = CheckpointMeter(self.bench, self.path, self.probes, self.oracle, self.device, cfg.variance_groups, cfg.target)
        # An objective-changing weighting; a learned one (uncertainty) has its own Adam, at the
        # run's base rate without schedule, elementwise, so each member's table is its own.
        self.weighting = None
        self.weighting_opt = None
        if cfg.weighting is not None:
            self.weighting = make_weighting(cfg.weighting, self.path, m, cfg.n_bins).to(self.device)
            params = list(self.weighting.parameters())
            if params:
                self.weighting_opt = torch.optim.Adam(params, lr=cfg.lr)

    def _sampler(self, cell: Any, seeds: Sequence[int] | None = None):
        """The sampler of ``cell`` over its seeds (or ``seeds``)."""
        spec = dict(cell.sampler)
        if "n_bins" in getattr(sampler_class(spec.get("name")), "options", ()):
            spec.setdefault("n_bins", cell.n_bins)  # adaptive bins are the probe bins
        sampler = make_sampler(spec, cell.seeds if seeds is None else seeds, cell.t_eps, self.device)
        if getattr(sampler, "n_bins", cell.n_bins) != cell.n_bins:
            raise ValueError(
                f"sampler n_bins={sampler.n_bins} is not allowed: adaptive samplers use the run's n_bins={cell.n_bins}"
            )
        return sampler

    def precond(self, scratch: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Adam's current preconditioner ``P = 1 / (sqrt(v / (1 - beta2^k)) + eps)`` as
        (``P_W`` per layer, ``P_b`` per layer), None before its first step: the arithmetic of
        ``fmstudy.models.adam_preconditioner``, element by element, done on the flat moments
        (four operators, not four a parameter). ``scratch``: into a buffer that the next
        scratch call overwrites (the step's own, whose views are made once)."""
        if self.step == 0:
            return None
        if scratch and self._scratch is None:
            self._scratch = self._precond_views(torch.empty_like(self.opt.exp_avg_sq))
        buf, views = self._scratch if scratch else self._precond_views(torch.empty_like(self.opt.exp_avg_sq))
        opt = self.opt
        torch.div(opt.exp_avg_sq, 1 - opt.betas[1] ** float(opt.steps), out=buf)
        buf.sqrt_().add_(opt.eps).reciprocal_()  # 1.0 / x in torch is reciprocal(x) * 1.0, the same number
        return views

    def _precond_views(self, buf: torch.Tensor) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        views = dict(zip(map(id, self.flat.params), self.flat.views(buf)))
        return buf, ([views[id(w)] for w in self.model.weights], [views[id(b)] for b in self.model.biases])

    @property
    def unbiased(self) -> list[bool]:
        """Per member group: whether it estimates the fixed objective without bias (its sampler
        reweights with full support, and no weighting changes the objective)."""
        return [bool(s.unbiased) and self.weighting is None for s in self.samplers.samplers]

    def measure(self) -> None:
        """Take the checkpoint measurements at the current step."""
        m = len(self.config.seeds)
        self.meter.measure(
            self.model, self.ema_model, self.samplers.bin_mass,
            {
                "train_seconds": self.train_seconds,
                "samples_seen": self.step * self.config.batch_size,
                "member_extra_forward": torch.tensor(self.extra["forward"], dtype=torch.int64).reshape(m),
                "member_extra_backward": torch.tensor(self.extra["backward"], dtype=torch.int64).reshape(m),
            },
            precond=self.precond() if self.config.variance_groups else None,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "config": self.config.as_dict(),
            "fmstudy_version": __version__,
            "step": self.step,
            "model": self.flat.data.clone(),
            "ema_model": self.ema_flat.clone(),
            "opt": self.opt.state_dict(),
            "sampler": self.samplers.state_dict(),
            "alive": self.alive,
            "diverged_step": self.diverged_step,
            "train_loss": self.train_loss,
            "train_loss_unweighted": self.train_loss_unweighted,
            "records": self.meter.records,
            "train_seconds": self.train_seconds,
            "extra": self.extra,
            "weighting": None if self.weighting is None else self.weighting.state_dict(),
            "weighting_opt": None if self.weighting_opt is None else self.weighting_opt.state_dict(),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')} is not allowed: this fmstudy reads format {_FORMAT} (start the run afresh)")
        if state["config"] != self.config.as_dict():
            raise ValueError("checkpoint was written by a run with other options: refusing to resume from it")
        self.step = state["step"]
        self.flat.data.copy_(state["model"])
        self.ema_flat.copy_(state["ema_model"])
        self.opt.load_state_dict(state["opt"])
        self.samplers.load_state_dict(state["sampler"])
        self.alive = state["alive"].to(self.device)
        self.diverged_step = state["diverged_step"].to(self.device)
        self.train_loss = state["train_loss"].to(self.device)
        self.train_loss_unweighted = state["train_loss_unweighted"].to(self.device)
        self.meter.records = state["records"]
        self.train_seconds = state["train_seconds"]
        self.extra = {k: list(v) for k, v in state["extra"].items()}
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])
        if self.weighting_opt is not None:
            self.weighting_opt.load_state_dict(state["weighting_opt"])

    # -- the result ------------------------------------------------------------------------
    def dataset(self, wall_seconds: float, setup_seconds: float) -> xr.Dataset:
        """The run's Dataset. A plain run's is a cell's; a pack's carries per-member probe
        work (``member_extra_*``) and its groups in ``attrs["groups"]`` for
        :func:`fmstudy.results.split_pack`."""
        cfg = self.config
        arrays = self.meter.arrays()
        arrays["train_loss"] = self.train_loss.cpu().numpy()
        arrays["train_loss_unweighted"] = self.train_loss_unweighted.cpu().numpy()
        arrays["diverged_step"] = self.diverged_step.cpu().numpy()
        attrs: dict[str, Any] = {"config": cfg.as_dict(), "seeds": list(cfg.seeds)}
        samplers = self.samplers.samplers
        if cfg.members is None:
            for kind in ("forward", "backward"):
                arrays[f"extra_{kind}"] = arrays.pop(f"member_extra_{kind}")[0]  # one group: one count
            attrs.update(sampler=samplers[0].describe(), unbiased=int(self.unbiased[0]))
        else:
            labels = [m.get("cell") for m in cfg.members]
            attrs["groups"] = [
                {"members": idx, "cell": labels[idx[0]], "config": cell.as_dict(), "seeds": list(cell.seeds),
                 "sampler": s.describe(), "unbiased": int(ok)}
                for (idx, cell), s, ok in zip(self.cells, samplers, self.unbiased)
            ]
        attrs.update({
            "target": cfg.target,
            "weighting": {} if self.weighting is None else self.weighting.describe(),
            "benchmark_options": self.bench.options,
            "fmstudy_version": __version__,
            "torch_version": torch.__version__,
            "device": self.device.type if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "tf32": int(cfg.tf32 and self.device.type == "cuda"),
            "host": platform.node(),
            "wall_seconds": wall_seconds,  # the whole call: set-up, training, checkpoints
            "setup_seconds": setup_seconds,  # benchmark, probes, models and optimiser built (or loaded)
        })
        return build_dataset(arrays, list(cfg.seeds), cfg.steps, self.checkpoints, self.probes.edges.double().numpy(), attrs)
