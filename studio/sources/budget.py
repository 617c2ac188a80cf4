"""A reading budget for torch.save files, checked before torch.load sees them.

torch.load(weights_only=True) runs no code, but it believes the sizes a file declares and its pure-Python
unpickler does whatever work the opcodes ask for. So, before it runs:

- zip format (data.pkl + data/N records): every record must expand at most MAX_RATIO times (torch.save
  stores records uncompressed; a deflated one can turn 4 MB into 4 GB), at most MAX_TOTAL_BYTES in all,
  and the pickle (data.pkl) is at most MAX_PICKLE_BYTES;
- legacy format and plain pickles: at most MAX_PICKLE_BYTES of pickle, and the storages it declares must
  fit in the bytes the file really holds after it (torch allocates each declared size before reading);
- the pickle itself is walked once, as torch's weights-only unpickler reads it and running nothing
  (sources.pickle_scan): what its calls allocate and the steps they take are bounded by budgets
  proportional to the pickle's size, every tensor must fit the storage it views, and dict keys may not be
  built from too many shared parts or to collide. Storages larger than their records are refused here.

Each refusal names the file, the limit and what the file declares.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import BinaryIO

from studio.sources import sniff as sniffing
from studio.sources.archive import MAX_RATIO, MAX_TOTAL_BYTES
from studio.sources.pickle_scan import (  # noqa: F401 - the walk's limits, read here by callers and tests
    ALLOC_FLOOR,
    ALLOC_PER_BYTE,
    MAX_ALLOC,
    MAX_KEY_WEIGHT,
    MAX_SAME_HASH,
    MAX_WORK,
    WORK_FLOOR,
    WORK_PER_BYTE,
    scan_pickle,
)
from studio.sources.pickle_scan import refuse as _refuse

MAX_PICKLE_BYTES = 64 * 1024**2  # real state dicts pickle to kB-MB; a multimodal checkpoint's tokenizer ~20 MB
RATIO_CHECK_FROM = 1024**2  # records smaller than this may compress any amount (a 1 MiB cap on what they cost)


# ------------------------------------------------------------------------------------------ files


def check_file(path: Path, shown: str, kind: str) -> None:
    """Raise CheckpointError when reading the torch.save file `path` would break the budget."""
    if kind == sniffing.TORCH_ZIP:
        _check_zip(path, shown)
    elif kind in (sniffing.TORCH_LEGACY, sniffing.PICKLE):
        _check_stream(path, shown, kind)


def check_zip_slice(f: BinaryIO, offset: int, length: int, shown: str) -> None:
    """The same budget for a torch.save zip stored at bytes offset..offset+length of the open file `f` (a
    DCP shard's slice, which DCP hands to torch.load(weights_only=True)). Anything but a zip there is
    refused: torch.load would read it with the legacy unpickler."""
    view = _Slice(f, offset, length)
    if view.read(4) != b"PK\x03\x04":
        raise _refuse(shown, "the slice is not a torch.save zip archive")
    view.seek(0)
    _check_zip(view, shown, strict=True)


class _Slice(io.RawIOBase):
    """Bytes offset..offset+length of an open binary file, as a seekable file of its own."""

    def __init__(self, f: BinaryIO, offset: int, length: int):
        self._f, self._start, self._len, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = min(max(base + pos, 0), self._len)
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._len - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _check_zip(path: Path | BinaryIO | _Slice, shown: str, strict: bool = False) -> None:
    """strict: a damaged zip is refused here (else torch.load says what is wrong with it)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        if strict:
            raise _refuse(shown, f"it is not a readable zip archive ({e})") from e
        return
    with zf:
        members = zf.infolist()
        total = 0
        for m in members:
            total += m.file_size
            if (
                m.compress_type != zipfile.ZIP_STORED
                and m.file_size > RATIO_CHECK_FROM
                and m.file_size > MAX_RATIO * max(m.compress_size, 1)
            ):
                raise _refuse(
                    shown,
                    f"record {m.filename!r} is compressed {m.file_size / max(m.compress_size, 1):,.0f}x "
                    f"({m.compress_size:,} bytes in the file, {m.file_size:,} in memory; the limit is "
                    f"{MAX_RATIO}x, and torch.save stores records uncompressed)",
                )
        if total > MAX_TOTAL_BYTES:
            raise _refuse(shown, f"its records declare {total:,} bytes in all; the limit is {MAX_TOTAL_BYTES:,}")
        pkl = next((m for m in members if m.filename == "data.pkl" or m.filename.endswith("/data.pkl")), None)
        if pkl is None:
            if strict:
                raise _refuse(shown, "the archive holds no data.pkl")
            return
        if pkl.file_size > MAX_PICKLE_BYTES:
            raise _refuse(
                shown,
                f"its pickle ({pkl.filename}) is {pkl.file_size:,} bytes; the limit is "
                f"{MAX_PICKLE_BYTES:,} (a state dict's pickle holds names and shapes, not weights)",
            )
        try:
            data = zf.read(pkl)
        except Exception as e:  # noqa: BLE001 - a bad CRC or truncated member: torch.load says so
            if strict:
                raise _refuse(shown, f"its pickle cannot be read ({type(e).__name__}: {e})") from e
            return
        declared, _, _ = scan_pickle(data, shown)
        prefix = pkl.filename[: -len("data.pkl")]
        sizes = {m.filename: m.file_size for m in members}
        for key, nbytes in declared.items():
            held = sizes.get(f"{prefix}data/{key}")
            if held is not None and nbytes > held:
                raise _refuse(shown, f"storage {key!r} declares {nbytes:,} bytes but its record holds {held:,}")


def _check_stream(path: Path, shown: str, kind: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(MAX_PICKLE_BYTES + 1)
    # legacy torch.save: magic number, protocol, system info, the object, storage keys, then raw storages
    declared: dict[str, int] = {}
    end = 0
    for _ in range(5 if kind == sniffing.TORCH_LEGACY else 1):
        if end >= len(data):
            break
        found, complete, end = scan_pickle(data, shown, start=end)
        declared.update(found)
        if not complete:
            if len(data) > MAX_PICKLE_BYTES:
                raise _refuse(
                    shown,
                    f"its pickle is more than {MAX_PICKLE_BYTES:,} bytes, the limit (a state "
                    "dict's pickle holds names and shapes, not weights)",
                )
            return  # not parseable: torch.load says what is wrong with it
    total = sum(declared.values())
    if kind == sniffing.TORCH_LEGACY and total > size - end:
        raise _refuse(
            shown, f"its storages declare {total:,} bytes but the file holds only {size - end:,} after its pickles"
        )
