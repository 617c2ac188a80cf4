"""A batch manifest: one conversion per line (JSONL / CSV) or per list item (YAML), read into ManifestEntry.

Keys are ConvertSpec's field names (`checkpoint`, `data`, `roles`, `opset`, `variants`, ...) plus `name`, the
entry's output folder under `studio batch --out` (default: the checkpoint's file or folder name). Relative
paths (`checkpoint`, `data`, `config`) are resolved against the manifest's folder. A bad line is a
ManifestError naming the manifest file, the line and the key; nothing runs then.

In a CSV cell, a list is `a,b` (`variants`, `dynamic`; `-` or empty for none) and a mapping is
`key=value;key=value` or a JSON object (`roles`, `tabular` with `INPUT=C1,C2;INPUT2=C3`, `sample_limits`).
"""

from __future__ import annotations

import csv
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import StudioError
from .spec import ConvertSpec, parse_sample_limits

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".yaml": "yaml", ".yml": "yaml"}
PATH_KEYS = ("checkpoint", "data", "config")
# not an entry's to set: the batch names each entry's output folder (`name`) and owns debug output
RESERVED = ("out", "debug")
EXTRA_KEYS = ("name",)
# test-only keys (honoured only when ONNX_STUDIO_FLEET_TEST_HOOKS=1 is set where the entry runs)
HOOK_KEYS = ("_kill_worker",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ManifestError(StudioError):
    """A manifest line cannot be read: names the file, the line and the key at fault."""

    def __init__(
        self, message: str, *, file: str, line: int | None = None, key: str | None = None, hint: str | None = None
    ):
        where = str(file) + (f", line {line}" if line else "") + (f", key {key!r}" if key else "")
        super().__init__(f"{where}: {message}", hint=hint)
        self.file, self.line, self.key = str(file), line, key


@dataclass
class ManifestEntry:
    name: str  # output folder under --out; unique in the manifest
    line: int  # 1-based line (JSONL / CSV: the record's line; YAML: the list item's first line)
    spec: ConvertSpec  # validated; `out` is filled by the batch
    options: dict[str, Any] = field(default_factory=dict)  # the entry's keys as given (paths resolved)
    hooks: dict[str, Any] = field(default_factory=dict)


def _spec_types() -> dict[str, Any]:
    hints = typing.get_type_hints(ConvertSpec)
    return {f.name: hints[f.name] for f in fields(ConvertSpec)}


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Every entry of the manifest, validated; ManifestError on the first bad line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError("no such manifest file.", file=str(path))
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(
            f"unknown manifest format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}.", file=str(path)
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot be read as UTF-8 text ({e}).", file=str(path)) from e
    records = {"jsonl": _jsonl_records, "csv": _csv_records, "yaml": _yaml_records}[kind](text, str(path))
    entries, names = [], {}
    for line, record in records:
        entry = _entry(record, line, path, csv_cells=(kind == "csv"))
        if entry.name in names:
            raise ManifestError(
                f"the name {entry.name!r} is already used on line {names[entry.name]}; give each "
                "entry its own `name` (its output folder).",
                file=str(path),
                line=line,
                key="name",
            )
        names[entry.name] = line
        entries.append(entry)
    if not entries:
        raise ManifestError("holds no conversions.", file=str(path))
    return entries


def _jsonl_records(text: str, file: str) -> list[tuple[int, dict]]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ManifestError(f"not a JSON object ({e.msg} at column {e.colno}).", file=file, line=n) from e
        out.append((n, record))
    return out


def _csv_records(text: str, file: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise ManifestError("has no header row.", file=file, line=1)
    out = []
    for record in reader:
        if None in record:
            raise ManifestError("has more cells than the header names.", file=file, line=reader.line_num)
        record = {k.strip(): v for k, v in record.items() if k and v is not None and v.strip() != ""}
        if record:
            out.append((reader.line_num, record))
    return out


def _yaml_records(text: str, file: str) -> list[tuple[int, dict]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ManifestError(
            f"not valid YAML ({getattr(e, 'problem', None) or e}).", file=file, line=mark.line + 1 if mark else None
        ) from e
    if isinstance(data, dict) and set(data) == {"conversions"}:  # `conversions: [...]`
        data, node = data["conversions"], node.value[0][1]
    if not isinstance(data, list):
        raise ManifestError("must be a list of conversions (or `conversions:` holding one).", file=file, line=1)
    return [(item.start_mark.line + 1, record) for item, record in zip(node.value, data)]


def _entry(record: Any, line: int, manifest: Path, csv_cells: bool) -> ManifestEntry:
    file = str(manifest)
    if not isinstance(record, dict):
        raise ManifestError(f"a conversion is a mapping of options, got {type(record).__name__}.", file=file, line=line)
    types = _spec_types()
    known = set(types) - set(RESERVED)
    options: dict[str, Any] = {}
    hooks = {}
    for key, value in record.items():
        key = str(key)
        if key in HOOK_KEYS:
            hooks[key] = value
            continue
        if key in RESERVED:
            raise ManifestError(
                "is set by `studio batch` for every entry (the output folder is --out/NAME; use `name`).",
                file=file,
                line=line,
                key=key,
            )
        if key not in known and key not in EXTRA_KEYS:
            raise ManifestError(
                f"unknown key; known: {', '.join(sorted(known | set(EXTRA_KEYS)))}.", file=file, line=line, key=key
            )
        try:
            tp = types.get(key, "str")
            options[key] = _cell(value, tp, key) if csv_cells else _typed(value, tp, key)
        except (ValueError, TypeError) as e:
            raise ManifestError(str(e), file=file, line=line, key=key) from e
    for key in ("checkpoint", "data"):
        if not options.get(key):
            raise ManifestError(
                "is missing (every conversion needs a checkpoint and a sample `data` file).",
                file=file,
                line=line,
                key=key,
            )
    for key in PATH_KEYS:
        if options.get(key):
            p = Path(str(options[key])).expanduser()
            p = p if p.is_absolute() else manifest.resolve().parent / p
            if not p.exists():
                raise ManifestError(f"{p} does not exist.", file=file, line=line, key=key)
            options[key] = str(p)
    name = options.pop("name", None) or _default_name(options["checkpoint"], line)
    if not _NAME.fullmatch(str(name)) or str(name).lower() in ("summary.json", "summary.md"):
        raise ManifestError(
            f"{name!r} is not a folder name (letters, digits, . _ -; not starting with . or -).",
            file=file,
            line=line,
            key="name",
        )
    try:
        spec = replace(
            ConvertSpec(checkpoint=options["checkpoint"], data=options["data"]),
            **{k: v for k, v in options.items() if k not in ("checkpoint", "data")},
        ).validated()
    except StudioError as e:
        raise ManifestError(e.message, file=file, line=line, hint=e.hint) from e
    return ManifestEntry(name=str(name), line=line, spec=spec, options=options, hooks=hooks)


def _default_name(checkpoint: str, line: int) -> str:
    stem = Path(checkpoint).name
    stem = stem.rsplit(".", 1)[0] if Path(checkpoint).is_file() and "." in stem[1:] else stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_") or "entry"
    return f"{stem[:80]}-line{line}"


def _base(tp: Any) -> str:
    """'int', 'float', 'bool', 'str', 'tuple', 'dict' or 'limits' for a ConvertSpec field's type."""
    text = str(tp)
    for word in ("SampleLimits", "dict", "tuple", "bool", "float", "int"):
        if word in text:
            return {"SampleLimits": "limits"}.get(word, word)
    return "str"


def _typed(value: Any, tp: Any, key: str) -> Any:
    """A JSON / YAML value checked against the field's type (numbers and lists as JSON has them)."""
    base = _base(tp) if tp is not None else "str"
    if value is None:
        return None
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}.")
        return value
    if base in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}.")
        if base == "int":
            if not math.isfinite(value) or value != int(value):
                raise ValueError(f"must be a whole number, got {value!r}.")
            return int(value)
        return float(value)
    if base == "tuple":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a list of names, got {value!r}.")
        return tuple(value)
    if base == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping, got {value!r}.")
        return {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
    if base == "limits":
        return parse_sample_limits(value)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"must be text, got {value!r}.")
    return str(value)


def _cell(text: str, tp: Any, key: str) -> Any:
    """A CSV cell (always text) read as the field's type."""
    base = _base(tp)
    text = text.strip()
    if base == "bool":
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"must be true or false, got {text!r}.")
        return low in ("true", "1", "yes")
    if base in ("int", "float"):
        try:
            number = float(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}.") from None
        return _typed(number, tp, key)
    if base == "tuple":
        return () if text == "-" else tuple(v.strip() for v in text.split(",") if v.strip())
    if base in ("dict", "limits"):
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a JSON object ({e.msg}).") from None
        else:
            value = {}
            for item in text.split(";"):
                k, sep, v = item.rpartition("=") if key == "roles" else item.partition("=")
                if not sep or not k.strip():
                    raise ValueError(f"{item!r} is not KEY=VALUE (items separated by ';').")
                value[k.strip()] = v.strip()
            if key == "tabular":
                value = {k: tuple(c.strip() for c in v.split(",") if c.strip()) for k, v in value.items()}
        return _typed(value, tp, key)
    return text
