"""The learning curves' band (fmstudy.plots.band_curves) is the Student-t interval of the mean
over seeds, checked against scipy on the drawn polygon."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fmstudy import plots


def test_t_band_is_scipys_t_interval():
    x = np.array([1.0, 2.0, 4.0, 3.5, np.nan])
    lo, hi = plots.t_band(pd.Series(x))
    ref = stats.t.interval(0.95, 3, loc=np.nanmean(x), scale=stats.sem(x[:4]))
    assert (lo, hi) == pytest.approx(ref)
    assert plots.t_band(pd.Series([2.0])) == (2.0, 2.0)


def test_the_drawn_band_is_the_t_interval_at_every_x():
    rng = np.random.default_rng(0)
    steps = [10, 100, 1000]
    vals = rng.lognormal(0.0, 0.3, (10, 3))
    df = pd.DataFrame([{"sampler": "uniform", "seed": s, "checkpoint": c, "v": vals[s, j]} for s in range(10) for j, c in enumerate(steps)])
    ax = plots.band_curves(df, "checkpoint", "v", "sampler", logy=False)
    poly = ax.collections[0].get_paths()[0].vertices  # fill_between: lower edge then upper edge
    for j, c in enumerate(steps):
        lo, hi = stats.t.interval(0.95, 9, loc=vals[:, j].mean(), scale=stats.sem(vals[:, j]))
        ys = poly[np.isclose(poly[:, 0], c), 1]
        assert ys.min() == pytest.approx(lo) and ys.max() == pytest.approx(hi)
