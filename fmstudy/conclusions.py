"""The conclusions' sentences (chapter 9) from the compare grid: how many samplers of a family
beat uniform, the best of them, the loss-based verdict, the allocation ceiling, the weightings
and the Rao-Blackwellised target against uniform, and the profile's scale.

Each comparison is a row of ``report.against_baseline`` (paired over seeds, A.2-A.4). A family's
count pools its unbiased rows over every sigma of the compare grid into one table and applies
Holm's correction over it (A.6, ``sweeps.holm_counts``): a row is better than uniform when its
ratio r = exp(mean_s log(x_s / b_s)) < 1 with p~ < 0.05, worse when r > 1 with p~ < 0.05. The sweeps
and stability sentences are in :mod:`fmstudy.conclusions_sweeps`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import report
from .account_report import ceiling_table
from .analysis import Estimate, holm
from .sweeps import holm_counts

__all__ = [
    "ADAPTIVE",
    "FIXED",
    "LOSS_BASED",
    "SIGNAL",
    "TOP",
    "VARIANCE",
    "base_name",
    "best_allocation",
    "ceiling_text",
    "compare_tables",
    "family_holm",
    "family_rows",
    "family_verdict",
    "loss_verdict",
    "named_ratio_text",
    "ratios_text",
    "scale_text",
    "signal_text",
    "span",
    "tuning_error_text",
    "vs_uniform",
    "head_to_head",
    "weighting_cost_text",
    "weighting_vs_text",
]

FIXED = ("stratified", "logit_normal", "mode", "beta", "arcsine", "u_shaped")
ADAPTIVE = (
    "loss_second_moment",
    "grad_norm",
    "var_opt",
    "var_opt_neyman",
    "oracle_qstar",
    "learning_progress",
    "oracle_excess",
    "info_snr",
)
LOSS_BASED = ("loss_second_moment",)  # allocation by the size of the loss
SIGNAL = ("learning_progress", "oracle_excess")  # allocation by where the learnable signal sits
VARIANCE = ("grad_norm", "var_opt", "var_opt_neyman", "oracle_qstar")  # the allocations that target the gradient's variance
TOP = ("var_opt", "oracle_qstar")  # the online variance-optimal allocation and its oracle
NOT_RUN = "not run in this profile"


def base_name(label: Any) -> str:
    """A sampler label without its options: "arcsine(floor=0.05)" -> "arcsine"."""
    return str(label).split("(")[0]


def span(estimates: Iterable[Any], fmt: str = ".2f") -> str:
    """The range "lo–hi" of the finite values of some Estimates (or numbers), each formatted with
    ``fmt``: one value (or lo and hi equal once formatted) reads as that value, none as "n/a"."""
    try:
        format(0.5, fmt)
    except (ValueError, TypeError):
        raise ValueError(f"fmt={fmt!r} is not allowed: it must be a float format such as '.2f' or 'g'") from None
    v = sorted(x for x in (float(getattr(e, "value", e)) for e in estimates) if np.isfinite(x))
    if not v:
        return "n/a"
    lo, hi = format(v[0], fmt), format(v[-1], fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def compare_tables(ds: xr.Dataset | None) -> tuple[xr.Dataset | None, dict[float, pd.DataFrame]]:
    """(``ds`` at the gmm8 benchmark, {sigma: ``report.against_baseline`` of that sigma}) for the
    compare grid; ``ds`` unchanged and no tables when it is None or uniform did not run."""
    if ds is None or "uniform" not in ds.sampler.values:
        return ds, {}
    ds = report.select_benchmark(ds)
    metric = report.convergence_metric(ds)
    return ds, {float(s): report.against_baseline(ds.sel(sigma=s), metric) for s in ds.sigma.values}


def family_rows(tables: Mapping[float, pd.DataFrame], names: Iterable[str]) -> pd.DataFrame:
    """The unbiased rows of every sigma's table whose sampler (options dropped) is in ``names``,
    as one table indexed by (sigma, sampler), sigma in the order of ``tables``."""
    names = set(names)
    if not names:
        raise ValueError("names=() is not allowed: name at least one sampler of the family")
    parts = {
        s: t[np.array([base_name(i) in names for i in t.index], dtype=bool) & t["unbiased"].to_numpy(dtype=bool)] for s, t in tables.items()
    }
    parts = {s: t for s, t in parts.items() if len(t)}
    if not parts:
        return pd.DataFrame(columns=["ratio", "unbiased"], index=pd.MultiIndex.from_tuples([], names=["sigma", "sampler"]))
    return pd.concat(parts, names=["sigma", "sampler"])


def family_verdict(tables: Mapping[float, pd.DataFrame], names: Iterable[str]) -> tuple[int, int, int, tuple[str, float, Estimate] | None]:
    """(better, worse, compared, best) over :func:`family_rows`: Holm over the pooled rows
    (``sweeps.holm_counts``), and the (sampler, sigma, ratio) of the smallest ratio among rows
    with seeds (None when there is none)."""
    rows = family_rows(tables, names)
    if not len(rows):
        return 0, 0, 0, None
    better, worse, n = holm_counts(rows)
    scored = [(str(i[1]), float(i[0]), r) for i, r in rows["ratio"].items() if r.n]
    return better, worse, n, (min(scored, key=lambda x: x[2].value) if scored else None)


def family_holm(tables: Mapping[float, pd.DataFrame], names: Iterable[str]) -> pd.Series:
    """Holm's adjusted p (A.6) of each row of :func:`family_rows` over the family's rows (the
    p-values ``sweeps.holm_counts`` judges it by), indexed as those rows; empty for none."""
    rows = family_rows(tables, names)
    return pd.Series(holm(np.array([e.p for e in rows["ratio"]], dtype=float)), index=rows.index, dtype=float)


def named_ratio_text(tables: Mapping[float, pd.DataFrame], name: str = "var_opt") -> str:
    """Each sigma's ratio of the row ``name`` (exact label) as "σ = s: ratio (CI)", joined by "; "
    over the sigmas whose table has it; "n/a" when none has."""
    return "; ".join(f"σ = {s:g}: {t.loc[name, 'ratio'].text('.3g')}" for s, t in tables.items() if name in t.index) or "n/a"


def loss_verdict(tables: Mapping[float, pd.DataFrame], names: Iterable[str] = LOSS_BASED) -> str:
    """The loss-based samplers' Holm counts (:func:`family_verdict`, Holm over their own rows) and
    the :func:`span` of their ratios to uniform, or "not run in this profile"."""
    names = tuple(names)
    better, worse, n, _ = family_verdict(tables, names)
    if not n:
        return NOT_RUN
    ratios = family_rows(tables, names)["ratio"]
    return (
        f"better than uniform in {better} and worse in {worse} of {n} (sampler, σ) comparisons (family-wise 5%, Holm over these {n} rows), "
        f"final ratio to uniform {span(ratios)}"
    )


def tuning_error_text(tables: Mapping[float, pd.DataFrame], names: Iterable[str], factors: Mapping[str, float]) -> str:
    """Which of the family's significant rows (Holm over the family, :func:`family_verdict`) the
    learning-rate rule alone could explain: a row whose 95% interval holds its sampler's cost
    factor f (``settings_tuning.cost_factor``: the rule's cost for the sampler over uniform's, so
    that at both samplers' best rates its ratio would read about r / f). Each such row as
    "sampler at σ = s: ratio r (95% CI lo to hi), factor f", after "k of the m significant rows"
    (those with a factor), then how many significant rows have none; "no significant row" or "no
    cost factor for its samplers" where that is so."""
    rows = family_rows(tables, names)
    holm_p = family_holm(tables, names)
    sig = [(i, r) for i, r in rows["ratio"].items() if np.isfinite(holm_p[i]) and holm_p[i] < 0.05]
    if not sig:
        return "no significant row"
    known = [(i, r, float(factors.get(str(i[1]), np.nan))) for i, r in sig]
    known = [(i, r, f) for i, r, f in known if np.isfinite(f)]
    if not known:
        return "no cost factor for its samplers"
    within = [f"{base_name(i[1])} at σ = {float(i[0]):g}: ratio {r.value:.3g} (95% CI {r.lo:.3g} to {r.hi:.3g}), factor {f:.3g}"
              for i, r, f in known if r.lo <= f <= r.hi]
    return (f"{len(within)} of the {len(known)} significant rows" + (f" ({'; '.join(within)})" if within else "")
            + (f", and {len(sig) - len(known)} more without a cost factor" if len(sig) > len(known) else ""))


def tuning_error_sentence(tables: Mapping[float, pd.DataFrame], names: Iterable[str], factors: Mapping[str, float]) -> str:
    """:func:`tuning_error_text`, then what it means for the rows whose interval holds the factor:
    ": that verdict is within what the rule alone can cost" (one row), ": those verdicts are ..."
    (more), nothing more for none."""
    text = tuning_error_text(tables, names, factors)
    k = int(text.split(" ", 1)[0]) if text[:1].isdigit() else 0
    if not k:
        return text
    return text + (": that verdict is" if k == 1 else ": those verdicts are") + " within what the rule alone can cost"


def variant_name(label: Any, labels: Iterable[Any]) -> str:
    """A sampler label without its options (:func:`base_name`), with "(reweighted)" or "(not
    reweighted)" where ``labels`` hold more than one variant of it and its options say which."""
    name = base_name(label)
    if sum(base_name(other) == name for other in dict.fromkeys(map(str, labels))) < 2:
        return name
    if "reweight=True" in str(label):
        return f"{name} (reweighted)"
    return f"{name} (not reweighted)" if "reweight=False" in str(label) else str(label)


def factors_text(factors: pd.Series, keep: Any = None) -> str:
    """The cost factors (``settings_tuning.cost_factors``, of the labels in ``keep``, default all)
    as "name f", 3 significant digits, largest first, joined by ", ", each name a
    :func:`variant_name` among all of ``factors``' labels: e.g. "logit_normal (reweighted) 0.985"
    where both logit-normal variants were tuned; "n/a" for none."""
    shown = factors[factors.index.isin([str(k) for k in keep])] if keep is not None else factors
    if not len(shown):
        return "n/a"
    f = shown.sort_values(ascending=False, kind="stable")
    return ", ".join(f"{variant_name(i, factors.index)} {v:.3g}" for i, v in f.items())


def signal_text(tables: Mapping[float, pd.DataFrame], names: Iterable[str] = SIGNAL) -> str:
    """Whether any of ``names`` (options dropped, biased or not) ran in the compare tables."""
    ran = sorted({base_name(i) for t in tables.values() for i in t.index} & set(names))
    if ran:
        return f"ran in this profile's comparison ({', '.join(ran)}) and are counted with the adaptive samplers above"
    return "were not run in this profile, so it says nothing about them"


def ceiling_text(ds: xr.Dataset | None) -> str:
    """Uniform's ceiling R (Adam's metric, ``account_report.ceiling_table``) at the last checkpoint
    per sigma, "σ = s: R = r (s.e. e)" joined by "; "; "n/a" without uniform or the ceiling."""
    if ds is None or "uniform" not in ds.sampler.values or "var_adam_ceiling" not in ds:
        return "n/a"
    _, batch = report.model_of(ds)
    last = ceiling_table(ds.sel(sampler="uniform"), batch).xs(int(ds.checkpoint[-1]), level="step")
    return "; ".join(f"σ = {s:g}: R = {r['R (Adam)']:.3f} (s.e. {r['R (Adam) se']:.2g})" for s, r in last.iterrows())


def vs_uniform(compare: xr.Dataset | None, grid: xr.Dataset | None, axis: str, suffix: str = "") -> pd.DataFrame | None:
    """``report.against_baseline`` of each cell of a sigma = 1 sub-grid (one per value of ``axis``,
    labelled value + ``suffix``) beside ``compare``'s uniform at sigma = 1, paired by seed, ranked by
    compare's metric; None when either is missing or lacks uniform at sigma = 1 or the axis."""
    if grid is None or compare is None or "uniform" not in compare.sampler.values or 1.0 not in compare.sigma.values:
        return None
    if axis not in grid.dims:
        return None
    g = report.select_benchmark(grid)
    base = compare.sel(sampler="uniform", sigma=1.0).drop_vars(["sampler", "sigma"], errors="ignore")
    drop = [c for c in ("weighting", "sigma", "sampler", "target") if c in g.coords]
    cells = [g.sel({axis: v}).drop_vars(drop) for v in g[axis].values]
    both = xr.concat([base, *cells], dim="sampler", join="override", coords="minimal", compat="override")
    both = both.assign_coords(sampler=["uniform", *[f"{v}{suffix}" for v in g[axis].values]])
    return report.against_baseline(both, report.convergence_metric(compare)).drop(index="uniform")


def ratios_text(table: pd.DataFrame | None) -> str:
    """Each row of a :func:`vs_uniform` table as "row: ratio (CI)", joined by "; "; "not run in this profile" for None."""
    if table is None:
        return NOT_RUN
    return "; ".join(f"{k}: {r['ratio'].text('.3g')}" for k, r in table.iterrows())


def head_to_head(compare: xr.Dataset | None, grid: xr.Dataset | None, axis: str, value: str, sampler: str) -> Any:
    """The paired ratio (:func:`fmstudy.analysis.paired_ratio`, by seed) of the final convergence
    metric of ``grid``'s cell at ``axis`` = ``value`` to ``compare``'s ``sampler`` at sigma = 1:
    two methods compared directly, not through their intervals against uniform (which share
    uniform's runs, so their overlap is no test). None when either is missing."""
    from .analysis import paired_ratio

    if grid is None or compare is None or axis not in grid.dims or value not in [str(v) for v in grid[axis].values]:
        return None
    if sampler not in compare.sampler.values or 1.0 not in compare.sigma.values:
        return None
    metric = report.convergence_metric(compare)
    x = report.final(report.select_benchmark(grid).sel({axis: value}), metric)
    base = report.final(compare.sel(sampler=sampler, sigma=1.0), metric)
    if list(x.member.values) != list(base.member.values):
        raise ValueError(f"seeds {list(x.member.values)} and {list(base.member.values)} are not allowed: a paired ratio needs the same seeds")
    return paired_ratio(x.values, base.values)


def best_allocation(allocations: pd.DataFrame | None) -> str | None:
    """The unbiased row of a comparison table with the smallest ratio to uniform (the first of
    ties); None without one."""
    if allocations is None:
        return None
    alloc = allocations[allocations["unbiased"].to_numpy(dtype=bool)]
    if not len(alloc):
        return None
    return min(((str(i), r["ratio"].value) for i, r in alloc.iterrows()), key=lambda x: x[1])[0]


def weighting_vs_text(weightings: pd.DataFrame | None, allocations: pd.DataFrame | None, direct: Any = None) -> str:
    """Whether the uncertainty weighting's ratio to uniform (the first row starting "uncertainty")
    lies below the smallest ratio of the unbiased rows of ``allocations`` (compare at sigma = 1),
    point estimates; and ``direct``, the paired ratio of the weighting to that best allocation
    (:func:`head_to_head`), with its interval and p-value."""
    unc = weightings.loc[[i for i in weightings.index if str(i).startswith("uncertainty")]] if weightings is not None else None
    alloc = allocations[allocations["unbiased"].to_numpy(dtype=bool)] if allocations is not None else None
    if unc is None or not len(unc) or alloc is None or not len(alloc):
        return "n/a (not run in this profile)"
    u = unc.iloc[0]["ratio"]
    best_name = best_allocation(allocations)
    best = alloc.loc[best_name, "ratio"]
    lower = u.value < best.value
    text = (f"{'below' if lower else 'not below'} every unbiased allocation's at σ = 1 (point estimates): {u.value:.3g} against the best "
            f"allocation, {best_name}, at {best.value:.3g}")
    if direct is not None:
        text += (f"; paired by seed, uncertainty weighting / {best_name} = {direct.text('.3g')}, p = {direct.p:.2g} (exploratory: "
                 f"{best_name} was picked as the best allocation after the results were seen, and neither the interval nor p "
                 "allows for that choice)")
    return text


def weighting_cost_text(grid: xr.Dataset | None) -> str:
    """What the learned uncertainty weighting (W.3) adds to a training step, against the MLP's own
    forward and backward FLOPs per sample (flops F.1 + F.2 of ``tables.model_of`` the grid): a
    table of ``n_bins`` log-variances per member, not a network; per sample a lookup, an
    exponential and a multiply-add, and Adam on those values once a step. flops.py (F.5) does not
    count it, as it does not count the loss. "n/a" without the grid."""
    if grid is None:
        return "n/a (not run in this profile)"
    from .flops import backward_flops, forward_flops
    from .lr_tuning import cell_param
    from .tables import model_of

    model, _ = model_of(report.select_benchmark(grid))
    k = int(cell_param(grid, {}, "n_bins"))
    return (f"a table of {k} log-variances per member (one per t-bin), not a network: per training sample a lookup, an exponential "
            f"and a multiply-add, and Adam on its {k} values once a step, against the MLP's {forward_flops(model) + backward_flops(model):,} "
            "FLOPs per sample forward and backward; the FLOP counts (chapter 8) do not include it, as they do not include the loss itself")


def scale_text(profile: str, seeds: int, tuned: bool, budgets: bool) -> str:
    """The limitations' scale sentence: seeds per configuration, tuned or shared learning rate, one
    budget or several; under 10 seeds, the width of the t-interval (n - 1 degrees of freedom)."""
    if seeds < 0:
        raise ValueError(f"seeds={seeds!r} is not allowed: the number of seeds must be >= 0")
    text = (
        f"This profile ({profile}) compares samplers on {seeds} seeds per configuration, "
        + (
            "each sampler at its own learning rate tuned on separate seeds"
            if tuned
            else "at one learning rate for every sampler (not tuned per sampler)"
        )
        + (", with budgets as separate runs." if budgets else ", at one budget.")
    )
    if seeds < 10:
        text += (
            f" Intervals over {seeds} seeds are wide (a t-interval at {seeds} seeds has {seeds - 1} degrees of freedom); "
            "the paper profile (10 seeds, tuned rates, budgets) is what the conclusions should rest on."
        )
    return text
