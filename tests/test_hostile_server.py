"""The web studio under hostile requests, probed by a second client: one request never stops the server for
everyone (huge and deep fields are refused before any work, while the page and /config keep answering
within a second), sessions are bounded per client address and in all, sessions that never open a heartbeat
are closed within seconds, SIGTERM stops the app within seconds, and an app killed outright mid-conversion
leaves nothing of its run once it is started again (issue 25, sections 1 and 6).

The app runs as a subprocess on 127.0.0.1 (a free port), with its own TMPDIR and work folder so that what it
leaves behind can be looked at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
import httpx  # noqa: E402
import psutil  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import studio.app  # noqa: E402
from studio.app.jobs import ROOT_PREFIX, SessionLimitError, SessionLimits, Sessions  # noqa: E402
from studio.app.server import UPLOADS_PREFIX  # noqa: E402
from studio.sources import scratch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "studio" / "demo"
ROLES = {"order_id": "ignore", "review": "text", "price": "tabular", "quantity": "tabular", "label": "ignore"}
CAP = 6  # --max-client-sessions of the shared app
GRACE = 2.0  # --session-grace of the shared app
GRACE_MARGIN = 4.0  # the sweeper's period and a busy machine


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, work: Path, tmp: Path, log: Path):
        self.proc, self.url, self.work, self.tmp, self.log = proc, url, work, tmp, log

    def roots(self) -> list[Path]:
        return sorted(self.work.glob(ROOT_PREFIX + "*"))

    def sessions(self) -> list[Path]:
        """The session folders of this server's root."""
        return [p for r in self.roots() if str(self.proc.pid) in r.name for p in r.iterdir() if p.is_dir()]

    def uploads(self) -> list[Path]:
        return sorted(self.tmp.glob(UPLOADS_PREFIX + "*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_app(base: Path, *flags: str) -> Served:
    """`studio app` in a subprocess (as an operator runs it), answering on a free port."""
    tmp = base / "tmp"  # the app's temporary folder: its session root and its upload cache are made here
    tmp.mkdir(parents=True, exist_ok=True)
    port = studio.app.free_port()
    argv = ["-m", "studio", "app", "--port", str(port), "--max-jobs", "2", "--job-timeout", "120", *flags]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(tmp),
        "GRADIO_HEARTBEAT_INTERVAL": "1",  # a closed client's session ends within a second, not 15 s
    }
    env.pop("GRADIO_TEMP_DIR", None)
    log = base / f"app-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return Served(proc, url, tmp, tmp, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the app did not start: " + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-server")
    served = start_app(base, "--max-client-sessions", str(CAP), "--session-grace", str(GRACE))
    yield served
    served.stop()


def _wait(predicate, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Prober:
    """A second client loading the page and /config in a loop; `worst` is the slowest answer in seconds."""

    def __init__(self, url: str):
        self.url, self.worst, self.errors, self.count = url, 0.0, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                for path in ("config", ""):
                    t = time.monotonic()
                    try:
                        ok = http.get(self.url + path).status_code == 200
                    except httpx.HTTPError as e:
                        ok, self.errors = False, [*self.errors, repr(e)]
                    self.worst = max(self.worst, time.monotonic() - t)
                    self.count += 1
                    if not ok:
                        self.errors.append(path)
                time.sleep(0.05)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


def _convert(c: Client, **kw):
    kw.setdefault("roles", json.dumps(ROLES))
    return c.predict(
        handle_file(str(DEMO / "demo_model.pt")), handle_file(str(DEMO / "sample.csv")), api_name="/convert", **kw
    )


HOSTILE_FIELDS = [
    ({"tabular": "features=" + "A" * 5_000_000}, "'tabular' is too large"),  # one 5 MB column name
    ({"roles": "A" * 5_000_000 + "=text"}, "'roles' is too large"),
    ({"roles": '{"a":' * 10_000 + "1" + "}" * 10_000}, "nested too deep"),
    ({"dynamic_per_input": "[" * 10_000 + "]" * 10_000}, "nested too deep"),
    ({"dynamic_per_input": json.dumps({"input_ids": [{"not": "a name"}]})}, "must be text, got an object"),
    # a checkbox group: gradio itself refuses a value that is not one of the choices, before our handler runs
    ({"dynamic": "batch," * 200_000}, "not in the list of choices"),  # a 1 MB dynamic string
    ({"variants": [f"junk{i}" for i in range(100_000)]}, "'variants' is too large"),
    # objects where text is expected: a text box turns them into text, which is not JSON
    ({"roles": {"review": {"role": "text"}}}, "Roles are not valid JSON"),
    ({"roles": json.dumps({"review": {"role": "text"}})}, "must be text, got an object"),
    ({"tabular": json.dumps({"features": [["price"]]})}, "must be text, got a list"),
    ({"task": {"name": "auto"}}, "not in the list of choices"),  # a dropdown: gradio refuses it
]


def test_huge_and_deep_fields_are_refused_while_the_page_answers(app):
    c = Client(app.url, verbose=False)
    with Prober(app.url) as probe:
        with ThreadPoolExecutor(3) as pool:
            futures = {pool.submit(_convert, c, **kw): words for kw, words in HOSTILE_FIELDS}
            for future, words in futures.items():
                with pytest.raises(AppError) as e:
                    future.result(timeout=120)
                message = str(e.value)
                assert words in message, message
                assert len(message) < 1000 and "unexpected" not in message.lower(), message[:300]
        time.sleep(0.5)
    c.close()
    assert probe.count > 4 and not probe.errors, probe.errors
    assert probe.worst < 1.0, f"the page / config took {probe.worst:.2f} s to answer during the requests"


def test_the_error_toast_shows_markup_as_text(app):
    c = Client(app.url, verbose=False)
    with pytest.raises(AppError) as e:
        _convert(c, roles=json.dumps({'<img src=x onerror="alert(1)">': "bogus"}))
    c.close()
    message = str(e.value)  # the popup's text: gradio renders it as HTML, so markup arrives escaped
    assert '&lt;img src=x onerror="alert(1)"&gt;' in message and "<img" not in message, message
    assert "is not one of text, tabular, ignore" in message


def test_sessions_from_one_address_are_capped(app):
    _wait(lambda: not app.sessions(), 10)
    clients, errors = [], []
    for _ in range(CAP + 3):  # new clients, each its own session (and heartbeat)
        c = Client(app.url, verbose=False)
        clients.append(c)
        try:
            c.predict(api_name="/load_demo")
        except AppError as e:
            errors.append(str(e))
    try:
        assert len(app.sessions()) == CAP
        assert len(errors) == 3 and all(f"--max-client-sessions {CAP}" in m for m in errors), errors
    finally:
        for c in clients:
            c.close()
    # a closed client's heartbeat ends, and its session with it (gradio's unload)
    assert _wait(lambda: not app.sessions(), 20), app.sessions()
    c = Client(app.url, verbose=False)
    assert len(c.predict(api_name="/load_demo")) == 2  # there is room again
    c.close()


def test_a_session_that_never_opens_a_heartbeat_is_closed_within_seconds(app):
    _wait(lambda: not app.sessions(), 20)
    for i in range(4):  # raw API calls: no heartbeat is ever opened for these sessions
        r = httpx.post(app.url + "gradio_api/run/load_demo", json={"data": [], "session_hash": f"raw-{i}"}, timeout=30)
        assert r.status_code == 200, r.text
    assert len(app.sessions()) == 4
    t = time.monotonic()
    assert _wait(lambda: not app.sessions(), GRACE_MARGIN + GRACE), app.sessions()
    assert time.monotonic() - t < GRACE + GRACE_MARGIN


def test_the_total_cap_and_the_disk_caps(tmp_path):
    s = Sessions(tmp_path, limits=SessionLimits(max_sessions=3, max_client_sessions=2, client_disk_mb=1))
    s.session("a1", "10.0.0.1")
    s.session("a2", "10.0.0.1")
    with pytest.raises(SessionLimitError, match="--max-client-sessions 2"):
        s.session("a3", "10.0.0.1")
    s.session("b1", "10.0.0.2")
    with pytest.raises(SessionLimitError, match="--max-sessions 3"):
        s.session("c1", "10.0.0.3")
    (s.new_dir("b1", "job", client="10.0.0.2") / "big").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(SessionLimitError, match="--max-client-disk 1 MB"):
        s.new_dir("b1", "job", client="10.0.0.2")
    s.new_dir("a1", "job", client="10.0.0.1")  # another address: its own budget
    s.close("b1")
    s.session("c1", "10.0.0.3")  # a closed session frees its place
    s.shutdown()


def test_the_root_of_a_server_killed_outright_is_removed_at_the_next_start(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"{ROOT_PREFIX}{dead_pid}-{scratch.HOST_TAG}-x1"
    other_host = tmp_path / f"{ROOT_PREFIX}{dead_pid}-ffffff-x2"  # another machine's: never touched
    for p in (dead, other_host):
        (p / "session" / "job-1").mkdir(parents=True)
    s = Sessions(tmp_path)
    assert not dead.exists() and other_host.exists() and s.root.exists()
    assert s.root.name.startswith(f"{ROOT_PREFIX}{os.getpid()}-{scratch.HOST_TAG}-")
    s.shutdown()


def _workers(served: Served) -> list[psutil.Process]:
    """The app's other processes (fork server, jobs, resource tracker): those started with its TMPDIR."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != served.proc.pid and p.environ().get("TMPDIR") == str(served.tmp):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _conversion_running(served: Served, timeout: float = 120) -> Client:
    """A conversion submitted by a new client, once its job folder is there and its worker runs."""
    c = Client(served.url, verbose=False)
    c.submit(
        handle_file(str(DEMO / "demo_model.pt")),
        handle_file(str(DEMO / "sample.csv")),
        json.dumps(ROLES),
        api_name="/convert",
    )
    # the job's worker is converting once it made its build folder in the job folder
    building = lambda: any(p.glob("job-*/.out.partial-*") for p in served.sessions())  # noqa: E731
    assert _wait(building, timeout), served.log.read_text()[-2000:]
    return c


def test_sigterm_stops_the_app_within_seconds_mid_conversion_and_mid_request(tmp_path):
    served = start_app(tmp_path)
    try:
        c = _conversion_running(served)
        workers = _workers(served)
        huge = Client(served.url, verbose=False)
        huge.submit(
            handle_file(str(DEMO / "demo_model.pt")),
            handle_file(str(DEMO / "sample.csv")),
            "A" * 5_000_000 + "=text",
            api_name="/convert",
        )
        time.sleep(0.3)
        t = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(15)
        took = time.monotonic() - t
        assert took < 5.0, f"SIGTERM took {took:.1f} s"
        assert _wait(lambda: _gone(workers), 5), "a job process outlived the app"
        assert not served.roots() and not served.uploads()  # its folders go with it
        c.close()
        huge.close()
    finally:
        served.stop()


def test_an_app_killed_mid_conversion_leaves_nothing_after_its_restart(tmp_path):
    first = start_app(tmp_path)
    try:
        c = _conversion_running(first)
        workers = _workers(first)
        assert len(workers) >= 2  # the fork server and the conversion's job, at least
        old_root, old_uploads = first.roots(), first.uploads()
        old_files = [f for u in old_uploads for f in u.rglob("*") if f.is_file()]
        assert old_root and old_files  # the uploads and the job folder of this run
        first.proc.kill()  # SIGKILL: nothing of the app's own cleanup runs
        first.proc.wait(10)
        c.close()
        # the job ends itself (its pipe's reader is gone); the fork server, idle, exits too (its interpreter's
        # teardown with torch imported takes seconds on a busy 2-core machine)
        assert _wait(lambda: _gone(workers), 30), "a process of the killed app outlived it"
        assert all(p.exists() for p in old_root + old_uploads)  # left behind, until the next start
    finally:
        first.stop()
    second = start_app(tmp_path)
    try:
        assert not any(p.exists() for p in old_root + old_uploads), "the dead run's folders are still there"
        assert len(second.roots()) == 1 and second.roots()[0] not in old_root
        c = Client(second.url, verbose=False)
        c.predict(api_name="/load_demo")
        (mine,) = second.sessions()
        assert sorted(f.name for f in mine.rglob("*") if f.is_file()) == ["demo_model.pt", "sample.csv"]
        for f in old_files:  # the dead run's uploads are not served by the new app
            r = httpx.get(second.url + "gradio_api/file=" + urllib.parse.quote(str(f)), timeout=30)
            assert r.status_code in (403, 404), (f, r.status_code)
        c.close()
    finally:
        second.stop()


def test_a_cancel_from_another_session_stops_nothing(app):
    owner = Client(app.url, verbose=False)
    job = owner.submit(
        handle_file(str(DEMO / "demo_model.pt")),
        handle_file(str(DEMO / "sample.csv")),
        json.dumps(ROLES),
        exporter="torchscript",
        latency_budget=0.05,
        api_name="/convert",
    )
    building = lambda: any(p.glob("job-*/.out.partial-*") for p in app.sessions())  # noqa: E731
    assert _wait(building, 120)
    other = Client(app.url, verbose=False)
    other.predict(api_name="/cancel")  # another session's Cancel button: it has no conversion to stop
    report = json.loads(job.result(timeout=300)[1])  # the owner's conversion ran to its end
    assert report["ok"] is True
    owner.close()
    other.close()
