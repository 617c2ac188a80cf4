"""A full disk (issue 25, section 6): met during the export, during the report, while moving the files into
--out or zipping the download, the conversion stops with one clear message (DiskFullError, exit 2, no
traceback), the `.partial` build folder is removed and --out holds nothing half written.

The real runs set RLIMIT_FSIZE in the child (SIGXFSZ ignored, so a write past it fails with EFBIG, as a
full disk fails one with ENOSPC): one limit below the demo's model.onnx (~0.4 MB), one above it but below
the sample file the report copies."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio import artifacts
from studio.errors import CheckpointError, DiskFullError

REPO = Path(__file__).resolve().parents[1]
DEMO_SAMPLE = REPO / "studio" / "demo" / "sample.csv"


def _convert_with_file_limit(limit: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    def limit_files():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "studio", "convert", "--demo", "--out", str(out), "--latency-budget", "0.05", "--quiet"]
        + list(extra),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
        preexec_fn=limit_files,
    )


def _old_output(out: Path) -> dict[str, bytes]:
    """An earlier conversion's folder with a file of the user's: a failed run must leave both as they were."""
    out.mkdir()
    files = {"model.onnx": b"the earlier model", "report.json": b"{}", "notes.txt": b"the user's own file"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def _assert_clean(proc: subprocess.CompletedProcess, out: Path, before: dict[str, bytes], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "The disk is full" in err and "File too large" in err and str(out) in err, err[-3000:]
    for word in words:
        assert word in err, err[-3000:]
    assert "Traceback" not in err and "unexpected" not in err and "exporter diagnosis" not in err
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing of the failed run in --out


def test_a_full_disk_during_the_export(tmp_path):
    out = tmp_path / "out"
    before = _old_output(out)
    proc = _convert_with_file_limit(200_000, out)
    _assert_clean(proc, out, before, "model.onnx", "export stage")


def test_a_full_disk_while_the_report_is_written(tmp_path):
    """The model (~0.4 MB) fits under 1 MB; the sample the report folder keeps a copy of (2.4 MB) does not."""
    rows = list(csv.reader(DEMO_SAMPLE.open()))
    sample = tmp_path / "big.csv"
    with sample.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for row in rows[1:]:
            writer.writerow([row[0], row[1] + " fine" * 60_000, *row[2:]])
    assert sample.stat().st_size > 2_000_000
    out = tmp_path / "out"
    before = _old_output(out)
    proc = _convert_with_file_limit(1_000_000, out, "--data", str(sample))
    _assert_clean(proc, out, before, "sample.csv", "writing stage")


def test_a_failed_move_into_out_takes_back_what_it_moved(tmp_path, monkeypatch):
    work, out = tmp_path / ".out.partial-x", tmp_path / "out"
    work.mkdir()
    for name in ("model.onnx", "report.json", "report.md"):
        (work / name).write_text(name)
    real_move, calls = shutil.move, []

    def move(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        return real_move(src, dst)

    monkeypatch.setattr(shutil, "move", move)
    with pytest.raises(OSError):
        artifacts.move_into(work, out)
    assert not out.exists()  # it did not exist before: nothing of the failed run stays


def test_a_full_disk_while_zipping_leaves_no_zip(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x" * 1000)
    import zipfile

    def write(self, *a, **kw):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(zipfile.ZipFile, "write", write)
    dest = tmp_path / "onnx-studio.zip"
    with pytest.raises(DiskFullError, match="Disk quota exceeded.*the download") as e:
        artifacts.zip_folder(folder, dest)
    assert e.value.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_is_found_through_wrapping_errors():
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise CheckpointError("the upload could not be unpacked") from e
    except CheckpointError as wrapped:
        assert artifacts.disk_full(wrapped) is inner
    cxx = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : write failed: No space left on device")
    assert artifacts.disk_full(cxx) is cxx  # C++ writers say it in words
    assert artifacts.disk_full(CheckpointError("File too large to convert")) is None  # the studio's own words
    assert artifacts.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    with pytest.raises(OSError):
        artifacts.reraise_disk_full(OSError(errno.EFBIG, "File too large"))
    artifacts.reraise_disk_full(ValueError("not a disk"))  # nothing raised


def _fail_on(name: str):
    def write(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("where", ["report", "variant"])
def test_a_full_disk_in_process_is_one_typed_error(tmp_path, monkeypatch, where):
    """The report's own files, and a variant (which would otherwise be noted as failed and the run go on)."""
    import dataclasses

    from studio import demo, pipeline
    from studio.spec import ConvertSpec
    from studio.variants import table as variants

    if where == "report":
        real = Path.write_text

        def write_text(self, *a, **kw):
            if self.name == "report.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        monkeypatch.setitem(
            variants.VARIANT_TABLE, "fp16", dataclasses.replace(variants.VARIANT_TABLE["fp16"], build=_fail_on("fp16"))
        )
    out = tmp_path / "out"
    spec = ConvertSpec(
        str(demo.checkpoint()), str(demo.sample()), out=str(out), latency_budget_s=0.05, variants=("fp16",)
    )
    with pytest.raises(DiskFullError) as e:
        pipeline.convert(spec)
    msg = str(e.value)
    assert "No space left on device" in msg and str(out) in msg
    assert ("report.json" in msg and "writing stage" in msg) if where == "report" else "variants" in msg
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
