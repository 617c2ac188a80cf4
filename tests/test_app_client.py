"""The web studio driven with gradio_client against a real server on a free port, running the real engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import studio.app  # noqa: E402
from studio.app.page import CONVERT_OUTPUTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "studio" / "demo"
ROLES = {"order_id": "ignore", "review": "text", "price": "tabular", "quantity": "tabular", "label": "ignore"}


@pytest.fixture(scope="module")
def served():
    # a new gradio_client per test, never closed: each keeps its session open (heartbeat) until the end
    running = studio.app.start(port=0, max_jobs=2, job_timeout_s=300, max_file_size="20mb", max_client_sessions=0)
    running.app.warm_up(wait=True)
    yield running
    running.close()


def client(served) -> Client:
    return Client(served.url, verbose=False, download_files=True)


def convert(c: Client, checkpoint=DEMO / "demo_model.pt", sample=DEMO / "sample.csv", **kw):
    kw.setdefault("roles", json.dumps(ROLES))
    return c.predict(handle_file(str(checkpoint)), handle_file(str(sample)), api_name="/convert", **kw)


def named(served, result: tuple) -> dict:
    """/convert's values by the page's names (gradio_client returns them in the order of CONVERT_OUTPUTS,
    less the layout blocks)."""
    names = served.app.ui.api_names(CONVERT_OUTPUTS)
    assert len(result) == len(names)
    return dict(zip(names, result))


def test_api_lists_named_endpoints(served):
    api = client(served).view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {"/convert", "/preview", "/load_demo", "/cancel"} <= names
    params = [p["parameter_name"] for p in api["named_endpoints"]["/convert"]["parameters"]]
    assert params[:3] == ["checkpoint", "sample", "roles"] and "opset" in params and "exporter" in params
    # new parameters last, with defaults: older callers keep working
    assert params[-6:] == ["variants", "tabular", "task", "locate", "repair", "max_new_tokens"]
    by_name = {p["parameter_name"]: p for p in api["named_endpoints"]["/convert"]["parameters"]}
    assert by_name["variants"]["parameter_default"] == []
    assert by_name["tabular"]["parameter_has_default"] and by_name["tabular"]["parameter_default"] in (None, "")
    assert by_name["task"]["parameter_default"] == "auto" and by_name["locate"]["parameter_default"] is False
    assert by_name["repair"]["parameter_default"] is True and by_name["max_new_tokens"]["parameter_default"] == 20


def test_demo_conversion_downloads_a_model_that_runs(served, tmp_path):
    import onnxruntime as ort

    c = client(served)
    ckpt, sample = c.predict(api_name="/load_demo")  # the demo files, as the button gives them
    result = named(served, convert(c, ckpt, sample))
    assert CONVERT_OUTPUTS[:2] == ("downloads", "report_json")  # first, as docs/web-app.md and test_install read them
    files, report = result["downloads"], json.loads(result["report_json"])
    assert report["variants"] == [] and result["variants_table"]["visible"] is False  # none unless asked
    names = {Path(f).name for f in files}
    assert {"model.onnx", "report.json", "report.md", "inference_example.py", "demo_model-onnx.zip"} <= names
    assert report["ok"] is True and report["failed_checks"] == []
    assert report["roles"] == ROLES
    model = next(f for f in files if Path(f).name == "model.onnx")
    inputs = [i["name"] for i in report["graph"]["inputs"]]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == inputs
    feeds = np.load(next(f for f in files if Path(f).name == "sample_inputs.npz"))
    out = sess.run(None, {n: feeds[n][:3] for n in inputs})  # 3 rows: the batch dimension is dynamic
    assert out[0].shape[0] == 3 and np.isfinite(out[0]).all()
    # the same run as a Markdown report, and the predictions sit beside the ignored id column
    assert "PASS" in Path(next(f for f in files if Path(f).name == "report.md")).read_text()
    assert {"order_id", "prediction"} <= set(report["predictions"][0])


def test_demo_conversion_with_an_int8_variant(served):
    import zipfile

    result = named(served, convert(client(served), exporter="torchscript", latency_budget=0.2, variants=["int8"]))
    files, report = result["downloads"], json.loads(result["report_json"])
    assert [v["name"] for v in report["variants"]] == ["int8"]
    int8 = report["variants"][0]
    assert int8["ok"] is True, int8["error"]
    assert report["ok"] is True and int8["latency"]["ort_cpu"]["p50_ms"] > 0
    shown = result["variants_table"]  # the Variants table, made visible: model.onnx's row, then int8 with its verdict
    assert shown["visible"] is True
    table = shown["value"]
    rows = {row[0]: row for row in table["data"]}
    assert table["headers"][:2] == ["variant", "verdict"] and set(rows) == {"fp32 (model.onnx)", "int8"}
    assert rows["int8"][1] in ("PASS", "PASS · take") and rows["int8"][5] != "-" and rows["int8"][7].endswith("x")
    assert "1/1 passed" in result["variants_note"]
    names = {Path(f).name for f in files}
    assert {Path(f).name for f in int8["files"]} <= names and "model.int8.onnx" in names
    zipped = next(f for f in files if f.endswith(".zip"))
    with zipfile.ZipFile(zipped) as zf:
        assert "demo_model-onnx/variants/model.int8.onnx" in zf.namelist()


def test_unknown_variant_is_explained(served):
    with pytest.raises(AppError) as e:
        convert(client(served), variants="int8,turbo")  # a comma string, as the CLI's --variants
    assert "Variant 'turbo' is not one of optimized, int8, int8-static, fp16" in str(e.value)


def test_invalid_upload_gives_the_clis_message(served, tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_text("order_id,review\nA-1,hello\n")
    with pytest.raises(AppError) as e:
        convert(client(served), bad)
    message = str(e.value)
    assert "weights.pt" in message and "Traceback" not in message and "/tmp/" not in message
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "convert",
            "weights.pt",
            "--data",
            str(DEMO / "sample.csv"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert cli.returncode == 2
    first = next(line for line in cli.stderr.splitlines() if line.startswith("error: "))
    assert first == "error: " + message.splitlines()[0]


def test_invalid_mapping_is_explained(served):
    with pytest.raises(AppError) as e:
        convert(
            client(served), roles=json.dumps({**ROLES, "price": "ignore"}), exporter="torchscript", latency_budget=0.3
        )
    assert "price" in str(e.value) and "tabular" in str(e.value)


def test_three_conversions_at_once(served):
    clients = [client(served) for _ in range(3)]  # three people, three sessions
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(convert, c, exporter="torchscript", opset=17, latency_budget=0.3) for c in clients]
        results = [named(served, f.result(timeout=600)) for f in futures]
    for r in results:
        report = json.loads(r["report_json"])
        assert report["ok"] is True and report["export"]["opset"] == 17
    models = [next(f for f in r["downloads"] if Path(f).name == "model.onnx") for r in results]
    assert len(set(models)) >= 1 and all(Path(m).stat().st_size > 0 for m in models)


def test_the_locate_parameter_runs_the_locator_on_a_passing_model(served):
    report = json.loads(
        named(served, convert(client(served), exporter="torchscript", latency_budget=0.1, locate=True))["report_json"]
    )
    assert report["ok"] is True and report["options"]["locate"] is True
    assert report["divergence"]["trigger"] == "requested" and report["divergence"]["found"] is False


def _running_job(served, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = [j for j in served.app.sessions.all_jobs() if j.task == "convert" and j.pid]
        if jobs:
            return jobs[0]
        time.sleep(0.05)
    raise AssertionError("no conversion started")


def test_cancel_stops_the_worker(served):
    c = client(served)
    pending = c.submit(
        handle_file(str(DEMO / "demo_model.pt")),
        handle_file(str(DEMO / "sample.csv")),
        json.dumps(ROLES),
        api_name="/convert",
    )
    worker = _running_job(served)
    pid = worker.pid
    c.predict(api_name="/cancel")  # the same session's Cancel button
    with pytest.raises(Exception) as e:
        pending.result(timeout=120)
    assert "cancelled" in str(e.value).lower()
    assert not worker.is_alive() and not _alive(pid)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_crashed_worker_leaves_the_app_answering(served):
    c = client(served)
    pending = c.submit(
        handle_file(str(DEMO / "demo_model.pt")),
        handle_file(str(DEMO / "sample.csv")),
        json.dumps(ROLES),
        api_name="/convert",
    )
    worker = _running_job(served)
    os.kill(worker.pid, signal.SIGKILL)  # what the kernel's OOM killer or a segfault does to it
    with pytest.raises(AppError) as e:
        pending.result(timeout=120)
    assert "stopped unexpectedly" in str(e.value) and "SIGKILL" in str(e.value)
    report = named(served, convert(client(served), exporter="torchscript", latency_budget=0.3))["report_json"]
    assert json.loads(report)["ok"] is True


def test_artifacts_of_a_session_cannot_be_fetched_by_path(served):
    c = client(served)
    convert(c, exporter="torchscript", latency_budget=0.3)
    on_disk = [p for p in served.app.sessions.root.rglob("model.onnx")]
    assert on_disk, "the job folder should still hold the artifacts"
    for path in on_disk[:2]:
        url = served.url + "gradio_api/file=" + urllib.parse.quote(str(path))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=30)
        assert e.value.code in (403, 404)


def test_upload_size_limit(served, tmp_path):
    big = tmp_path / "huge.pt"
    with open(big, "wb") as f:
        f.truncate(21 * 2**20)
    with pytest.raises(Exception) as e:
        convert(client(served), big)
    assert "exceeds the maximum file size" in str(e.value) or "413" in str(e.value)
    # the server enforces it too, whatever the client does
    import httpx

    with open(big, "rb") as f:
        r = httpx.post(served.url + "gradio_api/upload", files={"files": ("huge.pt", f)}, timeout=120)
    assert r.status_code == 413 and "maximum allowed size" in r.text
