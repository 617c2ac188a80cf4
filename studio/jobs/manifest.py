"""A batch manifest: one conversion per line (JSONL / CSV) or per list item (YAML), read into ManifestEntry.

Keys are ConvertSpec's field names (`checkpoint`, `data`, `roles`, `opset`, `variants`, ...) plus `name`, the
entry's output folder under `studio batch --out` (default: the checkpoint's file or folder name). Relative
paths (`checkpoint`, `data`, `config`) are resolved against the manifest's folder, and every path a line names
must resolve (links followed, `~` being the operator's home) inside `inputs_under` (`studio batch
--inputs-under DIR`; default: the manifest's folder): an absolute path there is fine, one outside, a `../`
escape or a link pointing out is refused, as an upload's would be. A bad line is a ManifestError naming the
manifest file, the line and the key; nothing runs then.

In a CSV cell, a list is `a,b` (`variants`, `dynamic`; `-` or empty for none) and a mapping is
`key=value;key=value` or a JSON object (`roles`, `tabular` with `INPUT=C1,C2;INPUT2=C3`).

A manifest is data, possibly from other teams, and is read like an upload (one streaming pass, every bound
checked before the work it bounds):
- `null` (JSON / YAML) or an empty CSV cell is the key's default, as if the key were not there.
- Trust and limits are the operator's (`OPERATOR`): a line that sets one is refused, naming the
  `studio batch` flag that sets it for the whole batch.
- At most MAX_BYTES in the file, MAX_LINE characters a line, MAX_ENTRIES entries, MAX_TEXT characters in any
  key or text value, MAX_ITEMS items in a list or mapping, MAX_DEPTH levels of nesting, MAX_THREADS
  `threads`, and in YAML at most ALIAS_BUDGET nodes reached through aliases (a "billion laughs" file is
  refused while it is parsed). An error quotes at most ~200 characters of a value (studio.escape.excerpt),
  with its length.
"""

from __future__ import annotations

import csv
import json
import math
import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from studio.errors import StudioError
from studio.escape import EXCERPT, cut, excerpt
from studio.sources.contain import is_inside
from studio.spec import DYNAMIC_AXES, EXPORTERS, HEAD_NAMES, ID_DTYPES, ROLES, TASKS, VARIANTS, ConvertSpec

if TYPE_CHECKING:
    import yaml

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".yaml": "yaml", ".yml": "yaml"}
PATH_KEYS = ("checkpoint", "data", "config")
# not an entry's to set: the batch names each entry's output folder (`name`) and owns debug output
RESERVED = ("out", "debug")
# the operator's settings (trust and limits): never a line's; the flag that sets them for the whole batch
OPERATOR = {
    "trust_code": "--trust-code",
    "max_params": "--max-params",
    "sample_limits": "--sample-limits",
    "plugin": "--plugin",
    "plugins": "--plugin",
    "memory_limit": "--memory-limit",
    "memory_mb": "--memory-limit",
    "memory_limit_mb": "--memory-limit",
    "timeout": "--timeout",
    "timeout_s": "--timeout",
    "job_timeout": "--timeout",
    "jobs": "--jobs",
    "display_paths": None,  # the app's own (the paths its reports name): no flag
}
EXTRA_KEYS = ("name",)
# test-only keys (honoured only when ONNX_STUDIO_FLEET_TEST_HOOKS=1 is set where the entry runs)
HOOK_KEYS = ("_kill_worker",)
# text values that must be one of a few words: checked here, so that no message quotes a long one back
CHOICES = {
    "exporter": EXPORTERS,
    "id_dtype": ID_DTYPES,
    "head": HEAD_NAMES,
    "task": TASKS,
    "variants": VARIANTS,
    "dynamic": DYNAMIC_AXES,
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

MAX_BYTES = 512 * 1024**2  # the manifest file
MAX_LINE = 1024**2  # characters in one JSONL / CSV line
MAX_ENTRIES = 500_000
MAX_TEXT = 64 * 1024  # characters in one key or text value
MAX_PATH = 4096  # characters in a path (Linux's PATH_MAX)
MAX_ITEMS = 10_000  # items in one list or mapping
MAX_THREADS = 256  # a line's `threads` (intra-op threads of its job)
MAX_DEPTH = 8  # nesting of lists / mappings (a manifest needs 3: the entry, roles / tabular, a column list)
ALIAS_BUDGET = 10_000  # YAML nodes reached through aliases, counted as if expanded


class ManifestError(StudioError):
    """A manifest line cannot be read: names the file, the line and the key at fault."""

    def __init__(
        self, message: str, *, file: str, line: int | None = None, key: str | None = None, hint: str | None = None
    ):
        shown_key = None if key is None else repr(key) if len(key) <= EXCERPT else excerpt(key)
        where = str(file) + (f", line {line}" if line else "") + (f", key {shown_key}" if key is not None else "")
        super().__init__(f"{where}: {message}", hint=hint)
        self.file, self.line, self.key = str(file), line, key


@dataclass
class ManifestEntry:
    name: str  # output folder under --out; unique in the manifest
    line: int  # 1-based line (JSONL / CSV: the record's line; YAML: the list item's first line)
    spec: ConvertSpec  # validated; `out` is filled by the batch
    options: dict[str, Any] = field(default_factory=dict)  # the entry's keys as given (paths resolved)
    hooks: dict[str, Any] = field(default_factory=dict)
    inputs_under: str = ""  # the folder its paths were checked to lie in (resolved); "" when not read from a file


@cache
def _spec_types() -> dict[str, str]:
    """ConvertSpec field -> its base type (_base), read once (typing.get_type_hints takes ~0.5 ms)."""
    hints = typing.get_type_hints(ConvertSpec)
    return {f.name: _base(hints[f.name]) for f in fields(ConvertSpec)}


def quote(value: Any) -> str:
    """At most ~200 characters of a value, for an error message (its length when cut)."""
    if isinstance(value, str):
        return excerpt(value)
    return cut(repr(value), EXCERPT)


def read_manifest(path: str | Path, *, inputs_under: str | Path | None = None) -> list[ManifestEntry]:
    """Every entry of the manifest, validated in one streaming pass; ManifestError on the first bad line.
    inputs_under: the folder every path a line names must resolve inside (default: the manifest's folder)."""
    path = Path(path).expanduser()
    file = str(path)
    if not path.exists():
        raise ManifestError("no such manifest file.", file=file)
    if not path.is_file():
        raise ManifestError("is not a file.", file=file)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(
            f"unknown manifest format {quote(path.suffix)}; use one of {', '.join(sorted(FORMATS))}.", file=file
        )
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ManifestError(f"is {size:,} bytes; a manifest may hold at most {MAX_BYTES:,}.", file=file)
    reader = _Reader(path, inputs_under)
    entries: list[ManifestEntry] = []
    names: dict[str, int] = {}  # entry name -> its line
    with reader.open() as f:
        records = {"jsonl": _jsonl_records, "csv": _csv_records, "yaml": _yaml_records}[kind](f, file)
        for line, record in records:
            if len(entries) >= MAX_ENTRIES:
                raise ManifestError(f"holds more than {MAX_ENTRIES:,} conversions.", file=file, line=line)
            entry = reader.entry(record, line, csv_cells=(kind == "csv"))
            if entry.name in names:
                raise ManifestError(
                    f"the name {entry.name!r} is already used on line {names[entry.name]}; give each "
                    "entry its own `name` (its output folder).",
                    file=file,
                    line=line,
                    key="name",
                )
            names[entry.name] = line
            entries.append(entry)
    if not entries:
        raise ManifestError("holds no conversions.", file=file)
    return entries


# --- records: (line, mapping) from each format, one line at a time ----------------------------------------------


def _lines(f: TextIO, file: str) -> Iterator[tuple[int, str]]:
    """(line number, line) with every line at most MAX_LINE characters (a longer one is measured, not kept)."""
    n = 0
    while True:
        try:
            raw = f.readline(MAX_LINE + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE and not raw.endswith("\n"):
                length, start = len(raw), raw[:EXCERPT]
                while True:  # measured a chunk at a time, never held whole
                    more = f.readline(MAX_LINE)
                    length += len(more)
                    if not more or more.endswith("\n"):
                        break
                raise ManifestError(
                    f"the line is {length:,} characters long (it starts {excerpt(start + '...', EXCERPT)}); a "
                    f"manifest line may hold at most {MAX_LINE:,}.",
                    file=file,
                    line=n,
                )
        except UnicodeDecodeError as e:
            raise ManifestError(f"is not UTF-8 text ({e.reason}).", file=file, line=n + 1) from e
        yield n, raw


def _json_value(text: str, file: str, line: int, key: str | None = None) -> Any:
    """json.loads, with nesting past MAX_DEPTH refused (json's own RecursionError never surfaces)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ManifestError(
            f"nested too deep (line {line}): at most {MAX_DEPTH} levels.", file=file, line=line
        ) from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"not a JSON object ({e.msg} at column {e.colno}).", file=file, line=line, key=key) from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ManifestError(f"not a JSON object ({excerpt(e)}).", file=file, line=line, key=key) from e
    if _too_deep(value):
        raise ManifestError(f"nested too deep (line {line}): at most {MAX_DEPTH} levels.", file=file, line=line)
    return value


def _too_deep(value: Any) -> bool:
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return True
        nxt: list = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = [v for v in nxt if isinstance(v, (dict, list))]
    return False


def _jsonl_records(f: TextIO, file: str) -> Iterator[tuple[int, Any]]:
    for n, raw in _lines(f, file):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        yield n, _json_value(raw, file, n)


def _csv_records(f: TextIO, file: str) -> Iterator[tuple[int, dict]]:
    lines = (raw for _, raw in _lines(f, file))
    reader = csv.DictReader(lines)
    try:
        if not reader.fieldnames:
            raise ManifestError("has no header row.", file=file, line=1)
        for record in reader:
            if None in record:
                raise ManifestError("has more cells than the header names.", file=file, line=reader.line_num)
            record = {k.strip(): v for k, v in record.items() if k and v is not None and v.strip() != ""}
            if record:
                yield reader.line_num, record
    except csv.Error as e:
        raise ManifestError(f"not a CSV row ({excerpt(e)}).", file=file, line=reader.line_num) from e


def _yaml_records(f: TextIO, file: str) -> Iterator[tuple[int, Any]]:
    import yaml

    Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # noqa: N806 - a class
    try:
        text = f.read()
    except UnicodeDecodeError as e:
        raise ManifestError(f"is not UTF-8 text ({e.reason}).", file=file) from e
    try:
        _check_yaml_events(yaml.parse(text, Loader=Loader), file)
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = str(getattr(e, "problem", None) or e)
        if "nesting depth" in problem:  # libyaml's own bound (1000), met while it scans ahead
            raise ManifestError(
                f"nested too deep (line {line}): at most {MAX_DEPTH} levels.", file=file, line=line
            ) from e
        raise ManifestError(f"not valid YAML ({excerpt(problem)}).", file=file, line=line) from e
    except (ValueError, OverflowError) as e:  # a value the constructor cannot build (a 5000-digit int, a date)
        raise ManifestError(f"not valid YAML ({excerpt(e)}).", file=file) from e
    if node is not None and isinstance(data, dict) and set(data) == {"conversions"}:  # `conversions: [...]`
        data, node = data["conversions"], node.value[0][1]
    if node is None or not isinstance(data, list):
        raise ManifestError("must be a list of conversions (or `conversions:` holding one).", file=file, line=1)
    for item, record in zip(node.value, data):
        yield item.start_mark.line + 1, record


def _check_yaml_events(events: Iterable[yaml.Event], file: str) -> None:
    """One pass over the parser's events, before anything is composed: nesting at most MAX_DEPTH, and at most
    ALIAS_BUDGET nodes reached through aliases, each alias counting every node of what it names (so 9 anchors
    of 9 aliases, 9^9 nodes once expanded, are refused at the budget, not built)."""
    import yaml

    stack: list[list] = []  # [expanded size, anchor] per open collection
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    expanded = 0
    for event in events:
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise ManifestError(f"nested too deep (line {line}): at most {MAX_DEPTH} levels.", file=file, line=line)
            stack.append([1, event.anchor])
            if event.anchor is not None:
                sizes.pop(event.anchor, None)  # an alias to it before its end would be recursive
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:  # undefined, or its own node still open (a recursive alias)
                raise ManifestError(
                    f"the alias *{quote(event.anchor)[1:-1]} names no complete node before it (line {line}).",
                    file=file,
                    line=line,
                )
            size = sizes[event.anchor]
            expanded += size
            if expanded > ALIAS_BUDGET:
                raise ManifestError(
                    f"its aliases expand to more than {ALIAS_BUDGET:,} nodes (line {line}); write the values "
                    "out, or use fewer aliases.",
                    file=file,
                    line=line,
                )
        else:
            continue
        if stack:
            stack[-1][0] += size


# --- one entry -----------------------------------------------------------------------------------------------------


class _Reader:
    """What every entry of one manifest shares: its file, its folder, the folder its paths must lie in, and the
    paths already checked."""

    def __init__(self, path: Path, inputs_under: str | Path | None = None):
        self.path, self.file = path, str(path)
        self.base = path.resolve().parent
        self.root = self.base if inputs_under is None else inputs_root(inputs_under)
        self.checked: dict[str, str] = {}  # a path as given -> joined to the manifest's folder (inside, exists)

    def open(self) -> TextIO:
        return open(self.path, encoding="utf-8-sig", newline="")

    def error(self, message: str, line: int, key: str | None = None, hint: str | None = None) -> ManifestError:
        return ManifestError(message, file=self.file, line=line, key=key, hint=hint)

    def entry(self, record: Any, line: int, csv_cells: bool) -> ManifestEntry:
        if not isinstance(record, dict):
            raise self.error(f"a conversion is a mapping of options, got {type(record).__name__}.", line)
        if len(record) > MAX_ITEMS:
            raise self.error(f"a conversion has {len(record):,} keys; at most {MAX_ITEMS:,}.", line)
        options, hooks = self.options(record, line, csv_cells)
        for key in ("checkpoint", "data"):
            if not options.get(key):
                raise self.error(
                    "is missing (every conversion needs a checkpoint and a sample `data` file).", line, key
                )
        for key in PATH_KEYS:
            if options.get(key):
                options[key] = self.existing(options[key], line, key)
        name = options.pop("name", None) or _default_name(options["checkpoint"], line)
        if not _NAME.fullmatch(str(name)) or str(name).lower() in ("summary.json", "summary.md"):
            raise self.error(
                f"{quote(name)} is not a folder name (letters, digits, . _ -; not starting with . or -; at most "
                "100 characters).",
                line,
                "name",
            )
        try:
            spec = ConvertSpec(**options).validated()
        except StudioError as e:
            message = e.message if len(e.message) <= 4 * EXCERPT else quote(e.message)
            raise self.error(message, line, hint=e.hint) from e
        return ManifestEntry(
            name=str(name), line=line, spec=spec, options=options, hooks=hooks, inputs_under=str(self.root)
        )

    def options(self, record: dict, line: int, csv_cells: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The line's keys checked and typed; a null (or empty CSV cell) is left out: the default."""
        types = _spec_types()
        known = set(types) - set(RESERVED) - set(OPERATOR)
        options: dict[str, Any] = {}
        hooks = {}
        for key, value in record.items():
            key = str(key)
            if key in HOOK_KEYS:
                hooks[key] = value
                continue
            if key in OPERATOR:
                flag = OPERATOR[key]
                raise self.error(
                    "is an operator setting, not a manifest line's: "
                    + (
                        f"give `studio batch {flag}` to set it for the whole batch."
                        if flag
                        else "the web studio sets it for its own jobs."
                    ),
                    line,
                    key,
                )
            if key in RESERVED:
                raise self.error(
                    "is set by `studio batch` for every entry (the output folder is --out/NAME: use `name`; "
                    "debug output: --debug).",
                    line,
                    key,
                )
            if key not in known and key not in EXTRA_KEYS:
                raise self.error(f"unknown key; known: {', '.join(sorted(known | set(EXTRA_KEYS)))}.", line, key)
            if value is None:
                continue  # null: the default
            try:
                base = types.get(key, "str")
                value = _cell(value, base, key) if csv_cells else _typed(value, base, key)
            except (ValueError, TypeError, OverflowError) as e:
                raise self.error(str(e), line, key) from e
            if key in ("checkpoint", "data", "config") and value == "":
                continue
            if key == "threads" and not 1 <= value <= MAX_THREADS:
                raise self.error(f"must be a whole number from 1 to {MAX_THREADS}, got {quote(value)}.", line, key)
            options[key] = value
        return options, hooks

    def existing(self, value: str, line: int, key: str) -> str:
        """The path joined to the manifest's folder; it must resolve (links followed) inside the inputs folder,
        and exist. Containment is checked first: nothing says whether a file outside exists."""
        if value in self.checked:
            return self.checked[value]
        if len(value) > MAX_PATH:
            raise self.error(f"a path of {len(value):,} characters ({quote(value)}); at most {MAX_PATH:,}.", line, key)
        try:
            p = Path(value).expanduser()
            p = p if p.is_absolute() else self.base / p
            real = p.resolve()
            inside = is_inside(self.root, real)
            there = inside and p.exists()
        except (OSError, RuntimeError, ValueError) as e:  # a NUL byte, a link loop, a name too long, ...
            raise self.error(f"{quote(value)} is not a usable path ({excerpt(e)}).", line, key) from e
        if not inside:
            shown = "" if str(real) == value else f" (it resolves to {quote(str(real))})"
            raise self.error(
                f"{quote(value)}{shown} lies outside {quote(str(self.root))}, the folder this manifest's inputs "
                "must lie in.",
                line,
                key,
                hint=f"Move the file under {self.root}, or give `studio batch --inputs-under DIR` naming a folder "
                "that holds every input (default: the manifest's folder).",
            )
        if not there:
            raise self.error(f"{quote(str(p))} does not exist.", line, key)
        self.checked[value] = str(p)
        return str(p)


def inputs_root(folder: str | Path) -> Path:
    """`--inputs-under DIR` resolved; it must be a folder."""
    text = str(folder)
    try:
        root = Path(text).expanduser().resolve()
        ok = root.is_dir()
    except (OSError, RuntimeError, ValueError):
        ok = False
    if not ok:
        raise StudioError(
            f"--inputs-under {quote(text)} is not a folder.",
            hint="Name the folder that holds every checkpoint, sample and config the manifest names.",
        )
    return root


def still_inside(entry: ManifestEntry) -> str | None:
    """None when every path of the entry still resolves inside its inputs folder (links may have changed since
    the manifest was read); else what now lies outside, for its error row."""
    if not entry.inputs_under:
        return None
    root = Path(entry.inputs_under)
    for key in PATH_KEYS:
        value = entry.options.get(key)
        if not value:
            continue
        try:
            inside = is_inside(root, Path(value).resolve())
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside:
            return f"{key} {quote(value)} now resolves outside {quote(str(root))} (--inputs-under)."
    return None


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


def _text(value: Any, what: str = "text") -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be {what}, got {quote(value)}.")
    if len(value) > MAX_TEXT:
        raise ValueError(f"a text of {len(value):,} characters ({quote(value)}); at most {MAX_TEXT:,}.")
    return value


def _choice(value: str, key: str) -> str:
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{quote(value)} is not one of {', '.join(CHOICES[key])}.")
    return value


def _names(value: Any, key: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A list of names (or one text `a,b`), each checked."""
    if isinstance(value, str):
        value = [v.strip() for v in _text(value).split(",") if v.strip()]
    if not isinstance(value, list):
        raise ValueError(f"must be a list of names, got {quote(value)}.")
    if len(value) > MAX_ITEMS:
        raise ValueError(f"a list of {len(value):,} items; at most {MAX_ITEMS:,}.")
    out = tuple(_text(v, "a list of names") for v in value)
    for v in out:
        if allowed is not None and v not in allowed:
            raise ValueError(f"{quote(v)} is not one of {', '.join(allowed)}.")
        _choice(v, key)
    return out


def _number(value: Any, base: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {quote(value)}.")
    if base == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"must be a whole number, got {quote(value)}.")
            value = int(value)
        if abs(value) >= 2**63:
            raise ValueError(f"must be a whole number below 2**63, got {quote(value)}.")
        return value
    if isinstance(value, int) and abs(value) >= 2**1023:
        raise ValueError(f"is too large a number, {quote(value)}.")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {quote(value)}.")
    return float(value)


def _typed(value: Any, base: str, key: str) -> Any:
    """A JSON / YAML value checked against the field's type (numbers and lists as JSON has them)."""
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {quote(value)}.")
        return value
    if base in ("int", "float"):
        return _number(value, base)
    if base == "tuple":
        return _names(value, key)
    if base == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping, got {quote(value)}.")
        if len(value) > MAX_ITEMS:
            raise ValueError(f"a mapping of {len(value):,} keys; at most {MAX_ITEMS:,}.")
        out: dict[str, Any] = {}
        for k, v in value.items():
            k = _text(str(k))
            if key == "roles":
                v = _text(v, f"one of {', '.join(ROLES)}")
                if v.strip().lower() not in ROLES:
                    raise ValueError(f"role {quote(v)} for column {quote(k)} is not one of {', '.join(ROLES)}.")
                v = v.strip().lower()
            else:  # tabular: columns; dynamic_per_input: axes
                v = _names(v, key, DYNAMIC_AXES if key == "dynamic_per_input" else None)
            out[k] = v
        return out
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be text, got {quote(value)}.")
    return _choice(_text(str(value)), key)


def _cell(text: str, base: str, key: str) -> Any:
    """A CSV cell (always text) read as the field's type."""
    text = _text(text).strip()
    if base == "bool":
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"must be true or false, got {quote(text)}.")
        return low in ("true", "1", "yes")
    if base in ("int", "float"):
        try:
            number = int(text.replace("_", "")) if re.fullmatch(r"[+-]?[0-9_]{1,30}", text) else float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {quote(text)}.") from None
        return _typed(number, base, key)
    if base == "tuple":
        return () if text == "-" else _names(text, key)
    if base == "dict":
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except RecursionError:
                raise ValueError(f"nested too deep: at most {MAX_DEPTH} levels.") from None
            except ValueError as e:
                raise ValueError(f"not a JSON object ({excerpt(getattr(e, 'msg', e))}).") from None
            if _too_deep(value):
                raise ValueError(f"nested too deep: at most {MAX_DEPTH} levels.")
        else:
            value = {}
            for item in text.split(";"):
                k, sep, v = item.rpartition("=") if key == "roles" else item.partition("=")
                if not sep or not k.strip():
                    raise ValueError(f"{quote(item)} is not KEY=VALUE (items separated by ';').")
                value[k.strip()] = v.strip()
            if key == "tabular":
                value = {k: [c.strip() for c in v.split(",") if c.strip()] for k, v in value.items()}
        return _typed(value, base, key)
    return _choice(text, key)
