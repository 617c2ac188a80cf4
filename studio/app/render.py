"""Preview and Report -> what the page shows: the cards, the mapping line, the verdict strip, the tables,
the chart data, the summary / diagnosis Markdown and the download list. No gradio in here, so every
function is testable on its own; numbers are formatted by studio.report's row helpers."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..divergence import HEADERS, Divergence, table_rows
from ..errors import StudioError, first_line
from ..report import Report, worst_diff
from ..report_render import (
    COMPARISON_COLUMNS,
    LATENCY_LABELS,
    PARITY_COLUMNS,
    comparison_rows,
    io_rows,
    latency_rows,
    markdown_table,
    parity_rows,
    probe_rows,
    variant_rows,
)

IO_HEADERS = ["", "name", "dtype", "shape"]
PARITY_HEADERS = list(PARITY_COLUMNS)
PROBE_HEADERS = ["varies", "batch", "sequence", "verdict", "max abs diff", "message"]
LATENCY_HEADERS = ["run", "p50 ms", "p90 ms", "p99 ms", "iterations", "batch", "threads", "provider"]
# the columns of studio.report_render.variant_rows (its Markdown table, with the app's own words)
VARIANT_HEADERS = [
    "variant",
    "verdict",
    "size",
    "max abs diff",
    "min cosine",
    "argmax agreement",
    "ORT CPU p50 ms",
    "speedup vs PyTorch",
    "speedup vs model.onnx",
    "how built / error",
]
ATTEMPT_HEADERS = ["exporter", "ok", "seconds", "opset written", "error"]


# --------------------------------------------------------------------------------------------------
# Preview -> page


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


INPUT_KIND_WORDS = {
    "input_ids": "token ids",
    "attention_mask": "attention mask",
    "token_type_ids": "token type ids",
    "tabular": "numbers",
}


def model_html(model: dict | None, error: str | None = None, filename: str | None = None) -> str:
    """The "detected" card for the checkpoint."""
    if error:
        return (
            f'<div class="card card-bad"><div class="card-title">Checkpoint'
            f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{_multiline(error)}</div></div>'
        )
    if not model:
        return (
            '<div class="card card-empty"><div class="card-title">Checkpoint</div>'
            '<div class="muted">Upload a checkpoint (a file, or a .zip of a model folder) to see what it '
            "expects.</div></div>"
        )
    inputs = "".join(
        f'<li><code>{esc(i["name"])}</code> <span class="muted">{esc(INPUT_KIND_WORDS.get(i.get("kind"), i.get("kind")))}'
        + (f" from column <code>{esc(i['column'])}</code>" if i.get("column") else "")
        + (f", width {esc(i['width'])}" if i.get("width") else "")
        + ("" if i.get("required", True) else ", optional")
        + "</span></li>"
        for i in model.get("inputs", [])
    )
    tok = model.get("tokenizer")
    facts = [
        ("kind", esc(model.get("kind"))),
        *(
            [("task", f'{esc(model["task"])} <span class="muted">({esc(model.get("task_reason") or "")})</span>')]
            if model.get("task")
            else []
        ),
        ("architecture", esc(model.get("architecture") or model.get("model_type") or "-")),
        ("parameters", _count(model.get("parameters"))),
        ("tokenizer", f'<span class="ok">✓ {esc(tok)}</span>' if tok else '<span class="bad">✗ none found</span>'),
        ("outputs", ", ".join(f"<code>{esc(o)}</code>" for o in model.get("outputs", [])) or "-"),
    ]
    if model.get("labels"):
        labels = [str(x) for x in model["labels"]]
        facts.append(("labels", esc(", ".join(labels[:12]) + (" …" if len(labels) > 12 else ""))))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        f'<div class="card card-good"><div class="card-title">Checkpoint'
        f"{' · ' + esc(filename) if filename else ''}</div>"
        f'<table class="facts">{rows}</table>'
        f'<div class="subhead">Model inputs it expects</div><ul class="inputs">{inputs}</ul></div>'
    )


def sample_html(columns: list[dict], rows: list[dict], error: str | None = None, filename: str | None = None) -> str:
    if error:
        return (
            f'<div class="card card-bad"><div class="card-title">Sample'
            f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{_multiline(error)}</div></div>'
        )
    if not columns:
        return (
            '<div class="card card-empty"><div class="card-title">Sample</div>'
            '<div class="muted">Upload a few real rows (CSV, TSV, JSON or JSONL).</div></div>'
        )
    kinds: dict[str, int] = {}
    for c in columns:
        kinds[c.get("detected", "?")] = kinds.get(c.get("detected", "?"), 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (
        f'<div class="card card-good"><div class="card-title">Sample'
        f"{' · ' + esc(filename) if filename else ''}</div>"
        f"<div>{len(columns)} columns ({esc(summary)}); first {len(rows)} rows below.</div></div>"
    )


def preview_frame(rows: list[dict], columns: list[dict] | None = None) -> pd.DataFrame:
    names = [c["name"] for c in columns or []] or (list(rows[0].keys()) if rows else [])
    return pd.DataFrame([{n: _cell(r.get(n)) for n in names} for r in rows], columns=names)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def initial_roles(columns: list[dict], mapping: dict | None) -> dict[str, str]:
    """Dropdown values after upload: the model-aware roles when the model was checked, else the
    sample-only suggestion."""
    final = (mapping or {}).get("roles") or {}
    return {c["name"]: final.get(c["name"], c.get("suggested", "ignore")) for c in columns}


def mapping_html(mapping: dict | None, have_model: bool, have_sample: bool) -> str:
    """Whether the current mapping can feed the model, said before export."""
    if not (have_model and have_sample):
        missing = [w for w, have in (("a checkpoint", have_model), ("a sample file", have_sample)) if not have]
        return (
            f'<div class="mapping mapping-wait">The mapping is checked against the model once '
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} uploaded.</div>"
        )
    if mapping is None:
        return '<div class="mapping mapping-wait">Checking the mapping…</div>'
    if not mapping.get("ok"):
        return (
            f'<div class="mapping mapping-bad" data-ok="false"><b>✗ This mapping cannot feed the model.</b>'
            f'<div class="msg">{_multiline(mapping.get("error") or "")}</div></div>'
        )
    tensors = mapping.get("tensors") or {}
    parts = ", ".join(
        f"<code>{esc(n)}</code> {esc(t['dtype'])}[{', '.join(map(str, t['shape']))}]" for n, t in tensors.items()
    )
    feeds = mapping.get("feeds") or {}
    order = "".join(
        f'<div class="feeds" data-input="{esc(n)}"><code>{esc(n)}</code> ← '
        + ", ".join(f"{esc(f['column'])} [{_index(f)}]" for f in cols)
        + "</div>"
        for n, cols in feeds.items()
        if len(cols) > 1
    )
    return f'<div class="mapping mapping-ok" data-ok="true"><b>✓ Mapping OK.</b> The sample makes: {parts}{order}</div>'


def _index(f: dict) -> str:
    start, width = int(f["start"]), int(f["width"])
    return str(start) if width == 1 else f"{start}-{start + width - 1}"


def _multiline(text: str) -> str:
    return "<br>".join(esc(line) for line in str(text).splitlines())


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
        tile("parity", "Parity", p.ok, f"max |Δ| {_fmt(worst)} · atol {p.atol:g}, rtol {p.rtol:g}")
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
        f'<div class="verdict-head">✗ {esc(title)}</div><div class="msg">{_multiline(message)}</div></div>'
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
    return frame(IO_HEADERS, io_rows(report))


def parity_frame(report: Report) -> pd.DataFrame:
    return frame(PARITY_HEADERS, parity_rows(report.parity))


def probe_frame(report: Report) -> pd.DataFrame:
    return frame(PROBE_HEADERS, probe_rows(report.dynamic))


def latency_frame(report: Report) -> pd.DataFrame:
    return frame(LATENCY_HEADERS, latency_rows(report.latency))


def variants_frame(report: Report) -> pd.DataFrame:
    """One row per variant after model.onnx's own row; a failed one shows FAIL and its error."""
    if not report.variants:
        return frame(VARIANT_HEADERS, [])
    return frame(VARIANT_HEADERS, variant_rows(report.variants, report.latency))


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
        line += f" · ✗ failed: {', '.join(failed)} (the reason is in the last column)"
    line += " · speedups are ORT CPU p50 at the sample's batch; files under `variants/` in the downloads and the zip."
    if any(v.name == "fp16" and "CUDA" not in (v.provider or "") for v in report.variants):
        line += " fp16 is meant for CUDA: its CPU timing is no measure of its GPU speed."
    return line


def attempts_frame(report: Report) -> pd.DataFrame:
    return frame(
        ATTEMPT_HEADERS,
        [
            [
                a.exporter,
                "✓" if a.ok else "✗",
                "-" if a.seconds is None else f"{a.seconds:.1f}",
                str(a.opset_written or "-"),
                a.error or "",
            ]
            for a in report.export.attempts
        ],
    )


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
    return pd.DataFrame([{c: _cell(r.get(c)) for c in cols} for r in preds], columns=cols)


def summary_md(report: Report) -> str:
    """A few plain lines under the verdict: source, roles, file, how busy the machine was, warnings."""
    roles = ", ".join(f"`{c}` → {r}" for c, r in report.roles.items())
    lines = [
        f"**Source** `{Path(str(report.source.get('path', ''))).name}` ({report.source.get('kind')}) · "
        f"**Roles** {roles}"
    ]
    if report.source.get("task"):
        lines.append(f"**Task** {report.source['task']} ({report.source.get('task_reason') or '-'})")
    if report.graph is not None:
        lines.append(
            f"**File** {report.graph.size_bytes:,} bytes · {sum(report.graph.op_counts.values())} nodes · "
            f"producer {report.graph.producer or '-'}"
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
        lines.append(f"⚠ {w}")
    return "\n\n".join(lines)


def _export_lines(report: Report) -> list[str]:
    """Why this exporter (auto's reason, or the comparison of both files) and, when the locator ran, where
    ONNX Runtime first leaves PyTorch: the same words and tables as report.md."""
    e, c, lines = report.export, report.comparison, []
    if c is not None:
        lines.append(
            f"**Exporters compared** chosen: **{esc(c.winner)}** — {esc(c.reason)}\n\n"
            + markdown_table(COMPARISON_COLUMNS[:-1] + ["chosen / error"], comparison_rows(c))
        )
    elif e.reason:
        lines.append(f"**Exporter** {esc(e.exporter)}: {esc(e.reason)}")
    if report.divergence:
        div = Divergence.from_dict(report.divergence)
        table = markdown_table(HEADERS, table_rows(div)) if div.first or div.agreeing else ""
        lines.append(f"**Divergence** {esc(div.message)}" + (f"\n\n{table}" if table else ""))
    return lines


def diagnosis_md(report: Report | None, diagnosis: str = "", error: StudioError | None = None) -> str:
    """The exporter's own diagnosis when an export attempt failed (or the whole export did)."""
    parts = []
    if error is not None:
        parts.append(f"**{esc(first_line(error, limit=len(str(error))))}**")  # the whole first line, uncut
        if error.details:
            parts.append(error.details)
    if report is not None:
        failed = [a for a in report.export.attempts if not a.ok]
        for a in failed:
            parts.append(
                f"**{a.exporter} exporter failed** (the {report.export.exporter} exporter's file was "
                f"kept):\n\n```\n{(a.error or '').strip()[:4000]}\n```"
            )
        if diagnosis:
            parts.append(diagnosis)
    return "\n\n".join(parts)


DOWNLOAD_ORDER = ("model", "data", "report_json", "report_md", "example", "sample_inputs")


def artifact_paths(report: Report, out: Path, zip_path: str | Path | None) -> list[str]:
    """model.onnx (+ .data), report.json, report.md, inference_example.py, sample_inputs.npz, every
    variant's files (variants/model.int8.onnx, + .data), the zip."""
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
    if zip_path and Path(zip_path).is_file():
        files.append(str(zip_path))
    return files


# --------------------------------------------------------------------------------------------------
# The Graph panel (studio.app.graph serves the viewer and the files)


def graph_choices(found: list) -> list[str]:
    """The files the Graph panel can show (model.onnx first, then each variant), by label."""
    return [e.label for e in found]


def graph_html(found: list, choice: str | None = None, node: str | None = None) -> str:
    """The chosen file in Netron's viewer (an iframe of the studio's own copy), or, for a graph too big to
    draw, why not and its download; with the divergence node named (and selected in model.onnx's view)."""
    from .graph import viewer_url

    entry = next((e for e in found if e.label == choice), found[0] if found else None)
    if entry is None:
        return '<div class="muted" id="graph-none">No ONNX file to show.</div>'
    parts = []
    is_model = entry.label == "model.onnx"
    if node:
        where = "selected in the view below" if is_model and not entry.too_big and entry.url else "in model.onnx"
        parts.append(
            f'<div class="graph-divergence" id="graph-divergence">ONNX Runtime first leaves PyTorch at '
            f"node <code>{esc(node)}</code> ({where}).</div>"
        )
    size = f"{entry.size_bytes / 2**20:.1f} MiB" if entry.size_bytes >= 2**20 else f"{entry.size_bytes / 1024:.0f} KiB"
    facts = f"{esc(entry.name)} · {size}" + (f" · {entry.nodes:,} nodes" if entry.nodes is not None else "")
    if entry.too_big or not entry.url:
        why = entry.too_big or "its file is no longer available"
        link = (
            f' <a href="{esc(entry.url)}?download=1" download="{esc(Path(entry.name).name)}">Download '
            f"{esc(Path(entry.name).name)}</a> and open it in Netron on your machine (<code>pip install netron"
            f"</code>, <code>netron {esc(Path(entry.name).name)}</code>)."
            if entry.url
            else ""
        )
        parts.append(
            f'<div class="card card-empty" id="graph-too-big"><div class="card-title">Graph not drawn here'
            f"</div><div>{esc(facts)}: {esc(why)}.{link}</div></div>"
        )
        return "".join(parts)
    src = viewer_url(entry.url, node if is_model else None)
    note = (
        "Inputs and outputs are drawn with their symbolic dimensions; click a node for its properties, "
        "the background for the graph's inputs and outputs."
    )
    if entry.data:
        note += (
            f" Its weights are in {esc(Path(entry.data).name)}, served beside it: a weight's values load "
            "when you open it."
        )
    parts.append(
        f'<div class="graph-facts muted">{esc(facts)} · <a href="{esc(src)}" target="_blank" '
        f'rel="noopener">open in a new tab</a></div>'
        f'<iframe id="graph-frame" class="graph-frame" title="Graph of {esc(entry.name)}" src="{esc(src)}" '
        f'data-file="{esc(entry.name)}"></iframe><div class="graph-note muted">{note}</div>'
    )
    return "".join(parts)
