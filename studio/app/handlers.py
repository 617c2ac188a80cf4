"""UI values -> ConvertSpec: the table of the `/convert` parameters (CONVERT_PARAMS, the one mapping from the
page's controls and the API's arguments onto ConvertSpec fields), the parsers of what the page / API send,
the per-input and tabular-feed helpers, and the scrubbing of server paths from messages. No gradio in here
(the rendering of results is studio/app/render.py), so every function is testable on its own."""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import pandas as pd

from studio import demo
from studio.artifacts import scrub_paths  # noqa: F401 - the app names uploads as the core does
from studio.errors import StudioError
from studio.escape import excerpt
from studio.spec import (
    DYNAMIC_AXES,
    EXPORTERS,
    ID_DTYPES,
    OPSET_MAX,
    OPSET_MIN,
    ROLES,
    VARIANTS,
    ConvertSpec,
    default,
    parse_roles,
    parse_sample_limits,
    parse_tabular,
)

# the demo ships inside the package (studio/demo, found with importlib.resources): an installed studio has it
DEMO_CHECKPOINT = demo.checkpoint()
DEMO_SAMPLE = demo.sample()
DEMO_DIR = DEMO_CHECKPOINT.parent

OPSETS = list(range(OPSET_MIN, OPSET_MAX + 1))
# Seconds per latency measurement in the app (the CLI's default is ConvertSpec.latency_budget_s = 1.0).
# Four to eight measurements run per conversion, so this keeps Load demo -> Export -> results well inside
# 15 s on a 2-core machine; the control under "Advanced" (and the API's latency_budget) sets it per run,
# and report.json records the value used.
LATENCY_BUDGET_DEFAULT = 0.5
# The page says auto / new / legacy; the spec says auto / dynamo / torchscript.
EXPORTER_CHOICES = [
    ("auto", "auto"),
    ("new (dynamo)", "dynamo"),
    ("legacy (TorchScript)", "torchscript"),
    ("compare both, keep the better file", "compare"),
]
EXPORTER_ALIASES = {"new": "dynamo", "legacy": "torchscript", "torch.export": "dynamo"}
# The "Faster variants" checkboxes: (label, value); each is built beside model.onnx, checked against
# PyTorch like model.onnx and timed side by side with it (studio/variants/table.py).
VARIANT_CHOICES = [
    ("optimized: ONNX Runtime fusions (ONNX Runtime only)", "optimized"),
    ("int8: dynamic quantization, for CPU", "int8"),
    ("int8-static: calibrated on your rows (QDQ), for CPU", "int8-static"),
    ("fp16: for CUDA (checked on CPU when there is no GPU)", "fp16"),
]


# What one field of a request may hold, checked before any work on it (every handler, every endpoint):
# characters of its strings and keys plus one per item or number, and JSON nesting (sent as a value or as text).
FIELD_CHARS = 64 * 1024
# ... except the fields that list the sample's columns (it may have 10,000: --sample-limits columns)
COLUMN_FIELDS = {"roles": 2**20, "tabular": 2**20}
JSON_DEPTH = 32


# --------------------------------------------------------------------------------------------------
# Request fields, bounded


def bounded(field: str, value: Any, limit: int = FIELD_CHARS, depth: int = JSON_DEPTH) -> Any:
    """`value` as the request sent it, or a StudioError naming `field` when it is larger than `limit` (its
    strings' and keys' characters, plus one per item or number) or nested deeper than `depth`. The walk
    stops as soon as either is passed, so its cost is bounded by `limit`, whatever was sent."""
    size, stack = 0, [(value, 0)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, str):
            size += len(v)
        elif isinstance(v, (dict, list, tuple)):
            if level >= depth:
                raise StudioError(f"Field {field!r} is nested too deep (more than {depth} levels).", hint=_SMALLER)
            size += len(v)
            if size <= limit:
                items = [x for kv in v.items() for x in kv] if isinstance(v, dict) else v
                stack.extend((x, level + 1) for x in items)
        elif isinstance(v, pd.DataFrame):
            size += int(v.size) + len(v.columns)
            if size <= limit:
                stack.extend((str(c), level + 1) for c in v.columns)
                stack.extend((x, level + 1) for x in v.to_numpy().ravel().tolist())
        else:  # a number, a bool, None, a path object: its text
            size += len(str(v)) if isinstance(v, (Path, float)) or not isinstance(v, (int, bool)) else 1
        if size > limit:
            raise StudioError(f"Field {field!r} is too large: more than {limit:,} characters.", hint=_SMALLER)
    return value


_SMALLER = "Send less: a request field holds at most 64 kB of text (roles and tabular inputs: 1 MB)."


def bounded_all(values: dict[str, Any]) -> dict[str, Any]:
    """Every field of a request bounded (`bounded`), before any of them is read."""
    for name, value in values.items():
        bounded(name, value, COLUMN_FIELDS.get(name, FIELD_CHARS))
    return values


_JSON_MARKS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _json_depth(text: str, what: str, depth: int = JSON_DEPTH) -> None:
    """A StudioError when the JSON text nests arrays / objects deeper than `depth` (json.loads would recurse
    once per level: 10,000 levels end in RecursionError). One pass over the text, strings skipped."""
    level, in_string = 0, False
    for m in _JSON_MARKS.finditer(text):  # only the characters that matter: brackets, quotes, escapes
        c = m.group()
        if in_string:
            in_string = c != '"'  # an escape (backslash + one character) is one match: skipped whole
        elif c == '"':
            in_string = True
        elif c in "[{":
            level += 1
            if level > depth:
                raise StudioError(
                    f"{what} are nested too deep: more than {depth} levels (at character {m.start() + 1:,}).",
                    hint=_SMALLER,
                )
        elif c in "]}":
            level -= 1


def _text(value: Any, what: str) -> str:
    """A value the request must send as text (a string, or a number / bool written out)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return "" if value is None else str(value)
    raise StudioError(f"{what} must be text, got {_kind(value)}: {excerpt(value)}.")


_KINDS: dict[type, str] = {dict: "an object", list: "a list", tuple: "a list"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _texts(value: Any, what: str) -> list[str]:
    """A list of strings the request sent (a JSON array of text); a StudioError naming `what` otherwise."""
    if not isinstance(value, (list, tuple)):
        raise StudioError(f"{what} must be a list of names, got {_kind(value)}: {excerpt(value)}.")
    return [_text(v, what) for v in value]


# --------------------------------------------------------------------------------------------------
# UI values -> ConvertSpec


def _json_object(text: str, what: str, shape: str, example: str) -> dict:
    """A JSON object the page / API sent; a StudioError saying what is wrong otherwise."""
    _json_depth(text, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StudioError(
            f"{what} are not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}).", hint=f"Send {example}."
        ) from e
    if not isinstance(data, dict):
        raise StudioError(f"{what} must be a JSON object of {shape}.")
    return data


def parse_roles_value(value: Any) -> dict[str, str]:
    """Roles as the page / API send them: a dict, a JSON object, or `COL=ROLE` lines (as the CLI)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        data = value
    else:
        text = _text(value, "Roles").strip()
        if not text.startswith("{"):
            roles = parse_roles([s for s in re.split(r"[\n;]", text) if s.strip()])
            return _known_roles(roles)
        data = _json_object(text, "Roles", "column -> role", 'an object like {"review": "text", "price": "tabular"}')
    roles = {str(k): _text(v, f"The role of column {excerpt(k)}").strip().lower() for k, v in data.items()}
    return _known_roles(roles)


def _known_roles(roles: dict[str, str]) -> dict[str, str]:
    for col, role in roles.items():
        if role not in ROLES:
            raise StudioError(f"Role {excerpt(role)} for column {excerpt(col)} is not one of {', '.join(ROLES)}.")
    return roles


def parse_axes(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    return tuple(v.strip().lower() for v in _texts(value, "Dynamic axes"))


def parse_per_input(value: Any) -> dict[str, tuple[str, ...]]:
    """Per-input dynamic axes: {"input_ids": ["batch"], "price": []} as a dict or JSON text."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        _json_depth(value, "Per-input dynamic dimensions")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise StudioError(f"Per-input dynamic dimensions are not valid JSON: {e.msg}.") from e
    if not isinstance(value, dict):
        raise StudioError('Per-input dynamic dimensions must be an object like {"input_ids": ["batch"]}.')
    return {str(k): parse_axes(v) for k, v in value.items()}


def parse_variants(value: Any) -> tuple[str, ...]:
    """Variants as the page / API send them: a list, or a comma string like "int8,fp16" (as the CLI).
    Names are checked by ConvertSpec.validated(), which names the choices."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value)
    names = dict.fromkeys(v.strip().lower() for v in _texts(value, "Variants") if v.strip())  # each once
    order = {v: i for i, v in enumerate(VARIANTS)}
    return tuple(sorted(names, key=lambda n: order.get(n, len(order))))  # build order, as the CLI


@overload
def _number(value: Any, name: str, default: float) -> float: ...


@overload
def _number(value: Any, name: str, default: float | None) -> float | None: ...


def _number(value: Any, name: str, default: float | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise StudioError(f"{name} must be a number, got {excerpt(value)}.") from e
    if math.isnan(x):
        return default
    return x


def parse_tabular_value(value: Any) -> dict[str, tuple[str, ...]]:
    """Tabular feeds as the page / API send them: a dict {input: [columns]}, a JSON object, or
    `INPUT=COL1,COL2,...` lines (as the CLI's --tabular; FIRST..LAST is a range). Blank: none chosen."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        data = value
    else:
        text = _text(value, "Tabular inputs").strip()
        if not text.startswith("{"):
            return parse_tabular([ln for ln in text.splitlines() if ln.strip()])
        data = _json_object(
            text, "Tabular inputs", "input -> list of columns", '{"features": ["a", "b"]} or lines like features=a,b'
        )
    what = "The columns of tabular input {}".format
    return {str(k): (v,) if isinstance(v, str) else tuple(_texts(v, what(excerpt(k)))) for k, v in data.items()}


def tabular_text(feeds: dict[str, Any]) -> str:
    """{input: [columns]} -> the `INPUT=COL1,COL2,...` lines shown in the page."""
    return "\n".join(f"{name}={','.join(cols)}" for name, cols in feeds.items() if cols)


def set_feed(text: str, columns: list[str], column: str, choice: str) -> str:
    """The tabular-inputs text after choosing which input `column` feeds ("auto": the studio decides).
    Ranges are spelled out (in file order) so that one column can move; a chosen column is appended to its
    input's list, so the order shown is the order of the choices (edit the text to reorder)."""
    from studio.inputs.tabular import expand_columns

    try:
        feeds = {n: expand_columns(c, columns) for n, c in parse_tabular_value(text).items()}
    except StudioError:
        feeds = {}
    for cols in feeds.values():
        if column in cols:
            cols.remove(column)
    if choice and choice != "auto":
        feeds.setdefault(choice, []).append(column)
    return tabular_text(feeds)


def _required(what: str, hint: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if not value:
            raise StudioError(f"No {what} uploaded.", hint=hint)
        return _text(value, f"The {what}")

    return read


def _whole(name: str) -> Callable[[Any], int]:
    """A whole number the page / API sent (blank: the ConvertSpec default)."""

    def read(value: Any) -> int:
        try:
            return int(float(value if value not in (None, "") else default(name)))
        except (TypeError, ValueError, OverflowError) as e:
            raise StudioError(f"{name} must be a whole number, got {excerpt(value)}.") from e

    return read


def _read_number(label: str, fallback: float | None) -> Callable[[Any], float | None]:
    return lambda value: _number(value, label, fallback)


def _read_exporter(value: Any) -> str:
    name = _text(value or default("exporter"), "Exporter").strip().lower()
    exporter = EXPORTER_ALIASES.get(name, name)
    if exporter not in EXPORTERS:
        raise StudioError(f"Exporter {excerpt(exporter)} is not one of auto, new, legacy, compare.")
    return exporter


def _read_dynamic(value: Any) -> tuple[str, ...]:
    """None: every axis dynamic (the default); [] or "": a static export."""
    return tuple(default("dynamic")) if value is None else parse_axes(value)


def _read_budget(value: Any) -> float:
    budget = _number(value, "Latency budget", LATENCY_BUDGET_DEFAULT)
    if budget <= 0:
        raise StudioError(f"Latency budget must be more than 0 s, got {budget:g}.")
    return budget


def _read_id_dtype(value: Any) -> str:
    id_dtype = _text(value or default("id_dtype"), "Id dtype").strip().lower()
    if id_dtype not in ID_DTYPES:
        raise StudioError(f"Id dtype {excerpt(id_dtype)} is not one of {', '.join(ID_DTYPES)}.")
    return id_dtype


def _read_flag(name: str) -> Callable[[Any], bool]:
    """A yes / no the page (a checkbox) or the API sent: a bool, or true / false written out; blank: the default."""

    def read(value: Any) -> bool:
        if value is None or value == "":
            return bool(default(name))
        if isinstance(value, bool):
            return value
        word = _text(value, name).strip().lower()
        if word in ("true", "1", "yes", "false", "0", "no"):
            return word in ("true", "1", "yes")
        raise StudioError(f"{name} must be true or false, got {excerpt(value)}.")

    return read


REQUIRED = inspect.Parameter.empty  # a parameter without a default (the API requires it)


@dataclass(frozen=True)
class Param:
    """One parameter of the `/convert` endpoint: its API name (the name gradio_client calls it by), the
    page control that sends it (an attribute of page.Page), the ConvertSpec field it sets, how its
    value is read into that field (a StudioError naming what is wrong), and its API default."""

    name: str
    component: str
    field: str
    read: Callable[[Any], Any]
    api_default: Any = None


# The one table of the /convert endpoint, in its public order (new parameters go last, with a default, so
# that positional callers keep working). It gives server.convert its signature, layout the inputs list and
# spec_from_ui the mapping onto ConvertSpec.
CONVERT_PARAMS = (
    Param(
        "checkpoint",
        "checkpoint",
        "checkpoint",
        _required("checkpoint", "Upload a checkpoint file or a .zip of a model folder, or press Load demo."),
        REQUIRED,
    ),
    Param(
        "sample",
        "sample",
        "data",
        _required("sample file", "Upload a few rows as CSV, TSV, JSON or JSONL, or press Load demo."),
        REQUIRED,
    ),
    Param("roles", "roles_box", "roles", lambda v: parse_roles_value(v)),
    Param("opset", "opset", "opset", _whole("opset"), default("opset")),
    Param("exporter", "exporter", "exporter", _read_exporter, default("exporter")),
    Param("dynamic", "dynamic", "dynamic", _read_dynamic),
    Param("dynamic_per_input", "per_input_json", "dynamic_per_input", lambda v: parse_per_input(v)),
    Param("max_length", "max_length", "max_length", _whole("max_length"), default("max_length")),
    Param("atol", "atol", "atol", _read_number("atol", default("atol")), default("atol")),
    Param("rtol", "rtol", "rtol", _read_number("rtol", default("rtol")), default("rtol")),
    Param("id_dtype", "id_dtype", "id_dtype", _read_id_dtype, default("id_dtype")),
    Param("fill_value", "fill_value", "fill_value", _read_number("Fill value", None)),
    Param("latency_budget", "latency_budget", "latency_budget_s", _read_budget),
    Param("variants", "variants", "variants", lambda v: parse_variants(v)),
    Param("tabular", "tabular_box", "tabular", lambda v: parse_tabular_value(v)),
    Param("task", "task", "task", lambda v: _text(v or default("task"), "Task").strip().lower(), default("task")),
    Param("locate", "locate", "locate", _read_flag("locate"), default("locate")),
    Param("repair", "repair", "repair", _read_flag("repair"), default("repair")),
    Param("max_new_tokens", "max_new_tokens", "max_new_tokens", _whole("max_new_tokens"), default("max_new_tokens")),
)
CONVERT_NAMES = tuple(p.name for p in CONVERT_PARAMS)


def spec_from_ui(
    checkpoint: Any = None,
    sample: Any = None,
    *,
    out: str | Path,
    trust_code: bool = False,
    sample_limits: Any = None,
    **values: Any,
) -> ConvertSpec:
    """The one mapping from the page's controls (or the API's arguments), named as in CONVERT_PARAMS, to
    a validated ConvertSpec; a parameter left out takes its API default."""
    unknown = sorted(set(values) - set(CONVERT_NAMES))
    if unknown:
        raise TypeError(f"unknown /convert parameter(s): {', '.join(unknown)}; known: {', '.join(CONVERT_NAMES)}")
    values = bounded_all({"checkpoint": checkpoint, "sample": sample, **values})
    fields = {
        p.field: p.read(values.get(p.name, None if p.api_default is REQUIRED else p.api_default))
        for p in CONVERT_PARAMS
    }
    return ConvertSpec(
        **fields,
        out=str(out),
        trust_code=bool(trust_code),
        sample_limits=parse_sample_limits(sample_limits),  # the operator's --sample-limits, never the page's
    ).validated()


def per_input_rows(model: dict | None, dynamic: Any) -> list[list[Any]]:
    """Rows of the per-input dynamic-dimension table: [input, batch?, sequence?] from the global choice.
    Tabular inputs have no sequence axis."""
    axes = set(parse_axes(dynamic))
    rows = []
    for i in (model or {}).get("inputs", []):
        seq_ok = i.get("kind") != "tabular"
        rows.append([i["name"], "batch" in axes, seq_ok and "sequence" in axes])
    return rows


def per_input_from_rows(rows: Any) -> dict[str, list[str]]:
    """The per-input table back to {input: [axes]} (an empty dict when the table is empty)."""
    if rows is None:
        return {}
    if isinstance(rows, pd.DataFrame):
        rows = rows.values.tolist()
    elif isinstance(rows, dict):
        rows = rows.get("data", [])
    out: dict[str, list[str]] = {}
    for r in rows:
        if not r or not str(r[0]).strip():
            continue
        flags = [_truthy(x) for x in list(r[1:3]) + [False] * (2 - len(r[1:3]))]
        out[str(r[0])] = [a for a, on in zip(DYNAMIC_AXES, flags) if on]
    return out


def _truthy(x: Any) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes", "y", "x", "✓")
    return bool(x) and not (isinstance(x, float) and math.isnan(x))


def zip_stem(checkpoint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(checkpoint)).stem).strip("-.") or "model"
    return f"{stem[:60]}-onnx"
