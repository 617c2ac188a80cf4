"""Uploads stay inside their folder: no link an upload holds, and no path it names, may reach a file outside it.

`check_folder` runs once per folder, in `sources.load`, before any loader (transformers, tokenizers,
safetensors, torch, DCP, a plugin) sees it: the given or unpacked folder (its whole tree), and the folder of
a single weights file or of `--config` (its top level plus `additional_chat_templates/`, the only places the
loaders read there). Nothing is rewritten; anything that points out is refused with UnsafePathError naming
the file and the key.

  * links: every symbolic link must resolve inside the folder (a link to a file beside it is fine);
  * JSON files (every *.json, and every JSON file a checked key names): each path-valued entry, at any depth
    and including duplicate keys, must resolve inside the folder. Path-valued entries are
      - `weight_map` of an index file (model.safetensors.index.json, pytorch_model.bin.index.json, ...):
        transformers joins the shard names to the index's folder;
      - every key ending in `_file` or `_files` (tokenizer_file, vocab_file, merges_file, spm_file,
        special_tokens_map_file, fast_tokenizer_files, ...), and `vocab` / `merges` when they are a string
        (the tokenizers library reads a string there as a file name).
    A value is checked joined to its JSON file's folder and, because a loader may hand a value verbatim to
    code that opens it relative to the working directory, also as given when that names an existing file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio.errors import CheckpointError, UnsafePathError

PATH_SUFFIXES = ("_file", "_files")
STRING_PATH_KEYS = ("vocab", "merges")  # a file name when a string; data when a dict / list
INDEX_KEY = "weight_map"
SUBFOLDERS_READ = ("additional_chat_templates",)  # read by transformers' tokenizer loading
MAX_JSON_BYTES = 512 * 1024**2  # a JSON file in a model folder larger than this is refused, not parsed
HINT_LINK = "Upload the files themselves, not links (zip the folder, or copy it with `cp -rL`)."
HINT_KEY = (
    "Remove the key or name a file inside the folder: transformers finds a folder's own files by their standard names."
)
HINT_INDEX = "An index file's weight_map names the shard files beside it (e.g. model-00001-of-00002.safetensors)."


def is_inside(root: Path, target: Path) -> bool:
    """`target` (resolved) is `root` (resolved) or lies below it."""
    return target == root or root in target.parents


def resolve_inside(root: Path, base: Path, name: str) -> Path | None:
    """`name` joined to `base` the way the loaders join it (an absolute name replaces `base`), links
    followed; None when that lies outside `root` (or cannot be resolved)."""
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, an embedded NUL, ...
        return None
    return target if is_inside(root, target) else None


def check_folder(folder: Path, shown: str, *, tree: bool = True) -> None:
    """Refuse `folder` when a link in it or a path named in its JSON files resolves outside it.

    tree=True: the whole tree (an uploaded or given folder); False: the top level and SUBFOLDERS_READ (the
    folder of a single weights file or of --config, where the loaders read nothing else)."""
    root = folder.resolve()
    json_files: list[Path] = []
    try:
        entries = list(_entries(root, tree))
    except OSError as e:
        raise CheckpointError(f"{shown}: the folder {root.name!r} cannot be listed ({e.strerror or e}).") from e
    for entry in entries:
        rel = entry.relative_to(root).as_posix()
        if entry.is_symlink() and resolve_inside(root, entry.parent, os.readlink(entry)) is None:
            raise UnsafePathError(
                f"{shown}: {rel} is a link to a path outside the upload's folder; refused.", hint=HINT_LINK
            )
        if entry.name.lower().endswith(".json") and entry.is_file():
            json_files.append(entry)
    _check_json_files(root, json_files, shown)


def _entries(root: Path, tree: bool) -> Iterator[Path]:
    if tree:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in sorted(dirnames) + sorted(filenames):
                yield Path(dirpath) / name
        return
    for entry in sorted(root.iterdir()):
        yield entry
        if entry.name in SUBFOLDERS_READ and entry.is_dir() and not entry.is_symlink():
            yield from sorted(entry.iterdir())


def _check_json_files(root: Path, files: list[Path], shown: str) -> None:
    """Check the path-valued entries of `files`, and of every file they name. A value is joined to each folder
    a loader may join it to: the JSON file's own, the upload's, and (for a named file) the naming file's."""
    queue: list[tuple[Path, tuple[Path, ...]]] = [(f, (f.parent, root)) for f in files]
    seen: set[Path] = set()
    while queue:
        path, bases = queue.pop(0)
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        data = _read_json(path, root, shown)
        if data is None:
            continue
        rel = path.relative_to(root).as_posix() if is_inside(root, path) else path.name
        for key, value, index in _path_values(data):
            hint = HINT_INDEX if index else HINT_KEY
            targets = {_checked(root, base, value, rel, key, shown, hint) for base in bases}
            if not index:  # a file a key names is read by the loaders too: check what it names
                queue.extend((t, (*bases, t.parent)) for t in targets if t is not None and t.is_file() and t != real)


def _read_json(path: Path, root: Path, shown: str) -> Any:
    """The parsed JSON, with duplicate keys kept (as lists of pairs); None when it is not JSON at all (the
    loaders cannot read it either, and say so in their own words)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:  # unreadable: no loader can read it either
        return None
    if not head.startswith((b"{", b"[")):
        return None
    if size > MAX_JSON_BYTES:
        rel = path.relative_to(root).as_posix() if is_inside(root, path) else path.name
        raise CheckpointError(
            f"{shown}: {rel} is a {size:,}-byte JSON file; JSON files in a model folder above "
            f"{MAX_JSON_BYTES:,} bytes are refused."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_Pairs)
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that a duplicate key cannot hide a value."""


def _path_values(data: Any) -> Iterator[tuple[str, str, bool]]:
    """(key, path value, from an index's weight_map) for every path-valued entry in parsed JSON."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, list) and not isinstance(node, _Pairs):
            stack.extend((where, v) for v in node)
            continue
        if not isinstance(node, _Pairs):
            continue
        for key, value in node:
            name = f"{where}.{key}" if where else str(key)
            if key == INDEX_KEY and isinstance(value, _Pairs):
                for tensor, shard in value:
                    if isinstance(shard, str):
                        yield f"{name}[{tensor!r}]", shard, True
            elif str(key).endswith(PATH_SUFFIXES):
                for leaf in _strings(value):
                    yield name, leaf, False
            elif key in STRING_PATH_KEYS and isinstance(value, str):
                yield name, value, False
            elif isinstance(value, list):  # an object or an array: look inside
                stack.append((name, value))


def _strings(value: Any) -> Iterator[str]:
    """Every string in `value` (a string, or an object / array holding strings at any depth)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, _Pairs):
            stack.extend(v for _, v in node)
        elif isinstance(node, list):
            stack.extend(node)


def _checked(root: Path, base: Path, value: str, rel: str, key: str, shown: str, hint: str) -> Path | None:
    """The file `value` names (inside root), None for an empty value; UnsafePathError when it points out."""
    if not value:
        return None
    shown_value = repr(value if len(value) <= 200 else value[:200] + "...")
    target = resolve_inside(root, base, value)
    if target is None and _names_nothing(base, value):
        return None  # e.g. the saver's own absolute path, written by old transformers: there is nothing to read
    if target is None:
        raise UnsafePathError(
            f"{shown}: {rel} names {shown_value} under {key!r}, a path outside the upload's folder; refused.", hint=hint
        )
    if not Path(value).is_absolute() and "\0" not in value:
        try:
            as_given = Path.cwd() / value
        except OSError:  # the working directory was removed
            return target
        if os.path.lexists(as_given) and resolve_inside(root, Path.cwd(), value) is None:
            raise UnsafePathError(
                f"{shown}: {rel} names {shown_value} under {key!r}, which read as given (relative "
                "to the working directory) is a file outside the upload's folder; refused.",
                hint=hint,
            )
    return target


def _names_nothing(base: Path, value: str) -> bool:
    """`value` is an absolute path that names nothing on this machine (the saver's own path, written by old
    transformers): nothing can be read through it, so it is no way out. A link, even a dangling one, counts as
    something; a relative path out of the folder (`../`) is always refused, whatever it names."""
    if "\0" in value or not os.path.isabs(value):
        return False
    try:
        return not os.path.lexists(base / value) and not os.path.lexists(value)
    except (OSError, ValueError):
        return False
