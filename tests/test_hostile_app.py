"""The hostile corpus through the web studio's API: every conversion case the CLI refuses with exit 2 is
refused by `/convert` with one message naming the file (no traceback, no "unexpected", no raw escape code,
no server folder), and the server keeps answering after each."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
import test_hostile_corpus as corpus  # noqa: E402
import tiny  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import studio.app  # noqa: E402

# the app refuses these before a job starts (--max-file-size) or they have no page equivalent (a CLI option)
NOT_APP = {"sample_200mb", "convert_bad_sample_limits_option"}


def _cases():
    for build in corpus.CORPUS:
        if build.__name__ not in NOT_APP and not build.__name__.startswith("onnx_"):  # `studio inspect`: no page
            yield build


@pytest.fixture(scope="module")
def served():
    # a new gradio_client per test, never closed: each keeps its session open (heartbeat) until the end
    running = studio.app.start(port=0, max_jobs=2, job_timeout_s=300, max_file_size="100mb", max_client_sessions=0)
    running.app.warm_up(wait=True)
    yield running
    running.close()


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    return tiny.make_hf_folder(tmp_path_factory.mktemp("app-corpus-hf") / "bert")


def _zipped(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return dest


def _app_inputs(argv: list, hf: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """(checkpoint, sample, roles) the page would upload for a CLI case."""
    if argv[0] == "roles":  # a hostile sample: the page uploads it beside a good model
        return _zipped(hf, tmp_path / "bert.zip"), Path(argv[1]), {}
    assert argv[0] == "convert", argv
    ckpt, sample = Path(argv[1]), Path(argv[argv.index("--data") + 1])
    roles = {}
    if "--role" in argv:
        col, _, role = str(argv[argv.index("--role") + 1]).rpartition("=")
        roles[col] = role
    if ckpt.is_dir():
        ckpt = _zipped(ckpt, tmp_path / f"{ckpt.name}.zip")
    return ckpt, sample, roles


@pytest.mark.parametrize("build", list(_cases()), ids=lambda f: f.__name__)
def test_hostile_input_through_the_app_api(build, served, hf, tmp_path):
    sample = tiny.write_sample(tmp_path / "sample.csv")
    argv = build(tmp_path, hf, sample)
    ckpt, data, roles = _app_inputs(argv, hf, tmp_path)
    client = Client(served.url, verbose=False, download_files=True)
    with pytest.raises(AppError) as e:
        client.predict(
            handle_file(str(ckpt)),
            handle_file(str(data)),
            roles=json.dumps(roles),
            exporter="torchscript",
            latency_budget=0.05,
            api_name="/convert",
        )
    message = str(e.value)
    assert "Traceback" not in message and "unexpected" not in message.lower(), message
    assert "\x1b" not in message
    assert "studio-ckpt-" not in message and ".partial-" not in message, message  # no server folder
    assert str(served.app.sessions.root) not in message, message
    # the page names the upload by its own name, as the CLI does
    named = corpus.NAMES.get(build.__name__)
    targets = {Path(str(argv[1])).name, ckpt.name, data.name} if named is None else {named}
    assert any(t in message for t in targets), message
    # the server is still there and answers the next request
    assert "/convert" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
