"""optimized / int8 / fp16 variants: built beside model.onnx, each checked, a failure shown, never hidden.

Tiny models only and the legacy exporter where the exporter is not the point (the new exporter's graph
is covered by one test, and by tests/test_big_model.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from studio import ConvertSpec, convert
from studio.cli.commands import main as cli_main
from studio.report.model import VariantInfo
from studio.spec import VARIANTS
from studio.variants import _builders as B
from studio.variants import table as V

FAST = dict(exporter="torchscript", latency_budget_s=0.02, cuda=False)


@pytest.fixture(scope="module")
def all_three(hf_folders, sample_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants") / "out"
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(out),
            variants=("fp16", "int8", "optimized"),
            **FAST,
        )
    )
    return report, out


def test_every_variant_is_built_checked_and_recorded(all_three):
    report, out = all_three
    assert [v.name for v in report.variants] == ["optimized", "int8", "fp16"]  # built in dependency order
    for v in report.variants:
        assert v.ok, (v.name, v.error)
        assert v.file == f"variants/model.{v.name}.onnx" and (out / v.file).is_file()
        assert v.files == [v.file] and v.size_bytes == (out / v.file).stat().st_size
        assert v.parity.ok and v.parity.rows == 5 and v.parity.outputs[0].argmax_agreement == 1.0
        assert v.parity.atol == v.tolerance["atol"] and v.tolerance["rule"]
        assert v.dynamic.ok and len(v.dynamic.probes) >= 3
        t = v.latency.ort_cpu
        base = report.latency.ort_cpu
        # 3: the fewest timed calls a runtime gets (rounds.MIN_CALLS), even when a 0.02 s budget is all waits
        assert (
            t.p50_ms > 0 and t.iterations >= 3 and (t.batch, t.sequence, t.threads) == (5, base.sequence, base.threads)
        )
        assert v.latency.batch1["ort_cpu"].batch == 1
        assert v.latency.ort_cuda is None and v.latency.errors["ort_cuda"]  # a reason, never a number
        assert v.speedup_vs_fp32 and v.speedup_vs_torch and v.method and v.provider == "CPUExecutionProvider"
        assert v.seconds is not None and v.notes
    assert report.ok and report.failed_checks == []


def test_per_variant_tolerances_are_documented(all_three):
    report, _ = all_three
    tol = {v.name: v.tolerance for v in report.variants}
    assert tol["optimized"]["atol"] == 1e-4 and tol["optimized"]["min_argmax_agreement"] is None
    assert tol["int8"]["atol"] == V.INT8_ATOL and tol["int8"]["min_argmax_agreement"] == V.INT8_MIN_AGREEMENT
    assert "argmax" not in tol["optimized"]["rule"] and "int8 cannot meet" in tol["int8"]["rule"]
    assert tol["fp16"]["atol"] == V.FP16_ATOL


def test_variant_files_are_what_they_say(all_three):
    report, out = all_three
    by = {v.name: v for v in report.variants}
    ops = lambda p: {n.op_type for n in onnx.load(str(out / p)).graph.node}  # noqa: E731
    # the legacy exporter's graph: onnxruntime.transformers.optimizer fuses attention there
    assert by["optimized"].method == "onnxruntime.transformers.optimizer"
    assert {"Attention", "SkipLayerNormalization"} <= ops(by["optimized"].file)
    assert "DynamicQuantizeMatMul" in ops(by["int8"].file)  # studio/variants/_int8.py
    assert by["int8"].method == "int8 weights, DynamicQuantizeMatMul (studio/variants/_int8.py)"
    fp16 = onnx.load(str(out / by["fp16"].file))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    # keep_io_types: the same feeds and the same output type as model.onnx
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert by["fp16"].source == "variants/model.optimized.onnx" and by["int8"].source == "model.onnx"
    assert by["int8"].size_bytes < report.graph.size_bytes


def test_int8_fuses_the_exporters_gelu_first(hf_folders, sample_csv, tmp_path):
    """The new exporter writes GELU in an order ONNX Runtime does not fuse; the int8 variant fuses it
    (bert-base: 25% faster) and says so."""
    out = tmp_path / "out"
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(out),
            variants=("int8",),
            exporter="dynamo",
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    assert "Erf" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}  # model.onnx: as exported
    int8 = report.variants[0]
    graph = onnx.load(str(out / int8.file)).graph
    ops = {(n.domain, n.op_type) for n in graph.node}
    assert ("com.microsoft", "Gelu") in ops and ("", "Erf") not in ops
    assert ("com.microsoft", "DynamicQuantizeMatMul") in ops
    assert int8.ok and "GELU x" in int8.notes and "ONNX Runtime only" in int8.notes
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary copies left
    assert sorted(p.name for p in (out / "variants").iterdir()) == ["model.int8.onnx"]


def test_int8_is_still_built_when_the_gelu_fusion_fails(hf_folders, sample_csv, tmp_path, monkeypatch):
    def broken(model):
        raise RuntimeError("pattern engine broke")

    monkeypatch.setattr(B, "_fuse_gelu", broken)
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "out"),
            variants=("int8",),
            **FAST,
        )
    )
    int8 = report.variants[0]
    assert int8.ok and "GELU fusion before quantizing failed (RuntimeError: pattern engine broke)" in int8.notes


def test_report_json_markdown_and_summary_show_variants(all_three):
    report, out = all_three
    data = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["optimized", "int8", "fp16"]
    assert data["variants"][1]["tolerance"]["min_argmax_agreement"] == V.INT8_MIN_AGREEMENT
    assert data["variants"][0]["latency"]["batch1"]["ort_cpu"]["batch"] == 1
    md = (out / "report.md").read_text()
    assert "## Variants" in md and "## Variant: int8 — PASS" in md and "Verdict rule:" in md
    assert "vs PyTorch" in md and "ORT CPU (batch 1)" in md


def test_a_variant_that_misses_its_tolerance_fails_the_conversion(hf_folders, sample_csv, tmp_path, monkeypatch):
    strict = V.Tolerance(0.0, 0.0, 1.0, "strict (test)")
    monkeypatch.setattr(
        V,
        "tolerance",
        lambda name, atol, rtol: strict if name == "int8" else V.Tolerance(atol, rtol, None, "as model.onnx"),
    )
    out = tmp_path / "out"
    code = cli_main(
        [
            "convert",
            str(hf_folders["bert"]),
            "--data",
            str(sample_csv),
            "--out",
            str(out),
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.02",
            "--no-cuda",
            "--quiet",
            "--variants",
            "int8,optimized",
        ]
    )
    assert code == 1  # exported, but a check failed
    data = json.loads((out / "report.json").read_text())
    assert data["ok"] is False and data["failed_checks"] == ["variant:int8"]
    int8 = next(v for v in data["variants"] if v["name"] == "int8")
    assert int8["ok"] is False and "parity" in int8["error"] and int8["file"] == "variants/model.int8.onnx"
    assert (out / int8["file"]).is_file()  # shown, with its file and numbers, not hidden
    assert int8["parity"]["outputs"][0]["max_abs_diff"] > 0
    assert "## Variant: int8 — FAIL" in (out / "report.md").read_text()


def test_a_variant_that_cannot_be_built_says_why(hf_folders, sample_csv, tmp_path, monkeypatch):
    def broken(ctx, src, dest):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setitem(V.VARIANT_TABLE, "int8", replace(V.VARIANT_TABLE["int8"], build=broken))
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            variants=("int8",),
            **FAST,
        )
    )
    (v,) = report.variants
    assert not v.ok and v.file is None and "could not be built: RuntimeError: quantizer exploded" in v.error
    assert report.failed_checks == ["variant:int8"] and report.parity.ok
    assert not (tmp_path / "o" / "variants" / "model.int8.onnx").exists()


def test_fp16_that_no_provider_can_run_is_not_validated(hf_folders, sample_csv, tmp_path, monkeypatch):
    from studio.checks import runtime

    real = runtime.cpu_session

    def picky(path, threads=None, optimization="all", arena=True):
        if Path(path).name == "model.fp16.onnx":
            raise RuntimeError("NOT_IMPLEMENTED: no fp16 kernel")
        return real(path, threads, optimization, arena)

    monkeypatch.setattr(runtime, "cpu_session", picky)
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            variants=("fp16",),
            **FAST,
        )
    )
    (v,) = report.variants
    assert not v.ok and v.error.startswith("not validated") and "no fp16 kernel" in v.error
    assert v.file == "variants/model.fp16.onnx" and v.parity is None


def test_optimized_falls_back_to_ort_offline_optimisation(hf_folders, sample_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_onnxscript_fusions", lambda src, dest, external: shutil.copyfile(src, dest))
    monkeypatch.setattr(B, "_transformers_eligible", lambda ctx: "disabled for the test")
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            variants=("optimized",),
            **FAST,
        )
    )
    (v,) = report.variants
    assert v.ok, v.error
    assert v.method == "onnxruntime offline graph optimisation (extended)"
    assert "No transformer fusion matched" in v.notes and "disabled for the test" in v.notes
    assert not list((tmp_path / "o" / "variants").glob(".*candidate*"))  # no temporary files left behind


def test_new_exporter_graph_gets_onnxscript_fusions(hf_folders, sample_csv, tmp_path):
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["distilbert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            exporter="dynamo",
            latency_budget_s=0.02,
            cuda=False,
            variants=("optimized",),
        )
    )
    (v,) = report.variants
    assert report.export.exporter == "dynamo" and v.ok, v.error
    assert v.method == "onnxscript ORT fusions" and "Attention" in v.notes
    assert "onnxruntime.transformers.optimizer fused" in v.notes  # the other fuser's result, not kept


def test_judge_applies_the_argmax_rule_to_class_outputs_only():
    e = {"logits": np.array([[1.0, 2.0], [3.0, 1.0]], np.float32), "hidden": np.zeros((2, 3), np.float32)}
    a = {"logits": np.array([[1.05, 2.0], [0.9, 1.0]], np.float32), "hidden": np.full((2, 3), 0.05, np.float32)}
    kinds = {"logits": "logits", "hidden": "hidden"}
    loose = V.Tolerance(5.0, 0.0, 0.99, "t")
    d = {x.name: x for x in V.judge(e, a, loose, kinds)}
    assert d["logits"].argmax_agreement == 0.5 and not d["logits"].ok  # within atol, but the class flipped
    assert d["hidden"].argmax_agreement is None and d["hidden"].ok
    d = {x.name: x for x in V.judge(e, a, V.Tolerance(5.0, 0.0, 0.5, "t"), kinds)}
    assert d["logits"].ok
    d = {x.name: x for x in V.judge(e, a, V.Tolerance(0.01, 0.0, None, "t"), kinds)}
    assert not d["logits"].ok and not d["hidden"].ok


def test_tolerances_never_tighter_than_the_users():
    assert V.tolerance("int8", 1e-4, 1e-3).atol == V.INT8_ATOL
    assert V.tolerance("int8", 0.5, 1e-3).atol == 0.5
    assert V.tolerance("optimized", 1e-5, 1e-4).atol == 1e-5
    with pytest.raises(ValueError):
        V.tolerance("int4", 1e-4, 1e-3)


def test_the_table_declares_every_variant_once_in_a_buildable_order():
    assert sorted(V.VARIANT_TABLE) == sorted(VARIANTS) and len(VARIANTS) == len(set(VARIANTS))
    assert V.BUILD_ORDER == tuple(V.VARIANT_TABLE)
    for k, (name, row) in enumerate(V.VARIANT_TABLE.items()):
        assert set(row.built_from) <= set(V.BUILD_ORDER[:k]), name  # what it is built from is built before it
        assert row.on_cuda or row.not_on_cuda, name  # a variant kept off CUDA says why
        assert V.tolerance(name, 0.0, 0.0).rule and "{" not in V.tolerance(name, 0.0, 0.0).rule
    # the embedding cosine rule: int8 >= 0.97, fp16 >= 0.999 (measured on all-MiniLM-L6-v2: module docstring)
    assert (V.tolerance("int8", 1e-4, 1e-3).min_cosine, V.tolerance("fp16", 1e-4, 1e-3).min_cosine) == (0.97, 0.999)
    assert V.tolerance("optimized", 1e-4, 1e-3).min_cosine is None


def test_cached_reference_runs_pytorch_once_per_input_set():
    calls = []

    from studio.sources.base import LoadedModel

    loaded = LoadedModel(
        "x", "x", torch.nn.Identity(), lambda m, named: (calls.append(1) or named["a"] * 2,), [], ["y"]
    )
    ref = V.cached_reference(loaded)
    a = {"a": torch.ones(2, 3)}
    assert torch.equal(ref.adapter(ref.module, a)[0], torch.full((2, 3), 2.0))
    ref.adapter(ref.module, {"a": torch.ones(2, 3)})
    assert len(calls) == 1
    ref.adapter(ref.module, {"a": torch.zeros(2, 3)})
    assert len(calls) == 2


def test_variant_info_defaults_keep_old_readers_working():
    v = VariantInfo("int8", None, False)
    assert v.files == [] and v.tolerance == {} and v.speedup_vs_torch is None and v.notes == ""


def test_unknown_variant_is_refused_before_any_work(tmp_path):
    code = cli_main(["convert", "nowhere", "--data", "x.csv", "--variants", "int4", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()


def test_variants_folder_is_replaced_on_the_next_run(all_three, hf_folders, sample_csv):
    report, out = all_three
    stale = out / "variants" / "model.stale.onnx"
    stale.write_bytes(b"old")
    convert(
        ConvertSpec(checkpoint=str(hf_folders["bert"]), data=str(sample_csv), out=str(out), variants=("int8",), **FAST)
    )
    assert sorted(p.name for p in (out / "variants").iterdir()) == ["model.int8.onnx"]
    assert Path(out / "variants" / "model.int8.onnx").is_file()
