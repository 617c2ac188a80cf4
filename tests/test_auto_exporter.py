"""`auto` chooses its exporter order per model (export.attempt_order) and, when the first file fails a
check another exporter might pass, asks that one too (pipeline's second opinion): the kept file is the
one that passes, and the report says why."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from test_export import Baked, Honest, tabular_model
from test_locate import Threshold

from studio import ConvertSpec, convert, pipeline
from studio.export import exporters as export_mod


def _spec(**kw) -> ConvertSpec:
    return ConvertSpec(checkpoint="model.pt", data="rows.csv", **kw).validated()


def test_small_models_go_to_torchscript_first_large_ones_and_trusted_code_to_the_new_exporter(monkeypatch):
    small = tabular_model(Honest())
    order, why = export_mod.attempt_order(small, _spec())
    assert order == ("torchscript", "dynamo") and "0 MB of weights, at most 2048 MB" in why
    assert export_mod.attempt_order(small, _spec(exporter="dynamo")) == (("dynamo",), None)
    assert export_mod.attempt_order(small, _spec(exporter="compare"))[0] == ("dynamo", "torchscript")
    small.trusted_code = True  # a .pt2 program or a pickled module: tracing would bake its shapes
    assert export_mod.attempt_order(small, _spec()) == (("dynamo", "torchscript"), None)
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", 8 * 4)  # Linear(3, 2): 8 parameters = 32 bytes
    assert export_mod.attempt_order(tabular_model(Honest()), _spec())[0] == ("torchscript", "dynamo")
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", 8 * 4 - 1)
    assert export_mod.attempt_order(tabular_model(Honest()), _spec()) == (("dynamo", "torchscript"), None)


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n" + "\n".join(f"{i},{i + 1.5},{2 * i}" for i in range(1, 5)) + "\n")
    return path


def _convert(module, rows, tmp_path, monkeypatch):
    loaded = tabular_model(module)
    monkeypatch.setattr(pipeline.sources, "load", lambda *a, **k: loaded)
    spec = ConvertSpec(
        checkpoint=str(tmp_path / "model.pt"),
        data=str(rows),
        out=str(tmp_path / "out"),
        roles={"a": "tabular", "b": "tabular", "c": "tabular"},
        latency_budget_s=0.01,
        cuda=False,
    )
    return convert(spec), tmp_path / "out"


def test_a_traced_file_that_fails_parity_is_replaced_by_the_new_exporters(rows, tmp_path, monkeypatch):
    report, out = _convert(Threshold(), rows, tmp_path, monkeypatch)  # TorchScript drops Softplus's threshold
    first, kept = report.export.attempts
    assert (first.exporter, first.ok, first.error) == ("torchscript", False, "its file fails parity, dynamic")
    assert kept.exporter == report.export.exporter == "dynamo" and kept.ok
    assert report.export.reason == "torchscript's file fails parity, dynamic; dynamo's passes every check"
    assert report.ok and report.parity.ok and report.dynamic.ok and report.divergence is None
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["studio.exporter"] == "dynamo"  # the file in the folder is the one the report describes
    assert not (out / "second-opinion").exists() and not list(out.glob("diagnostics"))
    data = json.loads((out / "report.json").read_text())
    assert [a["exporter"] for a in data["timings"]["export_attempts"]] == ["torchscript", "dynamo"]
    assert data["timings"]["stages"]["export"] >= sum(a["seconds"] for a in data["timings"]["export_attempts"]) - 0.05


def test_when_both_files_fail_the_first_one_stays(rows, tmp_path, monkeypatch):
    # int() of the batch size: baked by both; traced with 2 of the 4 rows, so the real rows fail too
    report, out = _convert(Baked(), rows, tmp_path, monkeypatch)
    first, second = report.export.attempts
    fails = "parity, dynamic"
    assert first.ok and first.note == f"its file fails {fails}" and report.export.exporter == "torchscript"
    assert (second.exporter, second.ok, second.error) == ("dynamo", False, f"its file fails {fails} too: not kept")
    assert report.export.reason.endswith(f"; its file fails {fails}, and dynamo's fails {fails}: kept torchscript's")
    assert not report.ok and report.failed_checks == ["parity", "dynamic"]
    assert report.parity.error.startswith("ONNX Runtime failed on the sample's 4 rows")
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["studio.exporter"] == "torchscript" and not (out / "second-opinion").exists()


def test_when_the_other_exporter_cannot_export_the_first_file_stays(rows, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no graph today")

    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", broken)
    report, out = _convert(Baked(), rows, tmp_path, monkeypatch)
    first, second = report.export.attempts
    assert first.ok and first.note == "its file fails parity, dynamic" and report.export.exporter == "torchscript"
    assert not second.ok and "no graph today" in second.error
    assert report.export.reason.startswith("torchscript succeeded first (tried first:")
    assert "its file fails parity, dynamic, and dynamo failed: " in report.export.reason
    assert not report.ok and report.failed_checks == ["parity", "dynamic"] and (out / "model.onnx").exists()


def test_a_file_that_passes_is_never_second_guessed(rows, tmp_path, monkeypatch):
    calls = []
    real = export_mod.EXPORT_FUNCTIONS["dynamo"]
    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", lambda *a, **k: calls.append(1) or real(*a, **k))
    report, _ = _convert(Honest(), rows, tmp_path, monkeypatch)
    assert report.ok and [a.exporter for a in report.export.attempts] == ["torchscript"] and calls == []
    assert set(report.timings["stages"]) >= {"loading", "batch", "export", "checker", "parity", "latency", "writing"}
    assert report.timings["total"] == report.seconds >= sum(report.timings["stages"].values()) - 0.05
    assert torch.is_grad_enabled()  # nothing left switched off
