"""What the /convert event shows: the progress bar's words per pipeline stage, and its page updates by name,
for a Report (the verdict, tables, charts, downloads, the Graph panel) or for an error (the message, every
earlier result cleared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.app import generation, graph_panel
from studio.app import render as r
from studio.app.graph import GraphEntry
from studio.app.page import CONVERT_OUTPUTS, Page
from studio.errors import StudioError
from studio.jobs.isolate import JobError

STAGE_TEXT = {
    "queued": "waiting for a free worker",
    "starting": "starting the worker process",
    "loading": "loading the checkpoint",
    "batch": "building the batch from the sample",
    "export": "exporting to ONNX (the slowest stage)",
    "checker": "running the ONNX checker",
    "parity": "comparing PyTorch with ONNX Runtime",
    "shape probe": "probing the dynamic dimensions",
    "locate": "finding where ONNX Runtime first leaves PyTorch",
    "generation": "generating the prompts with PyTorch and ONNX Runtime, token by token",
    "variants": "building the faster variants and checking each against PyTorch",
    "latency": "timing PyTorch and model.onnx side by side",
    "profile": "profiling ONNX Runtime node by node on the sample",
    "writing": "writing the artifacts",
    "done": "packing the downloads",
}


def stage_text(stage: str, variants: tuple[str, ...] = ()) -> str:
    """What the progress bar says for a pipeline stage (the latency stage also times the variants)."""
    if stage == "latency" and variants:
        return "timing model.onnx and each variant side by side with PyTorch"
    return STAGE_TEXT.get(stage, stage)


def in_order(chart, x: str, **kw):
    """Bars in the frame's order (latency: PyTorch, model.onnx, then each variant; differences: the sample,
    then the probes), not alphabetical."""
    return gr.update(value=chart, sort=list(chart[x]) or None, **kw)


def report_updates(ui: Page, result: dict[str, Any], out: Path, found: list[GraphEntry], node: str | None) -> dict:
    """A conversion's Report on the page: `found` and `node` are the Graph panel's files and divergence node."""
    report = result["report"]
    diagnosis = r.diagnosis_md(report, result.get("diagnosis") or "")
    return ui.updates(
        CONVERT_OUTPUTS,
        downloads=r.artifact_paths(report, out, result.get("zip")),
        report_json=report.to_json(),
        verdict=r.verdict_html(report),
        summary=gr.update(value=r.summary_md(report), visible=True),
        io_table=r.io_frame(report),
        parity_table=r.parity_frame(report),
        probe_table=r.probe_frame(report),
        latency_table=r.latency_frame(report),
        latency_plot=in_order(r.latency_chart(report), "run"),
        diff_plot=in_order(r.diff_chart(report), "check", caption=r.diff_caption(report)),
        predictions=r.predictions_frame(report),
        attempts=r.attempts_frame(report),
        diagnosis=diagnosis,
        diag_acc=gr.update(visible=bool(diagnosis), open=not report.ok and bool(diagnosis)),
        results_col=gr.update(visible=True),
        downloads_col=gr.update(visible=True),
        variants_note=r.variants_note(report),
        variants_table=gr.update(value=r.variants_frame(report), visible=bool(report.variants)),
        graph_col=gr.update(visible=bool(found)),
        graph_choice=gr.update(
            choices=graph_panel.graph_choices(found),
            value=found[0].label if found else None,
            visible=len(found) > 1,
        ),
        graph_view=graph_panel.graph_html(found, None, node),
        generation=generation.update(report),
    )


def error_updates(ui: Page, error: StudioError, message: str) -> dict:
    """A failed (or cancelled) conversion: `message` is the error's text with server paths scrubbed."""
    diagnosis = r.diagnosis_md(None, error=error) if error.details else ""
    cancelled = isinstance(error, JobError) and error.reason == "cancelled"
    cleared = (
        "downloads",
        "report_json",
        "io_table",
        "parity_table",
        "probe_table",
        "latency_table",
        "latency_plot",
        "diff_plot",
        "predictions",
        "attempts",
    )
    return ui.updates(
        CONVERT_OUTPUTS,
        **dict.fromkeys(cleared),  # no stale results of an earlier run
        verdict=r.error_html(message, title=error_title(error)),
        summary=gr.update(visible=False),
        diagnosis=diagnosis,
        diag_acc=gr.update(visible=bool(diagnosis), open=bool(diagnosis) and not cancelled),
        results_col=gr.update(visible=False),
        downloads_col=gr.update(visible=False),
        variants_note="",
        variants_table=gr.update(value=None, visible=False),
        graph_col=gr.update(visible=False),
        graph_choice=gr.update(choices=[], value=None),
        graph_view=graph_panel.graph_html([]),
        generation=generation.update(None),
    )


def error_title(error: StudioError) -> str:
    """The verdict's and the error popup's title: what stopped the job (cancelled, time limit, memory, crash)."""
    if isinstance(error, JobError):
        return {
            "cancelled": "Cancelled",
            "timeout": "Time limit reached",
            "memory": "Out of memory",
            "crashed": "Worker crashed",
        }.get(error.reason, "Conversion failed")
    return "Conversion failed"
