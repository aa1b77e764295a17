"""Chapter 7's sample quality on real data (split from :mod:`fmstudy.settings_report`, which
re-exports every name): the per-seed Fréchet and sliced distances against uniform's and their
floors, the worst seed and what its records show, and the quadrature the integrated excess is
measured on.

Each seed's sample quality is a distance; the table gives its median over seeds (A.7's
order-statistic interval, no censoring) and, paired by seed, the k of n seeds whose Fréchet
distance is below uniform's with the two-sided sign test
p = P(|Bin(n, 1/2) - n/2| >= |k - n/2|).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from . import analysis, lr_tuning, report
from .analysis import Estimate

__all__ = ["fd_text", "outlier_seed", "outlier_text", "quadrature_design", "quadrature_text", "sample_quality", "sample_quality_shown"]


def _median(v: np.ndarray) -> Estimate:
    """The median over seeds with its order-statistic interval, no seed censored."""
    return analysis.median_censored(v, np.zeros(np.size(v), bool))


def _at(ds: xr.Dataset, bench: str) -> xr.Dataset:
    """``ds`` at benchmark ``bench`` (where that is an axis) and at its last sigma (where that is one)."""
    s = ds.sel(benchmark=bench) if "benchmark" in ds.dims else ds
    return s.isel(sigma=-1) if "sigma" in s.dims else s


def sample_quality(ds: xr.Dataset | None) -> tuple[pd.DataFrame, tuple | None]:
    """One row per (benchmark, sampler) that ran in the real-data grid ``ds`` (at its last sigma):
    the held-out objective's ratio to uniform (A.2, paired by seed), the Fréchet distance's median
    with its interval "lo to hi", the "k of n" seeds below uniform's and the sign test's p (NaN for
    uniform), its floor, the sliced W2's median and floor. Also the worst single seed,
    (distance, benchmark, sampler, that sampler's median), by the largest distance; None (and an
    empty table) without the grid."""
    if ds is None:
        return pd.DataFrame(), None
    benches = [str(b) for b in ds.benchmark.values] if "benchmark" in ds.dims else [lr_tuning.cell_param(ds, {}, "benchmark")]
    rows, worst = [], []
    for bench in benches:
        s = _at(ds, bench)
        base = s.sel(sampler="uniform")
        base_obj = report.final(base, "heldout_objective_ema").values
        for name in s.sampler.values:
            t = s.sel(sampler=name)
            if not str(t.cell_id.values):
                continue
            fd, sw = _median(t.sample_frechet.values), _median(t.sample_sw.values)
            worst.append((float(np.nanmax(t.sample_frechet.values)), bench, name, fd.value))
            k = int((t.sample_frechet.values < base.sample_frechet.values).sum())
            rows.append({"benchmark": bench, "sampler": name,
                         "held-out objective ratio to uniform": analysis.paired_ratio(report.final(t, "heldout_objective_ema").values, base_obj).value,
                         "Fréchet distance (median)": fd.value, "CI": f"{fd.lo:.3g} to {fd.hi:.3g}",
                         "seeds below uniform's": "" if name == "uniform" else f"{k} of {fd.n}",
                         "sign test p": np.nan if name == "uniform" else stats.binomtest(k, fd.n).pvalue,
                         "floor": float(t.floor_frechet), "sliced W2 (median)": sw.value, "sliced W2 floor": float(t.floor_sw)})
    return pd.DataFrame(rows), (max(worst) if worst else None)


def sample_quality_shown(real: pd.DataFrame) -> pd.DataFrame:
    """:func:`sample_quality`'s table for the page, indexed by (benchmark, sampler): uniform's
    comparisons with itself (objective ratio, seeds below, sign test) read "—"; the sign test's p
    to 2 significant digits, the other numbers to 4; an empty table unchanged."""
    if not len(real):
        return real
    own = real["sampler"] == "uniform"
    out = real.set_index(["benchmark", "sampler"]).round(4).astype(object)
    cols = ["held-out objective ratio to uniform", "seeds below uniform's", "sign test p"]
    out["sign test p"] = [f"{p:.2g}" for p in real["sign test p"]]
    out.loc[own.to_numpy(), cols] = "—"
    return out


def fd_text(real: pd.DataFrame, worst: tuple | None) -> str:
    """The sentence under the sample-quality table: the first benchmark's uniform median Fréchet
    distance against its floor and the worst single seed (:func:`sample_quality`)."""
    if not len(real):
        return "No real-data runs in this profile."
    u = real[(real.sampler == "uniform")].iloc[0]
    return (f"On {u.benchmark} the uniform schedule's samples sit at a median classifier Fréchet distance of "
            f"{u['Fréchet distance (median)']:.3g} against a floor of {u['floor']:.3g}; the largest single-seed distance is "
            f"{worst[0]:.3g} ({worst[2]} on {worst[1]}, whose median is {worst[3]:.3g}), which is why medians are shown. Differences "
            "between schedules are to be read against the gap to the floor and the seeds' intervals.")


def quadrature_design(benchmark: str = "gmm8", sigma: float = 1.0, t_eps: float = 1e-3) -> tuple[int, int]:
    """(Gauss-Legendre nodes, draws of x_t per node) of the fixed quadrature on which every run's
    checkpoint meter measures the integrated excess, read off the meter itself
    (``meter.CheckpointMeter`` built for ``benchmark``, as a run builds it): one set of points per
    benchmark instance (seeded by the benchmark's seed), shared by every run on it."""
    import torch

    from .data import get_benchmark
    from .meter import CheckpointMeter
    from .paths import BrownianBridge

    bench = get_benchmark(benchmark)
    path = BrownianBridge(sigma, t_eps)
    oracle = bench.oracle(path) if bench.mixture is not None else None  # as a run builds it
    quad = CheckpointMeter(bench, path, None, oracle, torch.device("cpu"))._quadrature
    if quad is None:
        raise ValueError(f"benchmark={benchmark!r} is not allowed: it has no oracle, so no quadrature")
    return int(quad.n_nodes), int(quad.x.shape[0]) // int(quad.n_nodes)


def quadrature_text(nodes: int, draws: int) -> str:
    """What the integrated excess is computed on, and what that removes and does not, in words."""
    return (f"a fixed {nodes}-node Gauss-Legendre quadrature over t with {draws} draws of x_t per node ({nodes * draws:,} points, "
            "the exact v* there): no target noise, and the same points for every run on a benchmark; it is one set of points, "
            "never replicated, so the part of its error that differs between two models is not measured and not in the seed intervals")


def outlier_seed(ds: xr.Dataset | None, worst: tuple | None, others: Sequence[str] = ("var_opt",)) -> dict[str, Any] | None:
    """What the records show of :func:`sample_quality`'s worst single seed (``worst``: distance,
    benchmark, sampler, median) in the real-data grid ``ds`` (at its last sigma): its ``member``,
    ``frechet`` and the sampler's median ``frechet_median``; its sliced W2 and MMD (``sw``,
    ``mmd``) and final held-out objective (``heldout``), each with the sampler's median over seeds
    (``*_median``) and the range of its other seeds (``*_others``); ``diverged`` (whether it diverged);
    ``ratio_at`` / ``ratio_all``: for each of ``others`` that ran, its held-out ratio to the
    sampler at that seed and its geometric mean over all seeds (paired, A.2); ``high``, every
    (sampler, seed, distance) of that benchmark above twice its sampler's median Fréchet distance;
    and the ODE the samples were drawn with (``ode``). None without the grid or a worst seed."""
    if ds is None or worst is None:
        return None
    _, bench, name, _ = worst
    s = _at(ds, bench)
    t = s.sel(sampler=name)
    fd = np.asarray(t.sample_frechet.values, dtype=float)
    i = int(np.nanargmax(fd))
    heldout = report.final(t, "heldout_objective_ema").values
    out: dict[str, Any] = {"benchmark": bench, "sampler": name, "member": int(t.member.values[i]), "frechet": float(fd[i]),
                           "frechet_median": float(np.nanmedian(fd)),
                           "diverged": bool(np.asarray(t.diverged_step.values)[i] >= 0) if "diverged_step" in t else False}
    rest = np.arange(fd.size) != i
    for key, var in (("sw", "sample_sw"), ("mmd", "sample_mmd"), ("heldout", None)):
        if var is not None and var not in t:
            continue
        v = heldout.astype(float) if var is None else np.asarray(t[var].values, dtype=float)
        out[key], out[key + "_median"] = float(v[i]), float(np.nanmedian(v))
        out[key + "_others"] = (float(np.nanmin(v[rest])), float(np.nanmax(v[rest])))
    out["ratio_at"], out["ratio_all"] = {}, {}
    for other in others:
        if other in s.sampler.values and str(s.sel(sampler=other).cell_id.values) and other != name:
            h = report.final(s.sel(sampler=other), "heldout_objective_ema").values
            out["ratio_at"][other] = float(h[i] / heldout[i])
            out["ratio_all"][other] = analysis.paired_ratio(h, heldout).value
    high = []
    for other in s.sampler.values:
        c = s.sel(sampler=other)
        if not str(c.cell_id.values):
            continue
        v = np.asarray(c.sample_frechet.values, dtype=float)
        med = float(np.nanmedian(v))
        high += [(str(other), int(c.member.values[j]), float(v[j])) for j in np.flatnonzero(v > 2 * med)]
    out["high"] = sorted(high, key=lambda h: -h[2])
    try:
        out["ode"] = f"{lr_tuning.cell_param(ds, {}, 'ode_method')}, {int(lr_tuning.cell_param(ds, {}, 'ode_steps'))} steps"
    except KeyError:
        out["ode"] = "n/a"
    return out


def outlier_text(o: dict[str, Any] | None) -> str:
    """The sentences on :func:`outlier_seed`'s seed (none to tell where it lies within twice its
    sampler's median Fréchet distance): whether its training failed (it diverged, or
    its held-out objective or MMD is above every other seed's) or only its samples; the other
    seeds far above their median; and whether it moves the paired held-out ratios."""
    if o is None:
        return ""

    def not_above(key: str) -> bool:  # no worse than its worst other seed
        return o[key] <= o[key + "_others"][1]

    def where(key: str, fmt: str) -> str:
        lo, hi = o[key + "_others"]
        return f"{o[key]:{fmt}} (its other seeds {lo:{fmt}} to {hi:{fmt}})"

    if o["frechet"] <= 2 * o["frechet_median"]:
        return (f"The seed with the largest distance ({o['frechet']:.3g}, seed {o['member']} of {o['sampler']} on {o['benchmark']}) "
                f"lies within twice its sampler's median ({o['frechet_median']:.3g}): no seed stands out.")
    text = f"The seed with the largest distance ({o['frechet']:.3g}) is seed {o['member']} of {o['sampler']} on {o['benchmark']}. "
    text += ("That run diverged. " if o["diverged"] else "That run did not diverge; ")
    text += f"its final held-out objective is {where('heldout', '.4g')}"
    if "mmd" in o:
        text += f" and its MMD {where('mmd', '.3g')}"
    if "sw" in o:
        text += f", while its sliced W2 is {o['sw']:.3g} (the sampler's median over seeds {o['sw_median']:.3g})"
    text += ". "
    if not o["diverged"] and not_above("heldout") and ("mmd" not in o or not_above("mmd")):
        text += (f"So it is a failure of that seed's samples, drawn by the ODE solver ({o['ode']}), not of its training, consistent with a "
                 "few samples carried far off, since the Fréchet and sliced distances grow without bound with them and MMD's "
                 "bounded kernel barely moves. ")
    if len(o["high"]) > 1:
        text += ("Seeds above twice their sampler's median Fréchet distance on this benchmark: "
                 + "; ".join(f"{n} seed {m} ({v:.3g})" for n, m, v in o["high"]) + ". ")
    for other, r in o["ratio_at"].items():
        text += (f"The held-out ratios pair seeds: {other}'s at seed {o['member']} is {r:.3g}, against {o['ratio_all'][other]:.3g} "
                 "over all seeds, so that seed does not move them; the medians keep it from moving the sample-quality columns. ")
    return text.strip()
