"""Per-session working folders and running jobs.

Every browser session (and every gradio_client) gets its own folder under one private root made with
mkdtemp (mode 0700, random name) outside Gradio's file cache, so nothing in it can be fetched over
HTTP: Gradio serves only files it copied into its cache from a handler's return value, under a path
salted with a per-install secret. A session's folder is removed when the page is closed, when it has
been idle longer than the TTL, and when the app stops. Its running jobs are killed with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..isolate import Job

if TYPE_CHECKING:
    from ..fleet_ray import RayJob

AnyJob = Union[Job, "RayJob"]  # a job of this machine (studio.isolate) or one on Ray (`studio app --ray`)


@dataclass
class Session:
    key: str
    folder: Path
    last_used: float = field(default_factory=time.monotonic)
    jobs: set = field(default_factory=set)
    busy: set = field(default_factory=set)  # folders in use by a running conversion


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


class Sessions:
    def __init__(self, root: str | Path | None = None, ttl_s: float = 3600.0):
        base = Path(root) if root else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="onnx-studio-", dir=base))
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # --- folders ---------------------------------------------------------------------------------
    def session(self, key: str | None) -> Session:
        key = key or "local"
        with self._lock:
            s = self._sessions.get(key)
            if s is None or not s.folder.exists():
                folder = self.root / secrets.token_hex(16)  # not the session id: nothing to guess
                folder.mkdir(mode=0o700, parents=True)
                s = self._sessions[key] = Session(key, folder)
            s.last_used = time.monotonic()
            return s

    def new_dir(self, key: str | None, prefix: str, keep: int = 3, busy: bool = False) -> Path:
        """A fresh folder in the session's folder. Older `prefix-*` folders beyond the newest `keep` are
        removed (their downloads were already copied to Gradio's cache when they were returned), except
        those still marked busy (busy=True marks the new one until `release`)."""
        s = self.session(key)
        with self._lock:
            old = sorted(s.folder.glob(f"{prefix}-*"), key=_mtime, reverse=True)
            stale = [p for p in old[max(keep - 1, 0) :] if p not in s.busy]
            folder = s.folder / f"{prefix}-{secrets.token_hex(6)}"
            folder.mkdir(mode=0o700)
            if busy:
                s.busy.add(folder)
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return folder

    def release(self, key: str | None, folder: Path) -> None:
        """The conversion using `folder` ended: it may be pruned by a later new_dir."""
        with self._lock:
            s = self._sessions.get(key or "local")
            if s is not None:
                s.busy.discard(folder)

    # --- jobs ------------------------------------------------------------------------------------
    def add_job(self, key: str | None, job: AnyJob) -> None:
        s = self.session(key)
        with self._lock:
            s.jobs.add(job)

    def remove_job(self, key: str | None, job: AnyJob) -> None:
        with self._lock:
            s = self._sessions.get(key or "local")
            if s is not None:
                s.jobs.discard(job)
                s.last_used = time.monotonic()

    def running(self, key: str | None) -> list[AnyJob]:
        with self._lock:
            s = self._sessions.get(key or "local")
            return list(s.jobs) if s else []

    def cancel(
        self, key: str | None, tasks: tuple[str, ...] = ("convert",), reason: str = "The conversion was cancelled."
    ) -> int:
        """Kill this session's running jobs of the given tasks; returns how many were stopped."""
        jobs = [j for j in self.running(key) if j.task in tasks]
        for j in jobs:
            j.cancel(reason)
        return len(jobs)

    def all_jobs(self) -> list[AnyJob]:
        with self._lock:
            return [j for s in self._sessions.values() for j in s.jobs]

    # --- cleanup ---------------------------------------------------------------------------------
    def close(self, key: str | None) -> None:
        """The page was closed: stop its jobs and remove its folder."""
        with self._lock:
            s = self._sessions.pop(key or "local", None)
        if s is None:
            return
        for j in list(s.jobs):
            j.cancel("The session ended.")
        shutil.rmtree(s.folder, ignore_errors=True)

    def sweep(self, now: float | None = None) -> int:
        """Remove sessions idle for longer than the TTL that have no running job."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [k for k, s in self._sessions.items() if not s.jobs and now - s.last_used > self.ttl_s]
            gone = [self._sessions.pop(k) for k in expired]
        for s in gone:
            shutil.rmtree(s.folder, ignore_errors=True)
        return len(gone)

    def start_sweeper(self, every_s: float | None = None) -> None:
        if self._sweeper is not None:
            return
        every = every_s or max(5.0, min(300.0, self.ttl_s / 4))

        def loop():
            while not self._stop.wait(every):
                self.sweep()

        self._sweeper = threading.Thread(target=loop, name="studio-session-sweeper", daemon=True)
        self._sweeper.start()

    def shutdown(self) -> None:
        self._stop.set()
        for j in self.all_jobs():
            j.cancel("The studio is shutting down.")
        with self._lock:
            self._sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def link_inputs(job_dir: Path, *paths: str | None) -> list[str | None]:
    """The job's own links to the uploads: the upload cache may be cleaned while the job runs."""
    out = []
    folder = job_dir / "inputs"
    for p in paths:
        if not p or not Path(p).is_file():
            out.append(p)
            continue
        folder.mkdir(exist_ok=True)
        dest = folder / Path(p).name
        if dest.exists():  # two uploads with the same name: keep both
            dest = folder / f"{len(list(folder.iterdir()))}-{Path(p).name}"
        try:
            os.link(p, dest)
        except OSError:
            shutil.copy2(p, dest)
        out.append(str(dest))
    return out
