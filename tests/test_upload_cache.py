"""Gradio's upload cache under the studio's disk caps (studio.app.uploads, issue 25): files POSTed to
/gradio_api/upload count against --max-client-disk and --max-disk with the sessions' folders; an upload whose
declared size (Content-Length) would take a cap over is refused (413) before its body is read, with a message
naming the flag, however many files it carries; one without a declared size is refused (411); uploads of a
client without a live session, and the half-written file of an upload cut off mid-body, are deleted after
the grace time. The app runs as an operator runs it (`studio app` in a subprocess); the uploads are plain HTTP posts."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse

import pytest

pytest.importorskip("gradio_client")
import httpx  # noqa: E402
from test_hostile_server import start_app  # noqa: E402

from studio.app.jobs import Sessions  # noqa: E402
from studio.app.uploads import Uploads  # noqa: E402

MB = 2**20


def _post(url: str, name: str, size: int) -> httpx.Response:
    return httpx.post(url + "gradio_api/upload", files=[("files", (name, b"\0" * size))], timeout=60)


def _cached(served) -> list:
    return sorted(p for root in served.uploads() for p in root.rglob("*") if p.is_file())


def _raw_upload(url: str, length: int, body: bytes, *, chunked: bool = False) -> socket.socket:
    """A multipart upload over a plain socket: the headers declare `length` (or chunked), then `body` is sent."""
    u = urllib.parse.urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    size = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: " + str(length).encode()
    s.sendall(
        b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B0undary\r\n"
        + size
        + b"\r\n\r\n"
        + body
    )
    return s


def _answer(s: socket.socket) -> bytes:
    """The response's head and body (as long as its Content-Length says), then the socket is closed."""
    got = b""
    while True:
        head, sep, rest = got.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(v)
                    for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                ),
                0,
            )
            if len(rest) >= length:
                break
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


PART = b'--B0undary\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n\r\n'


def test_uploads_count_against_the_client_disk_cap_and_orphans_are_swept(tmp_path):
    served = start_app(tmp_path, "--max-client-disk", "3", "--session-grace", "2")
    try:
        size = 14 * MB // 10  # 1.4 MB each: the third takes the client over 3 MB
        first, second = _post(served.url, "a.csv", size), _post(served.url, "b.csv", size + 1)
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert len(_cached(served)) == 2
        third = _post(served.url, "c.csv", size + 2)
        assert third.status_code == 413
        assert "--max-client-disk 3 MB" in third.text and "refused" in third.text
        assert len(_cached(served)) == 2  # the refused upload was never written
        # a client that goes away mid-body leaves gradio's half-written temporary file
        cut = _raw_upload(served.url, 100_000 + len(PART), PART + b"\0" * 50_000)
        end = time.monotonic() + 10
        while not any(p.name.startswith("tmp") and p.stat().st_size for p in _cached(served)):
            assert time.monotonic() < end, _cached(served)
            time.sleep(0.1)
        cut.close()
        # nobody opened a session for these uploads: they go once the grace time (10 s here) is over, and so
        # does the half-written file (unchanged that long)
        end = time.monotonic() + 40
        while _cached(served) and time.monotonic() < end:
            time.sleep(0.5)
        assert _cached(served) == []
        assert _post(served.url, "d.csv", size).status_code == 200  # room again
        assert httpx.get(served.url + "config", timeout=5).status_code == 200  # still serving
    finally:
        served.stop()


def test_an_upload_is_refused_by_its_declared_size_before_its_body_is_read(tmp_path):
    served = start_app(tmp_path, "--max-client-disk", "3", "--max-disk", "5")
    try:
        # 40 files of 1 MB in one request (gradio takes up to 1000, each up to --max-file-size): refused unread
        answer = _answer(_raw_upload(served.url, 40 * MB + 4000, PART))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"--max-client-disk 3 MB" in answer and b"declares 40.0 MB more" in answer
        assert _cached(served) == []  # nothing of it was written
        answer = _answer(_raw_upload(served.url, 0, b"", chunked=True))
        assert answer.startswith(b"HTTP/1.1 411") and b"Content-Length" in answer, answer[:200]
        # uploads in flight hold their declared room: of three 1.2 MB uploads started together, the third waits
        # for nobody and is refused, though nothing is written yet
        held = [_raw_upload(served.url, 12 * MB // 10, PART) for _ in range(2)]
        time.sleep(0.5)
        answer = _answer(_raw_upload(served.url, 12 * MB // 10, PART))
        assert answer.startswith(b"HTTP/1.1 413") and b"--max-client-disk 3 MB" in answer, answer[:200]
        for s in held:
            s.close()
        assert httpx.get(served.url + "config", timeout=5).status_code == 200  # still serving
    finally:
        served.stop()


def test_reservations_never_give_the_same_room_twice(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    sessions = Sessions(tmp_path / "work")
    uploads = Uploads(lambda: str(cache), sessions, client_disk_mb=None, disk_mb=10, grace_s=10)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(uploads.reserve("c", 3 * MB))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 3  # 3 x 3 MB fit in 10 MB, the other five are refused
    assert all("--max-disk 10 MB" in r for r in results if r is not None)
    uploads.release("c", 3 * MB)
    assert uploads.reserve("d", 3 * MB) is None  # a released reservation's room is free again
    sessions.shutdown()


def test_a_client_over_its_cap_is_refused_before_its_body_is_read(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    sessions = Sessions(tmp_path / "work")
    uploads = Uploads(lambda: str(cache), sessions, client_disk_mb=1, disk_mb=5, grace_s=10)
    held = cache / "x" / "held.bin"
    held.parent.mkdir()
    held.write_bytes(b"\0" * (2 * MB))
    assert uploads.record("10.0.0.1", [str(held), "/etc/passwd", str(tmp_path / "missing")]) == [str(held.resolve())]
    assert "--max-client-disk 1 MB" in uploads.over("10.0.0.1")
    assert uploads.over("10.0.0.2") is None  # another address has its own budget
    (cache / "y.bin").write_bytes(b"\0" * (4 * MB))  # the cache as a whole, whoever wrote it
    assert "--max-disk 5 MB" in uploads.over("10.0.0.2")
    sessions.session("s1", "10.0.0.1")  # a live session keeps its client's uploads
    assert uploads.sweep(now=time.monotonic() + 100) == 0 and held.exists()
    sessions.close("s1")
    assert uploads.sweep(now=time.monotonic() + 5) == 0  # within the grace time
    assert uploads.sweep(now=time.monotonic() + 100) == 1 and not held.exists()
    assert (cache / "y.bin").exists()  # only what an upload was recorded for is ever deleted
    stale, fresh = cache / "tmpcut0001", cache / "tmpgrowing"  # gradio's temporary files of uploads
    stale.write_bytes(b"\0" * 100)
    fresh.write_bytes(b"\0" * 100)
    os.utime(stale, (time.time() - 100, time.time() - 100))
    assert uploads.sweep() == 1 and not stale.exists() and fresh.exists()
    sessions.shutdown()
