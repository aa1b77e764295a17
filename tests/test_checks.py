"""The shared checks of user-given numbers: what they accept, what they convert, and the one
line they say when they refuse."""

import math

import numpy as np
import pytest
from errors import one_line_error

from fmstudy.checks import check_float, check_int


def test_integers_in_range_are_returned_as_int():
    assert check_int("n", 3, 1) == 3
    value = check_int("n", np.int64(7), 0, 10)
    assert value == 7 and type(value) is int
    assert check_int("n", 20, 10, multiple=10) == 20


@pytest.mark.parametrize(
    "value, kw, words",
    [
        (0, {"lo": 1}, ["n=0", "an integer >= 1"]),
        (11, {"lo": 0, "hi": 10}, ["n=11", "in [0, 10]"]),
        (2.0, {"lo": 1}, ["n=2.0", "integer"]),
        (True, {"lo": 0}, ["n=True"]),
        ("3", {"lo": 0}, ["n='3'"]),
        (25, {"lo": 10, "multiple": 10}, ["n=25", "a multiple of 10"]),
        (5, {"lo": 10, "why": " (the pool has 9 rows)"}, ["n=5", "(the pool has 9 rows)"]),
    ],
)
def test_bad_integers_are_refused_naming_the_value(value, kw, words):
    msg = one_line_error(check_int, "n", value, **kw)
    assert msg.startswith(f"n={value!r} is not allowed: n must be") and all(w in msg for w in words), msg


def test_reals_in_range_are_returned_as_float():
    assert check_float("x", 1, 0.0) == 1.0 and type(check_float("x", 1, 0.0)) is float
    assert check_float("x", np.float32(0.5), 0.0, 1.0) == 0.5
    assert check_float("x", 0.0, 0.0) == 0.0  # closed ends include the bound
    assert check_float("x", -1e300) == -1e300  # no bounds: any finite number


@pytest.mark.parametrize(
    "value, kw, allowed",
    [
        (0.0, {"lo": 0.0, "lo_open": True}, "a finite number > 0"),
        (-0.1, {"lo": 0.0}, "a finite number >= 0"),
        (0.5, {"lo": 0.0, "hi": 0.5, "hi_open": True}, "a number in [0, 0.5)"),
        (1.5, {"lo": 0.0, "hi": 1.0}, "a number in [0, 1]"),
        (2.0, {"hi": 1.0}, "a finite number <= 1"),
        (math.nan, {}, "a finite number"),
        (math.inf, {"lo": 0.0}, "a finite number >= 0"),
        (False, {}, "a finite number"),
        (None, {}, "a finite number"),
    ],
)
def test_bad_reals_are_refused_naming_the_value_and_the_interval(value, kw, allowed):
    msg = one_line_error(check_float, "x", value, **kw)
    assert msg == f"x={value!r} is not allowed: x must be {allowed}", msg
