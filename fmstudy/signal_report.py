"""Chapter 3's numbers on the per-bin signals (:mod:`fmstudy.signals`): where the checkpoints
are, how noisy the fixed probes make a bin's loss, and how often the gradient signal is resolved.

All per-bin curves of a run are measured on the same fixed probes (P points per bin, the same for
every member and checkpoint), so a probe set's sampling error is shared by all members: the
members' spread does not show it. For bin k with probes (t_i, x_i, u_i), i = 1..P, the loss of
a model v, the excess and the irreducible curve obey per probe

    ||v - u_i||^2 - ||v - v*_i||^2 - (E||u_t||^2(t_i) - ||v*_i||^2) = r_i - 2 (v - v*_i).(u_i - v*_i)
    r_i = ||u_i - v*_i||^2 - E||u_t||^2(t_i) + ||v*_i||^2                       (all over d)

so loss_k - excess_k - irreducible_k = mean_i r_i + (a term that vanishes as v -> v*), with
E r_i = 0. :func:`probe_noise` gives, per bin, the oracle's own gap ``mean_i r_i`` on the probes
and its standard error ``sd_i(r_i) / sqrt(P)``: the size of the difference between a bin's loss
and the irreducible curve that the probes alone produce.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .analysis import Estimate, mean_estimate

CENTRE_FIRST = "excess centre, first checkpoint"
CENTRE_LAST = "excess centre, last checkpoint"
CENTRE_SHIFT = "centre shift, last - first (paired)"
END_SHARE = "excess share t<0.1 or t>0.9, last (%)"
EXCESS_FRACTION = "excess / loss at last checkpoint (%)"

__all__ = ["CENTRE_SHIFT", "EXCESS_FRACTION", "centre_shift_text", "checkpoint_text", "gap_z", "probe_check", "probe_noise", "signal_figure",
           "signal_stats", "unresolved_share"]


def checkpoint_text(steps: Sequence[float]) -> str:
    """The checkpoints as placed by ``run_state.checkpoint_steps`` (step 0; log-spaced from the
    end of warm-up to half the budget; evenly spaced from there to the end), described from the
    ``steps`` themselves, e.g. "step 0, log-spaced from 50 to 500, then every 125 steps to 1000:
    steps 0, 50, 158, 500, 625, 750, 875, 1000"."""
    steps = [int(s) for s in steps]
    if len(steps) < 3 or steps[0] != 0 or sorted(set(steps)) != steps:
        raise ValueError(f"steps={steps!r} is not allowed: give at least 3 rising steps from 0")
    budget = steps[-1]
    half = [s for s in steps if s >= budget / 2]
    gaps = sorted(set(np.diff(half).tolist()))
    late = f"every {gaps[0]} steps" if len(gaps) == 1 else f"every {gaps[0]}-{gaps[-1]} steps"  # rounding: 37-38
    early = f"log-spaced from {steps[1]} to {half[0]}" if steps[1] < half[0] else f"from {half[0]}"
    return f"step 0, {early}, then {late} to {budget}: steps {', '.join(map(str, steps))}"


def probe_noise(ds: xr.Dataset, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(gap, se) per t-bin ([K] each) of the fixed probes of the cells of ``ds`` (one benchmark,
    with an oracle) at bridge noise ``sigma``: the oracle's own loss minus the irreducible curve
    on those probes, mean_i r_i, and its standard error sd(r_i) / sqrt(P) (module docstring),
    rebuilt from the grid's parameters (benchmark, its options, t_eps, n_bins, probe_per_bin)."""
    from .data import get_benchmark
    from .paths import BrownianBridge

    fixed = json.loads(ds.attrs.get("fixed") or "{}")
    name = ds["benchmark"].values.item() if "benchmark" in ds.coords and ds["benchmark"].ndim == 0 else fixed.get("benchmark")
    missing = [k for k in ("t_eps", "n_bins", "probe_per_bin") if k not in fixed] + ([] if name else ["benchmark"])
    if missing:
        raise ValueError(f"results without {missing} among their fixed parameters are not allowed: the probes cannot be rebuilt")
    bench = get_benchmark(str(name), **(fixed.get("benchmark_options") or {}))
    if bench.mixture is None:
        raise ValueError(f"benchmark {name!r} is not allowed: it has no oracle, so its probes have no irreducible curve")
    path = BrownianBridge(float(sigma), float(fixed["t_eps"]))
    oracle = bench.oracle(path)
    probes = bench.probes(int(fixed["n_bins"]), int(fixed["probe_per_bin"]), float(fixed["t_eps"]))
    gap, se = [], []
    for k in range(probes.n_bins):
        t = probes.t[k].double()
        s = path.sample(probes.x0[k].double(), probes.x1[k].double(), t, probes.eps[k].double(), check=False)
        v = oracle.velocity(s.xt, t)
        r = ((v - s.ut) ** 2).mean(-1) - (oracle.target_second_moment(t) - (v**2).mean(-1))
        gap.append(float(r.mean()))
        se.append(float(r.std(unbiased=True)) / r.numel() ** 0.5)
    return np.asarray(gap), np.asarray(se)


def gap_z(loss: np.ndarray, excess: np.ndarray, irreducible: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Per bin, (loss - excess - irreducible) / se: the gap between a model's loss and what the
    irreducible curve and its excess predict, in probe standard errors (:func:`probe_noise`);
    loss and excess averaged over members first (their shared probe error does not average out)."""
    loss, excess = (np.asarray(a, dtype=float) for a in (loss, excess))
    irreducible, se = np.asarray(irreducible, dtype=float), np.asarray(se, dtype=float)
    if loss.shape != excess.shape or loss.shape[-1] != irreducible.size or irreducible.shape != se.shape:
        raise ValueError(f"loss {loss.shape}, excess {excess.shape}, irreducible {irreducible.shape} and se {se.shape} are not allowed: "
                         "loss and excess must match and end in the bins of irreducible and se")
    return (loss - excess - irreducible) / se


def probe_check(u: xr.Dataset, noise: dict[float, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """At the last checkpoint of the uniform runs ``u`` (a ``sigma`` axis; loss, excess,
    irreducible per bin), over every sigma of ``noise`` (sigma -> :func:`probe_noise`'s (gap, se)):
    ``se_rel``, the median over bins of se / irreducible; ``se_members``, the median over bins of
    se over the members' standard error of the loss (sd / sqrt(M)); ``se_excess``, the median of
    se / the mean excess; ``corr``, the smallest over sigma of the correlation across bins between
    the measured gap (loss - excess - irreducible, mean over members) and the oracle's own gap on
    the probes; ``beyond2``/``below2``/``bins``, the bins whose gap is more than 2 se from 0, those
    of them below it, and all bins."""
    if not noise:
        raise ValueError("noise={} is not allowed: give (gap, se) for at least one sigma")
    rel, members, excess, corr, z = [], [], [], [], []
    for sigma, (gap, se) in noise.items():
        c = u.sel(sigma=sigma)
        loss, ex = c["loss"].isel(checkpoint=-1).values, c["excess"].isel(checkpoint=-1).values
        irr = c["irreducible"].values
        measured = loss.mean(0) - ex.mean(0) - irr
        rel.append(se / irr)
        members.append(se / (loss.std(0, ddof=1) / np.sqrt(loss.shape[0])))
        excess.append(se / ex.mean(0))
        corr.append(float(np.corrcoef(measured, gap)[0, 1]))
        z.append(gap_z(loss.mean(0), ex.mean(0), irr, se))
    z = np.concatenate(z)
    return {"se_rel": float(np.median(np.concatenate(rel))), "se_members": float(np.median(np.concatenate(members))),
            "se_excess": float(np.median(np.concatenate(excess))), "corr": min(corr),
            "beyond2": int((np.abs(z) > 2).sum()), "below2": int((z < -2).sum()), "bins": int(z.size)}


def signal_stats(u: xr.Dataset, ends: float = 0.1) -> pd.DataFrame:
    """Per sigma of the uniform runs ``u`` (``excess`` and ``loss`` per [member, checkpoint,
    t_bin] on the fixed probes, a ``sigma`` axis, bin centres ``t_bin``), one
    :func:`~fmstudy.analysis.mean_estimate` (a t-interval over the members, i.e. seeds) of
    each per-member quantity:

    - the excess-weighted centre of t, sum_k t_k e_k / sum_k e_k, at the first checkpoint after
      step 0 and at the last;
    - their difference, last - first, taken member by member (the same seeds at both
      checkpoints: a paired interval);
    - the share (%) of the last checkpoint's excess in the bins within ``ends`` of an endpoint;
    - the excess over the loss (%) at the last checkpoint, sum_k e_k / sum_k l_k: both summed over
      the bins (equal widths, so a uniform average over t of the probes' per-bin means)."""
    if u["excess"].sizes.get("checkpoint", 0) < 2:
        raise ValueError("results with fewer than 2 checkpoints are not allowed: no checkpoint after step 0")
    t = u["t_bin"].values
    near = (t < ends) | (t > 1 - ends)
    rows = {}
    for sigma in u["sigma"].values:
        c = u.sel(sigma=sigma)
        ex = c["excess"].transpose("member", "checkpoint", "t_bin").values
        loss = c["loss"].transpose("member", "checkpoint", "t_bin").values
        share = ex / ex.sum(-1, keepdims=True)
        first, last = (share[:, 1] * t).sum(-1), (share[:, -1] * t).sum(-1)
        rows[float(sigma)] = {CENTRE_FIRST: mean_estimate(first), CENTRE_LAST: mean_estimate(last),
                              CENTRE_SHIFT: mean_estimate(last - first), END_SHARE: mean_estimate(100 * share[:, -1, near].sum(-1)),
                              EXCESS_FRACTION: mean_estimate(100 * ex[:, -1].sum(-1) / loss[:, -1].sum(-1))}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "sigma"
    return out


def centre_shift_text(shift: Estimate, fmt: str = ".2f") -> str:
    """What a paired shift of the excess centre (:func:`signal_stats`) says: towards t = 1 or
    t = 0 where its interval excludes 0, else that no move is resolved; with the estimate."""
    if not (np.isfinite(shift.lo) and np.isfinite(shift.hi)):
        return f"{shift.text(fmt)}: no interval, so no move is resolved"
    if shift.lo > 0:
        return f"{shift.text(fmt)}, an interval above 0: the excess has moved towards t = 1"
    if shift.hi < 0:
        return f"{shift.text(fmt)}, an interval below 0: the excess has moved towards t = 0"
    return f"{shift.text(fmt)}, an interval that includes 0: no move is resolved"


def unresolved_share(signal: np.ndarray) -> float:
    """The share of the finite per-bin estimates of ||E g||^2 (``grad_signal``, unbiased, so it
    can fall below 0 where the noise swamps it) that are negative; NaN without any."""
    x = np.asarray(signal, dtype=float)
    x = x[np.isfinite(x)]
    return float((x < 0).mean()) if x.size else float("nan")



def signal_figure(s: xr.Dataset, sigma: float, se: np.ndarray | None = None):
    """Chapter 3's figure for one sigma (``s``: one cell's per-bin curves, [member, checkpoint,
    t_bin]): the excess, the loss and the gradient's second moment across t, one line per
    checkpoint (mean over members, darker = later). The excess's last checkpoint carries a band
    of two standard errors over the seeds; the loss panel draws the irreducible curve with a band
    of two probe standard errors ``se`` (:func:`probe_noise`) where given. The gradient
    signal-to-noise ratio is not drawn: its numerator is not resolved on these probes
    (:func:`unresolved_share`)."""
    import matplotlib.pyplot as plt

    from . import plots

    cols = [v for v in ("excess", "loss", "grad_sq") if v in s and np.isfinite(s[v].values).any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.3 * len(cols), 3.8), layout="constrained", squeeze=False)
    t = s["t_bin"].values
    for ax, var in zip(axes[0], cols):
        plots.t_profile(s, var, ax=ax)
        if var == "excess":
            last = s[var].isel(checkpoint=-1).values
            mean, err = last.mean(0), 2 * last.std(0, ddof=1) / np.sqrt(last.shape[0])
            ax.fill_between(t, np.maximum(mean - err, mean * 1e-3), mean + err, color="k", alpha=0.15, lw=0, label="last ±2 s.e. (seeds)")
        if var == "loss" and "irreducible" in s:
            irr = s["irreducible"].values
            ax.plot(t, irr, color="tab:blue", ls="--", lw=1.5, label="irreducible")
            if se is not None:  # on the log axis a band reaching below its floor is cut there
                floor = 0.5 * float(np.nanmin(np.r_[irr[irr > 0], s["loss"].values[s["loss"].values > 0]]))
                ax.fill_between(t, np.maximum(irr - 2 * se, floor), irr + 2 * se, color="tab:blue", alpha=0.15, lw=0, label="±2 probe s.e.")
                ax.set_ylim(bottom=floor)
        # the checkpoints' colours are the same in every panel: named in the first only
        handles = [(h, lab) for h, lab in zip(*ax.get_legend_handles_labels()) if ax is axes[0][0] or not lab.startswith("step ")]
        ax.legend(*zip(*handles), frameon=False, fontsize="x-small", ncol=2) if handles else ax.legend().remove()
    fig.suptitle(f"uniform sampler, σ = {sigma:g}: one line per checkpoint (mean over seeds, darker = later)")
    return fig
