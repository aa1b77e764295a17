"""Chapter 6's analysis (adaptive allocation against fixed schedules): the chapter's figures of
the comparison, with every name of its two halves re-exported here: the comparison with uniform,
its tables, headline numbers and sentences (:mod:`fmstudy.adaptive_compare`), and the predicted
gains, the sigma = 1 sub-grids beside uniform and the ceiling gap (:mod:`fmstudy.adaptive_gains`).
The stability sweep is :mod:`fmstudy.adaptive_stability`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from . import plots, report
from .adaptive_compare import (
    DESCRIBED,
    EXTRA,
    Comparison,
    Headline,
    best_speedup,
    comparison,
    extra_text,
    final_shown,
    fixed_setting,
    headline,
    not_run_text,
    ran_text,
    ratio_sentence,
    ratio_text,
    row_at,
    simultaneous,
    speed_table,
    speedup_text,
    with_family,
)
from .adaptive_gains import (
    CeilingGap,
    ceiling_gap,
    ceiling_gap_text,
    flops_ratio,
    negative_share,
    others_table,
    predicted_shown,
    predicted_tables,
    signal_noise_text,
)

__all__ = [
    "DESCRIBED",
    "EXTRA",
    "CeilingGap",
    "Comparison",
    "Headline",
    "best_speedup",
    "ceiling_gap",
    "ceiling_gap_text",
    "comparison",
    "curves_figure",
    "extra_text",
    "final_shown",
    "fixed_setting",
    "flops_ratio",
    "headline",
    "negative_share",
    "not_run_text",
    "others_table",
    "predicted_shown",
    "predicted_tables",
    "q_figure",
    "ran_text",
    "ratio_sentence",
    "ratio_text",
    "row_at",
    "signal_noise_text",
    "simultaneous",
    "speed_table",
    "speedup_text",
    "with_family",
]


def curves_figure(cmp: Comparison) -> plt.Figure:
    """One panel per sigma: each sampler's curve of the convergence metric, mean over seeds with a 95% t band (plots.t_band)."""
    n = len(cmp.sigmas)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.4), layout="constrained", squeeze=False)
    for ax, sigma in zip(axes[0], cmp.sigmas):
        plots.band_curves(report.tidy_curves(cmp.ad.sel(sigma=sigma), cmp.metric), "checkpoint", cmp.metric, "sampler", ax=ax)
        ax.set_title(f"σ = {sigma:g}: mean over seeds, 95% t band")
    return fig


def q_figure(cmp: Comparison) -> plt.Figure:
    """One heatmap per adaptive sampler at the last sigma: its proposal q over t and training step, mean over members."""
    if not cmp.names:
        raise ValueError("a comparison with names=[] is not allowed: there is no adaptive sampler's q to draw")
    sigma, n = cmp.sigmas[-1], len(cmp.names)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), layout="constrained", squeeze=False)
    for ax, name in zip(axes[0], cmp.names):
        q = cmp.ad.q.sel(sampler=name, sigma=sigma).mean("member")
        plots.t_step_heatmap(q, ax=ax, log=True, title=f"{name}, σ = {sigma:g}", cmap="magma")
    return fig
