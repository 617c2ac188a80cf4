"""Sample file + role mapping -> named tensors.

A person uploads a few real rows (CSV / TSV / JSON / JSONL) and says which columns are text, which are
tabular (numeric features) and which to ignore. This module reads the file without guessing away
information (zero-padded ids stay strings), describes and suggests roles for each column, and turns the
mapping into the named tensors the model takes (tokenizing text, coercing tabular values).

Row numbers in messages are 1-based and count data rows only (the header is not counted), so
"row 3" is the third record of a JSON file or the third line under the header of a CSV file.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from .errors import BatchError, CheckpointError
from .spec import ROLES, SampleLimits, parse_sample_limits
from .sources.base import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS, LoadedModel, ModelInput

ROW_CONVENTION = "1-based, header not counted"

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUPPORTED_SUFFIXES = tuple(CSV_SUFFIXES) + JSON_SUFFIXES + JSONL_SUFFIXES
SNIFF_DELIMITERS = ",\t;|"
SNIFF_CHARS = 4096  # csv.Sniffer is quadratic in its input (64 KiB of `,"` took 48 s): sniff the start only

# Cells holding one of these count as empty in number / bool / vector columns (never in text columns).
NA_TOKENS = {"na", "n/a", "nan", "null", "none", "-nan"}
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LEADING_ZERO_RE = re.compile(r"^[+-]?0\d")
_INT_RE = re.compile(r"^[+-]?\d+$")
_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.:/#]*$")
_MAX_EXACT_DIGITS = 15  # longer digit strings are identifiers: a float would lose digits

ID_TOKENS = {"id", "ids", "uuid", "guid", "key", "pk"}
LABEL_NAMES = {"label", "labels", "target", "targets", "y", "class", "classes", "gold"}
LABEL_TOKENS = {"label", "labels", "target", "class"}
INDEX_NAMES = {"index", "idx", ""}

# "Long / free text": several words on average, a long average length, or some long values.
TEXT_MEAN_WORDS, TEXT_MEAN_CHARS, TEXT_MAX_WORDS = 3.0, 25.0, 6
EXAMPLE_CHARS = 60


# --------------------------------------------------------------------------------------------------
# Public types


@dataclass
class ColumnInfo:
    """What the studio sees in one column (shown in the app's role table and the CLI)."""

    name: str
    detected: str  # "text" | "number" | "bool" | "vector" | "id" | "empty" | "other"
    example: str  # first non-empty value, shortened for display
    suggested: str  # "text" | "tabular" | "ignore"
    reason: str = ""  # why that suggestion, in a few words
    missing: int = 0  # empty cells


@dataclass
class Batch:
    """Named tensors built from a sample file and a role mapping."""

    tensors: dict[str, torch.Tensor]  # graph input name -> tensor, in model.inputs order (only inputs fed)
    roles: dict[str, str]  # final role of EVERY column in the file, in file order
    rows: int
    text_columns: list[str]
    tabular: dict[str, list[str]]  # graph input name -> the columns feeding it, in order (concatenated)
    ignored: dict[str, list]  # ignored column -> JSON-able values per row (shown beside predictions)
    tokenizer_settings: dict  # {"max_length", "padding", "truncation", "id_dtype", "pair": bool}
    file: str
    widths: dict[str, int] = field(default_factory=dict)  # tabular graph input -> features per row
    # tabular graph input -> [{"column", "start", "width"}]: which feature indices each column fills
    features: dict[str, list[dict]] = field(default_factory=dict)
    # odd cells used as they are (empty text, ...), the max length lowered to the model's positions, ...
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Cells and columns


def _is_missing(v: Any) -> bool:
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
    if _INT_RE.match(t):
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


def _cell_kind(v: Any) -> str:
    """missing | na | bool | number | vector | str | other."""
    if _is_missing(v):
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


def _convert(v: Any, kind: str) -> Any:
    if kind == "bool":
        return bool(v) if not isinstance(v, str) else v.strip().lower() == "true"
    if kind == "number":
        return _parse_number_str(v) if isinstance(v, str) else v.item() if isinstance(v, np.generic) else v
    if kind == "vector":
        return _parse_vector_str(v) if isinstance(v, str) else [_jsonable(x) for x in v]
    return v


def _column_kind(values: list) -> tuple[str, list[str]]:
    """The value kind of a whole column (before name rules) and each cell's kind."""
    kinds = [_cell_kind(v) for v in values]
    present = set(kinds) - {"missing"}
    if not present or present == {"na"}:
        return "empty", kinds
    typed = present - {"na"}
    if len(typed) == 1 and typed <= {"bool", "number", "vector"}:
        return typed.pop(), kinds
    if present <= {"str", "number", "na", "bool"} and "str" in present:
        return "text", kinds
    return "other", kinds


def _normalize(values: list) -> pd.Series:
    """One column, from raw cells (CSV strings or JSON values) to a typed series.

    bool / number / vector columns are converted when every non-empty cell is of that kind; otherwise the
    cells stay as written (strings stay strings), with empty cells as missing.
    """
    kind, kinds = _column_kind(values)
    if kind in ("bool", "number", "vector"):
        out = [None if k in ("missing", "na") else _convert(v, kind) for v, k in zip(values, kinds)]
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


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def _id_like_name(name: str) -> bool:
    low = name.strip().lower()
    if low in INDEX_NAMES or low.startswith("unnamed:"):
        return True
    toks = _tokens(name)
    return bool(toks) and (toks[-1] in ID_TOKENS or low.endswith(("uuid", "guid")))


def _label_like_name(name: str) -> bool:
    low = name.strip().lower()
    toks = _tokens(name)
    return low in LABEL_NAMES or (bool(toks) and (toks[-1] in LABEL_TOKENS or toks[0] == "label"))


def _code_like(values: list[str]) -> bool:
    """Unique short alphanumeric codes with digits (order numbers, uuids, SKUs)."""
    vals = [v.strip() for v in values]
    return (bool(vals) and len(set(vals)) == len(vals)
            and all(len(v) <= 64 and _CODE_RE.match(v) and any(c.isdigit() for c in v) for v in vals))


def _free_text(values: list[str]) -> bool:
    if not values:
        return False
    words = [len(v.split()) for v in values]
    return (sum(words) / len(words) >= TEXT_MEAN_WORDS
            or sum(len(v) for v in values) / len(values) >= TEXT_MEAN_CHARS
            or max(words) >= TEXT_MAX_WORDS)


def _shorten(v: Any, limit: int = EXAMPLE_CHARS) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        s = json.dumps(_jsonable(list(v)))
    elif isinstance(v, dict):
        s = json.dumps(_jsonable(v))
    elif isinstance(v, (float, np.floating)) and float(v).is_integer():
        s = str(int(v))
    else:
        s = str(_jsonable(v))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _jsonable(v: Any) -> Any:
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
        return [_jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (pd.Timestamp, pd.Timedelta)):
        return v.isoformat()
    return str(v)


# --------------------------------------------------------------------------------------------------
# Reading


def _err(file: str, message: str, **kw) -> BatchError:
    return BatchError(f"{file}: {message}" if file else message, file=file or None, **kw)


def read_sample(path, limits: SampleLimits | None = None) -> pd.DataFrame:
    """Read a sample file (CSV, TSV, JSON, JSONL) into a frame. Raises BatchError naming the file.

    Every cell is read as written and typed per column afterwards: a column becomes numbers only when
    every non-empty cell is a plain number (zero-padded codes like "00123" keep the column as strings),
    bools when every cell is true/false, lists when every cell is a JSON array of numbers. The same
    content gives the same frame whatever the format. `df.attrs["file"]` holds the file name.

    limits: what the file may hold (size, rows, columns, cell length, JSON depth and keys), checked while
    it is read; default `SampleLimits()`. Going past one is a BatchError naming the limit.
    """
    limits = parse_sample_limits(limits)
    p = Path(path).expanduser()
    name = p.name or str(path)
    if not p.exists():
        raise _err(name, f"sample file {p} does not exist.")
    if p.is_dir():
        raise _err(name, f"{p} is a folder, not a sample file.")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _err(name, f"unsupported sample file type {suffix or '(no extension)'!r}.",
                   hint=f"Supported: {', '.join(SUPPORTED_SUFFIXES)} (CSV/TSV with a header row, "
                        "JSON records or columns, JSON Lines).")
    with open(p, "rb") as f:  # never more than the limit in memory, whatever the file's size says
        raw = f.read(limits.size + 1)
    if len(raw) > limits.size:
        raise _over(name, limits, "size", f"the file is larger than {_bytes(limits.size)}")
    if not raw.strip():
        raise _err(name, "the file is empty.")
    if b"\x00" in raw[:8192]:
        raise _err(name, "the file is binary, not text (a spreadsheet?).",
                   hint="Export it as CSV (UTF-8) or JSON.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # never fails; Excel-style exports are usually cp1252/latin-1
    del raw

    if suffix in CSV_SUFFIXES:
        columns = _read_delimited(text, CSV_SUFFIXES[suffix], name, limits)
    elif suffix in JSONL_SUFFIXES:
        columns = _read_jsonl(text, name, limits)
    else:
        columns = _read_json(text, name, limits)
    df = _frame(columns, name, limits)
    df.attrs["file"] = name
    return df


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:,} bytes"


def _over(file: str, limits: SampleLimits, key: str, what: str, **kw) -> BatchError:
    """The error for a sample past one of its limits: what was found, the limit, the option raising it."""
    value = getattr(limits, key)
    shown = _bytes(value) if key == "size" else f"{value:,}"
    return _err(file, f"{what}: past the sample limit {key}={shown}.",
                hint=f"The sample is a few real rows: cut it down, or raise the limit: {limits.hint(key)} "
                     "(studio convert, studio roles, studio app).", **kw)


def _frame(columns: dict[str, list], name: str, limits: SampleLimits) -> pd.DataFrame:
    if not columns:
        raise _err(name, "no columns found.")
    rows = len(next(iter(columns.values())))
    if rows == 0:
        raise _err(name, "the file has no data rows (only a header, or an empty list).")
    if rows * len(columns) > limits.cells:
        raise _over(name, limits, "cells", f"{rows:,} rows x {len(columns):,} columns are "
                                           f"{rows * len(columns):,} cells")
    return pd.DataFrame({c: _normalize(v) for c, v in columns.items()}, index=pd.RangeIndex(rows))


def _check_names(names: list[str], name: str) -> list[str]:
    out = []
    for i, n in enumerate(names):
        n = "" if n is None or (isinstance(n, float) and math.isnan(n)) else str(n).strip()
        out.append(n or f"Unnamed: {i}")
    dupes = _duplicates(out)
    if dupes:
        raise _err(name, f"duplicate column name(s): {', '.join(map(repr, dupes))}.",
                   column=dupes[0], hint="Rename the columns so that each name is unique.")
    return out


def _duplicates(names: list[str]) -> list[str]:
    """Names that occur more than once, sorted (one pass: a file may have thousands of columns)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)


def _pick_delimiter(text: str, default: str | None) -> str:
    header = _first_line(text)
    if default == "\t":
        return "\t"
    if default == "," and ("," in header or not any(d in header for d in ";\t|")):
        return ","
    # Unsure (.txt, or a .csv whose header has no comma): sniff, then fall back to the header's counts.
    try:
        return csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in SNIFF_DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _first_line(text: str) -> str:
    """The first non-blank line, without splitting the whole file."""
    for m in re.finditer(r"[^\r\n]*", text):
        if m.group().strip():
            return m.group()
    return ""


def _read_delimited(text: str, default: str | None, name: str, limits: SampleLimits) -> dict[str, list]:
    sep = _pick_delimiter(text, default)
    fields = _first_line(text).count(sep) + 1  # a quoted separator counts too: the checks after parsing are exact
    if fields > limits.columns:
        raise _over(name, limits, "columns", f"the header line has {fields:,} fields")
    most = min(limits.rows, max(1, limits.cells // fields))  # data rows worth parsing at all
    try:
        raw = pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False,
                          skip_blank_lines=True, nrows=most + 2)  # header + rows + one too many
    except pd.errors.EmptyDataError as e:
        raise _err(name, f"the file is empty ({e}).") from e
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        msg = " ".join(str(e).split())
        m = re.search(r"line (\d+)", msg)
        where = f" (file line {m.group(1)})" if m else ""
        raise _err(name, f"could not be parsed as {'tab' if sep == chr(9) else repr(sep)}-separated "
                         f"text{where}: {msg[:500]}",
                   hint="Check quoting and that every row has as many fields as the header.") from e
    if raw.shape[0] == 0:
        raise _err(name, "the file is empty.")
    if raw.shape[1] > limits.columns:
        raise _over(name, limits, "columns", f"the file has {raw.shape[1]:,} columns")
    if raw.shape[0] - 1 > limits.rows:
        raise _over(name, limits, "rows", f"the file has more than {limits.rows:,} data rows")
    if (raw.shape[0] - 1) * raw.shape[1] > limits.cells:
        raise _over(name, limits, "cells", f"{raw.shape[1]:,} columns x at least {raw.shape[0] - 1:,} rows are "
                                           f"more than {limits.cells:,} cells")
    if len(text) > limits.cell:  # else no cell can be longer
        for i in range(raw.shape[1]):
            lengths = raw.iloc[:, i].str.len()
            if int(lengths.max()) > limits.cell:
                row = int(lengths.to_numpy().argmax())
                col = _shorten(raw.iat[0, i]) if row else f"{i + 1}"
                where = f"the name of column {i + 1}" if row == 0 else f"column {col!r}, {_row(row - 1)}"
                raise _over(name, limits, "cell", f"{where} holds {int(lengths.max()):,} characters",
                            row=row or None)
    names = _check_names(raw.iloc[0].tolist(), name)
    body = raw.iloc[1:]
    return {n: body.iloc[:, i].tolist() for i, n in enumerate(names)}


class _DuplicateKey(ValueError):
    pass


def _loads(text: str, name: str, limits: SampleLimits, where: str = ""):
    """json.loads with the sample's limits: keys per object while parsing, then depth and string length."""
    def pairs_hook(pairs):
        if len(pairs) > limits.keys:
            raise _over(name, limits, "keys", f"{where}a JSON object has {len(pairs):,} keys")
        seen: dict = {}
        for k, v in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen[k] = v
        return seen
    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook)
    except RecursionError as e:  # the C parser's own guard, far past any sample limit
        raise _over(name, limits, "depth", f"{where}the JSON is nested more than {limits.depth} levels deep "
                                           "(deeper than the JSON reader goes)") from e
    _check_tree(obj, name, limits, where)
    return obj


def _check_tree(obj: Any, name: str, limits: SampleLimits, where: str = "") -> None:
    """Nesting depth and string lengths of parsed JSON, without recursion (the JSON is untrusted)."""
    stack = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if len(v) > limits.cell:
                raise _over(name, limits, "cell", f"{where}a JSON string holds {len(v):,} characters")
            continue
        if not isinstance(v, (dict, list)):
            continue
        if depth > limits.depth:
            raise _over(name, limits, "depth", f"{where}the JSON is nested more than {limits.depth} levels deep")
        if isinstance(v, dict):
            for k in v:
                if len(k) > limits.cell:
                    raise _over(name, limits, "cell", f"{where}a JSON key holds {len(k):,} characters")
            stack.extend((x, depth + 1) for x in v.values())
        else:
            stack.extend((x, depth + 1) for x in v)


def _read_json(text: str, name: str, limits: SampleLimits) -> dict[str, list]:
    try:
        obj = _loads(text, name, limits)
    except _DuplicateKey as e:
        raise _err(name, f"duplicate column name {e.args[0]!r} (a key repeated in one object).",
                   column=str(e.args[0])) from e
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values one after another: JSON Lines with a .json name
            try:
                return _read_jsonl(text, name, limits)
            except BatchError:
                pass
        raise _err(name, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
                   hint="Expected an array of records [{...}, ...], columns {\"col\": [...]}, "
                        "or {\"data\": [records]}.") from e
    return _json_columns(obj, name, limits)


def _read_jsonl(text: str, name: str, limits: SampleLimits) -> dict[str, list]:
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        if len(records) == limits.rows:  # refused before the line past the limit is parsed
            raise _over(name, limits, "rows", f"the file has more than {limits.rows:,} records")
        try:
            rec = _loads(line, name, limits, where=f"line {lineno}: ")
        except _DuplicateKey as e:
            raise _err(name, f"line {lineno}: duplicate column name {e.args[0]!r}.", column=str(e.args[0])) from e
        except json.JSONDecodeError as e:
            raise _err(name, f"line {lineno} is not valid JSON: {e.msg} (column {e.colno}).") from e
        if not isinstance(rec, dict):
            raise _err(name, f"line {lineno} holds a JSON {type(rec).__name__}, expected an object "
                             "(one record per line).")
        records.append(rec)
    if not records:
        raise _err(name, "the file has no records.")
    return _records(records, name, limits)


def _records(records: list, name: str, limits: SampleLimits, what: str = "item") -> dict[str, list]:
    if not records:
        raise _err(name, "the file has no data rows (an empty list of records).")
    if len(records) > limits.rows:
        raise _over(name, limits, "rows", f"the file has {len(records):,} records")
    cols: dict[str, None] = {}
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise _err(name, f"{what} {i} is a JSON {type(rec).__name__}, expected an object with one "
                             "key per column.", row=i)
        for k in rec:
            cols.setdefault(str(k), None)
        if len(cols) > limits.columns:
            raise _over(name, limits, "columns", f"the records have more than {limits.columns:,} different "
                                                 f"keys (columns) by {what} {i}", row=i)
    return {c: [rec.get(c) for rec in records] for c in cols}


def _int_keys(keys: Iterable) -> bool:
    return all(isinstance(k, str) and _INT_RE.match(k) for k in keys)


def _json_columns(obj: Any, name: str, limits: SampleLimits) -> dict[str, list]:
    if isinstance(obj, list):
        if obj and all(isinstance(r, list) for r in obj):  # pandas orient="values": rows without names
            for i, r in enumerate(obj, 1):
                if len(r) != len(obj[0]):
                    raise _err(name, f"row {i} ({ROW_CONVENTION}) has {len(r)} values, expected "
                                     f"{len(obj[0])} (as in row 1).", row=i)
            return {str(j): [r[j] for r in obj] for j in range(len(obj[0]))}
        return _records(obj, name, limits)
    if not isinstance(obj, dict):
        raise _err(name, f"holds a JSON {type(obj).__name__}; expected an array of records or an object "
                         "of columns.")
    for key in ("data", "rows", "records"):
        data = obj.get(key)
        if not isinstance(data, list):
            continue
        split = isinstance(obj.get("columns"), list) and all(isinstance(r, list) for r in data)
        if split or (data and all(isinstance(r, dict) for r in data)):
            if split:
                # pandas orient="split": {"columns": [...], "data": [[...], ...]}
                if len(obj["columns"]) > limits.columns:
                    raise _over(name, limits, "columns", f"\"columns\" lists {len(obj['columns']):,} names")
                if len(data) > limits.rows:
                    raise _over(name, limits, "rows", f"\"{key}\" holds {len(data):,} rows")
                names = _check_names(obj["columns"], name)
                for i, r in enumerate(data, 1):
                    if len(r) != len(names):
                        raise _err(name, f"row {i} ({ROW_CONVENTION}) has {len(r)} values, "
                                         f"expected {len(names)} (one per column).", row=i)
                return {n: [r[j] for r in data] for j, n in enumerate(names)}
            return _records(data, name, limits, what=f'"{key}" item')
    if not obj:
        raise _err(name, "the JSON object is empty.")
    if len(obj) > limits.columns:
        raise _over(name, limits, "columns", f"the JSON object has {len(obj):,} keys (columns)")
    values = list(obj.values())
    if all(isinstance(v, list) for v in values):  # {"col": [..], ...}
        lengths = {k: len(v) for k, v in obj.items()}
        if len(set(lengths.values())) > 1:
            raise _err(name, "columns have different lengths: "
                             + ", ".join(f"{k!r}: {n}" for k, n in list(lengths.items())[:20]) + ".")
        if values and len(values[0]) > limits.rows:
            raise _over(name, limits, "rows", f"the columns hold {len(values[0]):,} rows")
        return {str(k): list(v) for k, v in obj.items()}
    if all(isinstance(v, dict) for v in values) and _int_keys(obj) and not _int_keys(
            {k for v in values for k in v}):  # pandas orient="index": {"0": {"col": v, ...}, ...}
        return _records(values, name, limits, what="row")
    if all(isinstance(v, dict) for v in values):  # pandas orient="columns": {"col": {"0": v, ...}}
        index: dict[str, None] = {}
        for v in values:
            for k in v:
                index.setdefault(k, None)
            if len(index) > limits.rows:
                raise _over(name, limits, "rows", f"the columns hold more than {limits.rows:,} rows")
        return {str(c): [v.get(k) for k in index] for c, v in obj.items()}
    if not any(isinstance(v, (list, dict)) for v in values):  # one record
        return {str(k): [v] for k, v in obj.items()}
    raise _err(name, "mixes lists and single values at the top level; expected an array of records, "
                     "an object of equal-length column lists, or {\"data\": [records]}.")




# --------------------------------------------------------------------------------------------------
# Describing and suggesting


def _prepared(df: pd.DataFrame, file: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise BatchError(f"Expected a pandas DataFrame, got {type(df).__name__}.", file=file or None)
    names = [str(c) for c in df.columns]
    dupes = _duplicates(names)
    if dupes:
        raise _err(file, f"duplicate column name(s): {', '.join(map(repr, dupes))}.", column=dupes[0])
    if list(df.columns) != names or not isinstance(df.index, pd.RangeIndex) or df.index.start != 0:
        df = df.copy()
        df.columns = names
        df.index = pd.RangeIndex(len(df))
    return df


def _describe(name: str, series: pd.Series) -> ColumnInfo:
    values = series.tolist()
    kind, kinds = _column_kind(values)
    missing = sum(k in ("missing", "na") for k in kinds) if kind != "text" else kinds.count("missing")
    first = next((v for v, k in zip(values, kinds) if k not in ("missing", "na")), None)
    example = "" if first is None else _shorten(first)
    strings = [str(v) for v, k in zip(values, kinds) if k not in ("missing",)]
    detected = kind
    if kind == "text" and _code_like(strings):
        detected = "id"
    if _id_like_name(name) and kind != "empty":
        detected = "id"
    if detected == "empty":
        return ColumnInfo(name, detected, example, "ignore", "no values", missing)
    if detected == "id":
        why = "name looks like an identifier" if _id_like_name(name) else "unique short codes"
        return ColumnInfo(name, detected, example, "ignore", why, missing)
    if _label_like_name(name):
        return ColumnInfo(name, detected, example, "ignore", "name looks like a label/target", missing)
    if kind in ("number", "bool", "vector"):
        return ColumnInfo(name, detected, example, "tabular", f"{kind} values", missing)
    if kind == "text":
        if _free_text(strings):
            return ColumnInfo(name, detected, example, "text", "free text (several words)", missing)
        return ColumnInfo(name, detected, example, "ignore", "short strings (a category?)", missing)
    return ColumnInfo(name, detected, example, "ignore", "mixed or nested values", missing)


def describe_columns(df: pd.DataFrame) -> list[ColumnInfo]:
    """What each column holds and the role the studio suggests for it, in file order."""
    df = _prepared(df, df.attrs.get("file", "") if isinstance(df, pd.DataFrame) else "")
    return [_describe(c, df[c]) for c in df.columns]


def suggest_roles(df: pd.DataFrame, model: LoadedModel | None = None) -> dict[str, str]:
    """Suggested role per column. With `model`, suggestions also fit what the model takes (a text model
    gets its best text column, columns the model cannot take are ignored)."""
    if model is None:
        return {c.name: c.suggested for c in describe_columns(df)}
    return _resolve_roles(_prepared(df, df.attrs.get("file", "")), model, {})


def _resolve_roles(df: pd.DataFrame, model: LoadedModel, explicit: dict[str, str],
                   fed: set[str] = frozenset()) -> dict[str, str]:
    """Final role per column: explicit roles win; the others get the suggestion adjusted to the model.
    fed: tabular inputs whose columns the user chose (--tabular)."""
    infos = {c.name: c for c in describe_columns(df)}
    roles = {c: explicit.get(c, infos[c].suggested) for c in df.columns}
    free = [c for c in df.columns if c not in explicit]

    takes_text = bool(model.text_inputs)
    # a checkpoint that names its text column (the multimodal loader puts it in info["text_field"])
    text_field = (model.info or {}).get("text_field") if isinstance(model.info, dict) else None
    if takes_text and text_field in free and "text" not in explicit.values():
        for c in free:
            if roles[c] == "text":
                roles[c] = "ignore"
        roles[text_field] = "text"
    elif not takes_text or "text" in explicit.values():
        for c in free:
            if roles[c] == "text":
                roles[c] = "ignore"
    elif not any(r == "text" for r in roles.values()):
        # the model needs text and nothing looks like free text: take the wordiest string column
        cands = [c for c in free if infos[c].detected == "text" and not _label_like_name(c)]
        if cands:
            def words(c):
                vals = [str(v) for v in df[c].tolist() if not _is_missing(v)]
                return sum(len(v.split()) for v in vals) / max(len(vals), 1)
            roles[max(cands, key=words)] = "text"

    tab_inputs = [i for i in model.tabular_inputs if i.name not in fed]
    named = {i.column for i in tab_inputs if i.column}
    # inputs still open to the columns mapped tabular: those naming no column, or a column the file lacks
    open_inputs = [i for i in tab_inputs if not i.column or i.column not in df.columns]
    for c in free:
        if c in named:
            roles[c] = "tabular"
        elif roles[c] == "tabular" and not open_inputs:
            roles[c] = "ignore"
    return roles


# --------------------------------------------------------------------------------------------------
# Building tensors


def _row(i: int) -> str:
    return f"row {i + 1} ({ROW_CONVENTION})"


def _string_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if _column_kind(df[c].tolist())[0] == "text"]


def _texts(df: pd.DataFrame, col: str, file: str) -> tuple[list[str], list[str]]:
    """A text column's cells as the strings the tokenizer gets, and warnings for the odd ones.

    An empty cell is empty text ("" tokenizes to the special tokens alone), whitespace stays whitespace,
    a number or a list is tokenized as written (JSON for lists); each such cell is listed in a warning."""
    out: list[str] = []
    odd: dict[str, list[int]] = {}
    for i, v in enumerate(df[col].tolist()):
        if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            odd.setdefault("empty (tokenized as empty text)", []).append(i)
            v = ""
        elif isinstance(v, str):
            if not v.strip():
                odd.setdefault("empty or blank (tokenized as written)", []).append(i)
        else:
            if isinstance(v, np.ndarray):
                v = v.tolist()
            if isinstance(v, np.generic):
                v = v.item()
            what = ("a list" if isinstance(v, (list, tuple)) else "an object" if isinstance(v, dict)
                    else f"a {type(v).__name__}")
            odd.setdefault(f"{what}, not a string (tokenized as its text)", []).append(i)
            v = json.dumps(_jsonable(v)) if isinstance(v, (list, tuple, dict)) else str(v)
        out.append(v)
    warnings = [f"{file + ': ' if file else ''}text column {col!r}: {_rows_text(rows)} "
                f"{'is' if len(rows) == 1 else 'are'} {what}." for what, rows in odd.items()]
    return out, warnings


def _rows_text(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i + 1) for i in rows[:limit])
    shown += f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown} ({ROW_CONVENTION})"


def _model_positions(module: Any) -> int | None:
    """Token positions the model's absolute position-embedding table holds (None: it has none)."""
    for sub in module.modules() if isinstance(module, torch.nn.Module) else ():
        table = getattr(sub, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            pad = getattr(sub, "padding_idx", None)  # RoBERTa-style: positions start after the padding id
            return table.num_embeddings - (pad + 1 if isinstance(pad, int) and pad >= 0 else 0)
    return None


def _embedding_rows(module: Any) -> int | None:
    """Rows of the model's token-embedding table (the largest token id it can take + 1), if it has one."""
    for sub in module.modules() if isinstance(module, torch.nn.Module) else ():
        table = getattr(sub, "word_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            return table.num_embeddings
    try:
        table = module.get_input_embeddings()
    except Exception:  # noqa: BLE001 - not a transformers model: nothing to check against
        return None
    return table.num_embeddings if isinstance(table, torch.nn.Embedding) else None


def _check_token_ids(ids: torch.Tensor, model: LoadedModel, text_cols: list[str], file: str) -> None:
    """A tokenizer that gives ids past the embedding table does not belong to the model: say which token,
    before the model runs (it would fail with an IndexError deep inside)."""
    rows = _embedding_rows(model.module)
    if rows is None:
        return
    pad = getattr(model.tokenizer, "pad_token_id", None)
    if isinstance(pad, int) and not 0 <= pad < rows:  # the shape probes pad with it
        raise CheckpointError(
            f"{model.path}: the tokenizer's padding token {getattr(model.tokenizer, 'pad_token', None)!r} has id "
            f"{pad:,}, past the model's embedding table ({rows:,} rows, ids 0-{rows - 1:,}): the tokenizer "
            "(vocabulary) does not belong to this model.", hint="Upload the tokenizer files the model was trained with.")
    if ids.numel() == 0 or int(ids.max()) < rows:
        return
    r, pos = (int(x) for x in (ids >= rows).nonzero()[0])
    bad = int(ids[r, pos])
    try:
        token = model.tokenizer.convert_ids_to_tokens(bad)
    except Exception:  # noqa: BLE001 - the id is the fact; its text is a courtesy
        token = None
    what = f"token {token!r} (id {bad:,})" if isinstance(token, str) else f"token id {bad:,}"
    raise CheckpointError(
        f"{model.path}: the tokenizer turns {what} in column {text_cols[0]!r}, {_row(r)} of {file or 'the sample'} "
        f"into an id past the model's embedding table ({rows:,} rows, ids 0-{rows - 1:,}): the tokenizer "
        "(vocabulary) does not belong to this model.",
        hint="Upload the tokenizer files the model was trained with.")


def _is_panic(e: BaseException) -> bool:
    """pyo3's PanicException (a Rust tokenizer panicking, e.g. a regex past its retry limit) derives from
    BaseException, not Exception; it is not importable by name."""
    return type(e).__name__ == "PanicException"


def _tokenize(df: pd.DataFrame, model: LoadedModel, text_cols: list[str], spec: Any, file: str,
              id_dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    tok = model.tokenizer
    requested = max_length = int(getattr(spec, "max_length", 128))
    model_max = getattr(tok, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000 and model_max < max_length:
        max_length = model_max  # never ask for more positions than the tokenizer says the model has
    positions = _model_positions(model.module)
    clamped = positions is not None and 2 <= positions < max_length
    if clamped:
        max_length = positions  # nor more than the model's position table holds, whatever the tokenizer says
    settings = {"max_length": max_length, "padding": "longest", "truncation": True,
                "id_dtype": getattr(spec, "id_dtype", "int64"), "pair": len(text_cols) == 2}
    kinds = {i.kind for i in model.text_inputs}
    first, warnings = _texts(df, text_cols[0], file)
    second = None
    if len(text_cols) == 2:
        second, more = _texts(df, text_cols[1], file)
        warnings += more
    if getattr(tok, "pad_token", "") is None and len(first) > 1:
        raise _err(file, "the tokenizer has no padding token, so rows of different lengths cannot be "
                         "batched.", hint="Use a one-row sample, or a checkpoint whose tokenizer defines "
                                          "pad_token.")
    try:
        enc = tok(first, second, padding=settings["padding"] if len(first) > 1 else False,
                  truncation=True, max_length=max_length, return_tensors="pt",
                  return_attention_mask=ATTENTION_MASK in kinds,
                  return_token_type_ids=True if TOKEN_TYPE_IDS in kinds else None)
    except BaseException as e:  # a tokenizer failure is an input problem the user must see
        if not (isinstance(e, Exception) or _is_panic(e)):
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        raise _err(file, f"the tokenizer failed on column(s) {', '.join(map(repr, text_cols))}: "
                         f"{'the tokenizer crashed (Rust panic)' if _is_panic(e) else type(e).__name__}: "
                         f"{first_line}",
                   hint="The checkpoint's tokenizer files (tokenizer.json: its pre-tokenizer / normalizer "
                        "patterns) are broken or hostile." if _is_panic(e) else None) from e
    ids = enc["input_ids"]
    _check_token_ids(ids, model, text_cols, file)
    if clamped and ids.shape[-1] >= max_length:
        said = f" (its tokenizer says {model_max:,})" if isinstance(model_max, int) and model_max > positions \
            and model_max < 1_000_000 else ""
        warnings.append(f"max length {requested} is more than the model's {positions} token positions{said}: "
                        f"text was cut at {positions} tokens.")
    by_kind = {
        INPUT_IDS: ids,
        ATTENTION_MASK: enc.get("attention_mask") if enc.get("attention_mask") is not None
        else torch.ones_like(ids),
        TOKEN_TYPE_IDS: enc.get("token_type_ids") if enc.get("token_type_ids") is not None
        else torch.zeros_like(ids),
    }
    tensors = {i.name: torch.as_tensor(by_kind[i.kind]).to(id_dtype).contiguous()
               for i in model.text_inputs if i.kind in by_kind}
    return tensors, settings, warnings


def _tabular_values(df: pd.DataFrame, col: str, fill: float | None, file: str) -> np.ndarray:
    """One tabular column -> float32 [rows, width]."""
    series = df[col]
    has_na = bool(series.isna().any())
    if pd.api.types.is_bool_dtype(series.dtype) and not has_na:
        return np.array(series.to_numpy(dtype=np.float32), dtype=np.float32).reshape(-1, 1)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        arr = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64).reshape(-1, 1)
        bad = np.where(~np.isfinite(arr[:, 0]))[0]
        for i in bad:
            if np.isnan(arr[i, 0]) and fill is not None:
                arr[i, 0] = fill
            else:
                _bad_cell(file, col, int(i), series.iat[int(i)], fill)
        return arr.astype(np.float32)

    rows: list[list[float] | None] = []
    scalar_rows, vector_rows = [], []
    for i, v in enumerate(series.tolist()):
        kind = _cell_kind(v)
        if kind in ("missing", "na"):
            if fill is None:
                _bad_cell(file, col, i, v, fill)
            rows.append(None)
            continue
        if kind == "bool":
            rows.append([1.0 if _convert(v, "bool") else 0.0]); scalar_rows.append(i)
        elif kind == "number":
            x = float(_convert(v, "number"))
            if not math.isfinite(x):
                _bad_cell(file, col, i, v, fill)
            rows.append([x]); scalar_rows.append(i)
        elif kind == "vector":
            vec = _convert(v, "vector")
            if not vec:
                raise _err(file, f"column {col!r}, {_row(i)}: the list is empty.", column=col, row=i + 1)
            vals = []
            for j, x in enumerate(vec):
                if x is None or (isinstance(x, float) and math.isnan(x)):
                    if fill is None:
                        raise _err(file, f"column {col!r}, {_row(i)}: element {j + 1} of the list is empty.",
                                   column=col, row=i + 1, hint="Set a fill value for empty cells, or fix it.")
                    x = fill
                x = float(x)
                if not math.isfinite(x):
                    raise _err(file, f"column {col!r}, {_row(i)}: element {j + 1} of the list is {x}, "
                                     "not a finite number.", column=col, row=i + 1)
                vals.append(x)
            rows.append(vals); vector_rows.append(i)
        else:
            _bad_cell(file, col, i, v, fill)
    if scalar_rows and vector_rows:
        i = vector_rows[0] if vector_rows[0] > scalar_rows[0] else scalar_rows[0]
        raise _err(file, f"column {col!r} mixes single numbers ({_row(scalar_rows[0])}) and lists "
                         f"({_row(vector_rows[0])}); every row needs the same number of features.",
                   column=col, row=i + 1)
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        w0 = len(next(r for r in rows if r is not None))
        i = next(i for i, r in enumerate(rows) if r is not None and len(r) != w0)
        raise _err(file, f"column {col!r}, {_row(i)}: the list has {len(rows[i])} numbers but earlier rows "
                         f"have {w0} (ragged lists).", column=col, row=i + 1,
                   hint="Every row of a vector column needs the same length.")
    width = widths.pop() if widths else 1
    return np.asarray([r if r is not None else [fill] * width for r in rows], dtype=np.float32).reshape(-1, width)


def _one_hot(df: pd.DataFrame, col: str, vocab: list[str], name: str, file: str) -> np.ndarray:
    """A categorical column -> float32 one-hot [rows, len(vocab)], by the model's own vocabulary."""
    index = {str(v): k for k, v in enumerate(vocab)}
    out = np.zeros((len(df), len(vocab)), dtype=np.float32)
    for i, v in enumerate(df[col].tolist()):
        if _is_missing(v):
            raise _err(file, f"column {col!r}, {_row(i)}: the value is empty, and the model's categorical input "
                             f"{name!r} takes one of: {_columns_text(list(vocab), 20)}.", column=col, row=i + 1,
                       hint="Fill the cell with one of those categories, or drop the row.")
        key = str(_jsonable(v)).strip()
        if key not in index:
            raise _err(file, f"column {col!r}, {_row(i)}: {_shorten(v)!r} is not a category the model knows for "
                             f"input {name!r}: {_columns_text(list(vocab), 20)}.", column=col, row=i + 1,
                       hint="The checkpoint's vocabulary is fixed at training; map the value to one of those.")
        out[i, index[key]] = 1.0
    return out


def _ignored_categories(df: pd.DataFrame, final: dict[str, str], explicit: dict[str, str], file: str) -> list[str]:
    """A warning for each short-string (category) column the studio left out because the model takes no such
    field: said, never silently dropped."""
    out = []
    for c in df.columns:
        if final[c] != "ignore" or c in explicit:
            continue
        info = _describe(c, df[c])
        if info.detected == "text" and info.reason.startswith("short strings"):
            seen = list(dict.fromkeys(str(v).strip() for v in df[c].tolist() if not _is_missing(v)))
            out.append(f"{file + ': ' if file else ''}column {c!r} holds categories ({_columns_text(seen, 6)}); "
                       "the model takes no such field (its checkpoint carries no vocabulary for it), so the column "
                       "is ignored.")
    return out


def _bad_cell(file: str, col: str, i: int, v: Any, fill: float | None):
    if _is_missing(v) or (isinstance(v, str) and v.strip().lower() in NA_TOKENS):
        raise _err(file, f"column {col!r}, {_row(i)}: the value is empty ({_shorten(v)!r}) and the column "
                         "is mapped tabular.", column=col, row=i + 1,
                   hint="Fill the cell, drop the row, set a fill value for empty cells "
                        "(--fill-value in the CLI), or map the column to ignore.")
    raise _err(file, f"column {col!r}, {_row(i)}: {_shorten(v)!r} is not a number, true/false, or a list "
                     "of numbers.", column=col, row=i + 1,
               hint="Tabular columns take numbers, true/false, 0/1, or JSON arrays of numbers like "
                    "[1, 2.5]; map the column to text or ignore otherwise.")


def _describe_inputs(inputs: list[ModelInput]) -> str:
    def one(i: ModelInput) -> str:
        where = f"column {i.column!r}" if i.column else "any column"
        return f"{i.name!r} ({where}{f', width {i.width}' if i.width else ''})"
    return ", ".join(one(i) for i in inputs) or "none"


def _columns_text(cols: list[str], limit: int = 12) -> str:
    shown = ", ".join(map(repr, cols[:limit]))
    return shown + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def _column_range(item: str, columns: list[str], file: str, what: str) -> list[str] | None:
    """'first..last' -> the columns from first to last, in file order (None when it is no such range)."""
    pos = item.find("..")
    while pos != -1:
        a, b = item[:pos].strip(), item[pos + 2:].strip()
        if a in columns and b in columns:
            i, j = columns.index(a), columns.index(b)
            if i > j:
                raise _err(file, f"{what}: the range {item!r} runs backwards ({b!r} comes before {a!r} in the "
                                 "file).", column=a, hint=f"Write it {b}..{a}.")
            return columns[i:j + 1]
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
            raise _err(file, f"{what}: {item!r} is not a column of the file, nor a range 'first..last' of two of "
                             f"them. Columns in the file: {_columns_text(columns, 40)}.", column=item,
                       hint=f"Did you mean {close[0]!r}?" if close else None)
        out.extend(rng)
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise _err(file, f"{what}: column(s) {_columns_text(dupes)} are listed more than once.", column=dupes[0])
    return out


def _explicit_feeds(df: pd.DataFrame, model: LoadedModel, spec: Any, file: str) -> dict[str, list[str]]:
    """spec.tabular ({input: [columns or 'first..last' ranges]}) -> {input: [columns]}, checked."""
    raw = getattr(spec, "tabular", None) or {}
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
            why = (f"{name!r} is a text input ({other.kind})" if other is not None
                   else f"the model has no input {name!r}")
            raise _err(file, f"--tabular {name}=...: {why}; its tabular inputs are: "
                             f"{_describe_inputs(model.tabular_inputs)}.", hint="Name one of those inputs.")
        items = [items] if isinstance(items, str) else list(items)
        cols = expand_columns(items, columns, file, what=f"--tabular {name}")
        if not cols:
            raise _err(file, f"--tabular {name}= names no column.")
        for c in cols:
            if c in owner:
                raise _err(file, f"column {c!r} is chosen to feed both {owner[c]!r} and {name!r} (--tabular).",
                           column=c)
            owner[c] = name
        feeds[name] = cols
    return feeds


def _match_tabular(df: pd.DataFrame, model: LoadedModel, roles: dict[str, str], file: str,
                   explicit: dict[str, list[str]] | None = None,
                   width_of=lambda col: 1) -> dict[str, list[str]]:
    """Graph input name -> the columns feeding it (in order), in model.inputs order; only inputs fed.

    explicit: the user's choice (--tabular), taken as given. Then inputs that name their column take it;
    the columns mapped tabular that are left feed the remaining inputs in file order: all of them to a
    single remaining input (a feature vector from many columns), else by the inputs' declared widths,
    else one column per input. width_of(column) gives a column's features per row."""
    tab_inputs = model.tabular_inputs
    tab_cols = [c for c in df.columns if roles[c] == "tabular"]
    cols_text = _columns_text(list(df.columns), 40)
    feeds: dict[str, list[str]] = {n: list(c) for n, c in (explicit or {}).items()}
    claimed: set[str] = {c for cols in feeds.values() for c in cols}
    absent: list[ModelInput] = []
    for inp in tab_inputs:
        if not inp.column or inp.name in feeds:
            continue
        if inp.column not in df.columns:
            absent.append(inp)
            continue
        if roles[inp.column] != "tabular" or inp.column in claimed:
            if inp.required:
                why = (f"is chosen to feed {next(n for n, c in feeds.items() if inp.column in c)!r} (--tabular)"
                       if inp.column in claimed else f"is mapped {roles[inp.column]!r}")
                hint = (f"Leave it out of that --tabular list, or choose the columns of {inp.name!r} too "
                        f"(--tabular {inp.name}=COL)." if inp.column in claimed
                        else f"Map it tabular (--role {inp.column}=tabular).")
                raise _err(file, f"column {inp.column!r} feeds the model's tabular input {inp.name!r} but {why}.",
                           column=inp.column, hint=hint)
            continue
        feeds[inp.name] = [inp.column]
        claimed.add(inp.column)
    rest_cols = [c for c in tab_cols if c not in claimed]
    rest_inputs = [i for i in tab_inputs if not i.column and i.name not in feeds]

    # a field the file has no column of, declared wider than one feature, and the only input left:
    # the columns mapped tabular feed it in file order when their widths add up to its width
    if (len(absent) == 1 and not rest_inputs and rest_cols and (absent[0].width or 0) > 1
            and sum(width_of(c) for c in rest_cols) == int(absent[0].width)):
        feeds[absent[0].name], rest_cols, absent = rest_cols, [], []
    for inp in absent:
        if inp.required:
            width = f", width {inp.width}" if inp.width else ""
            found = (f"; the columns mapped tabular give {sum(width_of(c) for c in rest_cols)} feature(s): "
                     f"{_columns_text(rest_cols)}" if inp.width and rest_cols else "")
            raise _err(file, f"the model needs the tabular field {inp.column!r} (input {inp.name!r}{width}), "
                             f"but the file has no such column{found}. Columns in the file: {cols_text}.",
                       column=inp.column, hint="Rename the column in the file to the field name the model was "
                                               f"trained with, or choose its columns with --tabular "
                                               f"{inp.name}=COL1,COL2,... (ranges: FIRST..LAST).")

    if len(rest_inputs) == 1 and rest_cols:  # one input left: every column left feeds it, in file order
        feeds[rest_inputs[0].name], rest_cols, rest_inputs = rest_cols, [], []
    elif len(rest_inputs) > 1 and rest_cols and all(i.width for i in rest_inputs):
        left = list(rest_cols)
        for inp in rest_inputs:
            take, total = [], 0
            while left and total < int(inp.width):
                take.append(left.pop(0))
                total += width_of(take[-1])
            if total != int(inp.width) and (take or inp.required):
                raise _err(file, f"the model's tabular input {inp.name!r} expects width {inp.width}, but the "
                                 f"columns mapped tabular, in file order, give it {total} feature(s)"
                                 f"{': ' + _columns_text(take) if take else ''} (inputs: "
                                 f"{_describe_inputs(rest_inputs)}).",
                           column=take[-1] if take else None,
                           hint="Choose each input's columns with --tabular NAME=COL1,COL2,... "
                                "(ranges: FIRST..LAST).")
            if take:
                feeds[inp.name] = take
        rest_cols, rest_inputs = left, [i for i in rest_inputs if i.name not in feeds]
    if len(rest_cols) > len(rest_inputs):
        extra = rest_cols[len(rest_inputs):] if rest_inputs else rest_cols
        raise _err(file, f"column(s) {_columns_text(extra)} are mapped tabular, but the model takes "
                         f"tabular fields: {_describe_inputs(tab_inputs)}.", column=extra[0],
                   hint="Map the extra column(s) to ignore (e.g. --role "
                        f"{extra[0]}=ignore), or choose each input's columns with --tabular NAME=COL1,COL2,...")
    missing = [i for i in rest_inputs[len(rest_cols):] if i.required]
    if missing:
        raise _err(file, f"the model needs {len(rest_inputs)} tabular column(s) for input(s) "
                         f"{_describe_inputs(rest_inputs)}, but {len(rest_cols)} "
                         f"{'is' if len(rest_cols) == 1 else 'are'} mapped tabular"
                         f"{': ' + _columns_text(rest_cols) if rest_cols else ''}.",
                   hint="Map more numeric columns to tabular (they feed the inputs in file order).")
    for inp, col in zip(rest_inputs, rest_cols):
        feeds[inp.name] = [col]
    return {i.name: feeds[i.name] for i in tab_inputs if i.name in feeds}


def build_batch(df: pd.DataFrame, model: LoadedModel, roles: dict[str, str] | None, spec: Any,
                file: str = "") -> Batch:
    """Turn a sample frame and a role mapping into the named tensors `model` takes.

    roles: column -> "text" | "tabular" | "ignore"; columns left out get the suggestion (which also
    looks at what the model takes). spec: a ConvertSpec (max_length, id_dtype, fill_value are read).
    Raises BatchError naming the file, column and row at fault.
    """
    file = file or (df.attrs.get("file", "") if isinstance(df, pd.DataFrame) else "")
    df = _prepared(df, file)
    rows = len(df)
    if rows == 0:
        raise _err(file, "the sample has no rows.")
    explicit: dict[str, str] = {}
    cols_text = ", ".join(map(repr, df.columns))
    for col, role in (roles or {}).items():
        col = str(col)
        if col not in df.columns:
            close = difflib.get_close_matches(col, list(df.columns), n=1)
            raise _err(file, f"a role is given for column {col!r}, which is not in the file. "
                             f"Columns in the file: {cols_text}.", column=col,
                       hint=f"Did you mean {close[0]!r}?" if close else None)
        r = str(role).strip().lower()
        if r not in ROLES:
            raise _err(file, f"role {role!r} for column {col!r} is not one of {', '.join(ROLES)}.", column=col)
        explicit[col] = r
    chosen = _explicit_feeds(df, model, spec, file)
    for name, cols in chosen.items():
        for c in cols:
            if explicit.get(c, "tabular") != "tabular":
                raise _err(file, f"column {c!r} is chosen to feed input {name!r} (--tabular) but mapped "
                                 f"{explicit[c]!r}.", column=c, hint=f"Map it tabular, or leave it out of "
                                                                     f"--tabular {name}=...")
            explicit[c] = "tabular"
    final = _resolve_roles(df, model, explicit, fed=set(chosen))

    id_dtype_name = getattr(spec, "id_dtype", "int64") or "int64"
    if id_dtype_name not in ("int64", "int32"):
        raise _err(file, f"id dtype {id_dtype_name!r} is not one of int64, int32.")
    id_dtype = torch.int32 if id_dtype_name == "int32" else torch.int64
    fill = getattr(spec, "fill_value", None)
    fill = None if fill is None else float(fill)

    # ---- text
    text_cols = [c for c in df.columns if final[c] == "text"]
    tensors: dict[str, torch.Tensor] = {}
    warnings: list[str] = []
    settings = {"max_length": int(getattr(spec, "max_length", 128)), "padding": "longest",
                "truncation": True, "id_dtype": id_dtype_name, "pair": False}
    if text_cols:
        if not model.text_inputs:
            raise _err(file, f"column(s) {', '.join(map(repr, text_cols))} are mapped text, but the model "
                             f"takes no text inputs (it takes: {_describe_inputs(model.inputs)}).",
                       column=text_cols[0], hint=f"Map {text_cols[0]!r} to tabular or ignore.")
        if model.tokenizer is None:
            raise _err(file, f"column {text_cols[0]!r} is mapped text, but the checkpoint carries no "
                             "tokenizer, so the text cannot be turned into token ids.", column=text_cols[0],
                       hint="Include the tokenizer files (tokenizer.json / vocab.txt ...) with the checkpoint.")
        limit = 1 if model.tabular_inputs else 2
        if len(text_cols) > limit:
            what = ("a text-only model takes one text column or a pair of two" if limit == 2
                    else "a model with tabular inputs takes one text column")
            raise _err(file, f"{len(text_cols)} columns are mapped text ({', '.join(map(repr, text_cols))}); "
                             f"{what}.", column=text_cols[limit],
                       hint=f"Map the others to ignore (e.g. --role {text_cols[limit]}=ignore).")
        text_tensors, settings, tok_warnings = _tokenize(df, model, text_cols, spec, file, id_dtype)
        warnings += tok_warnings
        tensors.update(text_tensors)
    elif any(i.required for i in model.text_inputs):
        cands = _string_columns(df)
        raise _err(file, "the model takes text, but no column is mapped text. "
                         + (f"String columns in the file: {', '.join(map(repr, cands))}." if cands
                            else f"The file has no string column (columns: {cols_text})."),
                   hint=f"Map one with --role {cands[0]}=text." if cands else None)

    # ---- tabular
    arrays: dict[str, np.ndarray] = {}

    def values(col: str) -> np.ndarray:
        if col not in arrays:
            arrays[col] = _tabular_values(df, col, fill, file)
        return arrays[col]

    feeds = _match_tabular(df, model, final, file, chosen, width_of=lambda c: int(values(c).shape[1]))
    by_name = {i.name: i for i in model.inputs}
    widths: dict[str, int] = {}
    features: dict[str, list[dict]] = {}
    for name, cols in feeds.items():
        vocab = by_name[name].vocab
        if vocab and len(cols) != 1:
            raise _err(file, f"the model's categorical input {name!r} takes one column of categories, but "
                             f"{len(cols)} are chosen: {_columns_text(cols)}.", column=cols[0])
        parts = [_one_hot(df, cols[0], vocab, name, file)] if vocab else [values(c) for c in cols]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        want = by_name[name].width
        if want is not None and arr.shape[1] != int(want):
            if len(cols) == 1:
                raise _err(file, f"column {cols[0]!r} has {arr.shape[1]} feature(s) per row, but the model's "
                                 f"input {name!r} expects width {want}.", column=cols[0],
                           hint="A vector feature is written as a JSON array of numbers, e.g. [0.1, 0.2, 0.3], "
                                f"or spread over {want} numeric columns (--tabular {name}=COL1,COL2,...).")
            raise _err(file, f"the model's input {name!r} expects width {want}, but the {len(cols)} columns "
                             f"feeding it give {arr.shape[1]} features: {_columns_text(cols, 40)}.",
                       column=cols[0], hint=f"Choose exactly its columns with --tabular {name}=COL1,COL2,... "
                                            "(ranges: FIRST..LAST), or map the others to ignore.")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        widths[name] = int(arr.shape[1])
        start, features[name] = 0, []
        for c, part in zip(cols, parts):
            features[name].append({"column": c, "start": start, "width": int(part.shape[1]),
                                   **({"encoding": "one-hot", "vocab": list(vocab)} if vocab else {})})
            start += int(part.shape[1])
    warnings += _ignored_categories(df, final, explicit, file)

    sizes = {n: int(t.shape[0]) for n, t in tensors.items()}
    if len(set(sizes.values()) | {rows}) > 1:
        raise _err(file, "tensors do not share the batch size: "
                         + ", ".join(f"{n}: {s}" for n, s in sizes.items()) + f" (file rows: {rows}).")

    ordered = {i.name: tensors[i.name] for i in model.inputs if i.name in tensors}
    ignored = {c: [_jsonable(v) for v in df[c].tolist()] for c in df.columns if final[c] == "ignore"}
    return Batch(tensors=ordered, roles=dict(final), rows=rows, text_columns=text_cols, tabular=feeds,
                 ignored=ignored, tokenizer_settings=settings, file=file, widths=widths, features=features,
                 warnings=warnings)


def tile_rows(tensors: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Repeat (cycle) or cut rows so every tensor has batch size n. Used by the shape probes."""
    n = int(n)
    if n < 1:
        raise BatchError(f"Cannot build a batch of {n} rows; need at least 1.")
    if not tensors:
        return {}
    sizes = {k: (int(t.shape[0]) if t.dim() else None) for k, t in tensors.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise BatchError("Cannot tile tensors that do not share a non-empty batch dimension: "
                         + ", ".join(f"{k}: {s}" for k, s in sizes.items()) + ".")
    b = next(iter(sizes.values()))
    if n == b:
        return dict(tensors)
    idx = torch.arange(n) % b
    return {k: t.index_select(0, idx) for k, t in tensors.items()}
