"""Safe unpacking of uploaded .zip archives: no escaping paths, no links, bounded size and count."""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from studio.errors import CheckpointError, UnsafePathError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 20 * 1024**3  # 20 GiB unpacked
MAX_RATIO = 200  # unpacked / packed per member: beyond this it is a zip bomb, not a checkpoint
RATIO_CHECK_FROM = 1024**2  # members (and archives) up to this size unpacked may compress any amount


def extract_zip(
    archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS, max_total_bytes: int = MAX_TOTAL_BYTES
) -> Path:
    """Unpack `archive` into `dest` and return the folder that holds the content.

    Refuses members with absolute paths, `..`, symlinks or special files, nested archives,
    more than `max_members` members, or more than `max_total_bytes` unpacked. When the archive
    holds a single top-level folder, that folder is returned.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{archive.name} is not a readable zip archive ({e}).") from e
    with zf:
        members = zf.infolist()
        if not members:
            raise CheckpointError(f"{archive.name} is an empty zip archive.")
        if len(members) > max_members:
            raise CheckpointError(f"{archive.name} has {len(members)} members; the limit is {max_members}.")
        total = 0
        for m in members:
            name = m.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise UnsafePathError(f"{archive.name}: member {name!r} points outside the archive; refused.")
            mode = m.external_attr >> 16
            ftype = stat.S_IFMT(mode)  # 0 when the writer stored permission bits only (zipfile.writestr, ...)
            if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafePathError(f"{archive.name}: member {name!r} is a link or special file; refused.")
            if name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz", ".7z")):
                raise CheckpointError(
                    f"{archive.name}: member {name!r} is an archive inside the archive; "
                    "upload the model folder zipped once."
                )
            total += m.file_size
            if total > max_total_bytes:
                raise CheckpointError(f"{archive.name} unpacks to more than {max_total_bytes:,} bytes; refused.")
            if m.file_size > RATIO_CHECK_FROM and m.file_size > MAX_RATIO * max(m.compress_size, 1):
                raise CheckpointError(
                    f"{archive.name}: member {name!r} expands {m.file_size / max(m.compress_size, 1):.0f}x "
                    f"(the limit is {MAX_RATIO}x); refused as a zip bomb."
                )
        packed = archive.stat().st_size
        if total > RATIO_CHECK_FROM and total > MAX_RATIO * packed:  # many small members, each under the check
            raise CheckpointError(
                f"{archive.name} unpacks to {total:,} bytes from {packed:,} ({total / packed:.0f}x, "
                f"the limit is {MAX_RATIO}x); refused as a zip bomb."
            )
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for m in members:
            target = (dest / m.filename).resolve()
            if root not in target.parents and target != root:
                raise UnsafePathError(f"{archive.name}: member {m.filename!r} points outside the archive; refused.")
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > m.file_size:  # the header lied about the size
                            raise CheckpointError(f"{archive.name}: member {m.filename!r} is larger than declared.")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                # a local header naming another file than the directory, a wrong CRC, a truncated or
                # unsupported member: the archive is damaged or forged
                raise CheckpointError(
                    f"{archive.name}: member {m.filename!r} cannot be read ({e}); the archive is damaged or forged.",
                    hint="Zip the model folder again and upload it.",
                ) from e
    entries = [p for p in dest.iterdir() if not p.name.startswith("__MACOSX")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
