"""The batch and one app job on a local Ray cluster started here (2 CPUs): studio/jobs/ray_fleet.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import fleet_cases
import pytest

import studio.app.worker  # noqa: F401 - registers the app's tasks (RayJob runs "convert")
from studio import demo
from studio.cli.commands import main
from studio.jobs.isolate import JobError, Limits
from studio.spec import ConvertSpec

ray = pytest.importorskip("ray")

from studio.jobs.ray_fleet import HOOK_ENV, RayJob  # noqa: E402


def wide(root: Path) -> list[str]:
    """--inputs-under the folder holding `root` and the packaged demo, which the manifests name where it is."""
    return ["--inputs-under", os.path.commonpath([str(root.resolve()), str(demo.checkpoint().parent.resolve())])]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster whose workers honour the test-only manifest keys (they inherit this environment)."""
    previous = os.environ.get(HOOK_ENV)
    os.environ[HOOK_ENV] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop(HOOK_ENV, None)
        else:
            os.environ[HOOK_ENV] = previous


@pytest.fixture(scope="module")
def ray_batch(cluster, tmp_path_factory):
    """The local batch's five entries plus one whose Ray worker SIGKILLs itself while running its task."""
    root = tmp_path_factory.mktemp("fleet-ray")
    lines = fleet_cases.entries(root)
    killed = {**lines[0], "name": "killed", "_kill_worker": True}
    manifest = fleet_cases.write_jsonl(root / "nightly.jsonl", lines[:3] + [killed] + lines[3:])
    code = main(["batch", str(manifest), "--ray", "local", "--out", str(root / "out"), "--quiet", *wide(root)])
    return root, manifest, code


def test_an_unreachable_cluster_stops_the_web_studio_at_launch(capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not ray.is_initialized()  # first in this file: before the cluster fixture starts one
    assert main(["app", "--ray", f"127.0.0.1:{port}", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot connect to the Ray cluster at 127.0.0.1:{port}" in err and "ray start --head" in err


def test_ray_gives_the_local_verdicts_and_a_killed_worker_fails_only_its_entry(ray_batch):
    root, _, code = ray_batch
    out = root / "out"
    got = fleet_cases.verdicts(out / "summary.json")
    assert got.pop("killed") == ("ERROR", [])
    assert got == fleet_cases.EXPECTED  # tests/test_fleet.py asserts the same for local processes
    assert code == 2
    rows = {r["entry"]: r for r in json.loads((out / "summary.json").read_text())["entries"]}
    assert rows["killed"]["reason"] == "crashed" and "Ray worker" in rows["killed"]["error"]
    # the outputs came back through Ray into the same folders a local run fills, naming the user's paths
    for name in ("demo", "demo-json", "bert", "demo-strict"):
        report = json.loads((out / name / "report.json").read_text())
        assert (out / name / "model.onnx").stat().st_size == report["graph"]["size_bytes"] == rows[name]["model_bytes"]
        assert "studio-ray-" not in (out / name / "report.json").read_text()
    assert (out / "demo-json" / "variants" / "model.int8.onnx").is_file()
    assert not (out / "killed" / "batch.json").exists()  # a lost worker is not remembered: the next run retries
    assert "studio-ray-" not in rows["bert-bad"]["error"]
    assert str(root / "reviews.csv") in rows["bert-bad"]["error"]


def test_a_second_ray_run_skips_every_entry(ray_batch, capsys):
    root, manifest, _ = ray_batch
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    again = fleet_cases.write_jsonl(root / "again.jsonl", [x for x in lines if x["name"] != "killed"])
    capsys.readouterr()
    assert main(["batch", str(again), "--ray", "local", "--out", str(root / "out"), *wide(root)]) == 2
    assert "5 of 5 entries unchanged" in capsys.readouterr().err
    assert fleet_cases.verdicts(root / "out" / "summary.json") == fleet_cases.EXPECTED


def test_ray_job_converts_the_demo_like_the_app_job(cluster, tmp_path):
    """RayJob has Job's interface: the app's `convert` task runs on the cluster, its files come back here."""
    spec = ConvertSpec(
        checkpoint=str(demo.checkpoint()),
        data=str(demo.sample()),
        out=str(tmp_path / "job" / "out"),
        exporter="torchscript",
        latency_budget_s=0.05,
    ).validated()
    job = RayJob(
        "convert",
        {"spec": spec, "zip_stem": "demo", "label": "conversion"},
        Limits(timeout_s=300),
        label="conversion",
        address="local",
    )
    assert job.task == "convert" and job.label == "conversion" and not job.is_alive() and job.pid is None
    stages = []
    result = job.start().wait(lambda stage, fraction: stages.append((stage, fraction)))
    assert job.started_at is not None and isinstance(job.pid, int) and job.pid != os.getpid()
    assert not job.is_alive()
    assert [s for s, _ in stages][-1] == "done" and ("export", 0.15) in stages
    report = result["report"]
    assert report.ok and report.export.exporter == "torchscript"
    assert result["zip"] == str(tmp_path / "job" / "demo.zip") and os.path.getsize(result["zip"]) > 100_000
    assert (tmp_path / "job" / "out" / "model.onnx").stat().st_size == report.graph.size_bytes


def _job_processes(worker_pid: int) -> list:
    """The job's own processes: forked by the job server the Ray worker started (grandchildren of the worker)."""
    import psutil

    worker = psutil.Process(worker_pid)
    return [p for p in worker.children(recursive=True) if p.ppid() != worker_pid]


def test_ray_job_cancel_and_errors(cluster):
    import psutil

    started = time.time()
    job = RayJob("selftest", {"action": "sleep", "seconds": 120}, Limits(timeout_s=300), address="local").start()
    jobs = []

    def cancel_once_running() -> None:
        while not jobs:
            if job.pid:  # this job's process: Ray reuses workers, whose fork server may hold older tests' jobs
                jobs.extend(p for p in _job_processes(job.pid) if p.create_time() >= started - 1)
            threading.Event().wait(0.2)
        job.cancel("stopped by the test")

    threading.Thread(target=cancel_once_running, daemon=True).start()
    with pytest.raises(JobError) as e:
        job.wait()
    assert e.value.reason == "cancelled" and "stopped by the test" in str(e.value)
    _, alive = psutil.wait_procs(jobs, timeout=30)  # the job's own process is gone too, not left sleeping (busy CI)
    assert not alive
    with pytest.raises(JobError) as e:
        RayJob("selftest", {"action": "raise", "message": "bad sample"}, address="local").start().wait()
    assert e.value.reason == "error" and str(e.value) == "bad sample"
    with pytest.raises(JobError) as e:
        RayJob("selftest", {"action": "sleep", "seconds": 60}, Limits(timeout_s=2), address="local").start().wait()
    assert e.value.reason == "timeout"


def test_shared_dir_workers_read_and_write_in_place(cluster, tmp_path):
    (tmp_path / "model.pt").write_bytes(demo.checkpoint().read_bytes())
    (tmp_path / "rows.csv").write_text(demo.sample().read_text())
    manifest = fleet_cases.write_jsonl(
        tmp_path / "m.jsonl", [{"name": "demo", "checkpoint": "model.pt", "data": "rows.csv", **fleet_cases.FAST}]
    )
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    # --out outside the shared folder: refused before anything is sent
    assert (
        main(
            ["batch", str(manifest), "--ray", "local", "--shared-dir", str(tmp_path), "--out", str(outside), "--quiet"]
        )
        == 2
    )
    assert not outside.exists()
    assert (
        main(
            [
                "batch",
                str(manifest),
                "--ray",
                "local",
                "--shared-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "demo" / "report.json").read_text())
    assert report["ok"] and report["source"]["path"] == str(tmp_path / "model.pt")  # read where it lies


def test_resource_requests_follow_the_entry():
    from studio.jobs.ray_fleet import BASE_MB, WEIGHT_FACTOR, resources

    spec = ConvertSpec(checkpoint=str(demo.checkpoint()), data=str(demo.sample())).validated()
    mb = BASE_MB + WEIGHT_FACTOR * demo.checkpoint().stat().st_size / 2**20
    assert resources(spec, None, 0) == {"num_cpus": 1, "memory": int(mb * 2**20), "num_gpus": 0}
    assert resources(spec, 500, 0)["memory"] == 500 * 2**20  # never more than the job's memory limit
    fp16 = ConvertSpec(checkpoint=spec.checkpoint, data=spec.data, variants=("fp16",), threads=3).validated()
    assert resources(fp16, None, 0)["num_gpus"] == 0  # no GPU in the cluster: runs on CPU rather than wait
    assert resources(fp16, None, 2) == {"num_cpus": 3, "memory": int(mb * 2**20), "num_gpus": 1}
    assert resources(spec, None, 1, cuda_asked=True)["num_gpus"] == 1


def test_the_web_studio_sends_conversions_to_ray(cluster, monkeypatch, tmp_path):
    """`studio app --ray ADDRESS`: /convert runs as a RayJob on the cluster (previews stay local Jobs), gives the
    verdict a local conversion gives, and Cancel stops it there."""
    import time

    from gradio_client import Client, handle_file

    import studio.app
    from studio import convert
    from studio.app.page import CONVERT_OUTPUTS
    from studio.jobs import ray_fleet as fleet_ray

    started = []
    real_start = fleet_ray.RayJob.start
    monkeypatch.setattr(fleet_ray.RayJob, "start", lambda self: started.append(self) or real_start(self))
    roles = {"order_id": "ignore", "review": "text", "price": "tabular", "quantity": "tabular", "label": "ignore"}
    with studio.app.start(port=0, max_jobs=2, job_timeout_s=300, ray_address="local", warm_up=False) as running:
        c = Client(running.url, verbose=False, download_files=True)
        ckpt, sample = c.predict(api_name="/load_demo")
        result = c.predict(
            handle_file(ckpt),
            handle_file(sample),
            json.dumps(roles),
            api_name="/convert",
            exporter="torchscript",
            latency_budget=0.05,
        )
        names = running.app.ui.api_names(CONVERT_OUTPUTS)
        got = json.loads(dict(zip(names, result))["report_json"])
        assert [j.task for j in started] == ["convert"]  # the conversion, not the preview, went to Ray
        local = convert(
            ConvertSpec(
                checkpoint=str(demo.checkpoint()),
                data=str(demo.sample()),
                roles=roles,
                out=str(tmp_path / "local"),
                exporter="torchscript",
                latency_budget_s=0.05,
            )
        )
        assert (got["ok"], got["failed_checks"], got["roles"]) == (local.ok, local.failed_checks, local.roles)
        assert got["ok"] is True and got["parity"]["ok"] and got["export"]["exporter"] == "torchscript"
        assert [i["name"] for i in got["graph"]["inputs"]] == [i.name for i in local.graph.inputs]
        assert {p["prediction"] for p in got["predictions"]} == {p["prediction"] for p in local.predictions}
        # Cancel: the running RayJob is stopped and the page says so
        pending = c.submit(
            handle_file(ckpt), handle_file(sample), json.dumps(roles), api_name="/convert", latency_budget=0.5
        )
        end = time.monotonic() + 120
        while not [j for j in running.app.sessions.all_jobs() if j.pid] and time.monotonic() < end:
            time.sleep(0.1)
        job = next(j for j in running.app.sessions.all_jobs() if j.pid)
        assert isinstance(job, RayJob)
        c.predict(api_name="/cancel")
        cancelled_at = time.monotonic()
        with pytest.raises(Exception) as e:
            pending.result(timeout=120)
        assert "cancelled" in str(e.value).lower()
        end = time.monotonic() + 30  # the task is interrupted, then force-cancelled (fleet_ray.stop)
        while job.is_alive() and time.monotonic() < end:
            time.sleep(0.2)
        assert not job.is_alive()
        # stop()'s force-cancel timer fires STOP_GRACE_S after the cancel: let it run before the cluster stops
        time.sleep(max(0.0, cancelled_at + fleet_ray.STOP_GRACE_S + 1 - time.monotonic()))
    assert ray.is_initialized()  # the cluster the test started is not the app's to stop
