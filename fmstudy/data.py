"""Benchmarks by name: the registry (STUDY.md section 3).

``get_benchmark(name, **options)`` validates the options and builds a
:class:`fmstudy.benchmark_base.Benchmark` (which says what every benchmark guarantees: a fixed
held-out set, draws from the caller's generator only, fixed probes). The builders live in
:mod:`fmstudy.mixture_benchmarks` (gmm8, gmm-d: with an oracle), :mod:`fmstudy.toy_benchmarks`
(moons, checkerboard, spirals) and :mod:`fmstudy.dataset_benchmarks` (digits, mnist1d).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from .benchmark_base import Benchmark
from .checks import check_float, check_int
from .dataset_benchmarks import _digits, _mnist1d
from .mixture_benchmarks import _gmm8, _gmm_d
from .toy_benchmarks import _checkerboard, _moons, _spirals

__all__ = ["get_benchmark", "benchmark_names"]


# -- options ------------------------------------------------------------------------------
def _int(lo: int, hi: int | None = None, multiple: int = 1) -> Callable[[str, Any], int]:
    """An integer option's check (see :func:`fmstudy.checks.check_int`)."""
    return functools.partial(check_int, lo=lo, hi=hi, multiple=multiple)


def _float(lo: float, strict: bool, hi: float = 1e6) -> Callable[[str, Any], float]:
    """A real option's check: ``> lo`` (``strict``) or ``>= lo``, and at most ``hi``: a finite
    float64 such as 1e200 is still infinite in the float32 data the models train on."""
    return functools.partial(check_float, lo=lo, lo_open=strict, hi=hi, why=" (data are float32)")


_SEED = ("seed", 0, _int(0, 2**63 - 1))
_N_HELDOUT = ("n_heldout", 5000, _int(1))
_NOISE = ("noise", 0.1, _float(0.0, strict=False))


@dataclass(frozen=True)
class _Spec:
    build: Callable[[dict[str, Any]], Benchmark]
    options: tuple[tuple[str, Any, Any], ...]  # (name, default, checker)


_REGISTRY: dict[str, _Spec] = {
    "gmm8": _Spec(_gmm8, (_SEED, _N_HELDOUT, ("radius", 5.0, _float(0.0, True)), ("var", 0.1, _float(0.0, True)))),
    "gmm-d": _Spec(_gmm_d, (_SEED, _N_HELDOUT, ("dim", 8, _int(1)), ("n_components", 8, _int(1)))),
    "moons": _Spec(_moons, (_SEED, _N_HELDOUT, _NOISE)),
    "checkerboard": _Spec(_checkerboard, (_SEED, _N_HELDOUT)),
    "spirals": _Spec(_spirals, (_SEED, _N_HELDOUT, _NOISE)),
    "digits": _Spec(_digits, (_SEED, ("n_heldout", 297, _int(1, 1796)))),
    # make_dataset splits num_samples evenly over 10 classes, silently dropping a remainder,
    # then 80/20 into train/test: a multiple of 10 keeps the recorded size the real one.
    "mnist1d": _Spec(_mnist1d, (_SEED, ("num_samples", 5000, _int(10, None, 10)))),
}


def benchmark_names() -> list[str]:
    """All known benchmark names, sorted."""
    return sorted(_REGISTRY)


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """Build benchmark ``name`` (one of :func:`benchmark_names`) with ``options``; every option
    is validated (one-line ``ValueError``) before any data is generated."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown benchmark {name!r}: known benchmarks are {', '.join(benchmark_names())}")
    allowed = {key: (default, check) for key, default, check in spec.options}
    opts: dict[str, Any] = {}
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for benchmark {name!r}: allowed options are {', '.join(sorted(allowed))}"
            )
    for key, (default, check) in allowed.items():
        try:
            opts[key] = check(key, options.get(key, default))
        except ValueError as err:
            raise ValueError(f"{err} (benchmark {name!r})") from None
    return spec.build(dict(sorted(opts.items())))
