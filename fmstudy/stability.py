"""Stability, measured (STUDY.md section 6, issue 15): over a sweep of learning rates pushed up
to where the uniform sampler diverges, each sampler's divergence rate with its Wilson interval
(analysis A.8), the largest rate at which no seed diverged, and loss spikes counted on the
unweighted loss. A faster allocation that breaks at a smaller rate is reported as such.

A seed *diverged* when its loss stopped being finite or passed the run's bound (the trainer
froze it). A seed *failed* when it diverged or made no net progress: its final convergence
metric m (the integrated excess with an oracle, else the held-out objective; EMA weights) is
not below its value at the first checkpoint, m_T >= m_0 (a run that blew up and settled on a
bad plateau is not diverged but has failed). With k of n seeds failed at rate lr, the failure
rate is k/n (A.8); the largest stable rate of a sampler is

    lr_stable = max {lr : k(lr') = 0 for every swept lr' <= lr}                      (S.1)

and uniform's breaking rate the smallest swept lr with k/n >= 1/2 (where the issue asks the
sweep to reach). Both are computed on failures; divergences are reported beside them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import loss_spikes, rate_estimate
from .sweeps import convergence_of
from .tables import _cells

__all__ = ["breaking_lr", "largest_stable_lr", "spike_source", "stability_summary", "stability_table"]


def spike_source(ds: xr.Dataset) -> tuple[str, bool]:
    """(variable, weighted): loss spikes are counted on ``train_loss_unweighted`` (the batch
    mean of the per-sample loss); results without it fall back to the importance-weighted
    ``train_loss``, and ``weighted`` says so (its spikes may be large weights, not instability)."""
    return ("train_loss_unweighted", False) if "train_loss_unweighted" in ds else ("train_loss", True)


def stability_table(ds: xr.Dataset, level: float = 0.95, **spikes) -> pd.DataFrame:
    """One row per cell (e.g. sampler x sigma x lr): ``diverged``, the share of seeds that
    diverged with its Wilson interval (analysis A.8); ``spikes``, the mean loss-spike count per
    seed (``analysis.loss_spikes`` with ``spikes`` as options) and ``spikes_on``, the loss it
    was counted on (:func:`spike_source`)."""
    var, _ = spike_source(ds)
    metric = convergence_of(ds)
    rows = []
    for labels, cell in _cells(ds):
        ran = np.isfinite(cell["diverged_step"].values)  # members of this cell (others are NaN)
        diverged = cell["diverged_step"].values[ran] >= 0
        m = cell[metric].dropna("checkpoint", how="all").values[ran] if metric in cell else np.full((int(ran.sum()), 1), np.nan)
        with np.errstate(invalid="ignore"):
            # no net progress (NaN counts as none); without the metric, failures are divergences only
            stuck = ~(m[:, -1] < m[:, 0]) if metric in cell else np.zeros(int(ran.sum()), bool)
        failed = diverged | stuck
        counts = loss_spikes(cell[var].values[ran], **spikes)
        rows.append(
            {
                **labels,
                "failed": rate_estimate(int(failed.sum()), int(ran.sum()), level),
                "diverged": rate_estimate(int(diverged.sum()), int(ran.sum()), level),
                "n": int(ran.sum()),
                "final_median": float(np.nanmedian(m[:, -1])) if m.size else np.nan,
                "metric": metric,
                "spikes": float(counts.mean()) if counts.size else np.nan,
                "spikes_on": var,
            }
        )
    return pd.DataFrame(rows).set_index(list(ds["cell_id"].dims))


def largest_stable_lr(table: pd.DataFrame, lr: str = "lr", outcome: str = "failed") -> pd.Series:
    """Per group of :func:`stability_table`'s other index levels: the largest learning rate at
    which, and at every smaller one, no seed failed (``outcome``; NaN when the smallest already fails)."""
    outcome = outcome if outcome in table else "diverged"
    others = [n for n in table.index.names if n != lr]

    def one(group: pd.DataFrame) -> float:
        g = group.reset_index().sort_values(lr)
        stable = (g[outcome].map(lambda e: e.value) == 0).to_numpy()
        run = np.cumprod(stable).astype(bool)
        return float(g[lr].to_numpy()[run][-1]) if run.any() else np.nan

    if not others:
        return pd.Series({"all": one(table)}, name=f"largest stable {lr}")
    return table.groupby(level=others).apply(one).rename(f"largest stable {lr}")



def breaking_lr(table: pd.DataFrame, lr: str = "lr", outcome: str = "failed", any_seed: bool = False) -> pd.Series:
    """Per group of :func:`stability_table`'s other index levels: the smallest swept learning
    rate at which at least half the seeds failed (``outcome``; with ``any_seed``, at least one);
    NaN when the sweep never got there."""
    outcome = outcome if outcome in table else "diverged"
    others = [n for n in table.index.names if n != lr]

    def one(group: pd.DataFrame) -> float:
        g = group.reset_index().sort_values(lr)
        share = g[outcome].map(lambda e: e.value)
        broke = (share > 0 if any_seed else share >= 0.5).to_numpy()
        return float(g[lr].to_numpy()[broke][0]) if broke.any() else np.nan

    return table.groupby(level=others).apply(one).rename(f"breaking {lr}")


def stability_summary(ds: xr.Dataset, baseline: str = "uniform", level: float = 0.95, **spikes) -> pd.DataFrame:
    """One row per sampler and value of the sweep's other axes (e.g. sigma) of a
    sampler x lr (x sigma) sweep: ``largest_stable_lr`` (S.1), the same for ``baseline`` beside
    it and ``less_stable`` (the sampler's is smaller); ``baseline_breaks_at``, the smallest rate
    at which the baseline diverged in at least half the seeds (NaN: the sweep did not reach it);
    at that rate the sampler's ``failed`` and ``diverged`` shares (Wilson intervals) and mean
    ``spikes`` per seed on ``spikes_on`` (the unweighted loss where recorded); ``max_diverged``,
    ``max_failed``/``max_diverged``, its largest shares over the sweep. Per-rate rows: :func:`stability_table`."""
    if "sampler" not in ds["cell_id"].dims or "lr" not in ds["cell_id"].dims:
        raise ValueError(f"a sweep with axes {list(ds['cell_id'].dims)} is not allowed: sampler and lr must both be axes")
    if baseline not in [str(s) for s in ds.sampler.values]:
        raise ValueError(f"baseline={baseline!r} is not allowed: it is not a sampler of this sweep")
    table = stability_table(ds, level, **spikes)
    others = [n for n in table.index.names if n not in ("sampler", "lr")]
    table = table.reorder_levels(["sampler", *others, "lr"])  # keys below are (sampler, *others), whatever the grid's axis order
    stable, broke = largest_stable_lr(table), breaking_lr(table)
    rows = []
    for key, group in table.groupby(level=["sampler", *others], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        at = dict(zip(["sampler", *others], key))
        base_key = (baseline, *key[1:]) if others else baseline
        breaks = float(broke.get(base_key, np.nan))
        by_lr = group.reset_index().set_index("lr")
        there = by_lr.loc[breaks] if np.isfinite(breaks) and breaks in by_lr.index else None
        rows.append({
            **at,
            "largest_stable_lr": float(stable[key if others else key[0]]),
            "baseline_largest_stable_lr": float(stable.get(base_key, np.nan)),
            "baseline_breaks_at": breaks,
            "failed": there["failed"] if there is not None else None,
            "diverged": there["diverged"] if there is not None else None,
            "spikes": float(there["spikes"]) if there is not None else np.nan,
            "spikes_on": str(group["spikes_on"].iloc[0]),
            "max_failed": float(group["failed"].map(lambda e: e.value).max()),
            "max_diverged": float(group["diverged"].map(lambda e: e.value).max()),
        })
    out = pd.DataFrame(rows).set_index(["sampler", *others])
    out.insert(2, "less_stable", out["largest_stable_lr"].fillna(0) < out["baseline_largest_stable_lr"].fillna(0))
    return out
