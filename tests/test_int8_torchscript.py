"""Issue 28 §0 as a user met it: a TorchScript checkpoint converted with `--variants int8` through the CLI.

TorchScript's exporter leaves the traced module's weights as Constant nodes; the int8 file must still hold
quantized operators (the weights lifted first), say how many it quantized, and be a smaller file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import tiny
import torch
from test_sources_trusted import example, text_tab, with_tokenizer

QUANTIZED_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat"}


def test_torchscript_checkpoint_int8_quantizes_its_weights_through_the_cli(tmp_path: Path):
    folder = with_tokenizer(tmp_path / "ts")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(text_tab(), example(), strict=False).save(str(folder / "model.pt"))
    sample = tiny.write_sample(tmp_path / "sample.csv")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "studio", "convert", str(folder), "--data", str(sample), "--out", str(out),
         "--trust-code", "--exporter", "torchscript", "--variants", "int8", "--latency-budget", "0.02", "--no-cuda"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert int8["file"] and int8["error"] is None, int8
    quantized = onnx.load(str(out / int8["file"]))
    found = {n.op_type for n in quantized.graph.node} & QUANTIZED_OPS
    assert found, sorted({n.op_type for n in quantized.graph.node})
    counted = re.search(r"(\d+) matrix products quantized", int8["notes"])
    assert counted and int(counted.group(1)) >= 12, int8["notes"]  # the encoder's and the head's Linear layers
    fp32 = (out / "model.onnx").stat().st_size + sum(p.stat().st_size for p in out.glob("model.onnx.data"))
    assert int8["size_bytes"] < 0.8 * fp32, (int8["size_bytes"], fp32)  # the embeddings stay float
