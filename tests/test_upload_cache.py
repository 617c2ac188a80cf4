"""Gradio's upload cache under the studio's disk caps (studio.app.uploads, issue 25): files POSTed to
/gradio_api/upload count against --max-client-disk and --max-disk with the sessions' folders; an upload that
takes a cap over is deleted and refused (413) with a message naming the flag; a client already over its cap
is refused before its body is read; uploads of a client without a live session are deleted after the grace
time. The app runs as an operator runs it (`studio app` in a subprocess); the uploads are plain HTTP posts."""

from __future__ import annotations

import time

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
        assert len(_cached(served)) == 2  # the refused upload was written, then deleted
        # nobody opened a session for these uploads: they go once the grace time (10 s here) is over
        end = time.monotonic() + 40
        while _cached(served) and time.monotonic() < end:
            time.sleep(0.5)
        assert _cached(served) == []
        assert _post(served.url, "d.csv", size).status_code == 200  # room again
        assert httpx.get(served.url + "config", timeout=5).status_code == 200  # still serving
    finally:
        served.stop()


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
    sessions.shutdown()
