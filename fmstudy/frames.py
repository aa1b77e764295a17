"""A check shared by the chapters' report modules (:mod:`fmstudy.adaptive_report`,
:mod:`fmstudy.adaptive_stability`, :mod:`fmstudy.cost_report`): a table handed to them has the
columns they read, or the caller hears which are missing in one line."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

__all__ = ["require_columns"]


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line ValueError naming ``what`` (e.g. "speed table"), its columns and the
    ones of ``columns`` it lacks; return None when it has them all."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"a {what} with columns {list(table.columns)} is not allowed: it needs {missing}")
