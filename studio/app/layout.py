"""The page, in the order a person uses it: inputs, field mapping, options, export, results, downloads.

`build(config, wiring)` returns a Page (studio.app.page): every component the handlers read or update, by
name. The layout makes components only: `wiring` (studio.app.events.Events, a page.Wiring) connects their
events by name (handlers.CONVERT_PARAMS for the /convert inputs, page's *_OUTPUTS tuples for what each event
updates), and the handlers return {component: value} dicts made with Page.updates, so that moving a component
can break nothing silently. A new panel: its components become
Page fields, made in the section function of its step (or a new one called from build), and a handler's
output names it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import gradio as gr

from studio.app import cards, generation, graph_panel
from studio.app import handlers as h
from studio.app import render as r
from studio.app.config import AppConfig
from studio.app.page import MappingRow, Page, Wiring
from studio.report.render import IO_COLUMNS, LATENCY_COLUMNS, PARITY_COLUMNS, PROBE_COLUMNS, VARIANT_COLUMNS
from studio.spec import DYNAMIC_AXES, ID_DTYPES, ROLES, TASKS, default


def _widths(headers: list[str], widths: list[str | int]) -> list[str | int]:
    """A table's column widths, one per header (a table's columns come from the report: a new one must get
    its width here, or the last columns, the CUDA reason among them, fall off the page)."""
    if len(widths) != len(headers):
        raise ValueError(f"{len(widths)} column widths for the {len(headers)} columns {headers}")
    return widths


def _variant_choice(**kwargs) -> gr.CheckboxGroup:
    """The "Faster variants" checkboxes. Its API value may also be a comma string ("int8,fp16", as the
    CLI's --variants), and names are checked by handlers.spec_from_ui (a StudioError naming the choices)
    instead of gradio's own choice check. (Not a subclass: gradio writes a .pyi beside any module that
    defines a component class.)"""
    box = gr.CheckboxGroup(h.VARIANT_CHOICES, **kwargs)
    box.preprocess = lambda payload: payload  # type: ignore[method-assign]  # this one box skips gradio's check
    return box


def _step(num: int, title: str, hint: str = "") -> gr.HTML:
    return gr.HTML(
        f'<div class="step-title"><span class="num">{num}</span><h2>{title}</h2><span class="hint">{hint}</span></div>'
    )


def build(cfg: AppConfig, wiring: Wiring) -> Page:
    page = Page()
    with gr.Blocks(
        title="ONNX Studio", analytics_enabled=False, delete_cache=(600, int(max(cfg.session_ttl_s, 600)))
    ) as page.blocks:
        _header(cfg.trust_code)
        page.preview_info = gr.State({"model": None, "has_sample": False})
        page.columns_state = gr.State({"nonce": "", "columns": []})
        _inputs(page)
        _mapping(page, wiring)
        _options(page)
        _export(page)
        _results(page)
        _graph(page)
        _downloads(page)
        wiring.page(page)
    missing = [f.name for f in fields(Page) if getattr(page, f.name) is None]
    if missing:
        raise RuntimeError(f"layout.build made no component for {', '.join(missing)}")
    return page


def _header(trust_code: bool) -> None:
    if trust_code:
        gr.HTML(
            '<div class="trust-banner" id="trust-banner">⚠ Trusted-code mode is ON: this studio '
            "loads TorchScript, .pt2 and pickled-module checkpoints, which can run code on the server "
            "when loaded. Upload only checkpoints you trust.</div>"
        )
    gr.HTML(
        '<div id="studio-header"><h1>ONNX Studio</h1><span class="tag">PyTorch checkpoint + a few real '
        "rows → a verified ONNX model, with its report</span></div>"
    )


def _inputs(page: Page) -> None:
    _step(1, "Inputs", ".pt .pth .ckpt .bin .safetensors or a zipped Hugging Face folder, and a few real rows")
    with gr.Row(equal_height=True):
        page.checkpoint = gr.File(
            label="Checkpoint file, or .zip of a model folder", elem_id="checkpoint-file", height=120, scale=5
        )
        page.sample = gr.File(label="Sample rows: CSV / TSV / JSON / JSONL", elem_id="sample-file", height=120, scale=5)
        with gr.Column(scale=2, min_width=170):
            page.demo_btn = gr.Button("▶ Load demo", elem_id="load-demo", variant="secondary", size="lg")
            gr.HTML(
                '<div class="muted" style="font-size:0.82rem">A small text + tabular review '
                "classifier and 8 order rows.</div>"
            )
    with gr.Row(equal_height=True):
        page.model_card = gr.HTML(cards.model_html(None), elem_id="model-card")
        page.sample_card = gr.HTML(cards.sample_html([], []), elem_id="sample-card")
    page.preview_table = gr.Dataframe(
        label="First rows of the sample",
        datatype="str",  # column names and cells from the upload: shown as text, never Markdown or HTML
        interactive=False,
        visible=False,
        elem_id="preview-table",
        max_height=260,
        wrap=True,
    )


def _mapping(page: Page, wiring: Wiring) -> None:
    _step(2, "Field mapping", "what each column feeds: text, tabular (numbers) or ignore")
    page.roles_box = gr.Textbox(visible=False, elem_id="roles-json")

    @gr.render(inputs=[page.columns_state], triggers=[page.columns_state.change])
    def mapping_rows(state):
        cols = (state or {}).get("columns") or []
        if not cols:
            gr.HTML('<div class="muted">Columns appear here after a sample is uploaded.</div>')
            return
        tab_inputs = list((state or {}).get("tabular_inputs") or [])
        _mapping_head(bool(tab_inputs))
        for n, c in enumerate(cols):
            wiring.mapping_row(page, _mapping_row(n, c, tab_inputs))

    page.mapping_box = gr.HTML(cards.mapping_html(None, False, False), elem_id="mapping-status")
    page.tabular_box = gr.Textbox(
        label="Tabular inputs: INPUT=COL1,COL2,... one per line, in feature order (FIRST..LAST is a range of columns)",
        lines=1,
        elem_id="tabular-feeds",
        placeholder="blank: the columns mapped tabular feed the inputs in file order",
    )


def _mapping_head(with_feeds: bool) -> None:
    widths: tuple[tuple[str, int], ...] = (("column", 3), ("detected type", 2), ("example value", 6), ("role", 3))
    if with_feeds:  # which tabular input a column feeds (auto: the studio decides, in file order)
        widths += (("feeds (tabular)", 3),)
    with gr.Row(elem_classes="map-head"):
        for label, scale in widths:
            with gr.Column(scale=scale, min_width=80):
                gr.HTML(f'<div class="map-cell">{label}</div>')


def _mapping_row(n: int, c: dict[str, Any], tab_inputs: list[str]) -> MappingRow:
    """One column of the sample: its name, type and example, its role and (with tabular inputs) its feed."""
    esc = cards.esc
    with gr.Row(elem_classes="map-row", equal_height=True):
        with gr.Column(scale=3, min_width=80):
            gr.HTML(f'<div class="map-cell map-name" title="{esc(c["name"])}">{esc(c["name"])}</div>')
        with gr.Column(scale=2, min_width=80):
            gr.HTML(f'<div class="map-cell"><span class="map-type">{esc(c.get("detected"))}</span></div>')
        with gr.Column(scale=6, min_width=80):
            gr.HTML(
                f'<div class="map-cell" title="{esc(c.get("example"))}">{esc(c.get("example"))}'
                f'</div><div class="map-why">suggested {esc(c.get("suggested"))}'
                f"{': ' + esc(c.get('reason')) if c.get('reason') else ''}</div>"
            )
        with gr.Column(scale=3, min_width=120):
            dd = gr.Dropdown(
                list(ROLES),
                value=c.get("role") or c.get("suggested"),
                show_label=False,
                container=False,
                interactive=True,
                elem_classes="role-dd",
                elem_id=f"role-{n}",
            )
        feed = None
        if tab_inputs:
            with gr.Column(scale=3, min_width=120):
                feed = gr.Dropdown(
                    ["auto"] + tab_inputs,
                    value="auto",
                    show_label=False,
                    container=False,
                    interactive=True,
                    elem_classes="feed-dd",
                    elem_id=f"feed-{n}",
                )
        name = gr.State(c["name"])
    return MappingRow(name=name, role=dd, feed=feed)


def _options(page: Page) -> None:
    _step(3, "Options")
    with gr.Row():
        page.opset = gr.Dropdown(h.OPSETS, value=default("opset"), label="Opset", elem_id="opset", min_width=110)
        page.exporter = gr.Dropdown(
            h.EXPORTER_CHOICES,
            value=default("exporter"),
            label="Exporter",
            elem_id="exporter",
            min_width=180,
            info="auto: legacy first up to 256 MB of weights, else new; the other if a check fails",
        )
        page.dynamic = gr.CheckboxGroup(
            list(DYNAMIC_AXES),
            value=list(default("dynamic")),
            label="Dynamic dimensions",
            elem_id="dynamic",
            min_width=200,
        )
        page.max_length = gr.Number(
            default("max_length"),
            label="Max sequence length",
            precision=0,
            minimum=2,
            elem_id="max-length",
            min_width=130,
        )
        page.id_dtype = gr.Radio(
            list(ID_DTYPES), value=default("id_dtype"), label="Token id dtype", elem_id="id-dtype", min_width=150
        )
    page.variants = _variant_choice(
        value=list(default("variants")),
        elem_id="variants",
        label="Faster variants (each checked against PyTorch, timed side by side)",
        info="Extra files beside model.onnx, under variants/. None is built unless "
        "ticked; each adds build, check and timing time.",
    )
    with gr.Row():
        page.repair = gr.Checkbox(
            default("repair"),
            label="Repair a variant that fails: keep its worst nodes in float, rebuild and recheck",
            elem_id="repair",
        )
        page.max_new_tokens = gr.Number(
            default("max_new_tokens"),
            label="New tokens per prompt (language models)",
            precision=0,
            minimum=1,
            elem_id="max-new-tokens",
            min_width=130,
        )
    with gr.Accordion("Advanced: tolerances, empty cells, latency budget, per-input dynamic dimensions", open=False):
        _advanced(page)


def _advanced(page: Page) -> None:
    page.task = gr.Dropdown(
        list(TASKS),
        value=default("task"),
        label="Task (what a model folder is exported as)",
        elem_id="task",
        info="auto: modules.json -> sentence-embedding, else the config's architectures (as the CLI's --task)",
    )
    with gr.Row():
        page.atol = gr.Number(default("atol"), label="atol (parity absolute tolerance)", elem_id="atol")
        page.rtol = gr.Number(default("rtol"), label="rtol (parity relative tolerance)", elem_id="rtol")
        page.fill_value = gr.Number(
            default("fill_value"), label="Fill empty tabular cells with (blank = error)", elem_id="fill-value"
        )
        page.latency_budget = gr.Number(
            h.LATENCY_BUDGET_DEFAULT, label="Latency: seconds per measurement", minimum=0.05, elem_id="latency-budget"
        )
    page.per_input = gr.Dataframe(
        headers=["input", "batch", "sequence"],
        datatype=["str", "bool", "bool"],
        label="Dynamic dimensions per input (edit to override the choice above)",
        interactive=True,
        static_columns=[0],
        visible=False,
        elem_id="per-input",
        column_count=3,
    )
    page.per_input_json = gr.Textbox(visible=False, elem_id="per-input-json")
    page.locate = gr.Checkbox(
        default("locate"),
        label="Find where ONNX Runtime first leaves PyTorch even when every "
        "check passes (runs by itself when a check fails)",
        elem_id="locate",
    )


def _export(page: Page) -> None:
    _step(4, "Export")
    with gr.Row():
        page.export_btn = gr.Button("Export to ONNX", variant="primary", elem_id="export-btn", scale=4)
        page.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", scale=1, min_width=120)


def _results(page: Page) -> None:
    _step(5, "Results")
    page.verdict = gr.HTML(r.idle_html(), label="verdict", elem_id="verdict", min_height=60)
    page.summary = gr.Markdown(visible=False, label="summary", elem_id="summary")
    page.generation = generation.panel()  # generators: both continuations of each prompt, the verdict, tokens/s
    with gr.Accordion("Exporter diagnosis", open=False, visible=False) as page.diag_acc:
        page.diagnosis = gr.Markdown(label="diagnosis", elem_id="diagnosis")
    with gr.Column(visible=False) as page.results_col:
        with gr.Row(equal_height=True):
            page.io_table = gr.Dataframe(
                headers=IO_COLUMNS,
                label="Graph inputs and outputs (symbolic dims by name)",
                interactive=False,
                elem_id="io-table",
                scale=1,
            )
            page.parity_table = gr.Dataframe(
                headers=PARITY_COLUMNS,
                label="Parity per output (PyTorch vs ORT)",
                interactive=False,
                elem_id="parity-table",
                scale=1,
            )
        page.probe_table = gr.Dataframe(
            headers=PROBE_COLUMNS,
            label="Shape probes (other batch / sequence sizes)",
            interactive=False,
            elem_id="probe-table",
            wrap=True,
        )
        page.latency_table = gr.Dataframe(
            headers=LATENCY_COLUMNS,
            label="Latency",
            interactive=False,
            elem_id="latency-table",
            wrap=True,
            column_widths=_widths(LATENCY_COLUMNS, ["12%", "7%", "7%", "7%", "7%", "7%", "8%", "6%", "6%", "33%"]),
        )
        page.variants_note = gr.Markdown(elem_id="variants-note")
        page.variants_table = gr.Dataframe(
            headers=VARIANT_COLUMNS,
            label="Variants (PyTorch vs each variant; timed beside model.onnx)",
            interactive=False,
            visible=False,
            elem_id="variants-table",
            wrap=True,
            column_widths=_widths(VARIANT_COLUMNS, ["12%", "7%", "7%", "8%", "8%", "8%", "8%", "8%", "8%", "26%"]),
        )
        with gr.Row(equal_height=True):
            _charts(page)
        page.predictions = gr.Dataframe(
            label="Predictions per row (ONNX Runtime) beside the ignored columns",
            datatype="str",  # the sample's columns, cells and the model's labels: text, never Markdown or HTML
            interactive=False,
            elem_id="predictions",
            max_height=320,
            wrap=True,
        )
        with gr.Accordion("Export attempts", open=False):
            page.attempts = gr.Dataframe(
                headers=r.ATTEMPT_PAGE_COLUMNS,
                label="export attempts",
                interactive=False,
                wrap=True,
                elem_id="attempts",
            )


def _charts(page: Page) -> None:
    page.latency_plot = gr.BarPlot(
        x="run",
        y="p50 ms",
        color="runtime",
        title="Latency p50 (ms)",
        label="latency chart",
        elem_id="latency-plot",
        height=300,
        sort=None,
        color_map=r.LATENCY_COLORS,
        x_label_angle=-30,
        colors_in_legend=[],
        caption="PT = PyTorch eager, ORT = ONNX Runtime (model.onnx), a variant by its name; batch × sequence",
    )
    page.diff_plot = gr.BarPlot(
        x="check",
        y="max abs diff",
        color="verdict",
        title="Max |PyTorch − ONNX| per check",
        label="difference chart",
        elem_id="diff-plot",
        height=300,
        x_label_angle=-30,
        sort=None,
        color_map={"pass": "#22a06b", "fail": "#d93f3f"},
        y_axis_format=".1e",
        colors_in_legend=[],
    )


def _graph(page: Page) -> None:
    """The exported graph in Netron's viewer, served by the studio (studio.app.graph): works offline."""
    with gr.Column(visible=False, elem_id="graph-panel") as page.graph_col, gr.Accordion("Graph", open=True):
        page.graph_choice = gr.Radio([], label="File", elem_id="graph-choice", container=False)
        page.graph_view = gr.HTML(graph_panel.graph_html([]), elem_id="graph-view")


def _downloads(page: Page) -> None:
    with gr.Column(visible=False) as page.downloads_col:
        _step(
            6,
            "Downloads",
            "model.onnx (+ .data), report.json, report.md, inference_example.py, the variants, one zip of all",
        )
        page.downloads = gr.File(label="Artifacts", file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Accordion("Full report (report.json)", open=False):
            # JSON text, not gr.JSON: gradio_client treats any {"path": str} inside a JSON output as a
            # file to download (the report's source.path, a user column named "path", ...).
            page.report_json = gr.Code(
                language="json", label="report.json", elem_id="report-json", interactive=False, max_lines=40
            )
