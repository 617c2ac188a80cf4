"""The app's job processes and session folders, without a web server: crashes, limits, cancel, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import studio.app.worker  # noqa: F401 - registers the app's tasks (preview, check, convert)
from studio.app.jobs import Sessions
from studio.jobs.isolate import Job, JobError, Limits, run_job
from studio.spec import ConvertSpec

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "studio" / "demo"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_result_and_process_ends():
    job = Job("selftest", {"action": "ok"}, Limits(timeout_s=120))
    stages = []
    assert job.start().wait(lambda s, f: stages.append((s, f)))["ok"] is True
    assert stages == [("selftest", 0.5)]
    assert _gone(job.pid)


@pytest.mark.parametrize(
    "action, reason, words",
    [
        ("exit", "crashed", "exit code 3"),
        ("segfault", "crashed", "SIGSEGV"),
    ],
)
def test_crash_is_a_message_not_an_exception_in_the_server(action, reason, words):
    with pytest.raises(JobError) as e:
        run_job("selftest", {"action": action}, Limits(timeout_s=120))
    assert e.value.reason == reason and words in str(e.value)
    assert "still running" in str(e.value)
    assert run_job("selftest", {"action": "ok"})["ok"]  # the next job runs


def test_studio_error_text_comes_back_verbatim():
    with pytest.raises(JobError) as e:
        run_job("selftest", {"action": "raise", "message": "Column 'x' is empty."})
    assert str(e.value) == "Column 'x' is empty." and e.value.error_type == "StudioError"


def test_time_limit_kills_the_job():
    job = Job("selftest", {"action": "sleep", "seconds": 60}, Limits(timeout_s=1.5))
    t = time.monotonic()
    with pytest.raises(JobError) as e:
        job.start().wait()
    assert e.value.reason == "timeout" and "1.5 s limit" in str(e.value)
    assert time.monotonic() - t < 20
    assert _gone(job.pid)


def test_memory_limit_stops_the_job():
    job = Job("selftest", {"action": "allocate", "mb": 6000}, Limits(timeout_s=120, memory_mb=1500))
    with pytest.raises(JobError) as e:
        job.start().wait()
    assert e.value.reason == "memory" and "ran out of memory (limit 1,500 MB)" in str(e.value)
    assert _gone(job.pid)


def test_cancel_from_another_thread_kills_the_process():
    job = Job("selftest", {"action": "sleep", "seconds": 60}, Limits(timeout_s=120)).start()
    threading.Timer(1.0, job.cancel, args=("The conversion was cancelled.",)).start()
    with pytest.raises(JobError) as e:
        job.wait()
    assert e.value.reason == "cancelled" and _gone(job.pid)


def test_a_job_nobody_waits_for_any_more_ends_itself():
    """The owner closes its end of the pipe without killing the job (interrupted before it knew the pid, or
    killed outright): the job's watchdog takes its process group down, long before its 60 s sleep ends."""
    job = Job("selftest", {"action": "sleep", "seconds": 60}, Limits(timeout_s=120)).start()
    child = psutil.Process(job.pid)
    time.sleep(1.0)  # running, sleeping
    assert child.is_running()
    job._conn.close()  # no kill(): only the reader goes away
    deadline = time.monotonic() + 15
    while not _gone(child.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child.pid)


def test_preview_and_convert_the_demo(tmp_path):
    prev = run_job(
        "preview", {"checkpoint": str(DEMO / "demo_model.pt"), "data": str(DEMO / "sample.csv"), "spec": None}
    )
    assert prev["model"]["kind"] and prev["model_error"] is None and prev["data_error"] is None
    assert [c["name"] for c in prev["columns"]][:2] == ["order_id", "review"]
    assert prev["mapping"]["ok"], prev["mapping"]
    assert prev["mapping"]["roles"]["review"] == "text"

    bad = run_job(
        "check",
        {
            "checkpoint": str(DEMO / "demo_model.pt"),
            "data": str(DEMO / "sample.csv"),
            "roles": {"review": "ignore"},
            "spec": None,
        },
    )
    assert not bad["ok"] and bad["error"]

    spec = ConvertSpec(
        str(DEMO / "demo_model.pt"), str(DEMO / "sample.csv"), out=str(tmp_path / "out"), exporter="torchscript"
    ).validated()
    stages = []
    res = run_job("convert", {"spec": spec, "zip_stem": "demo-onnx"}, on_progress=lambda s, f: stages.append(s))
    assert res["report"].ok, res["report"].failed_checks
    assert {"loading", "batch", "export", "checker", "parity", "shape probe", "latency"} <= set(stages)
    assert Path(res["zip"]).name == "demo-onnx.zip" and Path(res["zip"]).stat().st_size > 0
    # the downloads name the files, not the server's folders
    for text in (
        (tmp_path / "out" / "report.json").read_text(),
        (tmp_path / "out" / "report.md").read_text(),
        res["report"].to_json(),
    ):
        assert str(tmp_path) not in text and str(DEMO) not in text
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["source"]["path"] == "demo_model.pt" and saved["options"]["data"] == "sample.csv"
    assert saved["options"]["out"] == "out" and saved["ok"] is True
    assert "display_paths" not in saved["options"]  # the scrubbing option is not itself reported


def test_preview_reports_a_bad_checkpoint_beside_good_columns(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    prev = run_job("preview", {"checkpoint": str(bad), "data": str(DEMO / "sample.csv"), "spec": None})
    assert prev["model"] is None and "broken.pt" in prev["model_error"]
    assert prev["columns"] and prev["data_error"] is None


def test_sessions_are_private_and_cleaned(tmp_path):
    s = Sessions(tmp_path, ttl_s=60)
    a, b = s.new_dir("alice", "job"), s.new_dir("bob", "job")
    assert a.parent != b.parent and a.parent.parent == b.parent.parent == s.root
    assert "alice" not in str(a) and oct(a.parent.stat().st_mode & 0o777) == "0o700"
    job = Job("selftest", {"action": "sleep", "seconds": 60}, Limits(timeout_s=120)).start()
    s.add_job("alice", job)
    assert s.cancel("bob") == 0 and job.is_alive()
    s.close("alice")  # the page was closed: job killed, folder gone
    assert not a.parent.exists() and b.exists()
    with pytest.raises(JobError):
        job.wait()
    assert s.sweep(now=time.monotonic() + 3600) == 1 and not b.parent.exists()
    s.shutdown()
    assert not s.root.exists()


def test_old_job_folders_are_pruned_but_not_running_ones(tmp_path):
    s = Sessions(tmp_path, ttl_s=60)
    first = s.new_dir("alice", "job", busy=True)  # a conversion still running in it
    made = [first]
    for _ in range(4):
        time.sleep(0.02)
        made.append(s.new_dir("alice", "job", keep=2))
    alive = [p for p in made if p.exists()]
    assert first in alive and made[-1] in alive and len(alive) == 3  # the running job's + the newest two
    s.release("alice", first)
    s.new_dir("alice", "job", keep=2)
    assert not first.exists()
    s.shutdown()


def test_jobs_see_the_servers_plugin_list_even_when_set_after_the_worker_server_started(monkeypatch):
    assert run_job("selftest", {})["ok"]  # the fork server is up
    monkeypatch.setenv("ONNX_STUDIO_PLUGINS", "acme.studio_plugin")
    assert run_job("selftest", {})["env"]["ONNX_STUDIO_PLUGINS"] == "acme.studio_plugin"
    monkeypatch.delenv("ONNX_STUDIO_PLUGINS")
    assert run_job("selftest", {})["env"]["ONNX_STUDIO_PLUGINS"] is None


def test_the_job_runner_is_part_of_the_core():
    """studio.jobs.isolate, and the CLI that runs `--memory-limit` conversions with it, import neither the app
    (studio.app, gradio) nor torch."""
    code = (
        "import sys, studio.jobs.isolate, studio.cli.commands; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('gradio', 'torch') or m.startswith('studio.app')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        Job("nope", {})
