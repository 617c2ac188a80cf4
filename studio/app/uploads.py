"""Gradio's upload cache, counted and bounded like the sessions' folders.

Files POSTed to gradio's `/gradio_api/upload` land in its cache (this process's own folder, see
server._private_gradio_cache) before any session or handler sees them, so the session disk caps alone would
not bound them: a client could fill the disk without ever opening a session. `UploadGuard` (ASGI middleware)
makes every upload count:

- before the body is read, by the size it declares: an upload must declare its length (Content-Length; a
  chunked upload is refused, 411), and that length is reserved against `--max-client-disk` and `--max-disk`
  (with the cache, the session folders and the other uploads in flight) or the upload is refused (413)
  unread. The server's HTTP parser (uvicorn's h11) reads no more than the declared length, and the guard
  cuts a body that ran longer, so what uploads write never takes the caps over, however many files one
  request carries (gradio takes up to 1000 a request, each up to `--max-file-size`) and however many are
  in flight together;
- after it was written: the files are attributed to the client address; if the cache plus the sessions
  are still over a cap (a session grew meanwhile), its files are deleted at once and it is refused (413);
- the sweeper (`sweep`, run with the sessions' sweep) deletes the uploads of clients that have no live
  session once they are older than the grace time (an upload is made before its page's first event opens
  the session), and gradio's half-written temporary files (`tmp*` at the cache's top, left by an upload
  whose client went away mid-body) once unchanged that long.

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

import anyio

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
        self._reserving = threading.Lock()
        self._files: dict[str, _Upload] = {}
        self._reserved: dict[str, int] = {}  # bytes declared by the uploads in flight, by client

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

    def over(self, client: str, extra: int = 0) -> str | None:
        """The refusal message when the client or the studio is at a cap (with `extra` more bytes), else None."""
        with self._lock:
            mine, everyone = self._reserved.get(client, 0), sum(self._reserved.values())
        for limit, held, who, flag in (
            (
                self.client_disk_mb,
                lambda: self.client_bytes(client) + mine,
                "This address's uploads and sessions hold",
                "--max-client-disk",
            ),
            (
                self.disk_mb,
                lambda: self.total_bytes() + everyone,
                "The studio's uploads and sessions hold",
                "--max-disk",
            ),
        ):
            if limit is not None:
                n = held()
                if n + extra > limit * 2**20:
                    what = f"{n / 2**20:,.0f} MB of files"
                    if extra:
                        what += f"; this upload declares {extra / 2**20:,.1f} MB more"
                    return (
                        f"{who} {what}, over the limit ({flag} {limit} MB): the upload was "
                        "refused. Close finished sessions (their files go with them) or try again later."
                    )
        return None

    def reserve(self, client: str, size: int) -> str | None:
        """Reserve `size` bytes for an upload in flight; the refusal message instead when it would not fit."""
        with self._reserving:  # one check-and-reserve at a time, so two uploads never take the same room
            message = self.over(client, size)
            if message is None:
                with self._lock:
                    self._reserved[client] = self._reserved.get(client, 0) + size
            return message

    def release(self, client: str, size: int) -> None:
        with self._lock:
            left = self._reserved.get(client, 0) - size
            if left > 0:
                self._reserved[client] = left
            else:
                self._reserved.pop(client, None)

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
        """Delete the uploads of clients without a live session, once older than the grace time, and the
        temporary files of uploads cut off mid-body, once unchanged that long."""
        now = time.monotonic() if now is None else now
        live = self.sessions.clients()
        with self._lock:
            orphans = [u.path for u in self._files.values() if u.client not in live and now - u.at > self.grace_s]
        self.drop(orphans)
        return len(orphans) + self._sweep_partial(time.time() + (now - time.monotonic()))

    def _sweep_partial(self, wall_now: float) -> int:
        """Gradio streams each uploaded file into `tmp*` at the cache's top and renames it into a folder
        named by its hash once whole; a client that goes away mid-body leaves that file behind."""
        cache = self._cache()
        gone = 0
        try:
            entries = list(os.scandir(cache)) if cache else []
        except OSError:
            return 0
        for e in entries:
            try:
                if e.name.startswith("tmp") and e.is_file(follow_symlinks=False):
                    if wall_now - e.stat(follow_symlinks=False).st_mtime > self.grace_s:
                        os.unlink(e.path)
                        gone += 1
            except OSError:
                pass
        return gone


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
        size = _declared_length(scope)
        if size is None:
            return await _refuse(
                send,
                "An upload must declare its size (a Content-Length header; chunked uploads are not taken): "
                "it is counted against --max-client-disk and --max-disk before it is read.",
                411,
            )
        # the cache and the session folders are walked in a worker thread: the event loop keeps serving
        message = await anyio.to_thread.run_sync(self.uploads.reserve, client, size)
        if message is not None:
            return await _refuse(send, message)
        start: dict = {}
        body: list[bytes] = []

        async def keep(event):  # the answer (a short JSON list of paths) is held until it is judged
            if event["type"] == "http.response.start":
                start.update(event)
            elif event["type"] == "http.response.body":
                body.append(event.get("body", b""))

        try:
            await self.app(scope, _at_most(receive, size), keep)
        finally:  # what was written is on disk now, where it is counted: the reservation ends
            self.uploads.release(client, size)
        payload = b"".join(body)
        if start.get("status") == 200:
            try:
                paths = json.loads(payload)
            except ValueError:
                paths = []
            named = [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []
            message = await anyio.to_thread.run_sync(self._judge, client, named)
            if message is not None:
                return await _refuse(send, message)
        await send({**start, "type": "http.response.start"})
        await send({"type": "http.response.body", "body": payload})

    def _judge(self, client: str, named: list[str]) -> str | None:
        """After gradio wrote the files (in a worker thread: it stats, walks and deletes): record them for
        `client`; the refusal message, with the files deleted, when the caps are still passed."""
        kept = self.uploads.record(client, named)
        message = self.uploads.over(client)
        if message is not None:
            self.uploads.drop(kept)
        return message


def _declared_length(scope) -> int | None:
    """The request's Content-Length, or None when it has none (chunked) or one that is not a number."""
    values = [v for k, v in scope.get("headers") or [] if k.lower() == b"content-length"]
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


def _at_most(receive, size: int):
    """`receive`, cut off (as a client gone away) once the body runs past the length it declared."""
    seen = 0

    async def wrapped():
        nonlocal seen
        event = await receive()
        if event.get("type") == "http.request":
            seen += len(event.get("body", b""))
            if seen > size:
                return {"type": "http.disconnect"}
        return event

    return wrapped


async def _refuse(send, message: str, status: int = 413) -> None:
    body = message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
