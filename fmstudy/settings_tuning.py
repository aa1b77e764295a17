"""Chapter 7's check of the tuned learning rates: which tuning sub-grid tunes which evaluation
sub-grid, the rule's choice on each (``lr_tuning.tuned_rates``, L.1), the check that every
evaluation cell ran at it on seeds disjoint from the tuning seeds (``lr_tuning.check_tuned``),
the chosen rates at an end of their candidate range, and what the rule's metric costs on the
integrated excess where there is an oracle (a fixed quadrature with the exact v*, no target
noise; ``lr_tuning.rule_cost``, L.2):

    cost(g) = mean_s excess_s(lr_rule) / min_lr mean_s excess_s(lr)   (1: the rule chose the best)
    factor(s) = cost(s) / cost(uniform)    (how far the rule can bias the ratio of s to uniform)

The sweeps, the prediction and the sample quality of the chapter are in
:mod:`fmstudy.settings_report`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from . import lr_tuning

__all__ = [
    "TUNED_BY", "TuningCheck", "candidates_text", "check_tuning", "cost_factor", "cost_factors", "cost_texts", "edge_rates", "edge_text",
    "edge_words", "factors_text", "rate_choice_text", "rates_table", "rule_costs", "tuned_rates", "tuning_setting_text", "tuning_names",
]

Key = Callable[[str, Any], Any]

# evaluation sub-grid -> (its tuning sub-grids, the key matching a cell to a tuned rate); the real
# benchmarks have one tuning grid each because their eval_samples differ
TUNED_BY: dict[str, tuple[tuple[str, ...], Key | None]] = {
    "compare": (("tune-gmm8",), None),
    "sigma": (("tune-gmm8",), None),
    "budget": (("tune-gmm8",), None),
    "rb_target": (("tune-gmm8-rb",), None),
    "weighting": (("tune-gmm8-weighting",), None),
    "gmm-d": (("tune-gmm-d",), lr_tuning.same_family),  # tuned on the first random instance, reused on the others
    "toys": (("tune-checkerboard",), None),
    "real": (("tune-digits", "tune-mnist1d"), None),
}
JUDGE = "integrated_excess_ema"  # the objective less a constant, on the oracle's fixed quadrature, where the benchmark has one


class TuningCheck(NamedTuple):
    """The outcome of :func:`check_tuning`: the rule's table per tuning sub-grid (in the order first
    met), the number of distinct evaluation cells checked, and the rule's cost (L.2) on the oracle
    tuning grids in one table with a ``tuning`` column (empty without any)."""

    tuned: dict[str, pd.DataFrame]
    checked: int
    cost: pd.DataFrame


def tuning_names(tuned_by: Mapping[str, tuple[tuple[str, ...], Any]] = TUNED_BY) -> list[str]:
    """The tuning sub-grids of ``tuned_by``, each once, in the order first named (to read each once)."""
    return list(dict.fromkeys(t for tunes, _ in tuned_by.values() for t in tunes))


def _seeds(ds: xr.Dataset) -> set[int]:
    return {int(s) for s in ds.member.values}


def check_tuning(
    raw: Mapping[str, xr.Dataset | None],
    tune: Mapping[str, xr.Dataset | None],
    tuned_by: Mapping[str, tuple[tuple[str, ...], Key | None]] = TUNED_BY,
) -> TuningCheck:
    """For every evaluation sub-grid of ``tuned_by`` whose tuning grids ran (``tune``; None: not
    run): the rule's rates of each tuning grid (once), their cost where the tuning grid measured
    the integrated excess, and, where the evaluation grid ran (``raw``, as run: ``lr`` axis kept),
    the check of its cells against the rates of all its tuning grids. Raises RuntimeError (the
    page must not build) when a grid was evaluated on a seed it was tuned on, or when any cell did
    not run at its tuned rate (the offending cells listed)."""
    tuned: dict[str, pd.DataFrame] = {}
    cost, mismatched, checked = [], [], set()
    for name, (tunes, key) in tuned_by.items():
        ev, ran = raw.get(name), [t for t in tunes if tune.get(t) is not None]
        if not ran:
            continue
        for t in ran:
            if t not in tuned:
                tuned[t] = lr_tuning.tuned_rates(tune[t])
                if JUDGE in tune[t]:
                    cost.append(lr_tuning.rule_cost(tune[t], judge=JUDGE).assign(tuning=t))
        if ev is None:
            continue
        overlap = set().union(*(_seeds(tune[t]) for t in ran)) & _seeds(ev)
        if overlap:  # tuning on the seeds that are then compared would bias the comparison
            raise RuntimeError(f"{name}: tuned on its own evaluation seeds {sorted(overlap)}")
        mismatched.append(lr_tuning.check_tuned(ev, pd.concat([tuned[t] for t in ran]), key=key).assign(grid=name))
        checked |= {str(c) for c in ev["cell_id"].values.ravel() if str(c)}
    if sum(len(b) for b in mismatched):
        raise RuntimeError(f"evaluation cells not at their tuned rate:\n{pd.concat(mismatched).to_string()}")
    return TuningCheck(tuned, len(checked), pd.concat(cost) if cost else pd.DataFrame())


def edge_rates(tuned: Mapping[str, pd.DataFrame]) -> list[tuple[str, Any, float]]:
    """(tuning grid, row index, lr) of every chosen rate equal to the smallest or the largest of its
    candidates (``rates``): a better rate may lie beyond the range. A row without a choice (NaN) is no edge."""
    return [
        (t, i, float(row["lr"]))
        for t, r in tuned.items()
        for i, row in r.iterrows()
        if np.isfinite(row["lr"]) and row["lr"] in (min(row["rates"]), max(row["rates"]))
    ]


def edge_text(edges: list[tuple[str, Any, float]]) -> str:
    """Each edge of :func:`edge_rates` as "grid: first two index labels at lr", joined by "; "; "none"."""
    return "; ".join(f"{t}: {', '.join(str(k) for k in (i if isinstance(i, tuple) else (i,))[:2])} at {lr:g}" for t, i, lr in edges) or "none"


def edge_words(edges: list[tuple[str, Any, float]], tuned: Mapping[str, pd.DataFrame]) -> str:
    """Each edge of :func:`edge_rates` in words: "logit_normal on digits at 0.003 (the lowest of its
    candidates)" (the row's first index label, options dropped; the tuning grid without its
    "tune-" prefix), joined by "; "; "none"."""
    out = []
    for t, i, lr in edges:
        first = (i if isinstance(i, tuple) else (i,))[0]
        rates = tuned[t].loc[i, "rates"] if t in tuned else (lr,)
        end = "lowest" if lr == min(rates) else "highest"
        out.append(f"{str(first).split('(')[0]} on {t.removeprefix('tune-')} at {lr:g} (the {end} of its candidates)")
    return "; ".join(out) or "none"


def tuned_rates(tune: Mapping[str, xr.Dataset | None]) -> dict[str, pd.DataFrame]:
    """``lr_tuning.tuned_rates`` of every tuning grid that ran, by name (without the check of the
    evaluation grids that :func:`check_tuning` adds)."""
    return {t: lr_tuning.tuned_rates(ds) for t, ds in tune.items() if ds is not None}


def candidates_text(tuned: Mapping[str, pd.DataFrame]) -> str:
    """The distinct numbers of candidate rates over every tuned row, "4 or 5"; "n/a" without any."""
    counts = sorted({len(r) for t in tuned.values() for r in t["rates"]})
    return " or ".join(str(n) for n in counts) if counts else "n/a"


def cost_texts(cost: pd.DataFrame) -> dict[str, str]:
    """The prose's summary of the rule's cost table (:func:`check_tuning`'s ``cost``): ``agree``,
    "k of n" rows where the rule's rate is the exactly best one; ``higher``, among the others, "k
    of m" where the rule's rate is the higher; ``max`` the largest cost (3 significant digits);
    ``worst`` its row's sampler (the first index level). Each "n/a" where there is nothing to count."""
    if not len(cost):
        return dict.fromkeys(("agree", "higher", "max", "worst"), "n/a")
    same = np.isclose(cost["lr_rule"], cost["lr_best"])
    off = cost[~same]
    worst = cost["cost"].idxmax()
    return {
        "agree": f"{int(same.sum())} of {len(cost)}",
        "higher": f"{int((off['lr_rule'] > off['lr_best']).sum())} of {len(off)}" if len(off) else "n/a",
        "max": f"{cost['cost'].max():.3g}",
        "worst": str(worst[0] if isinstance(worst, tuple) else worst),
    }


def rates_table(tuned: Mapping[str, pd.DataFrame]) -> pd.DataFrame | None:
    """Every tuned rate in one table for the page: indexed by the tuning grid and whichever of
    sampler, weighting, benchmark_options, target the grids have (blank where one has not), with
    ``lr``, its candidates ``rates`` and seeds ``n``; None without any tuning."""
    if not tuned:
        return None
    rates = pd.concat([t.reset_index().assign(tuning=name) for name, t in tuned.items()], ignore_index=True)
    cols = [c for c in ("tuning", "sampler", "weighting", "benchmark_options", "target", "lr", "rates", "n") if c in rates]
    return rates[cols].fillna("").set_index(cols[:-3])


def rule_costs(tune: Mapping[str, xr.Dataset | None], names: list[str] | None = None) -> pd.DataFrame:
    """The rule's cost (L.2, ``lr_tuning.rule_cost`` judged on :data:`JUDGE`) of every tuning grid
    of ``names`` (default :func:`tuning_names`, in that order) that ran and measured the integrated
    excess, in one table with a ``tuning`` column (what :func:`check_tuning` returns as ``cost``,
    without the evaluation grids); empty without any."""
    names = tuning_names() if names is None else names
    parts = [lr_tuning.rule_cost(tune[t], judge=JUDGE).assign(tuning=t) for t in names if tune.get(t) is not None and JUDGE in tune[t]]
    return pd.concat(parts) if parts else pd.DataFrame()


def _costs_of(cost: pd.DataFrame, tuning: str) -> pd.Series:
    """The ``cost`` column of one tuning grid's rows, indexed by the sampler label (the last index level)."""
    rows = cost[cost["tuning"] == tuning] if len(cost) else cost
    if not len(rows):
        return pd.Series(dtype=float)
    idx = [i[-1] if isinstance(i, tuple) else i for i in rows.index]
    return pd.Series(rows["cost"].to_numpy(float), index=[str(i) for i in idx])


def cost_factor(cost: pd.DataFrame, sampler: str, tuning: str = "tune-gmm8", baseline: str = "uniform") -> float:
    """How far the rule's choice of rates can bias ``sampler``'s ratio to ``baseline``: the ratio
    of their costs (L.2) on ``tuning``, cost(sampler) / cost(baseline); above 1 the rule handicaps
    the sampler (its ratio to the baseline reads that much worse than at both best rates). NaN
    where the tuning grid did not measure both."""
    c = _costs_of(cost, tuning)
    if sampler not in c.index or baseline not in c.index:
        return float("nan")
    return float(c[sampler] / c[baseline])


def cost_factors(cost: pd.DataFrame, tuning: str = "tune-gmm8", baseline: str = "uniform") -> pd.Series:
    """:func:`cost_factor` of every sampler of ``tuning`` but the baseline, indexed by its label,
    in the order of the cost table; empty without the baseline's cost."""
    c = _costs_of(cost, tuning)
    if baseline not in c.index:
        return pd.Series(dtype=float)
    return (c / c[baseline]).drop(index=baseline)


def factors_text(factors: pd.Series, keep: Any = None) -> str:
    """The cost factors (of the labels in ``keep``, default all) as "name f" (options dropped, 3
    significant digits), largest first, joined by ", "; "n/a" for none."""
    if keep is not None:
        factors = factors[factors.index.isin([str(k) for k in keep])]
    if not len(factors):
        return "n/a"
    f = factors.sort_values(ascending=False, kind="stable")
    return ", ".join(f"{str(i).split('(')[0]} {v:.3g}" for i, v in f.items())


def rate_choice_text(cost: pd.DataFrame, tuning: str = "tune-gmm8", what: str = "gmm8 samplers") -> str:
    """Which rates the rule chose on ``tuning`` and which the integrated excess would have chosen
    (``lr_rule``/``lr_best`` of the cost table), each as "r for k of n" (most frequent first, then
    the others in brackets), e.g. "the rule chose 0.03 for 9 of the 10 gmm8 samplers (0.01 for 1);
    ranked by the integrated excess on the same tuning runs, it would have been 0.01 for 8 of the 10 (0.03 for 2)";
    "n/a" without that tuning grid's costs."""
    rows = cost[cost["tuning"] == tuning] if len(cost) else cost
    if not len(rows):
        return "n/a"
    n = len(rows)

    def counts(col: str, what: str = "") -> str:
        vc = rows[col].value_counts(sort=False).sort_values(ascending=False, kind="stable")
        rest = ", ".join(f"{r:g} for {k}" for r, k in vc.iloc[1:].items())
        return f"{vc.index[0]:g} for {vc.iloc[0]} of the {n}{what}" + (f" ({rest})" if rest else "")

    return (f"the rule chose {counts('lr_rule', ' ' + what)}; ranked by the integrated excess on the same tuning runs, "
            f"it would have been {counts('lr_best')}")


def tuning_setting_text(tune: Mapping[str, xr.Dataset | None]) -> str:
    """Where the rates were tuned, from the tuning grids that ran (their fixed ``sigma``,
    ``steps`` and ``benchmark``), grouped by setting in the order first met: e.g. "σ = 1 and
    1,000 steps (gmm8, gmm-d, checkerboard) or σ = 0.5 and 1,000 steps (digits, mnist1d)"; "n/a"
    without any."""
    where: dict[tuple[float, float], list[str]] = {}
    for t in tune.values():
        if t is None:
            continue
        sigma, steps = (float(lr_tuning.cell_param(t, {}, k)) for k in ("sigma", "steps"))
        bench = str(lr_tuning.cell_param(t, {}, "benchmark"))
        names = where.setdefault((sigma, steps), [])
        if bench not in names:
            names.append(bench)
    return " or ".join(f"σ = {s:g} and {st:,.0f} steps ({', '.join(b)})" for (s, st), b in where.items()) or "n/a"
