"""Gradio's upload cache, counted and bounded like the sessions' folders.

Files POSTed to gradio's `/gradio_api/upload` land in its cache (this process's own folder, see
server._private_gradio_cache) before any session or handler sees them, so the session disk caps alone would
not bound them: a client could fill the disk without ever opening a session. `UploadGuard` (ASGI middleware)
makes every upload count:

- before the body is read: refused (413) when the cache plus the session folders already hold `--max-disk`,
  or the client's uploads plus its sessions' folders hold `--max-client-disk`;
- after it was written (gradio writes the file as it streams, each at most `--max-file-size`): the files are
  attributed to the client address; if the upload took a cap over, its files are deleted at once and it is
  refused (413) instead of answered, so the worst case over a cap is the uploads in flight at that moment;
- the sweeper (`sweep`, run with the sessions' sweep) deletes the uploads of clients that have no live
  session once they are older than the grace time (an upload is made before its page's first event opens
  the session).

A refusal names the limit and its flag, like the session caps. Conversions never lose an input to this:
a job links its uploads into its own folder first (jobs.link_inputs).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.app.jobs import Sessions, disk_bytes

__all__ = ["UploadGuard", "Uploads"]


@dataclass
class _Upload:
    path: str
    size: int
    client: str
    at: float = field(default_factory=time.monotonic)


class Uploads:
    """Which client uploaded which cached file, the caps, and the sweep of orphaned uploads."""

    def __init__(
        self,
        cache_dir: Callable[[], str | None],
        sessions: Sessions,
        *,
        client_disk_mb: int | None,
        disk_mb: int | None,
        grace_s: float = 60.0,
    ):
        self.cache_dir, self.sessions = cache_dir, sessions
        self.client_disk_mb, self.disk_mb, self.grace_s = client_disk_mb, disk_mb, grace_s
        self._lock = threading.Lock()
        self._files: dict[str, _Upload] = {}

    def _cache(self) -> Path | None:
        d = self.cache_dir()
        return Path(d).resolve() if d else None

    def client_bytes(self, client: str) -> int:
        with self._lock:
            mine = [u for u in self._files.values() if u.client == client]
        return sum(u.size for u in mine if os.path.exists(u.path)) + self.sessions.held_by(client)

    def total_bytes(self) -> int:
        cache = self._cache()
        return (disk_bytes(cache) if cache else 0) + disk_bytes(self.sessions.root)

    def over(self, client: str) -> str | None:
        """The refusal message when the client or the studio is at a cap, else None."""
        for limit, held, who, flag in (
            (
                self.client_disk_mb,
                lambda: self.client_bytes(client),
                "This address's uploads and sessions hold",
                "--max-client-disk",
            ),
            (self.disk_mb, self.total_bytes, "The studio's uploads and sessions hold", "--max-disk"),
        ):
            if limit is not None:
                n = held()
                if n > limit * 2**20:
                    return (
                        f"{who} {n / 2**20:,.0f} MB of files, over the limit ({flag} {limit} MB): the upload was "
                        "refused. Close finished sessions (their files go with them) or try again later."
                    )
        return None

    def record(self, client: str, paths: list[str]) -> list[str]:
        """Attribute the cached files of one upload to `client`; the paths inside the cache, as kept."""
        cache = self._cache()
        kept = []
        for p in paths:
            try:
                real = Path(p).resolve()
                if cache is None or not real.is_relative_to(cache) or not real.is_file():
                    continue
                size = real.stat().st_size
            except (OSError, ValueError):
                continue
            kept.append(str(real))
            with self._lock:
                self._files[str(real)] = _Upload(str(real), size, client)
        return kept

    def drop(self, paths: list[str]) -> None:
        for p in paths:
            with self._lock:
                self._files.pop(p, None)
            try:
                os.unlink(p)
            except OSError:
                pass

    def sweep(self, now: float | None = None) -> int:
        """Delete the uploads of clients without a live session, once older than the grace time."""
        now = time.monotonic() if now is None else now
        live = self.sessions.clients()
        with self._lock:
            orphans = [u.path for u in self._files.values() if u.client not in live and now - u.at > self.grace_s]
        self.drop(orphans)
        return len(orphans)


class UploadGuard:
    """ASGI middleware: gradio's upload route under `Uploads`' caps (see the module's docstring)."""

    def __init__(self, app, uploads: Uploads):
        self.app, self.uploads = app, uploads

    async def __call__(self, scope, receive, send):
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or not scope.get("path", "").endswith("/upload")
        ):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("",))[0] or ""
        message = self.uploads.over(client)
        if message is not None:
            return await _refuse(send, message)
        start: dict = {}
        body: list[bytes] = []

        async def keep(event):  # the answer (a short JSON list of paths) is held until it is judged
            if event["type"] == "http.response.start":
                start.update(event)
            elif event["type"] == "http.response.body":
                body.append(event.get("body", b""))

        await self.app(scope, receive, keep)
        payload = b"".join(body)
        if start.get("status") == 200:
            try:
                paths = json.loads(payload)
            except ValueError:
                paths = []
            kept = self.uploads.record(
                client, [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []
            )
            message = self.uploads.over(client)
            if message is not None:
                self.uploads.drop(kept)
                return await _refuse(send, message)
        await send({**start, "type": "http.response.start"})
        await send({"type": "http.response.body", "body": payload})


async def _refuse(send, message: str) -> None:
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"text/plain; charset=utf-8")]}
    )
    await send({"type": "http.response.body", "body": message.encode()})
