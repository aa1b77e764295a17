"""Chapter 7's central figure (fmstudy.prediction_plot, re-exported by fmstudy.plots) on a
hand-made table: plain-number log ticks, a title that counts the points with a measured value
apart from those drawn as bounds, the axis label naming chapter 4 (not an equation number the
book does not use), and where the legend goes."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fmstudy import plots
from fmstudy.analysis import Estimate


def _table() -> pd.DataFrame:
    measured = [Estimate(1.2, 1.1, 1.3, 10), Estimate(1.5, 1.3, 1.6, 10), Estimate(math.nan, 0.0, 0.9, 10, censored=7, below=0.9),
                Estimate(math.nan, math.nan, math.nan, 0)]  # the last: not identified and no interval: not drawn at all
    return pd.DataFrame({"sampler": ["var_opt", "oracle_qstar", "logit_normal", "stratified"], "benchmark": ["gmm8"] * 4,
                         "predicted": [1.1, 1.4, 0.3, 1.0], "speedup_steps": measured})


def test_title_counts_measured_points_apart_from_bounds_and_the_label_names_chapter_4():
    ax = plots.predicted_vs_measured(_table())
    title = ax.get_title()
    assert title.startswith("2 points with a measured value;\n2 not identified (1 as bounds), drawn ▽")
    assert "4.6" not in ax.get_xlabel() and "chapter 4" in ax.get_xlabel()
    bounds = [c for c in ax.collections if c.get_label() == "not reached: upper bound"][0]
    np.testing.assert_allclose(bounds.get_offsets(), [[0.3, 0.9]])
    identified = plots.predicted_vs_measured(_table().iloc[:2])
    assert identified.get_title() == "2 points with a measured value"
    plt.close("all")


def test_log_ticks_are_plain_numbers_at_1_2_5_with_unlabelled_minor_ticks():
    fig, ax = plt.subplots()
    ax.set(xscale="log", yscale="log", xlim=(0.15, 2.5), ylim=(0.15, 2.5))
    plots.log_ticks(ax)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if 0.15 <= t.get_position()[0] <= 2.5]
    assert shown == ["0.2", "0.5", "1", "2"]
    assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
    with pytest.raises(ValueError, match="axes='z' is not allowed"):
        plots.log_ticks(ax, "z")
    plt.close("all")


def test_the_legend_inside_outside_or_none():
    for where, has in (("inside", True), ("outside", True), ("none", False)):
        ax = plots.predicted_vs_measured(_table(), legend=where)
        assert (ax.get_legend() is not None) == has
        if where == "outside":
            assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # to the right of the axes
    with pytest.raises(ValueError, match="legend='below' is not allowed"):
        plots.predicted_vs_measured(_table(), legend="below")
    plt.close("all")
