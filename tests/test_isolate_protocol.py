"""One job protocol for both runners (studio/jobs/protocol.py), the "unexpected" words in one place
(isolate.error_text), and the one folder zipper (studio.artifacts) the Ray runner sends output folders with."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import psutil
import pytest

from studio.artifacts import zip_bytes, zip_folder
from studio.errors import StudioError
from studio.jobs import isolate
from studio.jobs._ray_files import unpack
from studio.jobs.protocol import new_job


def test_new_job_without_ray_is_a_child_process_of_this_one():
    job = new_job("selftest", {"action": "ok"}, isolate.Limits(timeout_s=120, memory_mb=None), label="warm-up")
    assert type(job) is isolate.Job and job.label == "warm-up" and job.task == "selftest"
    assert job.started_at is None and job.pid is None and not job.is_alive()
    result = job.start().wait()
    assert result["ok"] is True and result["pid"] == job.pid != psutil.Process().pid
    assert not job.is_alive()


def test_new_job_cancelled_before_it_starts_never_runs():
    job = new_job("selftest", {"action": "sleep", "seconds": 60}, isolate.Limits(timeout_s=120, memory_mb=None))
    job.cancel("not wanted")
    with pytest.raises(isolate.JobError) as e:
        job.start()
    assert (e.value.reason, str(e.value)) == ("cancelled", "not wanted") and job.pid is None


def test_new_job_with_a_ray_address_is_a_ray_task_not_yet_sent():
    pytest.importorskip("ray")
    from studio.jobs.ray_fleet import RayJob

    job = new_job("selftest", {}, isolate.Limits(), label="probe", ray_address="127.0.0.1:1")
    assert isinstance(job, RayJob) and (job.address, job.label, job.task) == ("127.0.0.1:1", "probe", "selftest")
    assert job.started_at is None and not job.is_alive()  # nothing connects before start()


def test_new_job_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        new_job("nope", {}, isolate.Limits())


def test_error_text_is_the_cli_words_for_a_bug_and_the_message_for_a_studio_error():
    assert isolate.error_text(KeyError("x")) == "unexpected KeyError: 'x'"
    assert isolate.error_text(StudioError("bad sample")) == "bad sample"


def test_unexpected_error_in_a_batch_entry_reads_as_the_cli_says_it(monkeypatch, tmp_path):
    from studio.jobs import entries, fleet
    from studio.jobs.progress import BatchProgress

    entry = type("E", (), {"name": "e", "line": 1, "options": {}})()
    monkeypatch.setattr(fleet, "convert_entry", lambda *a, **k: {}["boom"])
    prepare = lambda e: entries.Pending(e, tmp_path / "e", "digest")  # noqa: E731
    rows = fleet.run_local([entry], prepare, 1, isolate.Limits(), BatchProgress(1, quiet=True))
    assert rows["e"]["verdict"] == "ERROR" and rows["e"]["error"] == "unexpected KeyError: 'boom'"


def test_zip_bytes_is_zip_folder_without_the_top_folder(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 4096)
    (folder / "report.md").write_text("# report\n" * 200)
    (folder / "sub" / "x.npz").write_bytes(b"npz")
    data = zip_bytes(folder)
    dest = zip_folder(folder, tmp_path / "download.zip")
    with zipfile.ZipFile(dest) as a, zipfile.ZipFile(io.BytesIO(data)) as b:
        named = {i.filename: i.compress_type for i in a.infolist()}
        sent = {i.filename: i.compress_type for i in b.infolist()}
    assert named == {f"download/{k}": v for k, v in sent.items()}
    assert sent == {
        "model.onnx": zipfile.ZIP_STORED,
        "report.md": zipfile.ZIP_DEFLATED,
        "sub/x.npz": zipfile.ZIP_STORED,
    }
    unpack(data, tmp_path / "back")
    back = sorted(p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*") if p.is_file())
    assert back == [Path("model.onnx"), Path("report.md"), Path("sub/x.npz")]
    assert (tmp_path / "back" / "report.md").read_text() == (folder / "report.md").read_text()
