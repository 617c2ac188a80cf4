"""Per-session working folders and running jobs.

Every browser session (and every gradio_client) gets its own folder under one private root made with
mkdtemp (mode 0700, random name) outside Gradio's file cache, so nothing in it can be fetched over
HTTP: Gradio serves only files it copied into its cache from a handler's return value, under a path
salted with a per-install secret. A session's folder is removed when the page is closed, when it has
been idle longer than the TTL, when it never opened a heartbeat (a raw API caller) and has been idle
for `grace_s`, and when the app stops. Its running jobs are killed with it.

Sessions are bounded (SessionLimits): so many at once in all and per client address, and so much disk
per client and in all, checked when a session or a job folder is made. The root's name carries the
server's pid and host tag (studio.sources.scratch), so a server killed outright leaves nothing the next
one does not remove when it starts.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError
from studio.jobs.protocol import Job  # of this machine or on Ray (`studio app --ray`): protocol.new_job
from studio.sources import scratch

ROOT_PREFIX = "onnx-studio-sessions-"  # the private root: ROOT_PREFIX<pid>-<host>-<random> (scratch.sweep)
HEARTBEAT_PATH = "/gradio_api/heartbeat/"  # gradio's per-session keep-alive stream


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions and how much of their disk the app keeps; None: no limit (the operator's defaults
    are studio.app.config.AppConfig's). A client is the address a request came from (behind a reverse
    proxy, the proxy's: forwarding headers are not believed)."""

    max_sessions: int | None = None  # open at once, all clients together
    max_client_sessions: int | None = None  # open at once from one client address
    client_disk_mb: int | None = None  # files of one client's sessions
    disk_mb: int | None = None  # files of all sessions
    grace_s: float = math.inf  # a session with no heartbeat open is closed once idle this long


class SessionLimitError(StudioError):
    """A new session or job folder would pass one of the SessionLimits."""


@dataclass
class Session:
    key: str
    folder: Path
    client: str = ""
    last_used: float = field(default_factory=time.monotonic)
    jobs: set[Job] = field(default_factory=set)
    busy: set[Path] = field(default_factory=set)  # folders in use by a running conversion


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed)."""
    total = 0
    for base, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


class Sessions:
    def __init__(self, root: str | Path | None = None, ttl_s: float = 3600.0, limits: SessionLimits | None = None):
        base = Path(root) if root else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.swept = scratch.sweep(base, ROOT_PREFIX)  # the roots of servers killed outright (SIGKILL, OOM)
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX + scratch.name_tail(), dir=base))
        self.ttl_s = ttl_s
        self.limits = limits or SessionLimits()
        self._sessions: dict[str, Session] = {}
        self._beating: dict[str, int] = {}  # open heartbeat connections per session key
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.on_close: Callable[[str], None] | None = None  # told each session key closed (the graph grants)
        self.also_sweep: list[Callable[[], object]] = []  # run after each periodic sweep (the upload cache's)

    # --- folders ---------------------------------------------------------------------------------
    def session(self, key: str | None, client: str | None = None) -> Session:
        """The session `key`'s state, made (with its folder) on first use; a SessionLimitError when a new one
        would pass --max-sessions or --max-client-sessions."""
        key = key or "local"
        for attempt in (0, 1):
            with self._lock:
                s = self._sessions.get(key)
                if s is not None and s.folder.exists():
                    s.last_used = time.monotonic()
                    return s
                full = self._full(client or "")
                if full is None or attempt:
                    if full is not None:
                        raise SessionLimitError(full[0], hint=full[1])
                    folder = self.root / secrets.token_hex(16)  # not the session id: nothing to guess
                    folder.mkdir(mode=0o700, parents=True)
                    s = self._sessions[key] = Session(key, folder, client or "")
                    return s
            self.sweep()  # full: the sessions past their grace go first, then the count again
        raise AssertionError("unreachable")

    def _full(self, client: str) -> tuple[str, str] | None:
        """Why one more session cannot open (message, hint), or None. Called with the lock held."""
        lim = self.limits
        if lim.max_sessions is not None and len(self._sessions) >= lim.max_sessions:
            return (
                f"The studio has {len(self._sessions):,} sessions open, its limit (--max-sessions {lim.max_sessions}).",
                "Try again in a minute: idle sessions are closed.",
            )
        mine = sum(1 for s in self._sessions.values() if s.client == client)
        if lim.max_client_sessions is not None and mine >= lim.max_client_sessions:
            return (
                f"This address has {mine:,} sessions open, its limit "
                f"(--max-client-sessions {lim.max_client_sessions}).",
                "Close other tabs or clients of the studio, or try again in a minute.",
            )
        return None

    def new_dir(
        self, key: str | None, prefix: str, keep: int = 3, busy: bool = False, client: str | None = None
    ) -> Path:
        """A fresh folder in the session's folder. Older `prefix-*` folders beyond the newest `keep` are
        removed (their downloads were already copied to Gradio's cache when they were returned), except
        those still marked busy (busy=True marks the new one until `release`). A SessionLimitError when the
        client's sessions or all of them already hold more than their disk limit."""
        s = self.session(key, client)
        with self._lock:
            old = sorted(s.folder.glob(f"{prefix}-*"), key=_mtime, reverse=True)
            stale = [p for p in old[max(keep - 1, 0) :] if p not in s.busy]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        self._check_disk(s)
        with self._lock:
            folder = s.folder / f"{prefix}-{secrets.token_hex(6)}"
            folder.mkdir(mode=0o700)
            if busy:
                s.busy.add(folder)
        return folder

    def _check_disk(self, s: Session) -> None:
        lim = self.limits
        if lim.client_disk_mb is None and lim.disk_mb is None:
            return
        with self._lock:
            sessions = list(self._sessions.values())
        used = {id(x): disk_bytes(x.folder) for x in sessions}
        mine = sum(used[id(x)] for x in sessions if x.client == s.client)
        for limit, held, who, flag in (
            (lim.client_disk_mb, mine, "This address's sessions hold", "--max-client-disk"),
            (lim.disk_mb, sum(used.values()), "The studio's sessions hold", "--max-disk"),
        ):
            if limit is not None and held > limit * 2**20:
                raise SessionLimitError(
                    f"{who} {held / 2**20:,.0f} MB of files, over the limit ({flag} {limit} MB).",
                    hint="Close finished sessions (their files go with them) or try again later.",
                )

    def release(self, key: str | None, folder: Path) -> None:
        """The conversion using `folder` ended: it may be pruned by a later new_dir."""
        with self._lock:
            s = self._sessions.get(key or "local")
            if s is not None:
                s.busy.discard(folder)
                s.last_used = time.monotonic()

    # --- jobs ------------------------------------------------------------------------------------
    def add_job(self, key: str | None, job: Job) -> None:
        s = self.session(key)
        with self._lock:
            s.jobs.add(job)

    def remove_job(self, key: str | None, job: Job) -> None:
        with self._lock:
            s = self._sessions.get(key or "local")
            if s is not None:
                s.jobs.discard(job)
                s.last_used = time.monotonic()

    def running(self, key: str | None) -> list[Job]:
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

    def all_jobs(self) -> list[Job]:
        with self._lock:
            return [j for s in self._sessions.values() for j in s.jobs]

    # --- heartbeats --------------------------------------------------------------------------------
    def beat(self, key: str, opened: int) -> None:
        """A heartbeat connection of session `key` opened (+1) or closed (-1) (HeartbeatWatch)."""
        with self._lock:
            n = self._beating.get(key, 0) + opened
            if n > 0:
                self._beating[key] = n
            else:
                self._beating.pop(key, None)

    def beating(self, key: str) -> bool:
        with self._lock:
            return key in self._beating

    # --- cleanup ---------------------------------------------------------------------------------
    def close(self, key: str | None) -> None:
        """The page was closed: stop its jobs and remove its folder."""
        with self._lock:
            s = self._sessions.pop(key or "local", None)
        if s is None:
            return
        for j in list(s.jobs):
            j.cancel("The session ended.")
        self._removed([s])

    def clients(self) -> set[str]:
        """The client addresses with a live session."""
        with self._lock:
            return {s.client for s in self._sessions.values()}

    def held_by(self, client: str) -> int:
        """Bytes in the folders of `client`'s sessions."""
        with self._lock:
            folders = [s.folder for s in self._sessions.values() if s.client == client]
        return sum(disk_bytes(f) for f in folders)

    def _removed(self, gone: list[Session]) -> None:
        for s in gone:
            shutil.rmtree(s.folder, ignore_errors=True)
            if self.on_close is not None:
                self.on_close(s.key)

    def sweep(self, now: float | None = None) -> int:
        """Remove the sessions with no running job that were idle for longer than the TTL, or for longer
        than the grace time with no heartbeat open (a client that never opened one, or has gone)."""
        now = time.monotonic() if now is None else now
        grace = self.limits.grace_s
        with self._lock:
            expired = [
                k
                for k, s in self._sessions.items()
                if not s.jobs
                and not s.busy
                and (now - s.last_used > self.ttl_s or (k not in self._beating and now - s.last_used > grace))
            ]
            gone = [self._sessions.pop(k) for k in expired]
        self._removed(gone)
        return len(gone)

    def start_sweeper(self, every_s: float | None = None) -> None:
        if self._sweeper is not None:
            return
        every = every_s or max(0.5, min(5.0, self.ttl_s / 4, self.limits.grace_s / 3))

        def loop():
            while not self._stop.wait(every):
                self.sweep()
                for fn in self.also_sweep:
                    fn()

        self._sweeper = threading.Thread(target=loop, name="studio-session-sweeper", daemon=True)
        self._sweeper.start()

    def shutdown(self) -> None:
        self._stop.set()
        for j in self.all_jobs():
            j.cancel("The studio is shutting down.")
        with self._lock:
            self._sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class HeartbeatWatch:
    """ASGI middleware counting each session's open heartbeat connections (gradio's
    /gradio_api/heartbeat/<session_hash> stream, which the page and gradio_client keep open while they
    live): Sessions.sweep closes the sessions that have none once their grace time is over."""

    def __init__(self, app, sessions: Sessions):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        head, sep, key = path.rstrip("/").rpartition(HEARTBEAT_PATH)
        if not sep or not key or "/" in key or len(key) > 256:
            return await self.app(scope, receive, send)
        self.sessions.beat(key, 1)
        try:
            await self.app(scope, receive, send)
        finally:
            self.sessions.beat(key, -1)


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
