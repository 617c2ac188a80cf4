"""Typing a sample's cells: is a cell a number, a bool, a vector or text as written, what a whole column is,
and how cells are shown (cut for messages) or written as JSON. studio.inputs.sample reads files with it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

# Cells holding one of these count as empty in number / bool / vector columns (never in text columns).
NA_TOKENS = {"na", "n/a", "nan", "null", "none", "-nan"}
# linear in the cell (cells may be a megabyte long): digits before a dot are never also digits after it
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_LEADING_ZERO_RE = re.compile(r"^[+-]?0\d")
INT_RE = re.compile(r"^[+-]?\d+$")
_MAX_EXACT_DIGITS = 15  # longer digit strings are identifiers: a float would lose digits

EXAMPLE_CHARS = 60  # a cell shown as an example is cut to this length


# --------------------------------------------------------------------------------------------------
# Cells


def is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    if isinstance(v, str):
        return not v.strip()
    return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _parse_number_str(s: str) -> int | float | None:
    """A number written in a cell, or None. Zero-padded and over-long integers are not numbers (ids)."""
    t = s.strip()
    if not _NUMBER_RE.match(t) or _LEADING_ZERO_RE.match(t):
        return None
    if INT_RE.match(t):
        if len(t.lstrip("+-")) > _MAX_EXACT_DIGITS:
            return None
        return int(t)
    return float(t)


def _parse_vector_str(s: str) -> list | None:
    """A JSON array of numbers written in a cell ("[1, 2.5]"), or None."""
    t = s.strip()
    if not (t.startswith("[") and t.endswith("]")):
        return None
    try:
        v = json.loads(t)
    except (ValueError, RecursionError):  # RecursionError: "[[[[...]]]]" nested past the parser's guard
        return None
    return v if isinstance(v, list) and _numeric_list(v) else None


def _numeric_list(v: Iterable) -> bool:
    return all(_is_number(x) or isinstance(x, (bool, np.bool_)) or x is None for x in v)


def cell_kind(v: Any) -> str:
    """missing | na | bool | number | vector | str | other."""
    if is_missing(v):
        return "missing"
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if _is_number(v):
        return "number"
    if isinstance(v, np.ndarray):
        return "vector" if v.ndim == 1 and _numeric_list(v.tolist()) else "other"
    if isinstance(v, (list, tuple)):
        return "vector" if _numeric_list(v) else "other"
    if isinstance(v, str):
        t = v.strip()
        low = t.lower()
        if low in ("true", "false"):
            return "bool"
        if low in NA_TOKENS:
            return "na"
        if _parse_number_str(t) is not None:
            return "number"
        if _parse_vector_str(t) is not None:
            return "vector"
        return "str"
    return "other"


def convert_cell(v: Any, kind: str) -> Any:
    if kind == "bool":
        return bool(v) if not isinstance(v, str) else v.strip().lower() == "true"
    if kind == "number":
        return _parse_number_str(v) if isinstance(v, str) else v.item() if isinstance(v, np.generic) else v
    if kind == "vector":
        return _parse_vector_str(v) if isinstance(v, str) else [jsonable(x) for x in v]
    return v


def column_kind(values: list) -> tuple[str, list[str]]:
    """The value kind of a whole column (before name rules) and each cell's kind."""
    kinds = [cell_kind(v) for v in values]
    present = set(kinds) - {"missing"}
    if not present or present == {"na"}:
        return "empty", kinds
    typed = present - {"na"}
    if len(typed) == 1 and typed <= {"bool", "number", "vector"}:
        return typed.pop(), kinds
    if present <= {"str", "number", "na", "bool"} and "str" in present:
        return "text", kinds
    return "other", kinds


def normalize_column(values: list) -> pd.Series:
    """One column, from raw cells (CSV strings or JSON values) to a typed series.

    bool / number / vector columns are converted when every non-empty cell is of that kind; otherwise the
    cells stay as written (strings stay strings), with empty cells as missing.
    """
    kind, kinds = column_kind(values)
    if kind in ("bool", "number", "vector"):
        out = [None if k in ("missing", "na") else convert_cell(v, kind) for v, k in zip(values, kinds)]
    elif kind == "empty":
        out = [None] * len(values)
    else:
        out = [None if k == "missing" else v for v, k in zip(values, kinds)]
    if kind == "vector":
        s = pd.Series([None] * len(out), dtype=object)
        for i, v in enumerate(out):
            s.iat[i] = v
        return s
    if kind == "empty":
        return pd.Series(out, dtype=object)
    return pd.Series(out)


def shorten(v: Any, limit: int = EXAMPLE_CHARS) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        s = json.dumps(jsonable(list(v)))
    elif isinstance(v, dict):
        s = json.dumps(jsonable(v))
    elif isinstance(v, (float, np.floating)) and float(v).is_integer():
        s = str(int(v))
    else:
        s = str(jsonable(v))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def jsonable(v: Any) -> Any:
    """A value JSON can hold: numpy -> python, NaN -> None, containers recursively."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) else v if math.isfinite(v) else str(v)
    if isinstance(v, (str, int, bool)):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        return [jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (pd.Timestamp, pd.Timedelta)):
        return v.isoformat()
    return str(v)
