"""A real install: build the wheel from the checkout's files, install it into a fresh virtual environment
outside the checkout, and run the packaged demo there through the CLI (`studio convert --demo`), through
gradio_client (Load demo -> Convert) and, when chromium is there, by clicking Load demo in a browser.

The venv borrows the project environment's third-party packages (torch, onnxruntime, gradio...) through
a plain path line, which does not run that environment's editable-install hook: `studio` itself can only
come from the wheel, and the test checks that it does. About 2 minutes on 2 cores (wheel, venv,
one CLI conversion, one app conversion)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(),
    reason="needs a git checkout to know which files the wheel is built from",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"  # nothing is downloaded
    return env


def _run(cmd, cwd, timeout=600):
    run = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{cmd}: exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    # the checkout's files (tracked and new, not ignored), copied: the build writes nothing into the checkout
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    src = root / "src"
    for rel in filter(None, listed):
        s, d = REPO / rel, src / rel
        if not (s.exists() or s.is_symlink()):
            continue  # deleted in the work tree
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d, follow_symlinks=False)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=root)
    wheel = next(dist.glob("onnx_studio-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    # third-party packages from the project environment (a path line: its .pth hooks do not run)
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", wheel], cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return {"venv": venv, "py": py, "studio": venv / "bin" / "studio", "work": work, "wheel": wheel}


def test_wheel_ships_the_demo_and_studio_comes_from_it(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert {"studio/demo/demo_model.pt", "studio/demo/sample.csv", "studio/demo/sample.json"} <= set(names)
    out = _run(
        [
            installed["py"],
            "-c",
            "import studio, studio.demo as d; print(studio.__file__); print(d.checkpoint()); print(d.sample())",
        ],
        cwd=installed["work"],
    )
    file, ckpt, sample = out.stdout.split()
    venv = str(installed["venv"].resolve())
    assert file.startswith(venv) and ckpt.startswith(venv) and sample.startswith(venv)
    assert not file.startswith(str(REPO))
    assert Path(ckpt).stat().st_size == (REPO / "studio" / "demo" / "demo_model.pt").stat().st_size


def test_installed_cli_converts_the_demo(installed):
    run = subprocess.run(
        [
            installed["studio"],
            "convert",
            "--demo",
            "--out",
            "demo-out",
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.05",
            "--no-cuda",
            "--json",
            "--quiet",
        ],
        cwd=installed["work"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["ok"] and report["source"]["kind"] == "multimodal"
    assert report["source"]["path"].startswith(str(installed["venv"].resolve()))
    assert report["roles"] == {
        "order_id": "ignore",
        "review": "text",
        "price": "tabular",
        "quantity": "tabular",
        "label": "ignore",
    }
    assert (installed["work"] / "demo-out" / "model.onnx").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed_app(installed):
    port = _free_port()
    log = open(installed["work"] / "app.log", "w")
    proc = subprocess.Popen(
        [installed["studio"], "app", "--port", str(port)],
        cwd=installed["work"],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert proc.poll() is None, (installed["work"] / "app.log").read_text()[-3000:]
                assert time.time() < deadline, "the installed app did not start in 180 s"
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes (our own session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_installed_app_load_demo_and_convert_with_gradio_client(installed_app):
    gradio_client = pytest.importorskip("gradio_client")
    c = gradio_client.Client(installed_app, verbose=False, download_files=True)
    ckpt, sample = c.predict(api_name="/load_demo")
    assert Path(ckpt).name == "demo_model.pt" and Path(sample).name == "sample.csv"
    roles = {"order_id": "ignore", "review": "text", "price": "tabular", "quantity": "tabular", "label": "ignore"}
    files, report = c.predict(
        gradio_client.handle_file(ckpt),
        gradio_client.handle_file(sample),
        roles=json.dumps(roles),
        exporter="torchscript",
        api_name="/convert",
    )[:2]
    report = json.loads(report)
    assert report["ok"] is True, report["failed_checks"]
    assert "model.onnx" in {Path(f).name for f in files}


def test_installed_app_load_demo_in_a_browser(installed_app):
    from test_app_browser import ARGS, CHROMIUM, _browser_or_skip

    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(installed_app)
            page.click("#load-demo")
            page.wait_for_selector("#mapping-status .mapping-ok")
            assert "multimodal" in page.inner_text("#model-card")
            assert "review" in page.inner_text("#preview-table")
        finally:
            browser.close()
