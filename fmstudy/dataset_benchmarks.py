"""The finite real datasets (STUDY.md section 3): scikit-learn's 8x8 digits and MNIST-1D,
both offline; training draws are rows of a fixed pool, the held-out rows and the labels are
kept (the labels train the feature classifier of :mod:`fmstudy.feature_classifier`). Built
through the registry, :func:`fmstudy.data.get_benchmark`.
"""

from __future__ import annotations

import functools
import os
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .benchmark_base import Benchmark, _Draw

__all__: list[str] = []  # the builders are private: fmstudy.data's registry calls them


def _pool_benchmark(name: str, opts: dict[str, Any], x: Tensor, y: Tensor, train_idx: Tensor, held_idx: Tensor) -> Benchmark:
    """A finite dataset: training draws are pool rows with replacement."""
    pool = x[train_idx].contiguous()
    pools: dict[torch.device, Tensor] = {}  # the pool on each device it was asked for, once

    def transform(u: Tensor, z: Tensor) -> Tensor:
        on = pools.setdefault(u.device, pool.to(u.device, torch.float64))
        return on[torch.floor(u[:, 0] * on.shape[0]).long().clamp(max=on.shape[0] - 1)]

    draw = _Draw(1, 0, transform)

    return Benchmark(
        name, x.shape[1], dict(opts), opts["seed"], x[held_idx].contiguous(), 512, 4, draw,
        train=pool, train_labels=y[train_idx], heldout_labels=y[held_idx], train_index=train_idx, heldout_index=held_idx,
    )


def _digits(opts: dict[str, Any]) -> Benchmark:
    """scikit-learn's bundled 8x8 digits (1797 x 64, no download), pixels 0..16 -> x/8 - 1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 8 - 1
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(opts["seed"]))
    k = opts["n_heldout"]
    return _pool_benchmark("digits", opts, x, y, perm[k:], perm[:k])


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D from the package's generator (never its download), cached because it takes
    seconds. ``make_dataset`` reseeds numpy's and Python's global RNGs, so both are restored."""
    if "matplotlib.pyplot" not in sys.modules and "MPLBACKEND" not in os.environ:
        import matplotlib  # mnist1d.utils imports pyplot; Agg keeps that import headless

        matplotlib.use("Agg")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = tuple(np.array(d[k]) for k in ("x", "x_test", "y", "y_test"))
    for a in out:
        a.setflags(write=False)  # the cache is shared: nobody may edit it in place
    return out  # type: ignore[return-value]


def _mnist1d(opts: dict[str, Any]) -> Benchmark:
    """MNIST-1D (dim 40), generated with ``seed`` (the package's default is 42; ours is 0);
    the held-out set is the generator's own test split (1000 rows for 5000 samples)."""
    xtr, xte, ytr, yte = _mnist1d_arrays(opts["seed"], opts["num_samples"])
    x = torch.tensor(np.concatenate([xtr, xte]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([ytr, yte]), dtype=torch.int64)
    n = len(xtr)
    return _pool_benchmark("mnist1d", opts, x, y, torch.arange(n), torch.arange(n, n + len(xte)))
