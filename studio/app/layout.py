"""The page, in the order a person uses it: inputs, field mapping, options, export, results, downloads."""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..spec import ATOL_DEFAULT, DYNAMIC_AXES, ID_DTYPES, OPSET_DEFAULT, ROLES, RTOL_DEFAULT, TASKS
from . import handlers as h

if TYPE_CHECKING:
    from .server import StudioApp

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
#studio-header { display: flex; align-items: baseline; gap: 14px; padding: 6px 2px 2px; }
#studio-header h1 { font-size: 1.6rem; margin: 0; font-weight: 700; letter-spacing: -0.01em; }
#studio-header .tag { color: var(--body-text-color-subdued); font-size: 0.95rem; }
.trust-banner { background: #fff4e5; border: 1px solid #f0a020; color: #7a4500; border-radius: 8px;
  padding: 10px 14px; font-weight: 600; }
.step-title { display: flex; align-items: center; gap: 10px; margin: 4px 0 2px; }
.step-title .num { display: inline-flex; width: 26px; height: 26px; border-radius: 50%; align-items: center;
  justify-content: center; background: var(--color-accent); color: white; font-weight: 700; font-size: 0.9rem; }
.step-title h2 { font-size: 1.12rem; margin: 0; font-weight: 650; }
.step-title .hint { color: var(--body-text-color-subdued); font-size: 0.88rem; }
.card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px;
  background: var(--block-background-fill); height: 100%; font-size: 0.92rem; }
.card-good { border-left: 4px solid #22a06b; } .card-bad { border-left: 4px solid #d93f3f; }
.card-empty { border-style: dashed; }
.card-title { font-weight: 650; margin-bottom: 6px; }
.card table.facts { border-collapse: collapse; width: 100%; margin: 0; border: none !important; }
.card table.facts tr, .card table.facts th, .card table.facts td { border: none !important; background: none !important; }
.card table.facts th { text-align: left; font-weight: 500; color: var(--body-text-color-subdued); width: 110px;
  padding: 2px 8px 2px 0 !important; }
.card table.facts td { padding: 2px 0 !important; }
.card .subhead { margin-top: 8px; font-weight: 600; font-size: 0.88rem; }
.card ul.inputs { margin: 4px 0 0 18px; padding: 0; }
.muted { color: var(--body-text-color-subdued); }
.ok { color: #1c7c54; font-weight: 600; } .bad { color: #c23030; font-weight: 600; }
.msg { white-space: normal; margin-top: 4px; font-family: var(--font-mono); font-size: 0.85rem; }
.map-head { font-weight: 600; color: var(--body-text-color-subdued); font-size: 0.85rem;
  border-bottom: 1px solid var(--border-color-primary); padding-bottom: 4px; }
.map-row { align-items: center !important; border-bottom: 1px solid var(--border-color-primary);
  padding: 6px 0 !important; gap: 12px !important; }
.map-row .column, .map-head .column { gap: 0 !important; justify-content: center; }
.map-row .prose, .map-head .prose, .map-row .html-container, .map-head .html-container { padding: 0 !important; min-height: 0 !important; }
.map-head { gap: 12px !important; padding: 0 0 4px 0 !important; }
.map-head .map-cell { font-weight: 600; color: var(--body-text-color-subdued); font-size: 0.82rem;
  text-transform: uppercase; letter-spacing: 0.04em; }
.map-cell { font-size: 0.92rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.map-name { font-weight: 600; font-family: var(--font-mono); }
.map-type { display: inline-block; padding: 1px 8px; border-radius: 10px; background: var(--background-fill-secondary);
  font-size: 0.8rem; }
.map-why { color: var(--body-text-color-subdued); font-size: 0.8rem; }
.mapping { border-radius: 8px; padding: 10px 14px; font-size: 0.92rem; }
.mapping-ok { background: #e8f6ef; border: 1px solid #9bd3b5; color: #145c3d; }
.mapping-bad { background: #fdecec; border: 1px solid #eba5a5; color: #8a1f1f; }
.mapping-wait { background: var(--background-fill-secondary); color: var(--body-text-color-subdued); }
.verdict { border-radius: 12px; padding: 14px 16px; border: 1px solid var(--border-color-primary); }
.verdict-head { font-size: 1.15rem; font-weight: 700; margin-bottom: 8px; }
.verdict-pass { background: #f0faf5; border-color: #9bd3b5; } .verdict-pass .verdict-head { color: #145c3d; }
.verdict-fail, .verdict-error { background: #fdf1f1; border-color: #eba5a5; }
.verdict-fail .verdict-head, .verdict-error .verdict-head { color: #8a1f1f; }
.verdict-idle .verdict-head, .verdict-running .verdict-head { color: var(--body-text-color-subdued); margin: 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; }
.tile { border-radius: 10px; padding: 10px 12px; background: white; border: 1px solid var(--border-color-primary); }
.tile-title { font-weight: 700; font-size: 0.98rem; }
.tile-detail { color: var(--body-text-color-subdued); font-size: 0.82rem; margin-top: 2px; }
.tile-pass { border-top: 4px solid #22a06b; } .tile-pass .tile-title { color: #145c3d; }
.tile-fail { border-top: 4px solid #d93f3f; } .tile-fail .tile-title { color: #8a1f1f; }
.tile-na { border-top: 4px solid #9aa4b2; } .tile-info { border-top: 4px solid var(--color-accent); }
#export-btn { min-height: 48px; font-size: 1.05rem; }
"""


def _variant_choice(**kwargs) -> gr.CheckboxGroup:
    """The "Faster variants" checkboxes. Its API value may also be a comma string ("int8,fp16", as the
    CLI's --variants), and names are checked by handlers.spec_from_ui (a StudioError naming the choices)
    instead of gradio's own choice check. (Not a subclass: gradio writes a .pyi beside any module that
    defines a component class.)"""
    box = gr.CheckboxGroup(h.VARIANT_CHOICES, **kwargs)
    box.preprocess = lambda payload: payload
    return box


def _step(num: int, title: str, hint: str = "") -> gr.HTML:
    return gr.HTML(f'<div class="step-title"><span class="num">{num}</span><h2>{title}</h2>'
                   f'<span class="hint">{hint}</span></div>')


def build(app: "StudioApp") -> gr.Blocks:
    cfg = app.config
    with gr.Blocks(title="ONNX Studio", analytics_enabled=False,
                   delete_cache=(600, int(max(cfg.session_ttl_s, 600)))) as demo:
        if cfg.trust_code:
            gr.HTML('<div class="trust-banner" id="trust-banner">⚠ Trusted-code mode is ON: this studio '
                    'loads TorchScript, .pt2 and pickled-module checkpoints, which can run code on the server '
                    'when loaded. Upload only checkpoints you trust.</div>')
        gr.HTML('<div id="studio-header"><h1>ONNX Studio</h1><span class="tag">PyTorch checkpoint + a few real '
                'rows → a verified ONNX model, with its report</span></div>')

        preview_info = gr.State({"model": None, "has_sample": False})
        columns_state = gr.State({"nonce": "", "columns": []})

        # 1. Inputs ---------------------------------------------------------------------------------
        _step(1, "Inputs", ".pt .pth .ckpt .bin .safetensors or a zipped Hugging Face folder, and a few real rows")
        with gr.Row(equal_height=True):
            checkpoint = gr.File(label="Checkpoint file, or .zip of a model folder",
                                 elem_id="checkpoint-file", height=120, scale=5)
            sample = gr.File(label="Sample rows: CSV / TSV / JSON / JSONL", elem_id="sample-file", height=120,
                             scale=5)
            with gr.Column(scale=2, min_width=170):
                demo_btn = gr.Button("▶ Load demo", elem_id="load-demo", variant="secondary", size="lg")
                gr.HTML('<div class="muted" style="font-size:0.82rem">A small text + tabular review '
                        'classifier and 8 order rows.</div>')
        with gr.Row(equal_height=True):
            model_card = gr.HTML(h.model_html(None), elem_id="model-card")
            sample_card = gr.HTML(h.sample_html([], []), elem_id="sample-card")
        preview_table = gr.Dataframe(label="First rows of the sample", interactive=False, visible=False,
                                     elem_id="preview-table", max_height=260, wrap=True)

        # 2. Field mapping --------------------------------------------------------------------------
        _step(2, "Field mapping", "what each column feeds: text, tabular (numbers) or ignore")
        roles_box = gr.Textbox(visible=False, elem_id="roles-json")

        @gr.render(inputs=[columns_state], triggers=[columns_state.change])
        def mapping_rows(state):
            cols = (state or {}).get("columns") or []
            if not cols:
                gr.HTML('<div class="muted">Columns appear here after a sample is uploaded.</div>')
                return
            tab_inputs = list((state or {}).get("tabular_inputs") or [])
            widths = (("column", 3), ("detected type", 2), ("example value", 6), ("role", 3))
            if tab_inputs:  # which tabular input a column feeds (auto: the studio decides, in file order)
                widths += (("feeds (tabular)", 3),)
            with gr.Row(elem_classes="map-head"):
                for label, scale in widths:
                    with gr.Column(scale=scale, min_width=80):
                        gr.HTML(f'<div class="map-cell">{label}</div>')
            for n, c in enumerate(cols):
                with gr.Row(elem_classes="map-row", equal_height=True):
                    with gr.Column(scale=3, min_width=80):
                        gr.HTML(f'<div class="map-cell map-name" title="{h.esc(c["name"])}">{h.esc(c["name"])}</div>')
                    with gr.Column(scale=2, min_width=80):
                        gr.HTML(f'<div class="map-cell"><span class="map-type">{h.esc(c.get("detected"))}</span></div>')
                    with gr.Column(scale=6, min_width=80):
                        gr.HTML(f'<div class="map-cell" title="{h.esc(c.get("example"))}">{h.esc(c.get("example"))}'
                                f'</div><div class="map-why">suggested {h.esc(c.get("suggested"))}'
                                f'{": " + h.esc(c.get("reason")) if c.get("reason") else ""}</div>')
                    with gr.Column(scale=3, min_width=120):
                        dd = gr.Dropdown(list(ROLES), value=c.get("role") or c.get("suggested"), show_label=False,
                                         container=False, interactive=True, elem_classes="role-dd",
                                         elem_id=f"role-{n}")
                    if tab_inputs:
                        with gr.Column(scale=3, min_width=120):
                            feed = gr.Dropdown(["auto"] + tab_inputs, value="auto", show_label=False,
                                               container=False, interactive=True, elem_classes="feed-dd",
                                               elem_id=f"feed-{n}")
                    name = gr.State(c["name"])
                    dd.input(app.set_role, inputs=[roles_box, name, dd], outputs=[roles_box],
                             api_visibility="private", queue=False) \
                        .then(app.check_mapping, inputs=check_inputs, outputs=[mapping_box],
                              api_visibility="private", concurrency_id="preview",
                              concurrency_limit=cfg.max_jobs, trigger_mode="always_last",
                              show_progress="minimal")
                    if tab_inputs:
                        feed.input(app.set_feed, inputs=[tabular_box, columns_state, name, feed],
                                   outputs=[tabular_box], api_visibility="private", queue=False) \
                            .then(app.check_mapping, inputs=check_inputs, outputs=[mapping_box],
                                  api_visibility="private", concurrency_id="preview",
                                  concurrency_limit=cfg.max_jobs, trigger_mode="always_last",
                                  show_progress="minimal")

        mapping_box = gr.HTML(h.mapping_html(None, False, False), elem_id="mapping-status")
        tabular_box = gr.Textbox(label="Tabular inputs: INPUT=COL1,COL2,... one per line, in feature order "
                                       "(FIRST..LAST is a range of columns)", lines=1, elem_id="tabular-feeds",
                                 placeholder="blank: the columns mapped tabular feed the inputs in file order")

        # 3. Options --------------------------------------------------------------------------------
        _step(3, "Options")
        with gr.Row():
            opset = gr.Dropdown(h.OPSETS, value=OPSET_DEFAULT, label="Opset", elem_id="opset", min_width=110)
            exporter = gr.Dropdown(h.EXPORTER_CHOICES, value="auto", label="Exporter", elem_id="exporter",
                                   min_width=180, info="auto: new, legacy as fallback")
            dynamic = gr.CheckboxGroup(list(DYNAMIC_AXES), value=list(DYNAMIC_AXES), label="Dynamic dimensions",
                                       elem_id="dynamic", min_width=200)
            max_length = gr.Number(128, label="Max sequence length", precision=0, minimum=2, elem_id="max-length",
                                   min_width=130)
            id_dtype = gr.Radio(list(ID_DTYPES), value="int64", label="Token id dtype", elem_id="id-dtype",
                                min_width=150)
        variants = _variant_choice(value=[], elem_id="variants",
                                   label="Faster variants (each checked against PyTorch, timed side by side)",
                                   info="Extra files beside model.onnx, under variants/. None is built unless "
                                        "ticked; each adds build, check and timing time.")
        with gr.Accordion("Advanced: tolerances, empty cells, latency budget, per-input dynamic dimensions",
                          open=False):
            task = gr.Dropdown(list(TASKS), value="auto", label="Task (what a model folder is exported as)",
                               elem_id="task", info="auto: modules.json -> sentence-embedding, else the config's "
                                                    "architectures (as the CLI's --task)")
            with gr.Row():
                atol = gr.Number(ATOL_DEFAULT, label="atol (parity absolute tolerance)", elem_id="atol")
                rtol = gr.Number(RTOL_DEFAULT, label="rtol (parity relative tolerance)", elem_id="rtol")
                fill_value = gr.Number(None, label="Fill empty tabular cells with (blank = error)",
                                       elem_id="fill-value")
                latency_budget = gr.Number(h.LATENCY_BUDGET_DEFAULT, label="Latency: seconds per measurement",
                                           minimum=0.05, elem_id="latency-budget")
            per_input = gr.Dataframe(headers=["input", "batch", "sequence"], datatype=["str", "bool", "bool"],
                                     label="Dynamic dimensions per input (edit to override the choice above)",
                                     interactive=True, static_columns=[0], visible=False,
                                     elem_id="per-input", column_count=3)
            per_input_json = gr.Textbox(visible=False, elem_id="per-input-json")

        # 4. Export ---------------------------------------------------------------------------------
        _step(4, "Export")
        with gr.Row():
            export_btn = gr.Button("Export to ONNX", variant="primary", elem_id="export-btn", scale=4)
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", scale=1, min_width=120)

        # 5. Results --------------------------------------------------------------------------------
        _step(5, "Results")
        verdict = gr.HTML(h.idle_html(), label="verdict", elem_id="verdict", min_height=60)
        summary = gr.Markdown(visible=False, label="summary", elem_id="summary")
        with gr.Accordion("Exporter diagnosis", open=False, visible=False) as diag_acc:
            diagnosis = gr.Markdown(label="diagnosis", elem_id="diagnosis")
        with gr.Column(visible=False) as results_col:
            with gr.Row(equal_height=True):
                io_table = gr.Dataframe(headers=h.IO_HEADERS, label="Graph inputs and outputs (symbolic dims by name)",
                                        interactive=False, elem_id="io-table", scale=1)
                parity_table = gr.Dataframe(headers=h.PARITY_HEADERS, label="Parity per output (PyTorch vs ORT)",
                                            interactive=False, elem_id="parity-table", scale=1)
            probe_table = gr.Dataframe(headers=h.PROBE_HEADERS, label="Shape probes (other batch / sequence sizes)",
                                       interactive=False, elem_id="probe-table", wrap=True)
            latency_table = gr.Dataframe(headers=h.LATENCY_HEADERS, label="Latency", interactive=False,
                                         elem_id="latency-table", wrap=True,
                                         column_widths=["13%", "8%", "8%", "8%", "9%", "7%", "8%", "39%"])
            variants_note = gr.Markdown(elem_id="variants-note")
            variants_table = gr.Dataframe(headers=h.VARIANT_HEADERS, label="Variants (PyTorch vs each variant; "
                                          "timed beside model.onnx)", interactive=False, visible=False,
                                          elem_id="variants-table", wrap=True,
                                          column_widths=["14%", "7%", "8%", "9%", "9%", "8%", "9%", "10%", "26%"])
            with gr.Row(equal_height=True):
                latency_plot = gr.BarPlot(x="run", y="p50 ms", color="runtime", title="Latency p50 (ms)",
                                          label="latency chart", elem_id="latency-plot", height=300, sort=None,
                                          color_map=h.LATENCY_COLORS, x_label_angle=-30,
                                          colors_in_legend=[], caption="PT = PyTorch eager, ORT = ONNX Runtime "
                                          "(model.onnx), a variant by its name; batch × sequence")
                diff_plot = gr.BarPlot(x="check", y="max abs diff", color="verdict",
                                       title="Max |PyTorch − ONNX| per check", label="difference chart",
                                       elem_id="diff-plot", height=300, x_label_angle=-30,
                                       sort=None, color_map={"pass": "#22a06b", "fail": "#d93f3f"},
                                       y_axis_format=".1e", colors_in_legend=[])
            predictions = gr.Dataframe(label="Predictions per row (ONNX Runtime) beside the ignored columns",
                                       interactive=False, elem_id="predictions", max_height=320, wrap=True)
            with gr.Accordion("Export attempts", open=False):
                attempts = gr.Dataframe(headers=h.ATTEMPT_HEADERS, label="export attempts", interactive=False, wrap=True,
                                        elem_id="attempts")

        # 6. Downloads ------------------------------------------------------------------------------
        with gr.Column(visible=False) as downloads_col:
            _step(6, "Downloads", "model.onnx (+ .data), report.json, report.md, inference_example.py, "
                                  "the variants, one zip of all")
            downloads = gr.File(label="Artifacts", file_count="multiple", interactive=False, elem_id="downloads")
            with gr.Accordion("Full report (report.json)", open=False):
                # JSON text, not gr.JSON: gradio_client treats any {"path": str} inside a JSON output as a
                # file to download (the report's source.path, a user column named "path", ...).
                report_json = gr.Code(language="json", label="report.json", elem_id="report-json",
                                      interactive=False, max_lines=40)

        # --- events ---------------------------------------------------------------------------------
        check_inputs = [checkpoint, sample, roles_box, preview_info, fill_value, tabular_box]  # the mapping check
        columns_state.change(lambda: "", outputs=[tabular_box], api_visibility="private", queue=False)
        for ev in (tabular_box.submit, tabular_box.blur):
            ev(app.check_mapping, inputs=check_inputs, outputs=[mapping_box], api_visibility="private",
               concurrency_id="preview", concurrency_limit=cfg.max_jobs, trigger_mode="always_last",
               show_progress="minimal")
        preview_outputs = [model_card, sample_card, preview_table, columns_state, roles_box, mapping_box,
                           preview_info, per_input, per_input_json]
        preview_kw = dict(fn=app.preview, inputs=[checkpoint, sample, dynamic], outputs=preview_outputs,
                          concurrency_id="preview", concurrency_limit=cfg.max_jobs, show_progress="minimal",
                          show_progress_on=[model_card, sample_card])
        demo_btn.click(app.load_demo, outputs=[checkpoint, sample], api_name="load_demo",
                       show_progress="hidden").then(**preview_kw, api_name="preview_demo", api_visibility="private")
        checkpoint.upload(**preview_kw, api_name="preview")
        sample.upload(**preview_kw, api_name="preview_sample", api_visibility="private")
        checkpoint.clear(**preview_kw, api_name="preview_clear_checkpoint", api_visibility="private")
        sample.clear(**preview_kw, api_name="preview_clear_sample", api_visibility="private")

        dynamic.change(app.reset_per_input, inputs=[dynamic, preview_info], outputs=[per_input, per_input_json],
                       api_name="reset_per_input", api_visibility="private", queue=False)
        per_input.input(app.per_input_edited, inputs=[per_input], outputs=[per_input_json],
                        api_name="per_input_edited", api_visibility="private", queue=False)

        convert_outputs = [downloads, report_json, verdict, summary, io_table, parity_table, probe_table,
                           latency_table, latency_plot, diff_plot, predictions, attempts, diagnosis, diag_acc,
                           results_col, downloads_col, variants_note, variants_table]
        export_event = export_btn.click(
            app.convert,
            inputs=[checkpoint, sample, roles_box, opset, exporter, dynamic, per_input_json, max_length, atol, rtol,
                    id_dtype, fill_value, latency_budget, variants, tabular_box, task],
            outputs=convert_outputs, api_name="convert", concurrency_id="convert",
            concurrency_limit=cfg.max_jobs, show_progress_on=[verdict], scroll_to_output=True)
        cancel_btn.click(app.cancel, outputs=[verdict], api_name="cancel", cancels=[export_event], queue=False)
        demo.unload(app.close_session)
    return demo
