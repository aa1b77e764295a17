"""Chapter 3's numbers (fmstudy.signal_report): the checkpoints described from their steps, the
fixed probes' own gap between the oracle's loss and the irreducible curve (unbiased, with a
standard error that covers it), the gaps in probe standard errors and the summary over bins, and
the share of unresolved gradient signals, each against values worked out by hand."""

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from fmstudy import signal_report as sg
from fmstudy.data import get_benchmark
from fmstudy.paths import BrownianBridge
from fmstudy.signals import probe_irreducible

FIXED = {"benchmark": "gmm8", "t_eps": 0.001, "n_bins": 4, "probe_per_bin": 64}


def test_checkpoint_text_from_the_steps():
    text = sg.checkpoint_text([0, 50, 158, 500, 625, 750, 875, 1000])
    assert text == "step 0, log-spaced from 50 to 500, then every 125 steps to 1000: steps 0, 50, 158, 500, 625, 750, 875, 1000"
    # 300 steps: the late checkpoints 150, 187.5, 225, 262.5, 300 rounded to even, 37 or 38 steps apart
    assert sg.checkpoint_text([0, 15, 47, 150, 188, 225, 262, 300]).startswith("step 0, log-spaced from 15 to 150, then every 37-38 steps to 300")
    with pytest.raises(ValueError, match="give at least 3 rising steps from 0"):
        sg.checkpoint_text([10, 20, 30])


def test_probe_noise_is_the_oracles_own_loss_minus_the_irreducible_curve_on_the_same_probes():
    ds = xr.Dataset(attrs={"fixed": json.dumps(FIXED)})
    gap, se = sg.probe_noise(ds, 1.0)
    # by another road: the oracle's mean loss on the fixed probes minus signals.probe_irreducible
    bench = get_benchmark("gmm8")
    path = BrownianBridge(1.0, 0.001)
    oracle = bench.oracle(path)
    probes = bench.probes(4, 64, 0.001)
    irr = probe_irreducible(oracle, path, probes).numpy()
    for k in range(4):
        t = probes.t[k].double()
        s = path.sample(probes.x0[k].double(), probes.x1[k].double(), t, probes.eps[k].double(), check=False)
        own = float(((oracle.velocity(s.xt, t) - s.ut) ** 2).mean(-1).mean())
        assert gap[k] == pytest.approx(own - irr[k], rel=1e-5, abs=1e-6)
    assert (se > 0).all() and gap.shape == se.shape == (4,)


def test_probe_noise_is_unbiased_its_standard_error_covers_it_with_many_probes():
    ds = xr.Dataset(attrs={"fixed": json.dumps({**FIXED, "probe_per_bin": 8192})})
    for sigma in (0.0, 1.0):
        gap, se = sg.probe_noise(ds, sigma)
        assert (np.abs(gap) < 4 * se).all()  # E r_i = 0: a 4-se excursion in 8 bins is a 1-in-2,000 event
        small = sg.probe_noise(xr.Dataset(attrs={"fixed": json.dumps(FIXED)}), sigma)[1]
        np.testing.assert_allclose(se * math.sqrt(8192 / 64), small, rtol=0.6)  # se shrinks as 1 / sqrt(P)


def test_probe_noise_refuses_what_cannot_rebuild_its_probes():
    with pytest.raises(ValueError, match=r"without \['probe_per_bin'\] among their fixed parameters"):
        sg.probe_noise(xr.Dataset(attrs={"fixed": json.dumps({k: v for k, v in FIXED.items() if k != "probe_per_bin"})}), 1.0)
    with pytest.raises(ValueError, match="benchmark 'checkerboard' is not allowed: it has no oracle"):
        sg.probe_noise(xr.Dataset(attrs={"fixed": json.dumps({**FIXED, "benchmark": "checkerboard"})}), 1.0)


def _uniform() -> xr.Dataset:
    """Two sigmas, 2 members, 2 checkpoints, 2 bins; only the last checkpoint is read."""
    loss = np.zeros((2, 2, 2, 2))  # [sigma, member, checkpoint, bin]
    loss[:, 0, -1], loss[:, 1, -1] = [10.0, 3.0], [12.0, 5.0]  # mean 11, 4; sd sqrt(2) each, se over 2 members 1
    excess = np.zeros_like(loss)
    excess[:, :, -1] = [0.5, 0.25]
    irr = np.array([[10.0, 5.0], [10.0, 2.0]])  # [sigma, bin]
    dims = ("sigma", "member", "checkpoint", "t_bin")
    return xr.Dataset({"loss": (dims, loss), "excess": (dims, excess), "irreducible": (("sigma", "t_bin"), irr)},
                      coords={"sigma": [0.0, 1.0], "checkpoint": [0, 100]})


def test_gap_z_and_probe_check_by_hand():
    u = _uniform()
    # sigma 0: gaps 11 - 0.5 - 10 = 0.5 and 4 - 0.25 - 5 = -1.25; with se 0.25, 0.5: z = 2, -2.5
    z = sg.gap_z(u.loss.values[0, :, -1].mean(0), u.excess.values[0, :, -1].mean(0), [10.0, 5.0], [0.25, 0.5])
    np.testing.assert_allclose(z, [2.0, -2.5])
    with pytest.raises(ValueError, match="must match and end in the bins"):
        sg.gap_z(np.ones(3), np.ones(3), np.ones(2), np.ones(2))
    # sigma 1: gaps 0.5 and 4 - 0.25 - 2 = 1.75; se 0.1, 0.5: z = 5, 3.5
    noise = {0.0: (np.array([0.4, -1.0]), np.array([0.25, 0.5])), 1.0: (np.array([0.6, 1.5]), np.array([0.1, 0.5]))}
    check = sg.probe_check(u, noise)
    # se / irreducible: 0.025, 0.1, 0.01, 0.25 -> median 0.0625; se / members' se (1): 0.25, 0.5, 0.1, 0.5 -> 0.375
    # se / excess: 0.5, 2, 0.2, 2 -> 1.25; correlation of two points is +-1: (0.5, -1.25) vs (0.4, -1) and (0.5, 1.75) vs (0.6, 1.5): 1
    assert check["se_rel"] == pytest.approx(0.0625) and check["se_members"] == pytest.approx(0.375)
    assert check["se_excess"] == pytest.approx(1.25) and check["corr"] == pytest.approx(1.0)
    # |z| > 2: -2.5 (sigma 0; z = 2 is not beyond 2), 5 and 3.5 (sigma 1); one of them below
    assert (check["beyond2"], check["below2"], check["bins"]) == (3, 1, 4)
    with pytest.raises(ValueError, match="noise=\\{\\} is not allowed"):
        sg.probe_check(u, {})


def test_unresolved_share_counts_negative_unbiased_signals():
    assert sg.unresolved_share(np.array([[-1.0, 2.0], [np.nan, -3.0]])) == pytest.approx(2 / 3)
    assert math.isnan(sg.unresolved_share(np.array([np.nan])))


def test_signal_figure_draws_no_snr_panel_and_bands_where_asked():
    t = np.array([0.25, 0.75])
    s = xr.Dataset(
        {v: (("member", "checkpoint", "t_bin"), np.full((2, 2, 2), 2.0) + np.arange(2)) for v in ("excess", "loss", "grad_sq", "grad_snr")}
        | {"irreducible": (("t_bin",), np.array([1.5, 2.5]))},
        coords={"checkpoint": [0, 100], "t_bin": t},
    )
    fig = sg.signal_figure(s, 1.0, se=np.array([0.1, 0.2]))
    assert [ax.get_ylabel() for ax in fig.axes] == ["excess loss ||v - v*||² / d", "loss per bin (per dim.)", "E ||g||² (per-sample gradient)"]
    labels = [lab for ax in fig.axes for lab in ax.get_legend_handles_labels()[1]]
    assert "±2 probe s.e." in labels and "irreducible" in labels and "last ±2 s.e. (seeds)" in labels
    assert "±2 probe s.e." not in [lab for lab in sg.signal_figure(s, 1.0).axes[1].get_legend_handles_labels()[1]]
    plt.close("all")


def _moving() -> xr.Dataset:
    """One sigma, 3 members, 3 checkpoints, 4 bins at t = 0.05, 0.3, 0.7, 0.95 (two of them
    within 0.1 of an endpoint); excess and loss chosen so every quantity is worked out by hand."""
    t = np.array([0.05, 0.3, 0.7, 0.95])
    ex = np.ones((1, 3, 3, 4))  # [sigma, member, checkpoint, bin]; step 0 is never read
    ex[0, :, 1] = [[1, 1, 1, 1], [1, 3, 0, 0], [0, 0, 3, 1]]  # first-checkpoint centres 0.5, 0.2375, 0.7625
    ex[0, :, 2] = [[0, 0, 1, 1], [1, 3, 1, 1], [0, 0, 1, 3]]  # last-checkpoint centres 0.825, 0.43333.., 0.8875
    loss = np.full_like(ex, 100.0)  # sum over bins 400: excess / loss at the end 2/400, 6/400, 4/400
    dims = ("sigma", "member", "checkpoint", "t_bin")
    return xr.Dataset({"excess": (dims, ex), "loss": (dims, loss)}, coords={"sigma": [1.0], "checkpoint": [0, 50, 100], "t_bin": t})


def test_signal_stats_by_hand_and_the_shift_paired_over_seeds():
    from scipy import stats

    out = sg.signal_stats(_moving())
    row = out.loc[1.0]
    first, last = np.array([0.5, 0.2375, 0.7625]), np.array([0.825, 1.3 / 3, 0.8875])
    assert row[sg.CENTRE_FIRST].value == pytest.approx(first.mean())
    assert row[sg.CENTRE_LAST].value == pytest.approx(last.mean())
    d = last - first  # 0.325, 0.19583.., 0.125: member by member (paired)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    shift = row[sg.CENTRE_SHIFT]
    assert (shift.value, shift.lo, shift.hi) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    # end bins 0.05 and 0.95 at the last checkpoint: 1/2, 2/6, 3/4 of each member's excess
    assert row["excess share t<0.1 or t>0.9, last (%)"].value == pytest.approx(100 * (1 / 2 + 2 / 6 + 3 / 4) / 3)
    assert row[sg.EXCESS_FRACTION].value == pytest.approx(100 * (2 + 6 + 4) / 400 / 3)
    with pytest.raises(ValueError, match="fewer than 2 checkpoints"):
        sg.signal_stats(_moving().isel(checkpoint=[0]))


def test_centre_shift_text_reads_the_interval():
    from fmstudy.analysis import Estimate

    assert sg.centre_shift_text(Estimate(0.05, 0.03, 0.07, 10)).endswith("an interval above 0: the excess has moved towards t = 1")
    assert sg.centre_shift_text(Estimate(-0.14, -0.16, -0.12, 10)) == (
        "-0.14 (95% CI -0.16 to -0.12, 10 seeds), an interval below 0: the excess has moved towards t = 0")
    assert sg.centre_shift_text(Estimate(0.01, -0.01, 0.03, 10)).endswith("includes 0: no move is resolved")
    assert sg.centre_shift_text(Estimate(0.01, math.nan, math.nan, 1)).endswith("no interval, so no move is resolved")
