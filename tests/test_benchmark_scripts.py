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


def test_ort_files_times_two_files_side_by_side(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def tiny(name):  # input_ids -> float: Cast then ReduceSum (only inputs the script makes)
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
                helper.make_node("ReduceSum", ["f"], ["y"]),
            ],
            "g",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
        return str(path)

    script = str(ROOT / "benchmarks" / "ort_files.py")
    args = [tiny("a.onnx"), tiny("b.onnx"), "--batch", "2", "--tokens", "4", "--budget", "0.2", "--threads", "1"]
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| /") and ".onnx |" in line]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
