"""The CLI contract: commands have help and are documented, exit codes 0 / 1 / 2, --json output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DEMO, REPO

from studio.cli import commands as cli
from studio.cli import flags as cli_flags

COMMANDS = sorted(cli_flags.build_parser()._subparsers._group_actions[0].choices)


def studio(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO, timeout=600
    )


def test_commands_cover_the_contract():
    assert {"convert", "inspect", "app"} <= set(COMMANDS)


@pytest.fixture(scope="module")
def converted(hf_folders, sample_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    run = studio(
        "convert",
        hf_folders["bert"],
        "--data",
        sample_csv,
        "--out",
        out,
        "--exporter",
        "torchscript",
        "--latency-budget",
        "0.1",
        "--json",
        "--role",
        "review=text",
    )
    return run, out


def test_convert_exit_0_and_json_on_stdout(converted):
    run, out = converted
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)  # stdout holds only the JSON; progress goes to stderr
    assert report["ok"] is True and report["roles"]["review"] == "text"
    assert "[" in run.stderr and "export" in run.stderr
    assert (out / "model.onnx").is_file()


def test_inspect_prints_graph_and_checker(converted):
    _, out = converted
    run = studio("inspect", out / "model.onnx")
    assert run.returncode == 0, run.stderr
    assert "input_ids" in run.stdout and "[batch, sequence]" in run.stdout and "checker  PASS" in run.stdout
    data = json.loads(studio("inspect", out / "model.onnx", "--json").stdout)
    assert data["checker"]["ok"] and data["graph"]["opset"] == 18


def test_roles_command(sample_csv):
    run = studio("roles", sample_csv, "--json")
    assert run.returncode == 0, run.stderr
    roles = {c["name"]: c["suggested"] for c in json.loads(run.stdout)}
    assert roles["review"] == "text" and roles["order_id"] == "ignore"


def test_bad_input_exit_2_names_the_column_without_traceback(hf_folders, sample_csv, tmp_path):
    run = studio(
        "convert", hf_folders["bert"], "--data", sample_csv, "--out", tmp_path / "o", "--role", "no_such_column=text"
    )
    assert run.returncode == 2
    assert "no_such_column" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()  # nothing half written
    assert not list(tmp_path.glob(".o.partial-*"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing.pt", "--data", "x.csv"], "does not exist"),
        (["{ckpt}", "--data", "{sample}", "--opset", "9"], "outside the supported range"),
        (["{ckpt}", "--data", "{sample}", "--role", "review=words"], "not one of"),
        (["{ckpt}", "--data", "missing.csv"], "missing.csv"),
        (["{ckpt}", "--data", "{sample}", "--latency-budget", "0"], "--latency-budget must be more than 0 s"),
        (["{ckpt}", "--data", "{sample}", "--threads", "0"], "--threads must be a whole number >= 1"),
    ],
)
def test_more_bad_inputs_exit_2(args, needle, hf_folders, sample_csv, tmp_path):
    args = [a.format(ckpt=hf_folders["bert"], sample=sample_csv) for a in args]
    run = studio("convert", *args, "--out", tmp_path / "o", cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert needle in run.stderr and "Traceback" not in run.stderr


def test_failed_check_exit_1(converted, monkeypatch, capsys, hf_folders, sample_csv, tmp_path):
    """Exported but a check failed: exit 1, and the summary says which check."""
    import studio.pipeline as pipeline

    real = pipeline.convert

    def failing(spec, progress=None):
        report = real(spec, progress)
        report.parity.ok = False
        return report

    monkeypatch.setattr(pipeline, "convert", failing)
    code = cli.main(
        [
            "convert",
            str(hf_folders["bert"]),
            "--data",
            str(sample_csv),
            "--out",
            str(tmp_path / "o"),
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.05",
            "--quiet",
        ]
    )
    assert code == 1
    assert "FAIL (parity)" in capsys.readouterr().out


@pytest.mark.skipif(not (DEMO / "demo_model.pt").exists(), reason="demo checkpoint not built")
def test_demo_from_the_readme_exits_0(tmp_path):
    run = studio(
        "convert",
        DEMO / "demo_model.pt",
        "--data",
        DEMO / "sample.csv",
        "--out",
        tmp_path / "demo",
        "--latency-budget",
        "0.2",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS")


def test_demo_and_tabular_flags_map_to_the_spec(capsys):
    from studio import demo
    from studio.errors import StudioError
    from studio.spec import parse_tabular

    args = cli_flags.build_parser().parse_args(
        ["convert", "--demo", "--tabular", "features=a..c, d", "--tabular", "price=price"]
    )
    spec = cli_flags.spec_from_args(args)
    assert spec.checkpoint == str(demo.checkpoint()) and spec.data == str(demo.sample())
    assert demo.checkpoint().is_file() and demo.checkpoint().parent.name == "demo"
    assert spec.tabular == {"features": ("a..c", "d"), "price": ("price",)}
    with pytest.raises(StudioError, match="is not INPUT=COL1,COL2"):
        parse_tabular(["features"])
    with pytest.raises(StudioError, match="given twice"):
        parse_tabular(["x=a", "x=b"])
    assert cli.main(["convert", "--data", "x.csv"]) == 2
    assert "No CHECKPOINT given" in capsys.readouterr().err
    assert cli.main(["convert", "model.pt", "--demo"]) == 2
    assert "--demo converts the built-in demo" in capsys.readouterr().err


def test_locate_prints_where_onnx_runtime_leaves_pytorch(capsys, sample_csv, tmp_path):
    """A parity failure runs the locator by itself (tests/diverging.py: the TorchScript exporter drops
    Softplus's threshold): exit 1, and the summary, report.json and report.md name the module."""
    import diverging

    ckpt = diverging.save(tmp_path / "soft" / "model.pt")
    code = cli.main(
        [
            "convert",
            str(ckpt),
            "--data",
            str(sample_csv),
            "--out",
            str(tmp_path / "o"),
            "--trust-code",
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.05",
            "--no-cuda",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("FAIL (parity")
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("divergence  "))
    assert head.startswith("divergence  FOUND: ONNX Runtime leaves PyTorch first at node /model/soft/")
    assert any(line.strip().startswith("FIRST") and "module soft (Softplus)" in line for line in lines)
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["divergence"]["first"]["module"] == "soft" and data["divergence"]["trigger"] == "parity"
    assert "| FIRST | `/model/soft/" in (tmp_path / "o" / "report.md").read_text()


def test_locate_flag_runs_it_on_a_passing_model(capsys, tmp_path):
    code = cli.main(
        [
            "convert",
            "--demo",
            "--out",
            str(tmp_path / "o"),
            "--locate",
            "--latency-budget",
            "0.05",
            "--no-cuda",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("PASS")
    assert "divergence  none found: every module output compared agrees" in out
    assert sum(line.strip().startswith("agrees") for line in out.splitlines()) >= 1
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["ok"] is True and data["options"]["locate"] is True
    assert data["divergence"]["trigger"] == "requested" and data["divergence"]["found"] is False
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Divergence" in md and "| agrees | `" in md


def test_app_flag_defaults_are_the_app_s():
    """`studio app` without flags runs the app as studio.app.launch / AppConfig would by themselves."""
    import inspect

    from studio.app import launch
    from studio.app.config import AppConfig

    args = cli_flags.build_parser().parse_args(["app"])
    c, params = AppConfig(), inspect.signature(launch).parameters
    assert (args.host, args.port) == (params["host"].default, params["port"].default)
    assert (args.max_jobs, args.job_timeout, args.memory_limit, args.max_file_size, args.session_ttl) == (
        c.max_jobs,
        c.job_timeout_s,
        c.memory_limit_mb,
        c.max_file_size,
        c.session_ttl_s,
    )
    assert (args.max_params, args.trust_code, args.ray) == (c.max_params, c.trust_code, c.ray_address)


def test_the_cli_ends_at_once_with_its_code_after_threads_and_exit_handlers():
    """cli.exit_now (python -m studio): the exit code kept, a non-daemon thread's last words and the exit
    handlers' kept, the streams flushed; only the interpreter's teardown is skipped."""
    import subprocess
    import sys

    code = (
        "import atexit, sys, threading, time\n"
        "from studio.cli import commands as cli\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "sys.stderr.write('to stderr')\n"
        "cli.exit_now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "bufferedthread done\nhandler ran\n" and done.stderr == "to stderr"
