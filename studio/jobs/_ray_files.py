"""Files through Ray: a job's inputs packed for the worker, its output folder unpacked when it comes back
(zipped by studio.artifacts.zip_bytes), and the worker's temporary paths named back as the driver's
(studio.jobs.ray_fleet sends them; nothing here imports ray)."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.spec import ConvertSpec

INPUT_KEYS = ("checkpoint", "data", "config")  # the spec's fields naming files that travel to the worker


def pack(paths: dict[str, str]) -> bytes:
    """Zip bytes of the named files or folders, each under its key (`checkpoint/model.pt`, `data/x.csv`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, path in paths.items():
            p = Path(path)
            items = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            for f in items:
                zf.write(f, f"{key}/{p.name}" + ("" if f == p else f"/{f.relative_to(p)}"))
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Extract zip bytes into dest (zipfile drops absolute names and `..`, so nothing lands outside it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise StudioError(
                    f"Refusing the file {name!r} sent back by a Ray worker: it points outside its folder."
                )
        zf.extractall(dest)


def local_inputs(spec: ConvertSpec, tmp: Path) -> tuple[ConvertSpec, dict[str, str]]:
    """The spec pointing at the unpacked inputs, and {worker path: driver path} to map the report back."""
    names: dict[str, Any] = {}  # the spec's fields naming the unpacked copies (replace's keywords)
    back: dict[str, str] = {}
    for key in INPUT_KEYS:
        original = getattr(spec, key)
        if original:
            local = tmp / "in" / key / Path(original).name
            names[key], back[str(local)] = str(local), str(original)
    return replace(spec, **names), back


def rewrite_texts(folder: Path, mapping: dict[str, str]) -> None:
    """report.json / report.md name the paths the user gave, not the worker's temporary ones."""
    for name in ("report.json", "report.md"):
        p = folder / name
        if p.is_file():
            text = p.read_text()
            for old, new in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
                text = text.replace(old, new)
            p.write_text(text)


def move_into(src: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = folder / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(str(item), str(target))


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """fn applied to every string inside dataclasses (in place), dicts, lists and tuples."""
    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            setattr(obj, f.name, map_strings(getattr(obj, f.name), fn))
        return obj
    if isinstance(obj, dict):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_strings(v, fn) for v in obj)
    return fn(obj) if isinstance(obj, str) else obj


def swap(mapping: dict[str, str]) -> Callable[[str], str]:
    pairs = sorted(mapping.items(), key=lambda kv: -len(kv[0]))

    def fn(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    return fn
