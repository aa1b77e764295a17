"""Checks of the numbers a user gives: each returns the value as an ``int`` or ``float``, or
raises a one-line ``ValueError`` that names the value and says what is allowed,

    steps=0 is not allowed: steps must be an integer >= 1

so that bad input stops a run before any work starts. Booleans are refused as numbers
(``True`` is an ``int`` to Python, never a sensible count or rate here).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["check_float", "check_int"]


def check_int(name: str, value: object, lo: int, hi: int | None = None, *, multiple: int = 1, why: str = "") -> int:
    """``value`` as an ``int``: an integer (numpy's too) in ``[lo, hi]`` and a multiple of
    ``multiple``; ``why`` is added to the message (a reason for the bound)."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi) or value % multiple:
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        allowed += f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be an integer {allowed}{why}")
    return int(value)


def check_float(
    name: str,
    value: object,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    why: str = "",
) -> float:
    """``value`` as a ``float``: a finite real number in the interval from ``lo`` to ``hi``,
    each end closed unless ``lo_open``/``hi_open``; ``why`` is added to the message."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        if math.isinf(hi):
            allowed = "a finite number" + ("" if math.isinf(lo) else f" {'>' if lo_open else '>='} {lo:g}")
        elif math.isinf(lo):
            allowed = f"a finite number {'<' if hi_open else '<='} {hi:g}"
        else:
            allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}{why}")
    return float(value)
