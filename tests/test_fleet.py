"""`studio batch`: manifests (studio/jobs/manifest.py) and the batch run in local processes (studio/jobs/fleet.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fleet_cases
import pytest

from studio import demo
from studio.cli.commands import main
from studio.jobs.entries import STATE_FILE, entry_hash, stored_row
from studio.jobs.manifest import ManifestError, read_manifest


def wide(*paths: Path) -> str:
    """The folder holding the packaged demo and `paths`: these manifests name the demo where it is installed
    (outside the manifest's folder, which `studio batch` allows only under --inputs-under)."""
    return os.path.commonpath([str(Path(p).resolve()) for p in (demo.checkpoint().parent, *paths)])


# --- manifests --------------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path) -> Path:
    (tmp_path / "model.pt").write_bytes(demo.checkpoint().read_bytes())
    (tmp_path / "rows.csv").write_text(demo.sample().read_text())
    return tmp_path


def test_jsonl_csv_yaml_read_the_same(inputs):
    (inputs / "m.jsonl").write_text(
        '# nightly\n{"checkpoint": "model.pt", "data": "rows.csv", "opset": 17, '
        '"roles": {"order_id": "ignore"}, "variants": ["int8"], "atol": 0.001}\n\n'
        '{"name": "second", "checkpoint": "model.pt", "data": "rows.csv", "dynamic": []}\n'
    )
    (inputs / "m.csv").write_text(
        "checkpoint,data,opset,roles,variants,atol,name,dynamic\n"
        "model.pt,rows.csv,17,order_id=ignore,int8,0.001,,\n"
        "model.pt,rows.csv,,,,,second,-\n"
    )
    (inputs / "m.yaml").write_text(
        "conversions:\n"
        "  - checkpoint: model.pt\n    data: rows.csv\n    opset: 17\n"
        "    roles: {order_id: ignore}\n    variants: [int8]\n    atol: 0.001\n"
        "  - {name: second, checkpoint: model.pt, data: rows.csv, dynamic: []}\n"
    )
    got = {}
    for kind in ("jsonl", "csv", "yaml"):
        entries = read_manifest(inputs / f"m.{kind}")
        got[kind] = [
            (
                e.spec.checkpoint,
                e.spec.data,
                e.spec.opset,
                e.spec.roles,
                e.spec.variants,
                e.spec.atol,
                e.spec.dynamic,
                e.name,
            )
            for e in entries
        ]
    first = (
        str(inputs / "model.pt"),
        str(inputs / "rows.csv"),
        17,
        {"order_id": "ignore"},
        ("int8",),
        0.001,
        ("batch", "sequence"),
    )
    assert got["jsonl"][0][:7] == first and got["jsonl"][1][6:] == ((), "second")
    assert got["csv"][0][:7] == first and got["csv"][1][6:] == ((), "second")
    assert got["yaml"][0][:7] == first and got["yaml"][1][6:] == ((), "second")
    # the default names differ only by the line they come from
    assert got["jsonl"][0][7] == got["csv"][0][7] == got["yaml"][0][7] == "model-line2"


@pytest.mark.parametrize(
    "line, key, words",
    [
        ('{"checkpoint": "model.pt", "data": "rows.csv", "opsett": 17}', "opsett", "unknown key"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "opset": "seventeen"}', "opset", "must be a number"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "opset": 17.5}', "opset", "whole number"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "roles": ["text"]}', "roles", "mapping"),
        ('{"checkpoint": "model.pt", "data": "missing.csv"}', "data", "does not exist"),
        ('{"data": "rows.csv"}', "checkpoint", "is missing"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "out": "/tmp/x"}', "out", "use `name`"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "name": "../up"}', "name", "not a folder name"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "name": "summary.json"}', "name", "not a folder name"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "name": "demo"}', "name", "already used on line 1"),
        ('{"checkpoint": "model.pt", "data": "rows.csv", "exporter": "onnxmltools"}', "exporter", "not one of"),
        ('{"checkpoint": "model.pt", "data": "rows.csv",', None, "not a JSON object"),
    ],
)
def test_a_bad_line_names_file_line_and_key(inputs, line, key, words):
    manifest = inputs / "m.jsonl"
    manifest.write_text('{"name": "demo", "checkpoint": "model.pt", "data": "rows.csv"}\n' + line + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(manifest)
    assert e.value.file == str(manifest) and e.value.line == 2 and e.value.key == key
    assert str(e.value).startswith(f"{manifest}, line 2") and words in str(e.value)


def test_csv_and_yaml_lines_are_the_files_lines(inputs):
    (inputs / "m.csv").write_text("checkpoint,data,opset\nmodel.pt,rows.csv,17\nmodel.pt,rows.csv,x\n")
    with pytest.raises(ManifestError, match=r"m.csv, line 3, key 'opset'"):
        read_manifest(inputs / "m.csv")
    (inputs / "m.yaml").write_text(
        "- checkpoint: model.pt\n  data: rows.csv\n\n- checkpoint: model.pt\n  data: rows.csv\n  max_length: many\n"
    )
    with pytest.raises(ManifestError, match=r"m.yaml, line 4, key 'max_length'"):
        read_manifest(inputs / "m.yaml")


def test_the_hash_follows_content_and_options(inputs):
    manifest = inputs / "m.jsonl"

    def digest(**extra) -> str:
        fleet_cases.write_jsonl(manifest, [{"checkpoint": "model.pt", "data": "rows.csv", **extra}])
        return entry_hash(read_manifest(manifest)[0])

    first = digest()
    assert digest() == first
    assert digest(opset=17) != first
    (inputs / "rows.csv").write_text(demo.sample().read_text().replace("average", "avarage", 1))
    assert digest() != first
    # a folder's files count too: one byte changed anywhere in it changes the hash
    folder = inputs / "folder"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"1")
    fleet_cases.write_jsonl(manifest, [{"checkpoint": "folder", "data": "rows.csv"}])
    before = entry_hash(read_manifest(manifest)[0])
    (folder / "a.bin").write_bytes(b"2")
    assert entry_hash(read_manifest(manifest)[0]) != before


# --- the batch, in local processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The five-entry batch run once through `studio batch` (two jobs at a time); its folder and exit code."""
    root = tmp_path_factory.mktemp("fleet")
    manifest = fleet_cases.write_jsonl(root / "nightly.jsonl", fleet_cases.entries(root))
    code = main(
        ["batch", str(manifest), "--out", str(root / "out"), "--jobs", "2", "--quiet", "--inputs-under", wide(root)]
    )
    return root, manifest, code


def test_the_batch_verdicts_summary_and_exit_code(batch, capsys):
    root, manifest, code = batch
    out = root / "out"
    assert code == 2  # one entry could not be converted
    assert fleet_cases.verdicts(out / "summary.json") == fleet_cases.EXPECTED
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"] == {"PASS": 3, "FAIL": 1, "ERROR": 1, "skipped": 0} and data["exit_code"] == 2
    rows = {r["entry"]: r for r in data["entries"]}
    for name in ("demo", "demo-json", "bert", "demo-strict"):
        report = json.loads((out / name / "report.json").read_text())
        assert (out / name / "model.onnx").is_file()
        assert rows[name]["export_seconds"] == report["export"]["seconds"] > 0
        assert rows[name]["model_bytes"] == report["graph"]["size_bytes"] == (out / name / "model.onnx").stat().st_size
        lat = report["latency"]
        assert rows[name]["speedup_ort_cpu"] == round(lat["torch_cpu"]["p50_ms"] / lat["ort_cpu"]["p50_ms"], 3)
    assert [v["name"] for v in rows["demo-json"]["variants"]] == ["int8"]
    assert "no column is mapped text" in rows["bert-bad"]["error"]
    md = (out / "summary.md").read_text()
    assert "3 passed, 1 failed a check, 1 could not be converted" in md
    assert "| demo-strict | FAIL | parity, dynamic |" in md


def test_a_second_run_skips_every_entry(batch, capsys):
    root, manifest, _ = batch
    out = root / "out"
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/model.onnx")}
    capsys.readouterr()
    assert main(["batch", str(manifest), "--out", str(out), "--inputs-under", wide(root)]) == 2
    err = capsys.readouterr().err
    assert "5 of 5 entries unchanged" in err
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"]["skipped"] == 5 and all(r["skipped"] for r in data["entries"])
    assert fleet_cases.verdicts(out / "summary.json") == fleet_cases.EXPECTED
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.onnx")} == before  # nothing was converted again


def test_exit_codes_follow_the_verdicts(batch, tmp_path):
    """0 all passed, 1 a check failed (the same folders, so the entries are skipped and nothing converts)."""
    root, _, _ = batch
    lines = {e["name"]: e for e in fleet_cases.entries(root)}
    passing = fleet_cases.write_jsonl(root / "passing.jsonl", [lines["demo"], lines["bert"]])
    failing = fleet_cases.write_jsonl(root / "failing.jsonl", [lines["demo"], lines["demo-strict"]])
    assert main(["batch", str(passing), "--out", str(root / "out"), "--quiet", "--inputs-under", wide(root)]) == 0
    assert main(["batch", str(failing), "--out", str(root / "out"), "--quiet", "--inputs-under", wide(root)]) == 1
    bad = fleet_cases.write_jsonl(tmp_path / "bad.jsonl", [{"checkpoint": "nowhere.pt", "data": "x.csv"}])
    assert main(["batch", str(bad), "--out", str(tmp_path / "out"), "--quiet"]) == 2  # a bad manifest: nothing runs
    assert not (tmp_path / "out").exists()


def test_an_incomplete_folder_is_not_skipped(batch):
    root, manifest, _ = batch
    entry = read_manifest(manifest, inputs_under=wide(root))[0]
    folder = root / "out" / entry.name
    digest = entry_hash(entry)
    assert stored_row(folder, digest)["verdict"] == "PASS"
    assert stored_row(folder, "0" * 64) is None  # other inputs
    state = (folder / STATE_FILE).read_text()
    model = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").unlink()
    try:
        assert stored_row(folder, digest) is None
    finally:
        (folder / "model.onnx").write_bytes(model)
    assert stored_row(folder, digest) is not None and (folder / STATE_FILE).read_text() == state


def test_the_core_does_not_import_ray(tmp_path):
    """Only `--ray` imports ray: the CLI, the manifest and a local batch that skips everything do not."""
    import subprocess
    import sys

    manifest = fleet_cases.write_jsonl(
        tmp_path / "m.jsonl", [{"checkpoint": str(demo.checkpoint()), "data": str(demo.sample())}]
    )
    code = (
        "import sys, studio.cli.commands, studio.cli.flags, studio.jobs.fleet, studio.jobs.manifest; "
        f"studio.jobs.manifest.read_manifest({str(manifest)!r}, inputs_under={wide(tmp_path)!r}); studio.cli.flags.build_parser().parse_args(['batch', 'm']); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_progress_draws_bars_on_a_terminal_and_lines_elsewhere():
    import io

    from studio.jobs.progress import BatchProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    row = {"verdict": "FAIL", "failed_checks": ["parity"], "error": None, "seconds": 2.0}
    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        p = BatchProgress(total=3, done=1, stream=stream)
        p.start("a")
        p.update("a", "export", 0.15)
        p.update("a", "export", 0.15)
        p.start("b")
        p.finish("a", row)
    text = tty.getvalue()
    assert "batch [########----------------] 1/3 done" in text  # the skipped entry counts as done
    assert "  a                              [##--------------]  15% export" in text
    assert "\x1b[" in text and "[2/3] a FAIL (parity) (2.0 s)" in text
    assert "batch [################--------] 2/3 done, 1 FAIL" in text.rsplit("\x1b[J", 1)[1]
    assert log.getvalue().splitlines() == [
        "  a: [  0%] queued",
        "  a: [ 15%] export",
        "  b: [  0%] queued",
        "[2/3] a FAIL (parity) (2.0 s)",
    ]


def test_ctrl_c_stops_the_running_jobs(tmp_path, hf_folders, sample_csv):
    """SIGINT during a conversion: exit 130, the job's processes are gone, no build folder stays behind."""
    import signal
    import subprocess
    import sys

    import psutil

    # the new exporter on a transformers model: several seconds even in a warm job server (the demo, traced
    # small, now exports in about a second and its whole job can end before the signal lands)
    slow_export = {**fleet_cases.FAST, "exporter": "dynamo"}
    manifest = fleet_cases.write_jsonl(
        tmp_path / "m.jsonl",
        # the job is surely still exporting when SIGINT comes
        [{"name": "demo", "checkpoint": str(hf_folders["bert"]), "data": str(sample_csv), **slow_export}],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio", "batch", str(manifest), "--out", str(tmp_path / "out")]
        + ["--inputs-under", wide(tmp_path, hf_folders["bert"], sample_csv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a SIGINT ignored by this test process (something earlier in the suite may
        # leave it so) would be inherited, and Python then never turns it into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in proc.stderr:
            if "export" in line:
                break
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert kids  # the job (and the job server it was forked from)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "demo ERROR: The batch was interrupted." in err
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["demo"] and not any((tmp_path / "out" / "demo").iterdir())
