"""The benchmark scripts stay runnable (their timings are not judged here: speed targets live in benchmarks/)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skiplayernorm_comparison_runs_and_both_graphs_agree():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ort_skiplayernorm.py"),
            "--rows",
            "16",
            "--hidden",
            "64",
            "--calls",
            "3",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "| SkipLayerNormalization (com.microsoft) |" in out.stdout and "| Add + LayerNormalization |" in out.stdout
    diff = float(out.stdout.rsplit("max abs difference of the outputs", 1)[1].strip())
    assert diff <= 1e-4


def test_benchmark_runner_has_help():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--optimum-cli" in out.stdout


def test_architectures_benchmark_has_help():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "architectures.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--types" in out.stdout and "--opsets" in out.stdout
