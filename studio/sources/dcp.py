"""Sharded checkpoints written by torch.distributed.checkpoint (DCP): a folder with `.metadata` and
`*.distcp` files (what FSDP / FSDP2 / Lightning's FSDP strategy write with sharded state dicts).

They are consolidated on CPU in this process with DCP's own reader and planner
(`_load_state_dict_from_keys` with a `FileSystemReader`, no process group) — with two safety changes,
because torch's stock path is NOT weights-only (torch 2.13):
  * `FileSystemReader.read_metadata` calls `pickle.load` on `.metadata`: replaced by an unpickler that
    only builds DCP's own metadata classes, torch.Size and dtypes (anything else is refused);
  * non-tensor entries ("bytes" items: step counters, hyper-parameters, ...) are read by the planner
    with `torch.load(weights_only=False)`: only tensor entries are requested, so none are read.
Tensor shards are read by DCP with `torch.load(weights_only=True)`. The metadata is checked before any
read: every shard file must be a plain file in the folder, every slice must lie inside its file, and
the declared tensor sizes must fit the bytes actually uploaded; then every slice to be read gets the
budget of any torch.save file (sources.budget: a zip, its records' sizes, its pickle walked).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError, UnsafeCheckpointError, UnsafePathError, first_line
from studio.sources.base import FOLDER, LoadOptions, Source

METADATA = ".metadata"
SHARD_SUFFIX = ".distcp"
# Top-level entries that are never model weights (skipped: optimizer state can be twice the model).
SKIP_PREFIXES = ("optim", "lr_scheduler", "scheduler", "sched", "rng", "dataloader", "loops", "callbacks")
MAX_EXPANSION = 4  # declared tensor bytes may exceed the shard bytes by this factor (compressed shards)
SLACK_BYTES = 64 * 1024**2


def is_dcp_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / METADATA).is_file() and any(folder.glob("*" + SHARD_SUFFIX))


def sniff(source: Source, options: LoadOptions) -> bool:
    """A DCP folder, or a folder whose single sub-folder is one (the table consolidates it: load_dcp)."""
    return source.form == FOLDER and find_dcp_dir(source.path) is not None


def find_dcp_dir(folder: Path) -> Path | None:
    """`folder` itself, or its single sub-folder, when it holds a DCP checkpoint."""
    if is_dcp_dir(folder):
        return folder
    subs = [d for d in folder.iterdir() if d.is_dir() and is_dcp_dir(d)]
    return subs[0] if len(subs) == 1 else None


_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("pathlib", "Path"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata objects and nothing else: any other global is refused, never called."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise UnsafeCheckpointError(
            f"The DCP metadata file refers to {module}.{name}, which is not part of a DCP checkpoint's "
            "metadata; loading it could run code, so it is refused."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("The DCP metadata file holds persistent references; refused.")


def read_metadata(folder: Path, shown: str) -> Any:
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(folder / METADATA, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{shown}: the DCP metadata file ({METADATA}) cannot be read (truncated or "
            f"corrupted?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(md, Metadata):
        raise CheckpointError(f"{shown}: {METADATA} holds {type(md).__name__}, not DCP metadata.")
    return md


def _check_metadata(md: Any, folder: Path, shown: str) -> None:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    root = folder.resolve()
    sizes: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if (
            not isinstance(rel, str)
            or not rel
            or "/" in rel
            or "\\" in rel
            or rel in (".", "..")
            or Path(rel).is_absolute()
        ):
            raise UnsafePathError(
                f"{shown}: the DCP metadata points a shard at {rel!r}, which is not a file "
                "in the checkpoint folder; refused."
            )
        target = (folder / rel).resolve()
        if target.parent != root or not target.is_file() or target.is_symlink():
            raise CheckpointError(
                f"{shown}: shard file {rel!r} named in the DCP metadata is missing.",
                hint="Upload the whole checkpoint folder (every .distcp file and .metadata).",
            )
        if rel not in sizes:
            sizes[rel] = target.stat().st_size
        if not (
            isinstance(offset, int)
            and isinstance(length, int)
            and offset >= 0
            and length >= 0
            and offset + length <= sizes[rel]
        ):
            raise CheckpointError(
                f"{shown}: shard {rel!r} is shorter than its metadata says (truncated "
                f"upload?): slice {offset}+{length} of a {sizes[rel]}-byte file."
            )
    declared = 0
    for fqn, meta in md.state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            dtype = meta.properties.dtype
            if not isinstance(dtype, torch.dtype) or any(not isinstance(d, int) or d < 0 for d in meta.size):
                raise CheckpointError(f"{shown}: the DCP metadata for {fqn!r} is malformed.")
            declared += int(torch.Size(meta.size).numel()) * dtype.itemsize
    shard_bytes = sum(p.stat().st_size for p in folder.glob("*" + SHARD_SUFFIX))
    if declared > MAX_EXPANSION * shard_bytes + SLACK_BYTES:
        raise CheckpointError(
            f"{shown}: the DCP metadata declares {declared:,} bytes of tensors but the shard "
            f"files hold {shard_bytes:,} bytes; refused (truncated upload or forged metadata)."
        )


def _check_slices(md: Any, folder: Path, shown: str, keys: set[str]) -> None:
    """Every slice DCP will hand to torch.load for `keys` gets the budget any torch.save file gets
    (sources.budget: record sizes, the pickle walked as the weights-only unpickler reads it)."""
    from studio.sources.budget import check_zip_slice

    seen: set[tuple[str, int, int]] = set()
    for index, info in (md.storage_data or {}).items():
        where = (info.relative_path, info.offset, info.length)
        if getattr(index, "fqn", None) not in keys or where in seen:
            continue
        seen.add(where)
        with open(folder / info.relative_path, "rb") as f:
            check_zip_slice(f, info.offset, info.length, f"{shown} ({info.relative_path}, {index.fqn!r})")


def _skipped(fqn: str) -> bool:
    top = fqn.split(".", 1)[0].lower()  # "optim", "optimizer", "optimizer_0", "optimizer_states", ...
    return top.startswith(SKIP_PREFIXES)


def load_dcp(folder: Path, shown: str) -> dict[str, Any]:
    """Consolidate the DCP checkpoint in `folder` into a nested dict of CPU tensors (weights only)."""
    try:
        import torch.distributed as dist

        if not dist.is_available():
            raise ImportError("torch.distributed is not available in this PyTorch build")
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    except ImportError as e:
        raise CheckpointError(
            f"{shown} is a torch.distributed.checkpoint folder, but this PyTorch cannot read it: {e}"
        ) from e

    md = read_metadata(folder, shown)
    _check_metadata(md, folder, shown)

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:  # never pickle.load
            from torch.distributed.checkpoint.metadata import StorageMeta

            meta = read_metadata(folder, shown)
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    keys = {k for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata) and not _skipped(k)}
    if not keys:
        found = ", ".join(sorted(md.state_dict_metadata)[:10]) or "nothing"
        raise CheckpointError(f"{shown}: the DCP checkpoint holds no model tensors (entries: {found}).")
    _check_slices(md, folder, shown, keys)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = _load_state_dict_from_keys(keys, storage_reader=SafeReader(str(folder)))
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{shown}: a shard holds Python objects other than tensors; loading it could "
            f"run code, so it is refused. ({first_line(e)})"
        ) from e
    except (UnsafeCheckpointError, UnsafePathError):
        raise
    except Exception as e:
        raise CheckpointError(
            f"{shown}: the DCP shards cannot be read (truncated or corrupted?): {first_line(e, with_type=True)}"
        ) from e
    return state
