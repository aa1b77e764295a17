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

A largest stable rate below the baseline's is a difference of one swept rate, read off k = 1 or
2 failed seeds; whether it is more than chance is tested (:func:`failure_tests`) at the first
rate where either the sampler or the baseline failed a seed, the sampler's k_s of n_s seeds
against the baseline's k_b of n_b, with Fisher's exact test (two-sided: the probability, under
the hypergeometric law of the failures given their total, of the tables no more likely than the
one observed), Holm-adjusted (A.6) over the sweep's (sampler[, sigma]) rows:

    p = sum_{x : P(x) <= P(k_s)} P(x),   P(x) = C(n_s, x) C(n_b, k - x) / C(n_s + n_b, k),  k = k_s + k_b   (S.2)

Spike counts are per seed; their mean carries a t-interval over seeds (A.2), its lower end
floored at 0 (a count's mean cannot be negative, so the floor loses no coverage), and no test.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from .analysis import Estimate, holm, loss_spikes, mean_estimate, rate_estimate
from .sweeps import convergence_of
from .tables import _cells

__all__ = ["breaking_lr", "failure_tests", "fisher_p", "largest_stable_lr", "spike_source", "stability_summary", "stability_table"]


def _count_mean(counts: np.ndarray, level: float) -> Estimate:
    """The mean of per-seed counts with its t-interval (A.2), the lower end floored at 0."""
    e = mean_estimate(counts, level)
    return replace(e, lo=max(0.0, e.lo)) if np.isfinite(e.lo) else e


def spike_source(ds: xr.Dataset) -> tuple[str, bool]:
    """(variable, weighted): loss spikes are counted on ``train_loss_unweighted`` (the batch
    mean of the per-sample loss); results without it fall back to the importance-weighted
    ``train_loss``, and ``weighted`` says so (its spikes may be large weights, not instability)."""
    return ("train_loss_unweighted", False) if "train_loss_unweighted" in ds else ("train_loss", True)


def stability_table(ds: xr.Dataset, level: float = 0.95, **spikes) -> pd.DataFrame:
    """One row per cell (e.g. sampler x sigma x lr): ``diverged``, the share of seeds that
    diverged with its Wilson interval (analysis A.8); ``spikes``, the mean loss-spike count per
    seed (``analysis.loss_spikes`` with ``spikes`` as options) and ``spikes_on``, the loss it
    was counted on (:func:`spike_source`), and ``spikes_ci`` the same mean with its t-interval over
    seeds (A.2)."""
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
                "spikes_ci": _count_mean(counts, level),
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
    ``spikes`` per seed (``spikes_ci``: with its t-interval) on ``spikes_on`` (the unweighted loss where recorded); ``max_diverged``,
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
            "spikes_ci": there["spikes_ci"] if there is not None else None,
            "spikes_on": str(group["spikes_on"].iloc[0]),
            "max_failed": float(group["failed"].map(lambda e: e.value).max()),
            "max_diverged": float(group["diverged"].map(lambda e: e.value).max()),
        })
    out = pd.DataFrame(rows).set_index(["sampler", *others])
    out.insert(2, "less_stable", out["largest_stable_lr"].fillna(0) < out["baseline_largest_stable_lr"].fillna(0))
    return out


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact two-sided p-value (S.2) of k1 failures in n1 seeds against k2 in n2."""
    if min(n1, n2) < 1 or not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"counts {k1} of {n1} and {k2} of {n2} are not allowed: each needs 0 <= k <= n and n >= 1")
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def failure_tests(table: pd.DataFrame, baseline: str = "uniform", lr: str = "lr") -> pd.DataFrame:
    """Per sampler other than ``baseline`` (and value of the other index levels, e.g. sigma) of
    :func:`stability_table`: at ``lr``, the smallest swept rate at which it or the baseline failed
    at least one seed, its ``failed`` share and the baseline's (``baseline_failed``, Wilson
    intervals), ``k``/``n`` and ``baseline_k``/``baseline_n``, Fisher's exact ``p`` (S.2) and
    ``p_holm`` over the rows with a test; ``lr`` and the p-values NaN where neither ever failed."""
    others = [n for n in table.index.names if n not in ("sampler", lr)]
    flat = table.reset_index()
    base = flat.loc[flat["sampler"] == baseline, [*others, lr, "failed"]]
    both = flat[flat["sampler"] != baseline].merge(base, on=[*others, lr], suffixes=("", "_base"))

    def count(e: Estimate) -> int:
        return int(round(e.value * e.n))  # k of n from the share

    rows = []
    for key, group in both.groupby(["sampler", *others], sort=False):
        group = group.sort_values(lr)
        at = dict(zip(["sampler", *others], key if isinstance(key, tuple) else (key,)))
        hit = group[(group["failed"].map(count) > 0) | (group["failed_base"].map(count) > 0)]
        row: dict = {**at, lr: np.nan, "failed": None, "baseline_failed": None, "k": 0, "n": 0, "baseline_k": 0, "baseline_n": 0, "p": np.nan}
        if len(hit):
            mine, theirs = hit.iloc[0]["failed"], hit.iloc[0]["failed_base"]
            row.update({lr: float(hit.iloc[0][lr]), "failed": mine, "baseline_failed": theirs, "k": count(mine), "n": mine.n,
                        "baseline_k": count(theirs), "baseline_n": theirs.n, "p": fisher_p(count(mine), mine.n, count(theirs), theirs.n)})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    return out.set_index(["sampler", *others])
