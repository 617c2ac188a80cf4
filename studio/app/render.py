"""Report -> what the page shows after Export: the verdict strip, the tables, the chart data, the summary /
diagnosis Markdown and the download list (the preview's cards are studio.app.cards, the Graph panel
studio.app.graph_panel). No gradio in here, so every function is testable on its own; numbers are
formatted by studio.report.render's row helpers.

Names, cells, labels, messages come from uploads: every value is escaped for the medium it lands in, where it
enters markup: `esc` (studio.escape.html_text) in the *_html functions, `md_inline` / `md_code` in the
Markdown (summary_md, diagnosis_md, variants_note), a fenced block for long texts (errors, the exporter's
diagnosis). The *_frame functions give gr.Dataframe plain strings, shown as text (datatype "str")."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from studio.app.cards import cell, esc, multiline
from studio.errors import StudioError, first_line
from studio.escape import md_code, md_inline
from studio.report.divergence import HEADERS, Divergence, table_rows
from studio.report.model import Report, worst_diff
from studio.report.render import (
    ATTEMPT_COLUMNS,
    COMPARISON_COLUMNS,
    IO_COLUMNS,
    LATENCY_COLUMNS,
    LATENCY_LABELS,
    PARITY_COLUMNS,
    PROBE_COLUMNS,
    VARIANT_COLUMNS,
    attempt_rows,
    comparison_rows,
    io_rows,
    latency_rows,
    markdown_table,
    parity_rows,
    probe_rows,
    variant_rows,
)
from studio.report.timings import timing_line

# The page's tables are the report's (studio.report.render: their columns and rows), the attempts with the
# opset each attempt wrote beside its time.
ATTEMPT_PAGE_COLUMNS = [*ATTEMPT_COLUMNS[:3], "opset written", *ATTEMPT_COLUMNS[3:]]


# --------------------------------------------------------------------------------------------------
# Report -> page


def _tick(ok: bool | None) -> tuple[str, str]:
    if ok is None:
        return "–", "na"
    return ("✓", "pass") if ok else ("✗", "fail")


def _fmt(x: float | None) -> str:
    return "-" if x is None else format(x, ".3g")


def verdict_html(report: Report) -> str:
    """The verdict strip: overall, checker, parity (max diff), dynamic dims, variants (when asked), opset
    written, exporter."""
    e = report.export
    tiles = []

    def tile(key: str, title: str, ok: bool | None, detail: str) -> None:
        mark, cls = _tick(ok)
        tiles.append(
            f'<div class="tile tile-{cls}" data-check="{key}" data-ok="{str(ok).lower()}">'
            f'<div class="tile-title">{mark} {esc(title)}</div><div class="tile-detail">{detail}</div></div>'
        )

    chk = report.checker
    tile(
        "checker",
        "ONNX checker",
        chk.ok if chk else False,
        "model is valid" if chk and chk.ok else esc((chk.message if chk else "did not run")[:160]),
    )
    p = report.parity
    if p is not None:
        worst = worst_diff(p.outputs)  # NaN when a non-finite value makes the difference unknown
        shown = esc(p.error[:160]) if p.error else f"max |Δ| {_fmt(worst)} · atol {p.atol:g}, rtol {p.rtol:g}"
        tile("parity", "Parity", p.ok, shown)
    else:
        tile("parity", "Parity", False, "did not run")
    d = report.dynamic
    if d is None or d.ok is None:
        tile("dynamic", "Dynamic dims", None, "static export")
    else:
        n_ok = sum(pr.ok for pr in d.probes)
        axes = sorted({a for v in d.requested.values() for a in v})
        tile("dynamic", "Dynamic dims", d.ok, f"{n_ok}/{len(d.probes)} probes · {esc(', '.join(axes) or '-')}")
    if report.variants:
        failed = [v.name for v in report.variants if not v.ok]
        tile(
            "variants",
            "Variants",
            not failed,
            f"{len(report.variants) - len(failed)}/{len(report.variants)} passed"
            + (f" · {esc(', '.join(failed))} failed" if failed else ""),
        )
    same = e.opset == e.opset_requested
    tile(
        "opset",
        f"Opset {e.opset if e.opset is not None else '?'} written",
        same if e.opset is not None else False,
        f"requested {e.opset_requested}" + ("" if same else " — differs"),
    )
    failed_attempts = [a for a in e.attempts if not a.ok]
    tiles.append(
        f'<div class="tile tile-info" data-check="exporter"><div class="tile-title">{esc(e.exporter or "-")} exporter</div>'
        f'<div class="tile-detail">{e.seconds:.1f} s export · {report.seconds:.1f} s total'
        + (f" · {len(failed_attempts)} fallback" if failed_attempts else "")
        + "</div></div>"
    )
    ok = report.ok
    head = "All checks passed" if ok else "Checks failed: " + ", ".join(report.failed_checks)
    return (
        f'<div id="verdict-strip" class="verdict verdict-{"pass" if ok else "fail"}" data-ok="{str(ok).lower()}">'
        f'<div class="verdict-head">{"✓" if ok else "✗"} {esc(head)}</div>'
        f'<div class="tiles">{"".join(tiles)}</div></div>'
    )


def error_html(message: str, title: str = "Conversion failed") -> str:
    return (
        f'<div id="verdict-strip" class="verdict verdict-error" data-ok="false">'
        f'<div class="verdict-head">✗ {esc(title)}</div><div class="msg">{multiline(message)}</div></div>'
    )


def idle_html() -> str:
    return (
        '<div id="verdict-strip" class="verdict verdict-idle" data-ok="idle">'
        '<div class="verdict-head">No conversion yet</div>'
        '<div class="muted">Upload a checkpoint and sample (or press Load demo), check the mapping, then '
        "press Export.</div></div>"
    )


def frame(headers: list[str], rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def io_frame(report: Report) -> pd.DataFrame:
    return frame(IO_COLUMNS, io_rows(report))


def parity_frame(report: Report) -> pd.DataFrame:
    return frame(PARITY_COLUMNS, parity_rows(report.parity))


def probe_frame(report: Report) -> pd.DataFrame:
    return frame(PROBE_COLUMNS, probe_rows(report.dynamic))


def latency_frame(report: Report) -> pd.DataFrame:
    return frame(LATENCY_COLUMNS, latency_rows(report.latency))


def variants_frame(report: Report) -> pd.DataFrame:
    """One row per variant after model.onnx's own row; a failed one shows FAIL and its error."""
    if not report.variants:
        return frame(VARIANT_COLUMNS, [])
    return frame(VARIANT_COLUMNS, variant_rows(report.variants, report.latency))


def variants_note(report: Report) -> str:
    """The line above the variants table (or instead of it, when none was asked for)."""
    if not report.variants:
        return (
            "No faster variants were requested: tick optimized, int8 or fp16 under Options to build them, "
            "check each against PyTorch and time them beside model.onnx."
        )
    failed = [v.name for v in report.variants if not v.ok]
    line = f"**Faster variants** {len(report.variants) - len(failed)}/{len(report.variants)} passed"
    if failed:
        line += f" · ✗ failed: {md_inline(', '.join(failed))} (the reason is in the last column)"
    line += " · speedups are ORT CPU p50 at the sample's batch; files under `variants/` in the downloads and the zip."
    if any(v.name == "fp16" and "CUDA" not in (v.provider or "") for v in report.variants):
        line += " fp16 is meant for CUDA: its CPU timing is no measure of its GPU speed."
    return line


def attempts_frame(report: Report) -> pd.DataFrame:
    """The report's export attempts table, with the opset each attempt wrote."""
    rows = attempt_rows(report.export)
    written = [str(a.opset_written or "-") for a in report.export.attempts]
    return frame(ATTEMPT_PAGE_COLUMNS, [[*row[:3], opset, *row[3:]] for row, opset in zip(rows, written, strict=True)])


# Bar colours of the latency chart, by runtime (a runtime missing here would not be drawn at all).
LATENCY_COLORS = {
    "PyTorch": "#ee8a3c",
    "ONNX Runtime": "#5b6ee1",
    "ONNX Runtime optimized": "#2a9d8f",
    "ONNX Runtime int8": "#8e5bd6",
    "ONNX Runtime fp16": "#c9a227",
}


def latency_chart(report: Report) -> pd.DataFrame:
    """p50 per measured run, at the sample's batch and at batch 1: PyTorch, model.onnx and each variant
    (its ONNX Runtime runs, labelled by the variant's name; the variant table says which passed).
    Unavailable runs are left out: the tables say why, a chart never shows a number for them."""
    rows = []

    def add(lat, runtime_of, label_of) -> None:
        if lat is None:
            return
        for source in ({k: getattr(lat, k, None) for k, _ in LATENCY_LABELS}, dict(getattr(lat, "batch1", {}) or {})):
            for key, label in LATENCY_LABELS:
                t = source.get(key)
                runtime = runtime_of(key)
                if t is None or runtime is None:
                    continue
                shape = f"{t.batch}×{t.sequence}" if t.sequence else f"b{t.batch}"
                rows.append(
                    {
                        "run": f"{label_of(key, label)} {shape}",
                        "p50 ms": round(float(t.p50_ms), 4),
                        "p90 ms": round(float(t.p90_ms), 4),
                        "runtime": runtime,
                    }
                )

    add(
        report.latency,
        lambda k: "ONNX Runtime" if k.startswith("ort") else "PyTorch",
        lambda k, label: label.replace("PyTorch", "PT"),
    )
    for v in report.variants or []:  # PyTorch is timed once, in the main runs
        add(
            v.latency,
            lambda k, name=v.name: f"ONNX Runtime {name}" if k.startswith("ort") else None,
            lambda k, label, name=v.name: name + (" CUDA" if "cuda" in k else ""),
        )
    return pd.DataFrame(rows, columns=["run", "p50 ms", "p90 ms", "runtime"])


def diff_caption(report: Report) -> str:
    p = report.parity
    if p is None:
        return ""
    return f"Sample rows and shape probes; a check passes within atol {p.atol:g} + rtol {p.rtol:g} × |PyTorch value|."


def diff_chart(report: Report) -> pd.DataFrame:
    """Max |PyTorch − ONNX Runtime| per output on the sample and per shape probe, against atol."""
    rows = []
    if report.parity is not None:
        for o in report.parity.outputs:
            rows.append(
                {
                    "check": f"sample: {o.name}",
                    "max abs diff": _finite(o.max_abs_diff),
                    "verdict": "pass" if o.ok else "fail",
                }
            )
    if report.dynamic is not None:
        for pr in report.dynamic.probes:
            if pr.max_abs_diff is None:
                continue
            if pr.changed == "sequence" and pr.sequence is not None:
                label = f"seq {pr.sequence}"
            elif pr.changed == "batch":
                label = f"batch {pr.batch}"
            else:
                label = f"b{pr.batch}" + (f"·s{pr.sequence}" if pr.sequence is not None else "")
            rows.append(
                {"check": label, "max abs diff": _finite(pr.max_abs_diff), "verdict": "pass" if pr.ok else "fail"}
            )
    return pd.DataFrame(rows, columns=["check", "max abs diff", "verdict"])


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 1e30


def predictions_frame(report: Report) -> pd.DataFrame:
    preds = report.predictions or []
    if not preds:
        return pd.DataFrame()
    cols: list[str] = []
    for r in preds:
        cols += [k for k in r if k not in cols]
    return pd.DataFrame([{c: cell(r.get(c)) for c in cols} for r in preds], columns=cols)


def summary_md(report: Report) -> str:
    """A few plain lines under the verdict: source, roles, file, how busy the machine was, warnings."""
    m, src = md_inline, report.source
    roles = ", ".join(f"{md_code(c)} → {m(r)}" for c, r in report.roles.items())
    lines = [f"**Source** {md_code(Path(str(src.get('path', ''))).name)} ({m(src.get('kind'))}) · **Roles** {roles}"]
    if src.get("task"):
        lines.append(f"**Task** {m(src['task'])} ({m(src.get('task_reason') or '-')})")
    if report.graph is not None:
        lines.append(
            f"**File** {report.graph.size_bytes:,} bytes · {sum(report.graph.op_counts.values())} nodes · "
            f"producer {m(report.graph.producer or '-')}"
        )
    machine = getattr(report.latency, "machine", None) or {}
    load = machine.get("load_avg_after") or machine.get("load_avg_before")
    cpus = machine.get("logical_cpus") or machine.get("cpu")
    if isinstance(load, (int, float)) and isinstance(cpus, (int, float)) and cpus and load > cpus:
        lines.append(
            f"⚠ Latency was measured while the machine was busy (load average {load:.1f} on {cpus:g} "
            "CPUs): other processes competed for the CPU."
        )
    lines += _export_lines(report)
    for w in report.warnings:
        lines.append(f"⚠ {m(w)}")
    if report.timings:
        lines.append(f"**Time** {m(timing_line(report.timings))}")
    return "\n\n".join(lines)


def _export_lines(report: Report) -> list[str]:
    """Why this exporter (auto's reason, or the comparison of both files) and, when the locator ran, where
    ONNX Runtime first leaves PyTorch: the same words and tables as report.md."""
    e, c, lines = report.export, report.comparison, []
    if c is not None:
        lines.append(
            f"**Exporters compared** chosen: **{md_inline(c.winner)}** — {md_inline(c.reason)}\n\n"
            + markdown_table(COMPARISON_COLUMNS[:-1] + ["chosen / error"], comparison_rows(c))
        )
    elif e.reason:
        lines.append(f"**Exporter** {md_inline(e.exporter)}: {md_inline(e.reason)}")
    if report.divergence:
        div = Divergence.from_dict(report.divergence)
        table = markdown_table(HEADERS, table_rows(div)) if div.first or div.agreeing else ""
        lines.append(f"**Divergence** {md_inline(div.message)}" + (f"\n\n{table}" if table else ""))
    return lines


def diagnosis_md(report: Report | None, diagnosis: str = "", error: StudioError | None = None) -> str:
    """The exporter's own diagnosis when an export attempt failed (or the whole export did). Long texts
    (an error's details, the exporter's own Markdown report) are shown as they are, in a fenced block: they
    quote what the model and the upload hold (names, values), and none of it may become markup."""
    parts = []
    if error is not None:
        parts.append(f"**{md_inline(first_line(error, limit=len(str(error))))}**")  # the whole first line, uncut
        if error.details:
            parts.append(fenced(error.details))
    if report is not None:
        failed = [a for a in report.export.attempts if not a.ok]
        for a in failed:
            parts.append(
                f"**{md_inline(a.exporter)} exporter failed** (the {md_inline(report.export.exporter)} exporter's "
                f"file was kept):\n\n{fenced((a.error or '').strip()[:4000])}"
            )
        if diagnosis:
            parts.append(fenced(diagnosis))
    return "\n\n".join(parts)


def fenced(text: str) -> str:
    """`text` as a fenced Markdown code block, its fence longer than any run of backticks in it (so no line
    of it can close the block): shown as it is, nothing in it parsed."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


DOWNLOAD_ORDER = ("model", "data", "report_json", "report_md", "example", "sample_inputs")


def artifact_paths(report: Report, out: Path, zip_path: str | Path | None) -> list[str]:
    """model.onnx (+ .data), report.json, report.md, inference_example.py, sample_inputs.npz, every
    variant's files (variants/model.int8.onnx, + .data), --exporter compare's other file
    (candidates/model.torchscript.onnx, + .data), the zip."""
    files = []
    for key in DOWNLOAD_ORDER:
        name = report.files.get(key)
        if name and (out / name).is_file():
            files.append(str(out / name))
    for name in ("model.onnx.data",):  # in case the engine wrote it but did not list it
        p = out / name
        if p.is_file() and str(p) not in files:
            files.insert(1, str(p))
    for v in report.variants:
        for name in v.files or ([v.file] if v.file else []):
            p = out / name
            if p.is_file() and str(p) not in files:
                files.append(str(p))
    for row in report.comparison.rows if report.comparison else []:  # --exporter compare's other file (+ .data)
        for p in (out / row.file, out / f"{row.file}.data") if row.file else ():
            if p.is_file() and str(p) not in files:
                files.append(str(p))
    if zip_path and Path(zip_path).is_file():
        files.append(str(zip_path))
    return files
