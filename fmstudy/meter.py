"""The checkpoint meter: what a run measures at its log-spaced checkpoints (STUDY.md sections 5, 7).

At every checkpoint, for every member: the per-bin signals on the fixed probes
(:func:`fmstudy.signals.measure_bins`), the sampler's mean density per bin ``q_k``, the fixed
objective on a fixed held-out batch (raw and EMA weights) and, on oracle benchmarks, the
integrated excess ``int excess(t) dt`` on a fixed quadrature (raw and EMA). Every measurement
uses the same points at every checkpoint, so differences across checkpoints are the model's.

The variance account (STUDY.md 4.5) is measured on FRESH probes at every checkpoint
(:func:`fmstudy.signals.fresh_probes`, keyed by the checkpoint's index): ``groups`` independent
groups per bin give every quantity a standard error, and no checkpoint is judged on the sample
another was, nor on the held-out set or the quadrature. It is taken in the Euclidean metric and,
once Adam has taken a step, in Adam's (``precond``). The meter keeps the records (they are part
of a run's checkpoint) and knows nothing of training.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .benchmark_base import Benchmark, ProbeSet
from .models import VelocityEnsemble
from .oracle import BridgeOracle
from .paths import BrownianBridge
from .signals import fresh_probes, measure_bins, measure_variance, probe_irreducible, variance_record

__all__ = ["HELDOUT_POINTS", "QUADRATURE_DRAWS", "QUADRATURE_NODES", "CheckpointMeter"]


# The integrated excess's fixed points: Gauss-Legendre nodes in t and exact draws of x_t per node.
QUADRATURE_NODES, QUADRATURE_DRAWS = 16, 512
# The held-out objective's fixed set: this many held-out points, one (x0, eps, t) each.
HELDOUT_POINTS = 2048


class CheckpointMeter:
    """Measures a run's models at checkpoints and keeps the records.

    ``records`` maps a result name (``fmstudy.results.SCHEMA``) to a list with one entry per
    checkpoint, except the probes' per-bin constants ``target_var`` and ``irreducible``
    (one ``[K]`` tensor each).
    """

    def __init__(
        self, bench: Benchmark, path: BrownianBridge, probes: ProbeSet, oracle: BridgeOracle | None, device: torch.device,
        account_groups: int = 0, target: str = "plain",
    ) -> None:
        self.bench, self.path, self.probes, self.oracle, self.device = bench, path, probes, oracle, device
        self.account_groups = account_groups  # 0: no variance account
        self.target = target  # the account is of the estimator being trained: u_t or the Rao-Blackwellised target
        self.records: dict[str, Any] = {}
        self._heldout = self._heldout_batch()
        self._quadrature = None
        if oracle is not None:  # fixed points: every checkpoint measured on the same x_t
            g = torch.Generator().manual_seed(bench.seed + 104729)
            self._quadrature = oracle.quadrature(n_nodes=QUADRATURE_NODES, n=QUADRATURE_DRAWS, generator=g).to(device)

    @property
    def n_taken(self) -> int:
        return len(self.records.get("loss", []))

    def _heldout_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """Fixed held-out points with fixed (x0, eps) and stratified uniform t over [a, b]."""
        x1 = self.bench.heldout[:HELDOUT_POINTS]
        g = torch.Generator().manual_seed(self.bench.seed + 7919)
        n, d = x1.shape
        a, b = self.path.t_range
        t = a + (b - a) * (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) / n
        x0 = torch.randn(n, d, generator=g)
        eps = torch.randn(n, d, generator=g)
        s = self.path.sample(x0, x1, t.float(), eps)
        return s.xt.to(self.device), t.float().to(self.device), s.ut.to(self.device)

    @torch.no_grad()
    def objective(self, model: VelocityEnsemble) -> Tensor:
        """The fixed objective (uniform t) on the held-out batch, ``[M]``."""
        xt, t, ut = self._heldout
        return ((model(xt, t) - ut) ** 2).mean(-1).mean(1)

    def account(self, model: VelocityEnsemble, masses: Tensor, key: int, precond: Any = None, groups: int | None = None) -> dict[str, Tensor]:
        """The variance account (4.5) on fresh probes ``key``, with the run's own proposal
        ``masses [M, K]`` as ``run``; Adam's metric too when ``precond`` is given, else NaN."""
        k, per_bin = self.probes.n_bins, self.probes.per_bin
        probes = fresh_probes(self.bench, k, per_bin, self.path.t_eps, key=key)
        euclid, adam = measure_variance(model, self.path, probes, groups or self.account_groups, precond=precond, target=self.target)
        if adam is not None:
            return variance_record(euclid, adam, {"run": masses})
        # Before Adam's first step its metric does not exist: the same names, NaN.
        rec = variance_record(euclid, euclid, {"run": masses})
        return {k: torch.full_like(v, float("nan")) if "adam" in k else v for k, v in rec.items()}

    def measure(
        self, model: VelocityEnsemble, ema_model: VelocityEnsemble, bin_mass: Callable[[Tensor], Tensor], counters: Mapping[str, Any],
        precond: Any = None,
    ) -> None:
        """Take one checkpoint: ``bin_mass(edges) [M, K]`` is the samplers' probability per
        bin; ``counters`` are run-level numbers recorded as they stand (seconds, samples...);
        ``precond`` is Adam's preconditioner for the account in Adam's metric (None before its
        first step)."""
        rec: dict[str, Any] = measure_bins(model, self.path, self.probes, self.oracle).as_dict()
        target_var = rec.pop("target_var")
        if "target_var" not in self.records:
            self.records["target_var"] = target_var.cpu()
            if self.oracle is not None:
                self.records["irreducible"] = probe_irreducible(self.oracle, self.path, self.probes)
        edges = self.probes.edges.to(torch.float64)
        masses = bin_mass(edges)
        rec["q"] = masses / edges.diff().to(self.device)
        rec["heldout_objective"] = self.objective(model)
        rec["heldout_objective_ema"] = self.objective(ema_model)
        if self._quadrature is not None:
            rec["integrated_excess"] = self._quadrature.evaluate(model)
            rec["integrated_excess_ema"] = self._quadrature.evaluate(ema_model)
        if self.account_groups:
            rec.update(self.account(model, masses, key=self.n_taken, precond=precond))
        rec.update({k: torch.as_tensor(v) for k, v in counters.items()})
        for key, value in rec.items():
            self.records.setdefault(key, []).append(value.detach().cpu().to(torch.float64))

    def arrays(self) -> dict[str, Any]:
        """The records as numpy arrays: per-bin constants ``[K]``; per-checkpoint entries
        stacked on the checkpoint axis (scalars -> [C], [M] -> [M, C], [M, K] -> [M, C, K])."""
        out: dict[str, Any] = {}
        for key, values in self.records.items():
            if isinstance(values, Tensor):
                out[key] = values.numpy()
            else:
                out[key] = torch.stack(values, dim=min(values[0].ndim, 1)).numpy()
        return out
