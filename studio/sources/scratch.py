"""Scratch folders a later run can prove stale: their name carries the process id that made them.

A conversion removes its scratch space on every exit path Python sees (exceptions, SystemExit from
SIGTERM); a process killed outright (SIGKILL, the kernel's out-of-memory killer, a job limit) cannot. Its
folders are named `PREFIX<pid>-<host>-<random>`, so the next run that makes one beside them removes those
whose process is gone. `<host>` is a tag of the machine's name: a folder shared with another machine or
container (another pid namespace, where our liveness check means nothing) is never touched. A folder
whose name carries no pid, another host's tag, or a live pid (possibly reused) is kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path

HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def name_tail() -> str:
    """What follows the prefix in this process's scratch names (before the random part): '<pid>-<host>-'."""
    return f"{os.getpid()}-{HOST_TAG}-"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process: alive as far as we can tell
    return True


def is_stale(tail: str) -> bool:
    """`tail` is what follows the prefix in a scratch folder's name: '<pid>-<host>-<random>'."""
    parts = tail.split("-")
    return len(parts) >= 3 and parts[0].isdigit() and parts[1] == HOST_TAG and not pid_alive(int(parts[0]))


def sweep(folder: str | Path, prefix: str) -> list[Path]:
    """Remove `folder/PREFIX<pid>-*` folders whose process is gone; returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        candidates = list(folder.glob(glob_escape(prefix) + "*"))
    except OSError:
        return removed
    for p in candidates:
        if p.is_dir() and not p.is_symlink() and is_stale(p.name[len(prefix) :]):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def temp_dir(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A private folder `PREFIX<pid>-<host>-<random>` in `parent` (default: the system's temporary folder), removed
    when the block ends however it ends; stale ones left there by killed processes are removed first."""
    parent = str(parent) if parent else tempfile.gettempdir()
    sweep(parent, prefix)
    with tempfile.TemporaryDirectory(prefix=prefix + name_tail(), dir=parent) as tmp:
        yield Path(tmp)
