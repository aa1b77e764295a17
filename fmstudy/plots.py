"""Figures used by the grid-cell notebook and the book's chapters (STUDY.md section 7).

Every function draws on a matplotlib ``Axes`` (created when none is given) and returns it;
they read the results schema of :mod:`fmstudy.results` (or a collected grid) and never compute
training quantities themselves. Colours are fixed per sampler name across the whole book
(:func:`sampler_color`); a sampler whose importance weights are off is drawn dashed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from .analysis import mean_estimate

__all__ = [
    "LABELS",
    "band_curves",
    "t_band",
    "ceiling_curves",
    "divergence_curves",
    "draw_sample",
    "log_ticks",
    "member_curves",
    "predicted_vs_measured",
    "sampler_color",
    "sampler_dashes",
    "sampler_palette",
    "samples_figure",
    "setup",
    "t_profile",
    "t_step_heatmap",
]

# Axis labels with units (the objective is a per-dimension mean, so it is dimensionless).
LABELS = {
    "loss": "loss per bin (per dim.)",
    "excess": "excess loss ||v - v*||² / d",
    "irreducible": "irreducible loss / d",
    "integrated_excess": "integrated excess ∫ excess(t) dt",
    "integrated_excess_ema": "integrated excess (EMA weights)",
    "heldout_objective": "held-out objective (uniform t)",
    "heldout_objective_ema": "held-out objective (EMA weights)",
    "grad_snr": "gradient SNR ||E g||² / tr Cov g",
    "grad_sq": "E ||g||² (per-sample gradient)",
    "grad_signal": "||E g||²",
    "grad_noise": "tr Cov g",
    "grad_norm_mean": "mean per-sample gradient norm",
    "q": "sampler density q(t)",
    "target_var": "target variance Var u_t / d",
    "checkpoint": "training step",
    "t_bin": "t",
    "train_seconds": "training time (s)",
    "bin_grad_sq": "S_k = E ||g||² per bin",
    "bin_grad_sq_adam": "S_k in Adam's metric E[gᵀPg]",
    "var_ceiling": "ceiling R = V(uniform) / V(q*)",
    "var_adam_ceiling": "ceiling R in Adam's metric",
}

# One colour per sampler name, in a fixed order, so a sampler looks the same on every page.
_ORDER = (
    "uniform", "stratified", "logit_normal", "mode", "beta", "arcsine", "u_shaped",
    "loss_second_moment", "grad_norm", "learning_progress", "oracle_excess", "info_snr", "var_opt", "var_opt_neyman",
    "oracle_qstar", "oracle_qstar_neyman",
)
_COLORS = sns.color_palette("tab20", 20)


def setup() -> None:
    """The book's figure style: seaborn's ticks theme, legible at page width."""
    sns.set_theme(context="notebook", style="ticks", rc={"figure.dpi": 100, "savefig.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})


def _name(label: str) -> str:
    return str(label).split("(")[0].strip()


def sampler_color(label: str) -> tuple[float, float, float]:
    """The colour of a sampler (by its name; options do not change it)."""
    name = _name(label)
    index = _ORDER.index(name) if name in _ORDER else len(_ORDER) + (sum(map(ord, name)) % (20 - len(_ORDER)))
    return _COLORS[(2 * index) % 20 if index < 10 else (2 * (index - 10) + 1) % 20]


def sampler_dashes(label: str) -> bool:
    """Dashed when the importance weights are off (the sampler then optimises another objective)."""
    return "reweight=False" in str(label)


def sampler_palette(labels: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    return {str(lab): sampler_color(lab) for lab in labels}


def _ax(ax: plt.Axes | None, size: tuple[float, float] = (6.4, 4.0)) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def _step_axis(ax: plt.Axes) -> None:
    """Training steps on a log axis that still shows step 0 (checkpoints are log-spaced early, evenly spaced late)."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)


def member_curves(ds: xr.Dataset, var: str, ax: plt.Axes | None = None, logy: bool = True, color=None, label: str | None = None) -> plt.Axes:
    """One line per member of ``var`` [member, checkpoint] against the training step, and their mean (thick)."""
    ax = _ax(ax)
    da = ds[var]
    x = ds["checkpoint"].values
    for m in da["member"].values:
        ax.plot(x, da.sel(member=m).values, color=color or "0.6", lw=0.8, alpha=0.6)
    ax.plot(x, da.mean("member").values, color=color or "k", lw=2.2, label=label or f"mean of {da.sizes['member']} seeds")
    ax.set(xlabel=LABELS["checkpoint"], ylabel=LABELS.get(var, var), yscale="log" if logy else "linear")
    _step_axis(ax)
    ax.legend(frameon=False)
    return ax


def t_band(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean of ``values`` (one per seed;
    :func:`fmstudy.analysis.mean_estimate`, A.2), the tables' own interval, as a band's
    (lo, hi); the mean itself with fewer than 2 finite values."""
    e = mean_estimate(np.asarray(values, dtype=float))
    return (e.lo, e.hi) if e.n >= 2 else (e.value, e.value)


def band_curves(df: pd.DataFrame, x: str, y: str, hue: str, ax: plt.Axes | None = None, logy: bool = True) -> plt.Axes:
    """Mean over seeds with a 95% Student-t band (:func:`t_band`), one colour per sampler label
    in ``hue``. ``df`` is long: one row per (hue, seed, x). The band is each curve's own, not
    paired with another's: for a comparison read the paired ratios of the tables."""
    ax = _ax(ax)
    labels = list(dict.fromkeys(df[hue]))
    dashes = {lab: (4, 2) if sampler_dashes(lab) else "" for lab in labels}
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=hue, dashes=dashes, palette=sampler_palette(labels),
                 errorbar=t_band, ax=ax)
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y), yscale="log" if logy else "linear")
    if x == "checkpoint":
        _step_axis(ax)
    ax.legend(frameon=False, fontsize="small", title=None)
    return ax


def t_step_heatmap(da: xr.DataArray, ax: plt.Axes | None = None, log: bool = True, title: str | None = None, cmap: str = "viridis") -> plt.Axes:
    """``da`` [checkpoint, t_bin] as a t (horizontal) by checkpoint (vertical, equal row heights, labelled by step) heatmap."""
    ax = _ax(ax)
    da = da.transpose("checkpoint", "t_bin")
    vals = da.values.astype(float)
    edges_t = np.append(da["t_lo"].values, da["t_hi"].values[-1])
    steps = da["checkpoint"].values.astype(float)
    rows = np.arange(len(steps) + 1)  # one row per checkpoint, equal heights (not to scale in steps), labelled by its step
    pos = vals[np.isfinite(vals) & (vals > 0)]
    norm = matplotlib.colors.LogNorm(pos.min(), pos.max()) if log and pos.size else None
    mesh = ax.pcolormesh(edges_t, rows, np.where(np.isfinite(vals) & ((vals > 0) | (not log)), vals, np.nan), norm=norm, cmap=cmap)
    ax.set_yticks(rows[:-1] + 0.5, [f"{int(s)}" for s in steps], fontsize="x-small")
    ax.set(xlabel="t", ylabel=LABELS["checkpoint"], title=title or LABELS.get(da.name, da.name))
    plt.colorbar(mesh, ax=ax, label=LABELS.get(da.name, da.name))
    return ax


def ceiling_curves(ds: xr.Dataset, ax: plt.Axes | None = None, label: str = "") -> plt.Axes:
    """The ceiling R of the variance account (4.5c) over training, Euclidean and in Adam's
    metric: mean over members with a band of two standard errors of that mean (the members'
    spread; one member: its jackknife error)."""
    ax = _ax(ax)
    steps = ds["checkpoint"].values
    for var, ls in (("var_ceiling", "-"), ("var_adam_ceiling", "--")):
        if var not in ds:
            continue
        x = ds[var].values.reshape(-1, steps.size)
        with warnings.catch_warnings():  # Adam's metric is NaN at step 0 (no step taken yet)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0)
            se = np.nanstd(x, axis=0, ddof=1) / np.sqrt(np.isfinite(x).sum(0)) if x.shape[0] > 1 else ds[var + "_se"].values.reshape(-1)
        line = ax.plot(steps, mean, ls=ls, marker=".", label=f"{label}{'Adam metric' if 'adam' in var else 'Euclidean'}")[0]
        ax.fill_between(steps, mean - 2 * se, mean + 2 * se, color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set(xlabel=LABELS["checkpoint"], ylabel="ceiling R = V(uniform) / V(q*)")
    ax.legend(frameon=False, fontsize="x-small")
    _step_axis(ax)
    return ax


def t_profile(ds: xr.Dataset, var: str, checkpoints: Sequence[int] | None = None, ax: plt.Axes | None = None, logy: bool = True) -> plt.Axes:
    """``var`` across t (mean over members), one line per checkpoint (dark = late)."""
    ax = _ax(ax)
    da = ds[var].mean("member") if "member" in ds[var].dims else ds[var]
    idx = list(range(ds.sizes["checkpoint"])) if checkpoints is None else list(checkpoints)
    if "checkpoint" not in da.dims:
        ax.plot(ds["t_bin"].values, da.values, color="k", marker=".")
    else:
        cols = sns.color_palette("rocket_r", len(idx))
        for c, i in zip(cols, idx):
            ax.plot(ds["t_bin"].values, da.isel(checkpoint=i).values, color=c, marker=".", ms=3, label=f"step {int(ds['checkpoint'][i])}")
        ax.legend(frameon=False, fontsize="x-small", ncol=2)
    ax.set(xlabel="t", ylabel=LABELS.get(var, var), yscale="log" if logy else "linear")
    return ax


def draw_sample(ax: plt.Axes, x: np.ndarray, benchmark: str, color="k") -> None:
    """One sample of a high-dimensional benchmark in a small axes: an 8x8 image for digits, a
    curve otherwise (mnist1d's 40-point signals)."""
    if benchmark == "digits":
        ax.imshow(np.asarray(x).reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
    else:
        ax.plot(x, color=color, lw=1)
    ax.set_xticks([]), ax.set_yticks([])


def samples_figure(samples: np.ndarray, reference: np.ndarray, benchmark: str, n_show: int = 16) -> plt.Figure:
    """Generated samples beside real ones: a scatter in 2-D, an image grid for digits (8x8),
    curves for mnist1d and other 1-D signals, the first two coordinates otherwise."""
    samples, reference = np.asarray(samples), np.asarray(reference)
    d = samples.shape[-1]
    if d == 2 or (benchmark not in ("digits", "mnist1d")):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True, layout="constrained")
        for ax, pts, title in zip(axes, (reference, samples), ("real (held-out)", "generated (ODE)")):
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="k" if pts is reference else "C0")
            ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
        return fig
    rows = int(math.sqrt(n_show))
    fig, axes = plt.subplots(rows, 2 * rows, figsize=(8, 4.2), layout="constrained")
    for j, (pts, name) in enumerate(((reference, "real"), (samples, "generated"))):
        for i in range(rows * rows):
            draw_sample(axes[i // rows, j * rows + i % rows], pts[i], benchmark, "k" if name == "real" else "C0")
        axes[0, j * rows].set_title(f"{name}", loc="left", fontsize="small")
    return fig


def _errorbar(ax: plt.Axes, x: np.ndarray, estimates: Sequence, floor: float = 0.0, **kw) -> None:
    """Points at the estimates' values with their intervals [lo, hi] as error bars (an end below
    ``floor``, e.g. a censored speed-up's 0 on a log axis, is drawn at ``floor``)."""
    y = np.array([e.value for e in estimates], dtype=float)
    lo = np.maximum(np.array([e.lo for e in estimates], dtype=float), floor)
    hi = np.array([e.hi for e in estimates], dtype=float)
    err = np.nan_to_num(np.stack([y - lo, hi - y]), nan=0.0).clip(min=0)
    ax.errorbar(x, y, yerr=err, capsize=2, **kw)


def divergence_curves(table: pd.DataFrame, ax: plt.Axes | None = None, lr: str = "lr", outcome: str = "diverged") -> plt.Axes:
    """The share of seeds that diverged (or ``outcome``: "failed") against the learning rate (log), one line per sampler,
    with Wilson intervals (analysis A.8): ``stability.stability_table``'s rows with every index
    level but sampler and ``lr`` at one value (select a sigma first). The dotted line is half
    the seeds, where the sweep is to push uniform."""
    extra = [n for n in table.index.names if n not in ("sampler", lr) and table.index.get_level_values(n).nunique() > 1]
    if extra:
        raise ValueError(f"a table with several values of {extra} is not allowed: select one (e.g. table.xs(1.0, level='sigma'))")
    ax = _ax(ax)
    flat = table.reset_index()
    for sampler, rows in flat.groupby("sampler", sort=False):
        rows = rows.sort_values(lr)
        _errorbar(ax, rows[lr].to_numpy(float), list(rows[outcome]), fmt="o", color=sampler_color(sampler), ms=4, lw=1.2,
                  ls="--" if sampler_dashes(sampler) else "-", label=str(sampler))
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="learning rate", ylabel=f"share of seeds {outcome}")
    ax.legend(frameon=False, fontsize="x-small")
    return ax


# The central figure of chapter 7 lives in its own module (it imports this one's colours and error bars).
from .prediction_plot import log_ticks, predicted_vs_measured  # noqa: E402
