"""Tabular columns -> float32 features: which columns feed which tabular input, and their values.

A column holds numbers, true/false or JSON arrays of numbers (vectors); a categorical input one-hot encodes
its column by the model's vocabulary. The user's choice (--tabular INPUT=COL1,FIRST..LAST) is taken as
given; the other inputs are matched by name, declared width, then file order (see match_tabular).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from studio.inputs.cells import NA_TOKENS, cell_kind, convert_cell, is_missing, jsonable, shorten
from studio.inputs.sample import file_error, row_label
from studio.sources.base import LoadedModel, ModelInput


def tabular_values(df: pd.DataFrame, col: str, fill: float | None, file: str) -> np.ndarray:
    """One tabular column -> float32 [rows, width]."""
    series = df[col]
    has_na = bool(series.isna().any())
    if pd.api.types.is_bool_dtype(series.dtype) and not has_na:
        return np.array(series.to_numpy(dtype=np.float32), dtype=np.float32).reshape(-1, 1)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return _numeric_values(series, col, fill, file)
    rows: list[list[float] | None] = []
    scalar_rows, vector_rows = [], []
    for i, v in enumerate(series.tolist()):
        kind = cell_kind(v)
        if kind in ("missing", "na"):
            if fill is None:
                _bad_cell(file, col, i, v, fill)
            rows.append(None)
            continue
        if kind == "bool":
            rows.append([1.0 if convert_cell(v, "bool") else 0.0])
            scalar_rows.append(i)
        elif kind == "number":
            x = float(convert_cell(v, "number"))
            if not math.isfinite(x):
                _bad_cell(file, col, i, v, fill)
            rows.append([x])
            scalar_rows.append(i)
        elif kind == "vector":
            rows.append(_vector_cell(convert_cell(v, "vector"), col, i, fill, file))
            vector_rows.append(i)
        else:
            _bad_cell(file, col, i, v, fill)
    width = _common_width(rows, scalar_rows, vector_rows, col, file)
    return np.asarray([r if r is not None else [fill] * width for r in rows], dtype=np.float32).reshape(-1, width)


def _numeric_values(series: pd.Series, col: str, fill: float | None, file: str) -> np.ndarray:
    """A numeric column -> float32 [rows, 1]: empty cells filled (or refused), non-finite ones refused."""
    arr = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64).reshape(-1, 1)
    bad = np.where(~np.isfinite(arr[:, 0]))[0]
    for i in bad:
        if np.isnan(arr[i, 0]) and fill is not None:
            arr[i, 0] = fill
        else:
            _bad_cell(file, col, int(i), series.iat[int(i)], fill)
    return arr.astype(np.float32)


def _vector_cell(vec: list, col: str, i: int, fill: float | None, file: str) -> list[float]:
    """One list cell (row i) -> its finite floats, empty elements filled (or refused)."""
    if not vec:
        raise file_error(file, f"column {col!r}, {row_label(i)}: the list is empty.", column=col, row=i + 1)
    vals = []
    for j, x in enumerate(vec):
        if x is None or (isinstance(x, float) and math.isnan(x)):
            if fill is None:
                raise file_error(
                    file,
                    f"column {col!r}, {row_label(i)}: element {j + 1} of the list is empty.",
                    column=col,
                    row=i + 1,
                    hint="Set a fill value for empty cells, or fix it.",
                )
            x = fill
        x = float(x)
        if not math.isfinite(x):
            raise file_error(
                file,
                f"column {col!r}, {row_label(i)}: element {j + 1} of the list is {x}, not a finite number.",
                column=col,
                row=i + 1,
            )
        vals.append(x)
    return vals


def _common_width(
    rows: list[list[float] | None], scalar_rows: list[int], vector_rows: list[int], col: str, file: str
) -> int:
    """The one width every filled row has (1 when none is filled); mixed or ragged rows are refused."""
    if scalar_rows and vector_rows:
        i = vector_rows[0] if vector_rows[0] > scalar_rows[0] else scalar_rows[0]
        raise file_error(
            file,
            f"column {col!r} mixes single numbers ({row_label(scalar_rows[0])}) and lists "
            f"({row_label(vector_rows[0])}); every row needs the same number of features.",
            column=col,
            row=i + 1,
        )
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        w0 = len(next(r for r in rows if r is not None))
        i, ragged = next((i, r) for i, r in enumerate(rows) if r is not None and len(r) != w0)
        raise file_error(
            file,
            f"column {col!r}, {row_label(i)}: the list has {len(ragged)} numbers but earlier rows "
            f"have {w0} (ragged lists).",
            column=col,
            row=i + 1,
            hint="Every row of a vector column needs the same length.",
        )
    return widths.pop() if widths else 1


def one_hot(df: pd.DataFrame, col: str, vocab: list[str], name: str, file: str) -> np.ndarray:
    """A categorical column -> float32 one-hot [rows, len(vocab)], by the model's own vocabulary."""
    index = {str(v): k for k, v in enumerate(vocab)}
    out = np.zeros((len(df), len(vocab)), dtype=np.float32)
    for i, v in enumerate(df[col].tolist()):
        if is_missing(v):
            raise file_error(
                file,
                f"column {col!r}, {row_label(i)}: the value is empty, and the model's categorical "
                f"input {name!r} takes one of: {columns_text(list(vocab), 20)}.",
                column=col,
                row=i + 1,
                hint="Fill the cell with one of those categories, or drop the row.",
            )
        key = str(jsonable(v)).strip()
        if key not in index:
            raise file_error(
                file,
                f"column {col!r}, {row_label(i)}: {shorten(v)!r} is not a category the model "
                f"knows for input {name!r}: {columns_text(list(vocab), 20)}.",
                column=col,
                row=i + 1,
                hint="The checkpoint's vocabulary is fixed at training; map the value to one of those.",
            )
        out[i, index[key]] = 1.0
    return out


def _bad_cell(file: str, col: str, i: int, v: Any, fill: float | None):
    if is_missing(v) or (isinstance(v, str) and v.strip().lower() in NA_TOKENS):
        raise file_error(
            file,
            f"column {col!r}, {row_label(i)}: the value is empty ({shorten(v)!r}) and the column is mapped tabular.",
            column=col,
            row=i + 1,
            hint="Fill the cell, drop the row, set a fill value for empty cells "
            "(--fill-value in the CLI), or map the column to ignore.",
        )
    raise file_error(
        file,
        f"column {col!r}, {row_label(i)}: {shorten(v)!r} is not a number, true/false, or a list of numbers.",
        column=col,
        row=i + 1,
        hint="Tabular columns take numbers, true/false, 0/1, or JSON arrays of numbers like "
        "[1, 2.5]; map the column to text or ignore otherwise.",
    )


def describe_inputs(inputs: list[ModelInput]) -> str:
    def one(i: ModelInput) -> str:
        where = f"column {i.column!r}" if i.column else "any column"
        return f"{i.name!r} ({where}{f', width {i.width}' if i.width else ''})"

    return ", ".join(one(i) for i in inputs) or "none"


def columns_text(cols: list[str], limit: int = 12) -> str:
    shown = ", ".join(map(repr, cols[:limit]))
    return shown + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def _column_range(item: str, columns: list[str], file: str, what: str) -> list[str] | None:
    """'first..last' -> the columns from first to last, in file order (None when it is no such range)."""
    pos = item.find("..")
    while pos != -1:
        a, b = item[:pos].strip(), item[pos + 2 :].strip()
        if a in columns and b in columns:
            i, j = columns.index(a), columns.index(b)
            if i > j:
                raise file_error(
                    file,
                    f"{what}: the range {item!r} runs backwards ({b!r} comes before {a!r} in the file).",
                    column=a,
                    hint=f"Write it {b}..{a}.",
                )
            return columns[i : j + 1]
        pos = item.find("..", pos + 1)
    return None


def expand_columns(items: Iterable[str], columns: list[str], file: str = "", what: str = "--tabular") -> list[str]:
    """Column names and `first..last` ranges (in file order) -> the column names, in the order given."""
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item in columns:
            out.append(item)
            continue
        rng = _column_range(item, columns, file, what)
        if rng is None:
            close = difflib.get_close_matches(item, columns, n=1)
            raise file_error(
                file,
                f"{what}: {item!r} is not a column of the file, nor a range 'first..last' of two of "
                f"them. Columns in the file: {columns_text(columns, 40)}.",
                column=item,
                hint=f"Did you mean {close[0]!r}?" if close else None,
            )
        out.extend(rng)
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise file_error(file, f"{what}: column(s) {columns_text(dupes)} are listed more than once.", column=dupes[0])
    return out


def explicit_feeds(
    df: pd.DataFrame, model: LoadedModel, raw: Mapping[str, Iterable[str] | str] | None, file: str
) -> dict[str, list[str]]:
    """The user's choice (spec.tabular: {input: [columns or 'first..last' ranges]}) -> {input: [columns]}, checked."""
    if not raw:
        return {}
    names = [i.name for i in model.tabular_inputs]
    columns = list(df.columns)
    feeds: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, items in raw.items():
        name = str(name).strip()
        if name not in names:
            other = next((i for i in model.inputs if i.name == name), None)
            why = (
                f"{name!r} is a text input ({other.kind})" if other is not None else f"the model has no input {name!r}"
            )
            raise file_error(
                file,
                f"--tabular {name}=...: {why}; its tabular inputs are: {describe_inputs(model.tabular_inputs)}.",
                hint="Name one of those inputs.",
            )
        items = [items] if isinstance(items, str) else list(items)
        cols = expand_columns(items, columns, file, what=f"--tabular {name}")
        if not cols:
            raise file_error(file, f"--tabular {name}= names no column.")
        for c in cols:
            if c in owner:
                raise file_error(
                    file, f"column {c!r} is chosen to feed both {owner[c]!r} and {name!r} (--tabular).", column=c
                )
            owner[c] = name
        feeds[name] = cols
    return feeds


def _named_feeds(
    df: pd.DataFrame, model: LoadedModel, roles: dict[str, str], file: str, feeds: dict[str, list[str]]
) -> list[ModelInput]:
    """Inputs that name their column take it (added to feeds); returns the inputs whose column the file lacks."""
    claimed: set[str] = {c for cols in feeds.values() for c in cols}
    absent: list[ModelInput] = []
    for inp in model.tabular_inputs:
        if not inp.column or inp.name in feeds:
            continue
        if inp.column not in df.columns:
            absent.append(inp)
            continue
        if roles[inp.column] != "tabular" or inp.column in claimed:
            if inp.required:
                why = (
                    f"is chosen to feed {next(n for n, c in feeds.items() if inp.column in c)!r} (--tabular)"
                    if inp.column in claimed
                    else f"is mapped {roles[inp.column]!r}"
                )
                hint = (
                    f"Leave it out of that --tabular list, or choose the columns of {inp.name!r} too "
                    f"(--tabular {inp.name}=COL)."
                    if inp.column in claimed
                    else f"Map it tabular (--role {inp.column}=tabular)."
                )
                raise file_error(
                    file,
                    f"column {inp.column!r} feeds the model's tabular input {inp.name!r} but {why}.",
                    column=inp.column,
                    hint=hint,
                )
            continue
        feeds[inp.name] = [inp.column]
        claimed.add(inp.column)
    return absent


def _check_absent(absent: list[ModelInput], rest_cols: list[str], columns: list[str], file: str, width_of) -> None:
    """A required input naming a column the file does not have is an error naming what the file has."""
    for inp in absent:
        if inp.required:
            width = f", width {inp.width}" if inp.width else ""
            found = (
                f"; the columns mapped tabular give {sum(width_of(c) for c in rest_cols)} feature(s): "
                f"{columns_text(rest_cols)}"
                if inp.width and rest_cols
                else ""
            )
            raise file_error(
                file,
                f"the model needs the tabular field {inp.column!r} (input {inp.name!r}{width}), "
                f"but the file has no such column{found}. Columns in the file: "
                f"{columns_text(columns, 40)}.",
                column=inp.column,
                hint="Rename the column in the file to the field name the model "
                "was trained with, or choose its columns with --tabular "
                f"{inp.name}=COL1,COL2,... (ranges: FIRST..LAST).",
            )


def _feeds_by_width(
    rest_inputs: list[ModelInput], rest_cols: list[str], file: str, width_of, feeds: dict[str, list[str]]
) -> list[str]:
    """Inputs of declared widths take the columns left, in file order, until each is full; returns the rest."""
    left = list(rest_cols)
    for inp in rest_inputs:
        width = inp.width or 0  # the caller passes only inputs of declared widths
        take, total = [], 0
        while left and total < width:
            take.append(left.pop(0))
            total += width_of(take[-1])
        if total != width and (take or inp.required):
            raise file_error(
                file,
                f"the model's tabular input {inp.name!r} expects width {inp.width}, but the "
                f"columns mapped tabular, in file order, give it {total} feature(s)"
                f"{': ' + columns_text(take) if take else ''} (inputs: "
                f"{describe_inputs(rest_inputs)}).",
                column=take[-1] if take else None,
                hint="Choose each input's columns with --tabular NAME=COL1,COL2,... (ranges: FIRST..LAST).",
            )
        if take:
            feeds[inp.name] = take
    return left


def match_tabular(
    df: pd.DataFrame,
    model: LoadedModel,
    roles: dict[str, str],
    file: str,
    explicit: dict[str, list[str]] | None = None,
    width_of=lambda col: 1,
) -> dict[str, list[str]]:
    """Graph input name -> the columns feeding it (in order), in model.inputs order; only inputs fed.

    explicit: the user's choice (--tabular), taken as given. Then inputs that name their column take it;
    the columns mapped tabular that are left feed the remaining inputs in file order: all of them to a
    single remaining input (a feature vector from many columns), else by the inputs' declared widths,
    else one column per input. width_of(column) gives a column's features per row."""
    tab_inputs = model.tabular_inputs
    feeds: dict[str, list[str]] = {n: list(c) for n, c in (explicit or {}).items()}
    absent = _named_feeds(df, model, roles, file, feeds)
    claimed = {c for cols in feeds.values() for c in cols}
    rest_cols = [c for c in df.columns if roles[c] == "tabular" and c not in claimed]
    rest_inputs = [i for i in tab_inputs if not i.column and i.name not in feeds]

    # a field the file has no column of, declared wider than one feature, and the only input left:
    # the columns mapped tabular feed it in file order when their widths add up to its width
    if (
        len(absent) == 1
        and not rest_inputs
        and rest_cols
        and (absent[0].width or 0) > 1
        and sum(width_of(c) for c in rest_cols) == (absent[0].width or 0)
    ):
        feeds[absent[0].name], rest_cols, absent = rest_cols, [], []
    _check_absent(absent, rest_cols, list(df.columns), file, width_of)

    if len(rest_inputs) == 1 and rest_cols:  # one input left: every column left feeds it, in file order
        feeds[rest_inputs[0].name], rest_cols, rest_inputs = rest_cols, [], []
    elif len(rest_inputs) > 1 and rest_cols and all(i.width for i in rest_inputs):
        rest_cols = _feeds_by_width(rest_inputs, rest_cols, file, width_of, feeds)
        rest_inputs = [i for i in rest_inputs if i.name not in feeds]
    if len(rest_cols) > len(rest_inputs):
        extra = rest_cols[len(rest_inputs) :] if rest_inputs else rest_cols
        raise file_error(
            file,
            f"column(s) {columns_text(extra)} are mapped tabular, but the model takes "
            f"tabular fields: {describe_inputs(tab_inputs)}.",
            column=extra[0],
            hint="Map the extra column(s) to ignore (e.g. --role "
            f"{extra[0]}=ignore), or choose each input's columns with --tabular NAME=COL1,COL2,...",
        )
    missing = [i for i in rest_inputs[len(rest_cols) :] if i.required]
    if missing:
        raise file_error(
            file,
            f"the model needs {len(rest_inputs)} tabular column(s) for input(s) "
            f"{describe_inputs(rest_inputs)}, but {len(rest_cols)} "
            f"{'is' if len(rest_cols) == 1 else 'are'} mapped tabular"
            f"{': ' + columns_text(rest_cols) if rest_cols else ''}.",
            hint="Map more numeric columns to tabular (they feed the inputs in file order).",
        )
    for inp, col in zip(rest_inputs, rest_cols):
        feeds[inp.name] = [col]
    return {i.name: feeds[i.name] for i in tab_inputs if i.name in feeds}
