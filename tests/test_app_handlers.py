"""The app's plain functions: page controls -> ConvertSpec (one mapping, handlers.py), Report -> what the page
shows (cards.py, render.py); the page object's outputs by name."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from studio.app import cards, render
from studio.app import handlers as h
from studio.errors import ExportError, StudioError
from studio.report import render as report_render
from studio.report.model import (
    CheckerInfo,
    DynamicInfo,
    ExportAttempt,
    ExportInfo,
    GraphInfo,
    LatencyInfo,
    OutputDiff,
    ParityInfo,
    Probe,
    Report,
    TensorInfo,
    Timing,
    VariantInfo,
)


def make_variants() -> list[VariantInfo]:
    """int8 passed (with a .data file beside it); fp16 failed its tolerance."""
    t = Timing(
        p50_ms=0.5,
        p90_ms=0.6,
        p99_ms=0.7,
        iterations=100,
        batch=8,
        sequence=16,
        threads=2,
        provider="CPUExecutionProvider",
    )
    int8 = VariantInfo(
        "int8",
        "variants/model.int8.onnx",
        True,
        size_bytes=2_500_000,
        parity=ParityInfo(True, 0.1, 0.1, [OutputDiff("probs", 0.012, 0.05, True, 1.0)], rows=8),
        latency=LatencyInfo(ort_cpu=t),
        method="onnxruntime dynamic quantization",
        files=["variants/model.int8.onnx", "variants/model.int8.onnx.data"],
        speedup_vs_torch=3.0,
        speedup_vs_fp32=3.0,
    )
    fp16 = VariantInfo(
        "fp16",
        "variants/model.fp16.onnx",
        False,
        size_bytes=600_000,
        parity=ParityInfo(False, 1e-2, 1e-2, [OutputDiff("probs", 0.4, 0.9, False, 0.5)], rows=8),
        error="max abs diff 0.4 exceeds the fp16 tolerance",
        method="float16 conversion",
        files=["variants/model.fp16.onnx"],
        provider="CPUExecutionProvider",
    )
    return [int8, fp16]


def make_report(parity_ok=True, dynamic_ok=True, opset=18, attempts=None) -> Report:
    t = Timing(
        p50_ms=1.5,
        p90_ms=2.0,
        p99_ms=2.5,
        iterations=100,
        batch=8,
        sequence=16,
        threads=2,
        provider="CPUExecutionProvider",
    )
    return Report(
        source={"kind": "multimodal", "path": "/srv/uploads/x/demo_model.pt"},
        roles={"order_id": "ignore", "review": "text", "price": "tabular"},
        export=ExportInfo(
            exporter="dynamo",
            opset_requested=18,
            opset=opset,
            seconds=3.2,
            attempts=attempts or [ExportAttempt("dynamo", True, seconds=3.2, opset_written=opset)],
        ),
        graph=GraphInfo(
            inputs=[
                TensorInfo("input_ids", "int64", ["batch", "sequence"]),
                TensorInfo("price", "float32", ["batch", 1]),
            ],
            outputs=[TensorInfo("probs", "float32", ["batch", 3])],
            op_counts={"Gemm": 2},
            size_bytes=1234,
            opset=opset,
        ),
        checker=CheckerInfo(True, "ok"),
        parity=ParityInfo(
            parity_ok, 1e-4, 1e-3, [OutputDiff("probs", 1.2e-7 if parity_ok else 0.5, 1e-6, parity_ok, 1.0)], rows=8
        ),
        dynamic=DynamicInfo(
            dynamic_ok,
            [
                Probe(1, 16, True, 1e-9, "ok", "batch"),
                Probe(8, 21, dynamic_ok, 2e-8 if dynamic_ok else None, "ok" if dynamic_ok else "baked", "sequence"),
            ],
            {"input_ids": ["batch", "sequence"]},
        ),
        latency=LatencyInfo(
            torch_cpu=t,
            ort_cpu=t,
            cuda_unavailable_reason="no CUDA device is visible",
            errors={"ort_cuda": "no CUDA device is visible"},
        ),
        predictions=[{"order_id": "A-1", "prediction": "keep", "confidence": 0.9}],
        seconds=5.0,
    )


# --- the one mapping: controls -> ConvertSpec --------------------------------------------------------


def test_spec_from_ui_maps_every_control(tmp_path):
    spec = h.spec_from_ui(
        checkpoint="/up/m.pt",
        sample="/up/s.csv",
        roles='{"review": "text", "price": "Tabular"}',
        opset="17",
        exporter="legacy",
        dynamic=["batch"],
        dynamic_per_input='{"input_ids": ["batch"], "price": []}',
        max_length=64.0,
        atol="1e-5",
        rtol=0.01,
        id_dtype="int32",
        fill_value="0",
        latency_budget="0.25",
        out=tmp_path / "out",
        trust_code=True,
    )
    assert (spec.checkpoint, spec.data, spec.out) == ("/up/m.pt", "/up/s.csv", str(tmp_path / "out"))
    assert spec.roles == {"review": "text", "price": "tabular"}
    assert (spec.opset, spec.exporter, spec.dynamic) == (17, "torchscript", ("batch",))
    assert spec.dynamic_per_input == {"input_ids": ("batch",), "price": ()}
    assert (spec.max_length, spec.atol, spec.rtol, spec.id_dtype, spec.fill_value) == (64, 1e-5, 0.01, "int32", 0.0)
    assert spec.latency_budget_s == 0.25 and spec.trust_code is True


def test_spec_from_ui_defaults_and_aliases(tmp_path):
    spec = h.spec_from_ui("m.pt", "s.csv", roles=None, out=tmp_path)
    assert spec.roles == {} and spec.exporter == "auto" and spec.dynamic == ("batch", "sequence")
    assert spec.fill_value is None and spec.trust_code is False and spec.latency_budget_s == h.LATENCY_BUDGET_DEFAULT
    assert h.spec_from_ui(
        "m.pt", "s.csv", roles="review=text\nprice=ignore", exporter="new", dynamic=[], out=tmp_path
    ).roles == {"review": "text", "price": "ignore"}
    assert h.spec_from_ui("m.pt", "s.csv", exporter="new", dynamic=[], out=tmp_path).dynamic == ()


def test_spec_from_ui_takes_variants_as_a_list_or_a_comma_string(tmp_path):
    def variants(value):
        return h.spec_from_ui("m.pt", "s.csv", variants=value, out=tmp_path).variants

    assert variants(["int8"]) == ("int8",)
    assert variants("fp16, INT8,optimized") == ("optimized", "int8", "fp16")  # build order, as the CLI
    assert variants(["int8", "int8"]) == ("int8",)
    assert variants(None) == variants([]) == variants("") == ()
    assert h.spec_from_ui("m.pt", "s.csv", out=tmp_path).variants == ()  # none unless asked


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"variants": ["int4"]}, "Variant 'int4' is not one of optimized, int8, int8-static, fp16"),
        ({"variants": "int8,turbo"}, "Variant 'turbo' is not one of optimized, int8, int8-static, fp16"),
        ({"checkpoint": None}, "No checkpoint uploaded"),
        ({"sample": ""}, "No sample file uploaded"),
        ({"roles": '{"review": "words"}'}, "is not one of text, tabular, ignore"),
        ({"roles": "{not json"}, "not valid JSON"),
        ({"opset": 9}, "outside the supported range"),
        ({"exporter": "onnxscript"}, "is not one of auto, new, legacy"),
        ({"dynamic": ["time"]}, "Dynamic axis 'time'"),
        ({"max_length": 1}, "at least 2"),
        ({"atol": "small"}, "atol must be a number"),
        ({"id_dtype": "int8"}, "int64, int32"),
        ({"latency_budget": 0}, "more than 0 s"),
    ],
)
def test_spec_from_ui_explains_bad_values(tmp_path, kwargs, words):
    args = {"checkpoint": "m.pt", "sample": "s.csv", **kwargs}
    with pytest.raises(StudioError) as e:
        h.spec_from_ui(**args, out=tmp_path)
    assert words in str(e.value)


def test_per_input_table_round_trip():
    model = {"inputs": [{"name": "input_ids", "kind": "input_ids"}, {"name": "price", "kind": "tabular"}]}
    rows = h.per_input_rows(model, ["batch", "sequence"])
    assert rows == [["input_ids", True, True], ["price", True, False]]
    edited = pd.DataFrame([["input_ids", True, False], ["price", False, False]], columns=["input", "batch", "sequence"])
    assert h.per_input_from_rows(edited) == {"input_ids": ["batch"], "price": []}
    assert h.per_input_from_rows({"data": [["input_ids", "true", "false"]]}) == {"input_ids": ["batch"]}
    assert h.per_input_from_rows(None) == {}


# --- preview -> page ------------------------------------------------------------------------------------


def test_model_and_sample_cards():
    model = {
        "kind": "hf",
        "inputs": [
            {"name": "input_ids", "kind": "input_ids"},
            {"name": "price", "kind": "tabular", "column": "price", "width": 1},
        ],
        "outputs": ["logits"],
        "tokenizer": None,
        "parameters": 1_500_000,
        "labels": ["a", "b"],
    }
    card = cards.model_html(model, filename="m.zip")
    assert "m.zip" in card and "1.5 M" in card and "none found" in card and "<code>price</code>" in card
    assert "card-bad" in cards.model_html(None, "Checkpoint <x> is broken.")
    assert "&lt;x&gt;" in cards.model_html(None, "Checkpoint <x> is broken.")  # escaped, never raw HTML
    cols = [{"name": "a", "detected": "text"}, {"name": "b", "detected": "number"}]
    assert "2 columns" in cards.sample_html(cols, [{"a": "x", "b": 1}])


def test_mapping_messages():
    tensors = {"input_ids": {"shape": [8, 16], "dtype": "int64"}}
    assert "mapping-ok" in cards.mapping_html({"ok": True, "tensors": tensors}, True, True)
    bad = cards.mapping_html({"ok": False, "error": "column 'price' is mapped 'ignore'."}, True, True)
    assert "mapping-bad" in bad and "price" in bad
    assert "once a checkpoint" in cards.mapping_html(None, False, True)
    cols = [{"name": "review", "suggested": "ignore"}, {"name": "price", "suggested": "tabular"}]
    assert cards.initial_roles(cols, {"roles": {"review": "text"}}) == {"review": "text", "price": "tabular"}


def test_tabular_feeds_from_the_page():
    assert h.parse_tabular_value("") == {} and h.parse_tabular_value(None) == {}
    assert h.parse_tabular_value("features=a..c, d\nprice=price") == {"features": ("a..c", "d"), "price": ("price",)}
    assert h.parse_tabular_value('{"features": ["b", "a"]}') == {"features": ("b", "a")}
    with pytest.raises(StudioError, match="INPUT=COL1"):
        h.parse_tabular_value("features")
    cols = ["id", "a", "b", "c", "d"]
    # choosing an input per column: appended in the order chosen; ranges are spelled out to move one column
    text = h.set_feed("", cols, "c", "features")
    text = h.set_feed(text, cols, "a", "features")
    assert text == "features=c,a"
    assert h.set_feed("features=a..c", cols, "b", "auto") == "features=a,c"
    assert h.set_feed("features=a..c", cols, "b", "extra") == "features=a,c\nextra=b"
    assert h.set_feed("features=a", cols, "a", "auto") == ""
    spec = h.spec_from_ui("m.pt", "s.csv", tabular="features=c,a..b", out="o")
    assert spec.tabular == {"features": ("c", "a..b")}
    ok = cards.mapping_html(
        {
            "ok": True,
            "tensors": {"features": {"shape": [2, 3], "dtype": "float32"}},
            "feeds": {"features": [{"column": "c", "start": 0, "width": 1}, {"column": "emb", "start": 1, "width": 2}]},
        },
        True,
        True,
    )
    assert "mapping-ok" in ok and "c [0], emb [1-2]" in ok


# --- report -> page --------------------------------------------------------------------------------------


def test_verdict_strip_when_everything_passed():
    html = render.verdict_html(make_report())
    assert 'data-ok="true"' in html and "All checks passed" in html
    for check in ("checker", "parity", "dynamic", "opset"):
        assert f'data-check="{check}" data-ok="true"' in html
    assert "1.2e-07" in html and "Opset 18 written" in html


def test_verdict_strip_names_what_failed():
    html = render.verdict_html(make_report(parity_ok=False, dynamic_ok=False, opset=17))
    assert 'id="verdict-strip"' in html and 'class="verdict verdict-fail" data-ok="false"' in html
    assert 'data-check="parity" data-ok="false"' in html and 'data-check="dynamic" data-ok="false"' in html
    assert 'data-check="opset" data-ok="false"' in html and "differs" in html
    assert "parity, dynamic" in html


def test_the_summary_says_why_this_exporter():
    report = make_report()
    assert "**Exporter**" not in render.summary_md(report)  # no reason recorded: nothing made up
    report.export.reason = "dynamo failed: TypeError: x; fell back to torchscript"
    assert "**Exporter** dynamo: dynamo failed: TypeError: x; fell back to torchscript" in render.summary_md(report)


def test_tables_reuse_the_report_rows():
    r = make_report()
    io = render.io_frame(r)
    assert list(io.columns) == report_render.IO_COLUMNS  # the report's tables, not copies
    assert io.iloc[0].tolist() == ["input", "input_ids", "int64", "[batch, sequence]"]
    lat = render.latency_frame(r)
    cuda = lat[lat["run"] == "ORT CUDA"].iloc[0].tolist()
    assert cuda[1] == "-" and cuda[-1].startswith("unavailable: no CUDA device")
    chart = render.latency_chart(r)
    assert list(chart["run"]) == ["PT CPU 8×16", "ORT CPU 8×16"]  # an unavailable device is never a number
    diffs = render.diff_chart(r)
    assert list(diffs["check"]) == ["sample: probs", "batch 1", "seq 21"]
    assert render.predictions_frame(r).columns.tolist() == ["order_id", "prediction", "confidence"]
    assert render.parity_frame(r).iloc[0, -1] == "PASS" and render.probe_frame(r).shape == (2, 6)
    assert list(render.parity_frame(r).columns) == report_render.PARITY_COLUMNS
    assert list(render.probe_frame(r).columns) == report_render.PROBE_COLUMNS
    assert list(lat.columns) == report_render.LATENCY_COLUMNS


def test_attempts_table_is_the_reports_with_the_opset_written():
    skipped = ExportAttempt("torchscript", False, skipped=True, note="dynamo passed every check")
    r = make_report(attempts=[ExportAttempt("dynamo", True, seconds=3.25, opset_written=18), skipped])
    table = render.attempts_frame(r)
    assert list(table.columns) == ["exporter", "ok", "seconds", "opset written", "error / note"]
    rows = report_render.attempt_rows(r.export)
    assert table.values.tolist() == [
        [*rows[0][:3], "18", rows[0][3]],
        [*rows[1][:3], "-", rows[1][3]],
    ]
    assert table.values.tolist()[1] == ["torchscript", "skipped", "-", "-", "dynamo passed every check"]


def test_variants_table_shows_each_variant_and_a_failed_one_as_failed():
    r = make_report()
    r.variants = make_variants()
    table = render.variants_frame(r)
    assert list(table.columns) == report_render.VARIANT_COLUMNS
    rows = {row[0]: row for row in table.values.tolist()}
    assert list(rows) == ["fp32 (model.onnx)", "int8", "fp16"]  # model.onnx first, as the baseline
    assert rows["int8"] == [
        "int8",
        "PASS",
        "2.4 MB",  # 2,500,000 bytes in MB of 2**20 (studio.report.render.size_text)
        "0.012",
        "-",
        "100.0%",
        "0.50",
        "3.00x",
        "3.00x",
        "onnxruntime dynamic quantization",
    ]
    assert rows["fp16"][1] == "FAIL" and rows["fp16"][-1] == "max abs diff 0.4 exceeds the fp16 tolerance"
    assert rows["fp16"][5] == "50.0%" and rows["fp16"][6] == "-"  # not timed: never a made-up number
    chart = render.latency_chart(r)  # the timed variant joins the chart; the untimed one never shows a number
    assert list(chart["run"]) == ["PT CPU 8×16", "ORT CPU 8×16", "int8 8×16"]
    assert list(chart["runtime"]) == ["PyTorch", "ONNX Runtime", "ONNX Runtime int8"]
    assert set(chart["runtime"]) <= set(render.LATENCY_COLORS)  # a runtime without a colour is not drawn
    assert list(chart["p50 ms"]) == [1.5, 1.5, 0.5]
    note = render.variants_note(r)
    assert "1/2 passed" in note and "failed: fp16" in note and "no measure of its GPU speed" in note
    html = render.verdict_html(r)
    assert 'data-check="variants" data-ok="false"' in html and "1/2 passed · fp16 failed" in html
    assert "Checks failed: variant:fp16" in html


def test_without_variants_the_table_is_empty_with_a_note():
    r = make_report()
    assert render.variants_frame(r).empty and list(render.variants_frame(r).columns) == report_render.VARIANT_COLUMNS
    assert "No faster variants were requested" in render.variants_note(r)
    assert 'data-check="variants"' not in render.verdict_html(r)


def test_progress_names_the_variants_stage_and_what_latency_times():
    from studio import pipeline
    from studio.app.convert_outputs import STAGE_TEXT, stage_text
    from studio.generate import run

    order = ["loading", "batch", "export", "checker", "parity", "shape probe", "variants", "latency", "writing"]
    assert [s for s in STAGE_TEXT if s in order] == order  # the pipeline's order
    said = set(pipeline.STAGES) | set(run.FRACTION)  # every stage either pipeline announces has its words
    assert said <= set(STAGE_TEXT), said - set(STAGE_TEXT)
    assert "checking each against PyTorch" in stage_text("variants", ("int8",))
    assert stage_text("latency", ("int8",)) == "timing model.onnx and each variant side by side with PyTorch"
    assert "variants" not in stage_text("latency", ())


def test_diagnosis_shows_failed_attempts_and_export_details():
    failed = [
        ExportAttempt("dynamo", False, "Unsupported: data-dependent branch", 2.0, diagnosis_path="diagnostics/x.md"),
        ExportAttempt("torchscript", True, None, 0.5, 18),
    ]
    text = render.diagnosis_md(make_report(attempts=failed), "### dynamo exporter\n\nGraph break at line 3")
    assert "dynamo exporter failed" in text and "data-dependent branch" in text and "Graph break" in text
    assert render.diagnosis_md(make_report()) == ""
    err = ExportError("The dynamo exporter failed: boom", details="## Exporter report\nstep 3 failed")
    assert "step 3 failed" in render.diagnosis_md(None, error=err)


def test_artifacts_and_zip(tmp_path):
    r = make_report()
    r.files = {"model": "model.onnx", "report_json": "report.json", "example": "inference_example.py"}
    for name in ("model.onnx", "model.onnx.data", "report.json", "inference_example.py"):
        (tmp_path / name).write_text("x")
    z = tmp_path.parent / "m-onnx.zip"
    z.write_text("z")
    names = [Path(p).name for p in render.artifact_paths(r, tmp_path, z)]
    assert names == ["model.onnx", "model.onnx.data", "report.json", "inference_example.py", "m-onnx.zip"]
    assert h.zip_stem("/tmp/x/My Model (v2).pt") == "My-Model-v2-onnx"


def test_artifacts_include_every_variant_file(tmp_path):
    r = make_report()
    r.files = {"model": "model.onnx", "report_json": "report.json"}
    r.variants = make_variants()
    (tmp_path / "variants").mkdir()
    for name in (
        "model.onnx",
        "report.json",
        "variants/model.int8.onnx",
        "variants/model.int8.onnx.data",
        "variants/model.fp16.onnx",
    ):
        (tmp_path / name).write_text("x")
    z = tmp_path.parent / "m-onnx.zip"
    z.write_text("z")
    paths = render.artifact_paths(r, tmp_path, z)
    assert [str(Path(p).relative_to(tmp_path)) for p in paths[:-1]] == [
        "model.onnx",
        "report.json",
        "variants/model.int8.onnx",
        "variants/model.int8.onnx.data",
        "variants/model.fp16.onnx",
    ]  # a failed variant's file is offered too: the report says why it failed
    assert Path(paths[-1]).name == "m-onnx.zip"


def test_scrub_paths_names_the_upload_not_the_server_folder():
    msg = "/srv/cache/ab12/weights.pt is a text file, not model weights."
    assert h.scrub_paths(msg, ["/srv/cache/ab12/weights.pt", None]) == "weights.pt is a text file, not model weights."


# --- the page object (built, not served) ------------------------------------------------------------------


def test_error_view_and_trust_banner():
    import studio.app
    from studio.jobs.isolate import JobError

    app = studio.app.create_app(trust_code=True, warm_up=False)
    try:
        config = json.dumps(app.blocks.get_config_file(), default=str)
        assert "Trusted-code mode is ON" in config
        ui = app.ui
        out = app._error_outputs(
            ExportError("The dynamo exporter failed: boom", details="step 3 failed"), "The dynamo exporter failed: boom"
        )
        assert "boom" in out[ui.verdict] and "step 3 failed" in out[ui.diagnosis]
        assert out[ui.diag_acc]["visible"] is True
        cancelled = app._error_outputs(JobError("The conversion was cancelled.", reason="cancelled"), "cancelled")
        assert "Cancelled" in cancelled[ui.verdict] and cancelled[ui.diag_acc]["visible"] is False
        assert cancelled[ui.variants_note] == "" and cancelled[ui.variants_table]["visible"] is False  # no stale table
        assert cancelled[ui.downloads] is None and cancelled[ui.report_json] is None
    finally:
        app.close()
    plain = studio.app.create_app(warm_up=False)
    try:
        assert "Trusted-code mode is ON" not in json.dumps(plain.blocks.get_config_file(), default=str)
    finally:
        plain.close()


def test_the_convert_table_names_real_controls_and_spec_fields():
    import dataclasses
    import inspect

    from studio.app import page
    from studio.spec import ConvertSpec

    page_fields = {f.name for f in dataclasses.fields(page.Page)}
    spec_fields = {f.name for f in dataclasses.fields(ConvertSpec)}
    for p in h.CONVERT_PARAMS:
        assert p.component in page_fields and p.field in spec_fields, p
    assert len({p.field for p in h.CONVERT_PARAMS}) == len(h.CONVERT_PARAMS)  # each field set by one parameter
    for names in (page.CONVERT_OUTPUTS, page.PREVIEW_OUTPUTS, page.CHECK_INPUTS, page.PER_INPUT_OUTPUTS):
        assert set(names) <= page_fields and len(set(names)) == len(names)
    # the endpoint's public parameters, in the order positional gradio_client callers rely on
    from studio.app.server import StudioApp

    params = list(inspect.signature(StudioApp.convert).parameters)
    assert params == ["self", *h.CONVERT_NAMES, "request", "progress"]
    assert h.CONVERT_NAMES[:3] == ("checkpoint", "sample", "roles") and h.CONVERT_NAMES[-6:] == (
        "variants",
        "tabular",
        "task",
        "locate",
        "repair",
        "max_new_tokens",
    )
    with pytest.raises(TypeError, match="unknown /convert parameter"):
        h.spec_from_ui("m.pt", "s.csv", max_len=64, out="o")


def test_the_locate_parameter_is_a_yes_or_no():
    assert h.spec_from_ui("m.pt", "s.csv", out="o").locate is False  # left out: the ConvertSpec default
    assert h.spec_from_ui("m.pt", "s.csv", out="o", locate=True).locate is True
    assert h.spec_from_ui("m.pt", "s.csv", out="o", locate="false").locate is False
    with pytest.raises(StudioError, match="locate must be true or false"):
        h.spec_from_ui("m.pt", "s.csv", out="o", locate="maybe")


def test_repair_and_new_tokens_reach_the_spec():
    assert h.spec_from_ui("m.pt", "s.csv", out="o").repair is True  # the ConvertSpec defaults
    assert h.spec_from_ui("m.pt", "s.csv", out="o").max_new_tokens == 20
    spec = h.spec_from_ui("m.pt", "s.csv", out="o", repair=False, max_new_tokens=7, variants=["int8-static"])
    assert (spec.repair, spec.max_new_tokens, spec.variants) == (False, 7, ("int8-static",))
    with pytest.raises(StudioError, match="max_new_tokens must be a whole number"):
        h.spec_from_ui("m.pt", "s.csv", out="o", max_new_tokens="many")


def test_report_view_updates_every_output_by_name(tmp_path):
    import studio.app
    from studio.app import page

    app = studio.app.create_app(warm_up=False)
    try:
        ui = app.ui
        report = make_report()
        report.files = {"model": "model.onnx"}
        (tmp_path / "model.onnx").write_text("x")
        out = app._report_outputs({"report": report, "zip": None}, tmp_path)
        assert list(out) == ui.of(page.CONVERT_OUTPUTS)  # every output, none twice, in the API's order
        assert "All checks passed" in out[ui.verdict] and json.loads(out[ui.report_json])["ok"] is True
        assert [Path(f).name for f in out[ui.downloads]] == ["model.onnx"]
        assert out[ui.results_col]["visible"] is True and out[ui.downloads_col]["visible"] is True
        assert out[ui.variants_table]["visible"] is False and "No faster variants" in out[ui.variants_note]
        assert out[ui.diag_acc]["visible"] is False and out[ui.diagnosis] == ""
        assert list(out[ui.latency_plot]["sort"]) == ["PT CPU 8×16", "ORT CPU 8×16"]
        with pytest.raises(ValueError, match="missing"):
            ui.updates(page.CONVERT_OUTPUTS, verdict="x")  # a forgotten output is an error, not a stale value
        with pytest.raises(ValueError, match="not outputs"):
            ui.updates(("verdict",), verdict="x", summary="y")
    finally:
        app.close()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tabular": "features=" + "A" * 5_000_000}, "Field 'tabular' is too large: more than 1,048,576"),
        ({"roles": "A" * 5_000_000 + "=text"}, "Field 'roles' is too large"),
        ({"dynamic": ["batch"] * 100_000}, "Field 'dynamic' is too large: more than 65,536"),
        ({"variants": [f"junk{i}" for i in range(100_000)]}, "Field 'variants' is too large"),
        ({"roles": {str(i): "text" for i in range(10**6)}}, "Field 'roles' is too large"),
        ({"roles": '{"a":' * 10_000 + "1" + "}" * 10_000}, "Roles are nested too deep: more than 32 levels"),
        ({"tabular": "[" * 10_000}, "is not INPUT=COL1,COL2"),
        ({"tabular": "{" * 10_000}, "Tabular inputs are nested too deep"),
        ({"dynamic_per_input": '{"a":' * 10_000}, "Per-input dynamic dimensions are nested too deep"),
        ({"roles": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, "nested too deep"),
        ({"roles": {"review": {"role": "text"}}}, "The role of column 'review' must be text, got an object"),
        ({"tabular": '{"f": [{"a": 1}]}'}, "The columns of tabular input 'f' must be text, got an object"),
        ({"dynamic_per_input": {"input_ids": [["batch"]]}}, "Dynamic axes must be text, got a list"),
        ({"variants": [{"name": "int8"}]}, "Variants must be text, got an object"),
        ({"task": ["auto"]}, "Task must be text, got a list"),
        ({"exporter": {"x": 1}}, "Exporter must be text"),
        ({"opset": "1e400"}, "opset must be a whole number, got '1e400'"),
        ({"atol": "x" * 100_000}, "Field 'atol' is too large"),
        ({"fill_value": "y" * 10_000}, "characters)"),  # quoted as an excerpt, with its length
    ],
)
def test_request_fields_are_bounded_before_any_work(tmp_path, kwargs, words):
    import time

    t = time.monotonic()
    with pytest.raises(StudioError) as e:
        h.spec_from_ui(**{"checkpoint": "m.pt", "sample": "s.csv", **kwargs}, out=tmp_path)
    assert time.monotonic() - t < 1.0
    message = str(e.value)
    assert words in message, message
    assert len(message) < 600, message[:300]


def test_a_wide_samples_roles_fit_the_bound(tmp_path):
    roles = {f"column_{i:05d}": "tabular" for i in range(10_000)}  # --sample-limits columns' default
    tabular = "features=" + ",".join(roles)
    spec = h.spec_from_ui("m.pt", "s.csv", roles=json.dumps(roles), tabular=tabular, out=tmp_path)
    assert len(spec.roles) == 10_000 and len(spec.tabular["features"]) == 10_000
    # a JSON string holding brackets and escaped quotes is not nesting
    assert h.parse_roles_value(json.dumps({'a"[[[[\\': "text", "[" * 50: "ignore"})) == {
        'a"[[[[\\': "text",
        "[" * 50: "ignore",
    }
