"""The Graph panel's HTML: the file chosen among model.onnx and the variants, in Netron's viewer served by
the studio (studio.app.graph serves the viewer and the files), or why it is not drawn. No gradio in here."""

from __future__ import annotations

from pathlib import Path

from studio.app.cards import esc
from studio.app.graph import viewer_url
from studio.report.render import size_text


def graph_choices(found: list) -> list[str]:
    """The files the Graph panel can show (model.onnx first, then each variant), by label."""
    return [e.label for e in found]


def graph_html(found: list, choice: str | None = None, node: str | None = None) -> str:
    """The chosen file in Netron's viewer (an iframe of the studio's own copy), or, for a graph too big to
    draw, why not and its download; with the divergence node named (and selected in model.onnx's view)."""
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
    facts = f"{esc(entry.name)} · {size_text(entry.size_bytes)}" + (
        f" · {entry.nodes:,} nodes" if entry.nodes is not None else ""
    )
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
