"""Reading a sample file (CSV / TSV / JSON / JSONL) into a typed frame, under SampleLimits.

A person uploads a few real rows. This module reads the file without guessing away information
(zero-padded ids stay strings) and types each column from its cells (number, bool, vector or as written).
Describing columns and suggesting roles is studio.inputs.roles; turning the mapping into tensors is studio.inputs.batch.

The formats are one table, READERS (at the end): a format's name, the suffixes that name it, and the function
that turns the file's text into columns. A new format is a row there.

Row numbers in messages are 1-based and count data rows only (the header is not counted), so
"row 3" is the third record of a JSON file or the third line under the header of a CSV file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from studio.errors import BatchError
from studio.inputs.cells import INT_RE, normalize_column, shorten
from studio.spec import SampleLimits, parse_sample_limits

ROW_CONVENTION = "1-based, header not counted"

SNIFF_DELIMITERS = ",\t;|"
MAX_INT_DIGITS = 4300  # Python's own limit for int(str) (sys.int_info.default_max_str_digits)
SNIFF_CHARS = 4096  # csv.Sniffer is quadratic in its input (64 KiB of `,"` took 48 s): sniff the start only


# --------------------------------------------------------------------------------------------------
# Reading


def file_error(file: str, message: str, **kw) -> BatchError:
    """A BatchError whose message starts with the sample file's name."""
    return BatchError(f"{file}: {message}" if file else message, file=file or None, **kw)


def row_label(i: int) -> str:
    """'row 3 (1-based, header not counted)' for the 0-based data row i."""
    return f"row {i + 1} ({ROW_CONVENTION})"


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
        raise file_error(name, f"sample file {p} does not exist.")
    if p.is_dir():
        raise file_error(name, f"{p} is a folder, not a sample file.")
    suffix = p.suffix.lower()
    reader = next((r for r in READERS if suffix in r.suffixes), None)
    if reader is None:
        raise file_error(
            name,
            f"unsupported sample file type {suffix or '(no extension)'!r}.",
            hint=f"Supported: {', '.join(SUPPORTED_SUFFIXES)} (CSV/TSV with a header row, "
            "JSON records or columns, JSON Lines).",
        )
    with open(p, "rb") as f:  # never more than the limit in memory, whatever the file's size says
        raw = f.read(limits.size + 1)
    if len(raw) > limits.size:
        raise _over(name, limits, "size", f"the file is larger than {_bytes(limits.size)}")
    if not raw.strip():
        raise file_error(name, "the file is empty.")
    if b"\x00" in raw[:8192]:
        raise file_error(
            name, "the file is binary, not text (a spreadsheet?).", hint="Export it as CSV (UTF-8) or JSON."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # never fails; Excel-style exports are usually cp1252/latin-1
    del raw

    df = _frame(reader.read(text, name, limits), name, limits)
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
    return file_error(
        file,
        f"{what}: past the sample limit {key}={shown}.",
        hint=f"The sample is a few real rows: cut it down, or raise the limit: {limits.hint(key)} "
        "(studio convert, studio roles, studio app).",
        **kw,
    )


def _frame(columns: dict[str, list], name: str, limits: SampleLimits) -> pd.DataFrame:
    if not columns:
        raise file_error(name, "no columns found.")
    rows = len(next(iter(columns.values())))
    if rows == 0:
        raise file_error(name, "the file has no data rows (only a header, or an empty list).")
    if rows * len(columns) > limits.cells:
        raise _over(
            name, limits, "cells", f"{rows:,} rows x {len(columns):,} columns are {rows * len(columns):,} cells"
        )
    return pd.DataFrame({c: normalize_column(v) for c, v in columns.items()}, index=pd.RangeIndex(rows))


def _check_names(names: list[str], name: str) -> list[str]:
    out = []
    for i, n in enumerate(names):
        n = "" if n is None or (isinstance(n, float) and math.isnan(n)) else str(n).strip()
        out.append(n or f"Unnamed: {i}")
    dupes = duplicates(out)
    if dupes:
        raise file_error(
            name,
            f"duplicate column name(s): {', '.join(map(repr, dupes))}.",
            column=dupes[0],
            hint="Rename the columns so that each name is unique.",
        )
    return out


def duplicates(names: list[str]) -> list[str]:
    """Names that occur more than once, sorted (one pass: a file may have thousands of columns)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)


def pick_delimiter(text: str, default: str | None) -> str:
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
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def _first_line(text: str) -> str:
    """The first non-blank line, without splitting the whole file."""
    for m in re.finditer(r"[^\r\n]*", text):
        if m.group().strip():
            return m.group()
    return ""


def _read_delimited(text: str, default: str | None, name: str, limits: SampleLimits) -> dict[str, list]:
    sep = pick_delimiter(text, default)
    fields = _first_line(text).count(sep) + 1  # a quoted separator counts too: the checks after parsing are exact
    if fields > limits.columns:
        raise _over(name, limits, "columns", f"the header line has {fields:,} fields")
    most = min(limits.rows, max(1, limits.cells // fields))  # data rows worth parsing at all
    try:
        raw = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
            nrows=most + 2,
        )  # header + rows + one too many
    except pd.errors.EmptyDataError as e:
        raise file_error(name, f"the file is empty ({e}).") from e
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        msg = " ".join(str(e).split())
        m = re.search(r"line (\d+)", msg)
        where = f" (file line {m.group(1)})" if m else ""
        raise file_error(
            name,
            f"could not be parsed as {'tab' if sep == chr(9) else repr(sep)}-separated text{where}: {msg[:500]}",
            hint="Check quoting and that every row has as many fields as the header.",
        ) from e
    if raw.shape[0] == 0:
        raise file_error(name, "the file is empty.")
    if raw.shape[1] > limits.columns:
        raise _over(name, limits, "columns", f"the file has {raw.shape[1]:,} columns")
    if raw.shape[0] - 1 > limits.rows:
        raise _over(name, limits, "rows", f"the file has more than {limits.rows:,} data rows")
    if (raw.shape[0] - 1) * raw.shape[1] > limits.cells:
        raise _over(
            name,
            limits,
            "cells",
            f"{raw.shape[1]:,} columns x at least {raw.shape[0] - 1:,} rows are more than {limits.cells:,} cells",
        )
    if len(text) > limits.cell:  # else no cell can be longer
        for i in range(raw.shape[1]):
            lengths = raw.iloc[:, i].str.len()
            if int(lengths.max()) > limits.cell:
                row = int(lengths.to_numpy().argmax())
                col = shorten(raw.iat[0, i]) if row else f"{i + 1}"
                where = f"the name of column {i + 1}" if row == 0 else f"column {col!r}, {row_label(row - 1)}"
                raise _over(name, limits, "cell", f"{where} holds {int(lengths.max()):,} characters", row=row or None)
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

    def parse_int(digits: str) -> int:
        if len(digits) > MAX_INT_DIGITS:  # int() refuses these with a ValueError of its own
            raise file_error(name, f"{where}a number has {len(digits):,} digits (at most {MAX_INT_DIGITS:,} are read).")
        return int(digits)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_int=parse_int)
    except RecursionError as e:  # the C parser's own guard, far past any sample limit
        raise _over(
            name,
            limits,
            "depth",
            f"{where}the JSON is nested more than {limits.depth} levels deep (deeper than the JSON reader goes)",
        ) from e
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
        raise file_error(
            name, f"duplicate column name {e.args[0]!r} (a key repeated in one object).", column=str(e.args[0])
        ) from e
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values one after another: JSON Lines with a .json name
            try:
                return _read_jsonl(text, name, limits)
            except BatchError:
                pass
        raise file_error(
            name,
            f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
            hint='Expected an array of records [{...}, ...], columns {"col": [...]}, or {"data": [records]}.',
        ) from e
    return _json_columns(obj, name, limits)


def _read_jsonl(text: str, name: str, limits: SampleLimits) -> dict[str, list]:
    records: list[Any] = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        if len(records) == limits.rows:  # refused before the line past the limit is parsed
            raise _over(name, limits, "rows", f"the file has more than {limits.rows:,} records")
        try:
            rec = _loads(line, name, limits, where=f"line {lineno}: ")
        except _DuplicateKey as e:
            raise file_error(name, f"line {lineno}: duplicate column name {e.args[0]!r}.", column=str(e.args[0])) from e
        except json.JSONDecodeError as e:
            raise file_error(name, f"line {lineno} is not valid JSON: {e.msg} (column {e.colno}).") from e
        if not isinstance(rec, dict):
            raise file_error(
                name, f"line {lineno} holds a JSON {type(rec).__name__}, expected an object (one record per line)."
            )
        records.append(rec)
    if not records:
        raise file_error(name, "the file has no records.")
    return _records(records, name, limits)


def _records(records: list, name: str, limits: SampleLimits, what: str = "item") -> dict[str, list]:
    if not records:
        raise file_error(name, "the file has no data rows (an empty list of records).")
    if len(records) > limits.rows:
        raise _over(name, limits, "rows", f"the file has {len(records):,} records")
    cols: dict[str, None] = {}
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise file_error(
                name, f"{what} {i} is a JSON {type(rec).__name__}, expected an object with one key per column.", row=i
            )
        for k in rec:
            cols.setdefault(str(k), None)
        if len(cols) > limits.columns:
            raise _over(
                name,
                limits,
                "columns",
                f"the records have more than {limits.columns:,} different keys (columns) by {what} {i}",
                row=i,
            )
    return {c: [rec.get(c) for rec in records] for c in cols}


def _int_keys(keys: Iterable) -> bool:
    return all(isinstance(k, str) and INT_RE.match(k) for k in keys)


def _json_columns(obj: Any, name: str, limits: SampleLimits) -> dict[str, list]:
    if isinstance(obj, list):
        if obj and all(isinstance(r, list) for r in obj):  # pandas orient="values": rows without names
            for i, r in enumerate(obj, 1):
                if len(r) != len(obj[0]):
                    raise file_error(
                        name,
                        f"row {i} ({ROW_CONVENTION}) has {len(r)} values, expected {len(obj[0])} (as in row 1).",
                        row=i,
                    )
            return {str(j): [r[j] for r in obj] for j in range(len(obj[0]))}
        return _records(obj, name, limits)
    if not isinstance(obj, dict):
        raise file_error(
            name, f"holds a JSON {type(obj).__name__}; expected an array of records or an object of columns."
        )
    for key in ("data", "rows", "records"):
        data = obj.get(key)
        if not isinstance(data, list):
            continue
        split = isinstance(obj.get("columns"), list) and all(isinstance(r, list) for r in data)
        if split or (data and all(isinstance(r, dict) for r in data)):
            if split:
                # pandas orient="split": {"columns": [...], "data": [[...], ...]}
                if len(obj["columns"]) > limits.columns:
                    raise _over(name, limits, "columns", f'"columns" lists {len(obj["columns"]):,} names')
                if len(data) > limits.rows:
                    raise _over(name, limits, "rows", f'"{key}" holds {len(data):,} rows')
                names = _check_names(obj["columns"], name)
                for i, r in enumerate(data, 1):
                    if len(r) != len(names):
                        raise file_error(
                            name,
                            f"row {i} ({ROW_CONVENTION}) has {len(r)} values, expected {len(names)} (one per column).",
                            row=i,
                        )
                return {n: [r[j] for r in data] for j, n in enumerate(names)}
            return _records(data, name, limits, what=f'"{key}" item')
    if not obj:
        raise file_error(name, "the JSON object is empty.")
    if len(obj) > limits.columns:
        raise _over(name, limits, "columns", f"the JSON object has {len(obj):,} keys (columns)")
    values = list(obj.values())
    if all(isinstance(v, list) for v in values):  # {"col": [..], ...}
        lengths = {k: len(v) for k, v in obj.items()}
        if len(set(lengths.values())) > 1:
            raise file_error(
                name,
                "columns have different lengths: "
                + ", ".join(f"{k!r}: {n}" for k, n in list(lengths.items())[:20])
                + ".",
            )
        if values and len(values[0]) > limits.rows:
            raise _over(name, limits, "rows", f"the columns hold {len(values[0]):,} rows")
        return {str(k): list(v) for k, v in obj.items()}
    if (
        all(isinstance(v, dict) for v in values) and _int_keys(obj) and not _int_keys({k for v in values for k in v})
    ):  # pandas orient="index": {"0": {"col": v, ...}, ...}
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
    raise file_error(
        name,
        "mixes lists and single values at the top level; expected an array of records, "
        'an object of equal-length column lists, or {"data": [records]}.',
    )


# --------------------------------------------------------------------------------------------------
# The formats


Read = Callable[[str, str, SampleLimits], dict[str, list]]  # (text, file name, limits) -> columns


@dataclass(frozen=True)
class Reader:
    """One sample format: its name, the suffixes that name it (lower case), and read(text, name, limits)."""

    name: str
    suffixes: tuple[str, ...]
    read: Read


def _delimited(sep: str | None) -> Read:
    """A reader of delimited text; sep None: told from the header (pick_delimiter)."""
    return lambda text, name, limits: _read_delimited(text, sep, name, limits)


# Tried by the file's suffix; the order is the order of SUPPORTED_SUFFIXES in messages.
READERS: tuple[Reader, ...] = (
    Reader("CSV", (".csv",), _delimited(",")),
    Reader("TSV", (".tsv", ".tab"), _delimited("\t")),
    Reader("delimited text", (".txt",), _delimited(None)),
    Reader("JSON", (".json",), _read_json),  # several values one after another: read as JSON Lines
    Reader("JSON Lines", (".jsonl", ".ndjson"), _read_jsonl),
)
SUPPORTED_SUFFIXES = tuple(s for r in READERS for s in r.suffixes)
