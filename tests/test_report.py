"""Report dataclasses, their JSON / Markdown / table rows, and the ConvertSpec rules."""

from __future__ import annotations

import json

import pytest

from studio.errors import StudioError
from studio.report.model import (
    CheckerInfo,
    DynamicInfo,
    ExportInfo,
    LatencyInfo,
    OutputDiff,
    ParityInfo,
    Probe,
    Report,
    Timing,
    VariantInfo,
)
from studio.report.render import MB, latency_rows, render_markdown, size_text, variant_rows
from studio.spec import CompareDefaults, ConvertSpec, ExportDefaults, parse_roles


def make_report(**kw) -> Report:
    base = dict(
        source={"kind": "hf", "path": "m"},
        roles={"review": "text", "id": "ignore"},
        export=ExportInfo("dynamo", 18, 18, 1.0),
        graph=None,
        checker=CheckerInfo(True, "ok"),
        parity=ParityInfo(True, 1e-4, 1e-3, [OutputDiff("logits", 1e-7, 1e-6, True, 1.0)], rows=3),
        dynamic=DynamicInfo(True, [Probe(1, 8, True, 0.0, "ok", "batch")]),
        latency=LatencyInfo(
            ort_cpu=Timing(1.0, 2.0, 3.0, 10, 3, 8, 2, "CPUExecutionProvider"), cuda_unavailable_reason="no CUDA device"
        ),
    )
    base.update(kw)
    return Report(**base)


def test_verdict_combines_every_check():
    assert make_report().ok
    r = make_report(dynamic=DynamicInfo(False, [Probe(1, 8, False, None, "fixed", "batch")]))
    assert not r.ok and r.failed_checks == ["dynamic"]
    assert make_report(dynamic=DynamicInfo(None)).ok  # a static export has no dynamic verdict
    r = make_report(checker=CheckerInfo(False, "bad"), variants=[VariantInfo("int8", None, False)])
    assert r.failed_checks == ["checker", "variant:int8"]


def test_json_is_strict_and_versioned():
    r = make_report(parity=ParityInfo(False, 1e-4, 1e-3, [OutputDiff("y", float("inf"), float("nan"), False)]))
    data = json.loads(r.to_json())  # would raise on NaN/inf: they are written as strings
    assert data["schema"] == "onnx-studio/report" and data["schema_version"] == 1
    assert data["parity"]["outputs"][0]["max_abs_diff"] == "inf"
    assert data["ok"] is False and data["failed_checks"] == ["parity"]


def test_unavailable_device_shows_a_reason_never_a_number():
    rows = {r[0]: r for r in latency_rows(make_report().latency)}
    assert rows["ORT CPU"][1] == "1.00"
    for label in ("ORT CUDA", "PyTorch CUDA"):
        assert rows[label][1] == "-" and "unavailable: no CUDA device" in rows[label][-1]
    assert "unavailable" in rows["PyTorch CPU"][-1]


def test_one_size_formatter_with_mb_as_the_flags_mean_it():
    # MB is 2**20 bytes, as in --memory-limit / --max-disk / --max-client-disk; KB 2**10 below 0.1 MB
    assert MB == 2**20
    assert size_text(None) == "-"
    assert size_text(2**20) == "1.0 MB" and size_text(2_500_000) == "2.4 MB" and size_text(3 * 2**30) == "3072.0 MB"
    assert size_text(MB / 10) == "0.1 MB" and size_text(MB / 10 - 1) == "102.4 KB" and size_text(1536) == "1.5 KB"
    # the variants' size column is the same text
    rows = variant_rows([VariantInfo("int8", "variants/model.int8.onnx", True, size_bytes=5 * 2**20)], None)
    assert rows[-1][2] == "5.0 MB"
    assert variant_rows([VariantInfo("fp16", None, False)], None)[-1][2] == "-"


def test_markdown_renders_every_section():
    md = render_markdown(make_report())
    for heading in ("Column roles", "Graph inputs and outputs", "Parity", "Dynamic-dimension probes", "Latency"):
        assert heading in md
    assert md.startswith("# ONNX Studio report — PASS")


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"opset": 12}, "outside the supported range"),
        ({"exporter": "onnx"}, "Exporter"),
        ({"dynamic": ("time",)}, "Dynamic axis"),
        ({"roles": {"a": "label"}}, "Role"),
        ({"id_dtype": "int16"}, "Id dtype"),
        ({"variants": ("int4",)}, "Variant"),
        ({"max_length": 1}, "max-length"),
    ],
)
def test_spec_validation_names_the_bad_option(kw, needle):
    with pytest.raises(StudioError, match=needle):
        ConvertSpec("m", "d", **kw).validated()


@pytest.mark.parametrize(
    "kw",
    [
        {"opset": 12},
        {"exporter": "onnx"},
        {"dynamic": ("time",)},
        {"atol": -1.0},
        {"latency_budget_s": 0},
        {"threads": 0},
    ],
)
def test_in_memory_options_follow_the_spec(kw):
    """ExportDefaults / CompareDefaults (exporting, comparing a model already in memory) hold the ConvertSpec
    defaults and refuse what ConvertSpec.validated refuses, with the same message."""
    spec, options = ConvertSpec("m", "d").validated(), CompareDefaults()
    names = ("exporter", "opset", "atol", "rtol", "threads", "latency_budget_s")
    assert [getattr(options, n) for n in names] == [getattr(spec, n) for n in names]
    assert options.axes_for("x") == spec.axes_for("x") == ExportDefaults().axes_for("x")
    assert ExportDefaults(dynamic=()).axes_for("x") == ConvertSpec("m", "d", dynamic=()).validated().axes_for("x")
    with pytest.raises(StudioError) as by_spec:
        ConvertSpec("m", "d", **kw).validated()
    with pytest.raises(StudioError) as by_options:
        CompareDefaults(**kw)
    assert str(by_options.value) == str(by_spec.value)
    if set(kw) <= {"opset", "exporter", "dynamic"}:
        with pytest.raises(StudioError) as by_export:
            ExportDefaults(**kw)
        assert str(by_export.value) == str(by_spec.value)


def test_parse_roles():
    assert parse_roles(["a=text", "b=c=tabular"]) == {"a": "text", "b=c": "tabular"}
    with pytest.raises(StudioError):
        parse_roles(["nothing"])
    spec = ConvertSpec("m", "d", dynamic_per_input={"price": ()}).validated()
    assert spec.axes_for("price") == () and spec.axes_for("input_ids") == ("batch", "sequence")


def test_write_report_drops_server_folders_only_when_asked(tmp_path):
    """The app passes its upload and job paths (ConvertSpec.display_paths): both files, and the Report
    itself, name `weights.pt` / `out`; without display paths (the CLI, the API) every path is as given."""
    from studio import artifacts

    ckpt, out = "/srv/jobs/j1/inputs/weights.pt", "/srv/jobs/j1/out"
    for display in ((), (ckpt, out)):
        r = make_report()
        r.source = {"kind": "hf", "path": ckpt}
        r.options = {"out": out}
        r.warnings = [f"{ckpt} has no tokenizer", "/tmp/studio-ckpt-ab12/model/config.json: odd key"]
        folder = tmp_path / str(len(display))
        folder.mkdir()
        artifacts.write_report(r, folder, display)
        saved = json.loads((folder / "report.json").read_text())
        md = (folder / "report.md").read_text()
        if display:
            assert saved["source"]["path"] == r.source["path"] == "weights.pt" and saved["options"]["out"] == "out"
            assert saved["warnings"] == ["weights.pt has no tokenizer", "model/config.json: odd key"]
            assert "/srv/jobs" not in md and "/srv/jobs" not in (folder / "report.json").read_text()
        else:
            assert saved["source"]["path"] == ckpt and saved["options"]["out"] == out
            assert saved["warnings"] == r.warnings


def test_timings_are_shown_per_stage_and_attempt():
    from studio.report.timings import timing_line, timing_rows

    timings = {
        "stages": {"loading": 2.0, "export": 3.5, "latency": 1.25},
        "export_attempts": [
            {"exporter": "dynamo", "ok": False, "skipped": True, "seconds": 0.0},
            {"exporter": "torchscript", "ok": True, "skipped": False, "seconds": 3.4},
        ],
        "total": 7.0,
    }
    assert timing_rows(timings) == [
        ["loading", "2.00"],
        ["export", "3.50"],
        ["  dynamo (skipped)", "0.00"],
        ["  torchscript", "3.40"],
        ["latency", "1.25"],
        ["total", "7.00"],
    ]
    assert timing_line(timings) == "loading 2.0 s · export 3.5 s (torchscript 3.4) · latency 1.2 s · total 7.0 s"
    report = make_report()
    report.timings = timings
    assert "## Where the time went" in render_markdown(report) and "| total | 7.00 |" in render_markdown(report)
    assert "## Where the time went" not in render_markdown(make_report())  # a report without timings: no section


def test_the_cli_summary_and_the_page_say_where_the_time_went():
    from studio.app.render import summary_md
    from studio.cli.text import summary

    report = make_report()
    report.timings = {"stages": {"loading": 1.0, "export": 2.0}, "export_attempts": [], "total": 3.0}
    assert "\ntime     loading 1.0 s · export 2.0 s · total 3.0 s\n" in summary(report)
    assert "**Time** loading 1.0 s · export 2.0 s · total 3.0 s" in summary_md(report)
