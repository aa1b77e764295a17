"""Noise floors cached on disk (``sample_quality(floor_cache=...)``): computed once per
benchmark and sample size, read back exactly, content-addressed, rebuilt when unreadable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmstudy import evaluate
from fmstudy.data import get_benchmark
from fmstudy.evaluate import sample_quality
from fmstudy.models import MLPConfig, VelocityEnsemble

FAST = dict(n_samples=60, ode_steps=2, w2_points=60, nll_points=20, floor_repeats=3)


@pytest.fixture(scope="module")
def setup():
    bench = get_benchmark("gmm8")
    return bench, VelocityEnsemble(MLPConfig(dim=bench.dim, hidden=16, depth=1), seeds=[0, 1])


def _no_floor(*args, **kw):
    raise AssertionError("a floor was recomputed")


def test_floors_are_computed_once_and_read_back_exactly(setup, tmp_path, monkeypatch):
    bench, model = setup
    plain = sample_quality(model, bench, **FAST)  # no cache: the floors as computed
    cached = sample_quality(model, bench, **FAST, floor_cache=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and cached.floors == plain.floors
    assert {k: tuple(v) for k, v in json.loads(files[0].read_text()).items()} == plain.floors
    monkeypatch.setattr(evaluate, "_floor", _no_floor)
    again = sample_quality(model, bench, **FAST, floor_cache=tmp_path)  # read from disk, bit for bit
    assert again.floors == plain.floors
    for k in plain.metrics:  # the members' own metrics are not cached
        np.testing.assert_array_equal(again.metrics[k], plain.metrics[k])
    with pytest.raises(AssertionError, match="recomputed"):  # another sample size: another address
        sample_quality(model, bench, **{**FAST, "n_samples": 50}, floor_cache=tmp_path)


def test_an_unreadable_cache_file_is_recomputed_and_the_env_names_the_folder(setup, tmp_path, monkeypatch):
    bench, model = setup
    monkeypatch.setenv("FMSTUDY_FLOOR_CACHE", str(tmp_path))
    first = sample_quality(model, bench, **FAST)
    (path,) = tmp_path.glob("*.json")
    path.write_text('{"sw": [1.0')  # truncated
    second = sample_quality(model, bench, **FAST)
    assert second.floors == first.floors and json.loads(path.read_text())
    path.write_text(json.dumps({"sw": [1.0, 2.0]}))  # another set of metrics: not trusted
    assert sample_quality(model, bench, **FAST).floors == first.floors
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporaries
    monkeypatch.setenv("FMSTUDY_FLOOR_CACHE", "")  # empty: no cache
    monkeypatch.setattr(evaluate, "_floor", _no_floor)
    with pytest.raises(AssertionError, match="recomputed"):
        sample_quality(model, bench, **FAST)
