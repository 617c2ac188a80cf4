"""int8-static (issue 28 §1): QDQ int8 calibrated on the user's own rows, beside dynamic int8, checked and timed
the same way; the variants table says which one to take on this CPU."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_repair import Overflow, checkpoint, write_csv

from studio import ConvertSpec, convert

FAST = dict(latency_budget_s=0.02, cuda=False)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    sample = write_csv(root / "sample.csv")
    out = root / "out"
    report = convert(
        ConvertSpec(
            checkpoint=str(checkpoint(root / "m", Overflow())),
            data=str(sample),
            out=str(out),
            variants=("int8", "int8-static"),
            exporter="torchscript",
            trust_code=True,
            **FAST,
        )
    )
    return report, out, sample


def test_static_int8_is_qdq_calibrated_on_the_sample_checked_and_timed(tabular):
    report, out, sample = tabular
    by = {v.name: v for v in report.variants}
    assert [v.name for v in report.variants] == ["int8", "int8-static"]
    v = by["int8-static"]
    assert v.ok, v.error
    assert v.file == "variants/model.int8-static.onnx" and v.method.startswith("onnxruntime static quantization")
    graph = onnx.load(str(out / v.file)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4 and v.quantized == 2
    # the first product reads the sample's columns themselves: its activation scale is MinMax over the CSV's
    # values (range widened to hold 0, uint8), computed here from the file with numpy
    x = np.loadtxt(sample, delimiter=",", skiprows=1)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "features")
    expected = (max(x.max(), 0.0) - min(x.min(), 0.0)) / 255
    assert float(inits[q.input[1]]) == pytest.approx(expected, rel=1e-3)
    assert inits[q.input[2]].dtype == np.uint8
    # checked like every variant: parity on the sample's rows and the shape probes, with int8's verdict rule
    assert v.parity.ok and v.parity.rows == 16 and v.parity.outputs[0].argmax_agreement == 1.0
    assert v.tolerance["min_argmax_agreement"] == by["int8"].tolerance["min_argmax_agreement"]
    assert v.dynamic.ok and len(v.dynamic.probes) >= 2
    # timed like every variant: ORT CPU beside PyTorch, at the sample's batch and at batch 1
    assert v.latency.ort_cpu.p50_ms > 0 and v.latency.ort_cpu.batch == 16 and v.latency.batch1["ort_cpu"].batch == 1
    assert v.speedup_vs_fp32 and v.speedup_vs_torch and v.latency.ort_cuda is None
    assert "calibrated on the sample's 16 row(s)" in v.notes


def test_the_table_says_which_variant_to_take(tabular):
    report, out, _ = tabular
    passing = [v for v in report.variants if v.ok and v.speedup_vs_fp32]
    takes = [v for v in report.variants if v.take]
    fastest = max(passing, key=lambda v: v.speedup_vs_fp32 or 0)
    assert takes == ([fastest] if (fastest.speedup_vs_fp32 or 0) > 1.0 else [])
    md = (out / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("Take "))
    assert (f"Take `{fastest.name}` on this CPU" in line) if takes else line.startswith("Take model.onnx")
    data = json.loads((out / "report.json").read_text())
    assert [v["take"] for v in data["variants"]] == [v.take for v in report.variants]


def test_static_int8_on_a_text_model(hf_folders, sample_csv, tmp_path):
    """A tokenized text classifier (tiny BERT): calibrated on the token ids and mask of the sample."""
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            variants=("int8-static",),
            exporter="torchscript",
            **FAST,
        )
    )
    (v,) = report.variants
    assert v.ok, v.error
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / v.file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and v.quantized and v.quantized > 0
    assert v.parity.outputs[0].argmax_agreement == 1.0 and v.latency.ort_cpu.p50_ms > 0
