"""Operator-registered checkpoint kinds ("source plugins").

A plugin is a Python module (trusted code: it is chosen by whoever starts the studio, never by an
upload) that provides:

    NAME = "my-team-model"                      # optional, shown in messages and the report
    def looks_like(source) -> bool: ...         # source: a pathlib.Path (file or folder), or the object
                                                # torch.load(..., weights_only=True) read from a file
    def load(source, path: str, spec) -> LoadedModel: ...
                                                # path: what the user gave (for messages / LoadedModel.path)
                                                # spec: the ConvertSpec (config, head, max_length, ...) or None

Each plugin is a row of the loader table (studio.sources.table), ahead of the built-in rows: asked with
the Path the user gave before any built-in kind, and again with the weights-only object read from a file.
The first plugin whose `looks_like` returns True loads it. A plugin may say what the graph computes and
that it is trusted code with LoadedModel's `task` / `trusted_code` fields (the older info["task"] /
info["trusted_code"] keys are moved into them).

Plugins are found, in this order:
  1. `--plugin MODULE_OR_FILE` given to `studio convert` / `studio app` (repeatable),
  2. the ONNX_STUDIO_PLUGINS environment variable (MODULE_OR_FILE entries separated by ',' or os.pathsep),
  3. installed packages' entry points in the group "onnx_studio.sources" (each pointing at a module).
MODULE_OR_FILE is an importable module name (`acme.studio_plugin`) or a path to a .py file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import zlib
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from studio.errors import CheckpointError, StudioError
from studio.sources.base import OBJECT, UPLOAD, LoadDefaults, LoadedModel, Loader, LoadOptions, Source

GROUP = "onnx_studio.sources"
ENV = "ONNX_STUDIO_PLUGINS"

_by_ref: dict[str, ModuleType] = {}  # reference given (module name / resolved file path) -> module
_entry_points_loaded: list[ModuleType] | None = None


class PluginError(StudioError):
    """A plugin could not be imported, lacks looks_like/load, or failed (an operator problem)."""


def _name(plugin: ModuleType) -> str:
    return str(getattr(plugin, "NAME", None) or plugin.__name__)


def _check(plugin: ModuleType, ref: str) -> ModuleType:
    lacking = [f for f in ("looks_like", "load") if not callable(getattr(plugin, f, None))]
    if lacking:
        raise PluginError(
            f"Plugin {ref!r} does not define {' and '.join(lacking)}(); a source plugin "
            "provides looks_like(source) -> bool and load(source, path, spec) -> LoadedModel."
        )
    return plugin


def _import(ref: str) -> ModuleType:
    ref = ref.strip()
    if ref.endswith(".py") or os.sep in ref or "/" in ref:
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"Plugin file {ref!r} does not exist.")
        mod_name = "studio_plugin_" + re.sub(r"\W", "_", path.stem) + f"_{zlib.crc32(str(path).encode()):08x}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"Plugin file {ref!r} cannot be imported as a Python module.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise PluginError(f"Plugin file {ref!r} failed to import: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(ref)
    except Exception as e:
        raise PluginError(
            f"Plugin module {ref!r} cannot be imported: {type(e).__name__}: {e}",
            hint="Give an importable module name or a path to a .py file.",
        ) from e


def _key(ref: str) -> str:
    ref = ref.strip()
    if ref.endswith(".py") or os.sep in ref or "/" in ref:
        return str(Path(ref).expanduser().resolve())
    return ref


def register(ref: str | ModuleType) -> ModuleType:
    """Import and register one plugin (module name, .py path, or an already imported module)."""
    if isinstance(ref, ModuleType):
        _by_ref[ref.__name__] = _check(ref, ref.__name__)
        return ref
    key = _key(ref)
    if key not in _by_ref:
        _by_ref[key] = _check(_import(ref), ref)
    return _by_ref[key]


def use(refs: list[str] | tuple[str, ...]) -> list[ModuleType]:
    """Register plugins given at start-up and export them in ONNX_STUDIO_PLUGINS, so that worker
    processes started afterwards (the app's jobs) load the same ones."""
    mods = [register(r) for r in refs]
    if refs:
        current = [e for e in _split(os.environ.get(ENV, "")) if e]
        keys = {_key(e) for e in current}
        for r in refs:
            if _key(r) not in keys:
                current.append(_key(r))
                keys.add(_key(r))
        os.environ[ENV] = ",".join(current)
    return mods


def _split(value: str) -> list[str]:
    return [p.strip() for p in re.split(f"[,{re.escape(os.pathsep)}]", value) if p.strip()]


def _from_entry_points() -> list[ModuleType]:
    global _entry_points_loaded
    if _entry_points_loaded is None:
        found = []
        for ep in entry_points(group=GROUP):
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginError(
                    f"Entry point {ep.name!r} ({ep.value}) in group {GROUP!r} failed to load: {type(e).__name__}: {e}"
                ) from e
            if not isinstance(obj, ModuleType):  # an entry point may name an object with the two functions
                obj_mod = ModuleType(f"{GROUP}.{ep.name}")
                obj_mod.looks_like = getattr(obj, "looks_like", None)  # type: ignore[attr-defined]
                obj_mod.load = getattr(obj, "load", None)  # type: ignore[attr-defined]
                obj_mod.NAME = getattr(obj, "NAME", ep.name)  # type: ignore[attr-defined]
                obj = obj_mod
            found.append(_check(obj, ep.value))
        _entry_points_loaded = found
    return _entry_points_loaded


def active() -> list[ModuleType]:
    """All plugins in the order they are asked: --plugin / ONNX_STUDIO_PLUGINS, then entry points."""
    for ref in _split(os.environ.get(ENV, "")):
        register(ref)
    out: list[ModuleType] = []
    for mod in list(_by_ref.values()) + _from_entry_points():
        if mod not in out:
            out.append(mod)
    return out


def clear() -> None:
    """Forget registered plugins (tests). The environment variable is left alone."""
    global _entry_points_loaded
    _by_ref.clear()
    _entry_points_loaded = None


def loaders() -> tuple[Loader, ...]:
    """The active plugins as rows of the loader table, in the order they are asked."""
    return tuple(_row(plugin) for plugin in active())


def _asked(source: Source) -> Any:
    """What a plugin's looks_like / load is given: the Path the user gave, or what a file held (else None)."""
    return source.path if source.form == UPLOAD else source.obj if source.form == OBJECT else None


def _row(plugin: ModuleType) -> Loader:
    def sniff(source: Source, options: LoadOptions) -> bool:
        asked = _asked(source)
        if asked is None:
            return False
        try:
            return bool(plugin.looks_like(asked))
        except StudioError:
            raise
        except Exception as e:
            raise PluginError(f"Plugin {_name(plugin)!r} failed in looks_like(): {type(e).__name__}: {e}") from e

    def load(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
        return load_with(plugin, _asked(source), shown, options)

    return Loader(_name(plugin), sniff, load)


def load_with(plugin: ModuleType, source: Any, shown: str, spec: LoadOptions) -> LoadedModel:
    """Run a plugin's load and check it returned a LoadedModel. The plugin gets the conversion's ConvertSpec,
    or None when the checkpoint is loaded alone (LoadDefaults), as its contract says."""
    try:
        loaded = plugin.load(source, shown, None if isinstance(spec, LoadDefaults) else spec)
    except StudioError:
        raise
    except Exception as e:
        raise CheckpointError(f"Plugin {_name(plugin)!r} could not load {shown}: {type(e).__name__}: {e}") from e
    if not isinstance(loaded, LoadedModel):
        raise PluginError(f"Plugin {_name(plugin)!r} returned {type(loaded).__name__}, not a LoadedModel.")
    if loaded.task is None and isinstance(loaded.info.get("task"), str):
        loaded.task = loaded.info.pop("task")
    if loaded.info.get("trusted_code") is True:
        loaded.trusted_code = bool(loaded.info.pop("trusted_code"))
    loaded.info.setdefault("plugin", _name(plugin))
    return loaded
