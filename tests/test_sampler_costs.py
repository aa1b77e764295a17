"""Chapter 8's compute per sampler (fmstudy.sampler_costs) on a hand-made cost table: the cost
relative to uniform in the same sub-grid, what each sampler adds to uniform's passes, the
sentence that names the most expensive sampler by the figure's own measure, and the figure."""

import matplotlib
import pandas as pd
import pytest

from fmstudy import sampler_costs as sc

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cost_table() -> pd.DataFrame:
    """Six cells: sub-grid s1 with four samplers, s2 with one (no uniform there)."""
    rows = [
        ("s1", "uniform", 10, 1000, 50e9, 0.0, 0.0),
        ("s1", "uniform", 10, 1000, 54e9, 0.0, 0.0),
        ("s1", "oracle_qstar", 10, 1000, 60e9, 0.1, 0.1),
        ("s1", "var_opt", 8, 1000, 55e9, 0.0, 0.0),
        ("s1", "grad_norm", 10, 1000, 52.01e9, 0.0, 0.0),
        ("s2", "oracle_qstar", 3, 300, 4e9, 0.2, 0.3),
    ]
    cols = ["sub-grid", "sampler", "members", "steps", "flops_per_member", "extra_forward_per_sample", "extra_backward_per_sample"]
    return pd.DataFrame(rows, columns=cols).assign(id=[f"c{i}" for i in range(len(rows))])


def test_relative_flops_divide_by_uniforms_mean_in_the_same_subgrid():
    rel = sc.relative_flops(cost_table())
    # s1: uniform's mean (50 + 54) / 2 = 52 GFLOPs; oracle_qstar 60 / 52, var_opt 55 / 52; s2 has no uniform
    assert rel[("s1", "oracle_qstar")] == pytest.approx(60 / 52) and rel[("s1", "var_opt")] == pytest.approx(55 / 52)
    assert rel[("s1", "uniform")] == pytest.approx(1.0) and pd.isna(rel[("s2", "oracle_qstar")])
    assert sc.figure_subgrid(cost_table()) == "s1"
    with pytest.raises(ValueError, match=r"^an empty table of cell costs is not allowed"):
        sc.figure_subgrid(cost_table().iloc[:0])


def test_sampler_summary_says_what_each_sampler_adds_and_its_cost_relative_to_uniform():
    tab = sc.sampler_summary(cost_table(), stride=8)
    assert list(tab.index) == ["grad_norm", "oracle_qstar", "uniform", "var_opt"]
    q = tab.loc["oracle_qstar"]
    assert (q["sub-grids"], q["cells"], q["extra fwd / sample"], q["extra bwd / sample"]) == (2, 2, "0.10-0.20", "0.10-0.30")
    assert q["adds to uniform's passes"] == "probe passes, Adam-metric norms"
    assert q["training FLOPs / uniform's"] == "1.154"  # 60 / 52 in s1 only: s2 has no uniform to divide by
    assert tab.loc["var_opt", "adds to uniform's passes"] == "Adam-metric norms (1 in 8 samples)"
    assert tab.loc["grad_norm", "adds to uniform's passes"] == "Euclidean norms (every sample)"
    assert tab.loc["uniform"].tolist() == [1, 2, "—", "0.00", "0.00", "1.000"]


def test_cost_sentence_names_the_most_expensive_by_the_figures_measure_not_by_extra_passes():
    who, ratio, text = sc.cost_sentence(cost_table(), stride=4)
    # oracle_qstar has the most extra passes (0.3 in s2) but the sentence reads the figure's sub-grid, s1
    assert (who, ratio) == ("oracle_qstar", pytest.approx(60 / 52))
    assert text == ("In sub-grid 's1': oracle_qstar, 1.15 times uniform's: 0.10 extra forward and 0.10 extra backward samples per "
                    "training sample (each with its norm in Adam's metric); var_opt, 1.06 times uniform's: gradient norms in Adam's "
                    "metric of 1 in 4 training samples.")  # grad_norm at 52.01 / 52 = 1.0002 costs no more than uniform
    # var_opt made dearer than oracle_qstar: it is named, as the figure's longest bar
    dear = cost_table().assign(flops_per_member=[50e9, 54e9, 60e9, 65e9, 52e9, 4e9])
    assert sc.cost_sentence(dear)[0] == "var_opt"
    alone = cost_table()[cost_table()["sampler"] == "uniform"]
    assert sc.cost_sentence(alone) == ("n/a", pytest.approx(float("nan"), nan_ok=True), "In sub-grid 's1' no sampler ran beside uniform.")


def test_norm_stride_from_the_records_with_trainconfigs_default():
    assert sc.norm_stride([{"params": {"norm_stride": 4}}, {"params": {}}, {"params": {"norm_stride": 4}}]) == "4 or 8"
    assert sc.norm_stride([]) == "n/a"


def test_flops_figure_shows_the_subgrid_with_the_most_samplers():
    fig = sc.flops_figure(cost_table())
    (ax,) = fig.axes
    assert ax.get_title() == "sub-grid 's1'"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    widths = [p.get_width() for p in ax.patches]
    assert labels == ["uniform", "grad_norm", "var_opt", "oracle_qstar"]  # smallest first: 52, 52.01, 55, 60 GFLOPs per member
    assert widths == pytest.approx([52.0, 52.01, 55.0, 60.0])
    plt.close(fig)
