"""The Graph panel's HTML: the file chosen among model.onnx and the variants, or model.onnx and a variant (or
--exporter compare's other file) side by side, in Model Explorer served by the studio (studio.app.graph_explorer)
with the report's numbers painted on the nodes and their legend above it; in Netron's viewer (studio.app.graph)
where Model Explorer is not installed; or why it is not drawn. No gradio in here."""

from __future__ import annotations

from pathlib import Path

from studio.app import graph_explorer
from studio.app.cards import esc
from studio.app.graph import viewer_url
from studio.report.render import size_text

SWATCH = "display:inline-block;width:12px;height:12px;border-radius:3px;vertical-align:middle;margin:0 4px 0 8px;"
FLAT_NODES = 300  # graphs up to this many nodes are drawn flat (every op, its colour seen); larger in layers
SPLIT = " ⇆ "  # a choice showing two files side by side: "model.onnx ⇆ int8 · variants/model.int8.onnx"


def _explorer(e) -> bool:
    return bool(e.token and not e.too_big and e.graph_id and graph_explorer.explorer_dir() is not None)


def graph_choices(found: list) -> list[str]:
    """The files the Graph panel can show (model.onnx first, then each variant), by label, then model.onnx
    beside each variant (Model Explorer's split view), when both can be drawn."""
    pairs = [f"{e.beside or found[0].label}{SPLIT}{e.label}" for e in found[1:] if _explorer(found[0]) and _explorer(e)]
    return [e.label for e in found] + pairs


def _legend(entries: list) -> str:
    rows = []
    for e in entries:
        for o in e.overlays:
            swatches = "".join(
                f'<span class="graph-swatch" style="{SWATCH}background:{esc(c)}"></span>{esc(t)} ' for c, t in o.legend
            )
            note = f' <span class="muted">({esc(o.note)})</span>' if o.note else ""
            rows.append(
                f'<div class="graph-legend-row" data-overlay="{esc(o.name)}"><b>{esc(o.title)}</b> · '
                f"{o.nodes:,} nodes · {swatches}{note}</div>"
            )
        if getattr(e, "beside", "") and not e.overlays:  # --exporter compare's other file: no numbers measured
            rows.append(
                f'<div class="graph-legend-row" data-overlay=""><b>{esc(e.name)}</b> · no per-node numbers: the '
                "divergence locator and ORT's profile ran on model.onnx only (its op types are on its nodes)</div>"
            )
    if not rows:
        return ""
    how = (
        "Each overlay is a node-data source in the view: pick it under <i>Node data providers</i> on the right; "
        "click a node for its values."
    )
    return f'<div class="graph-legend" id="graph-legend">{"".join(rows)}<div class="muted">{how}</div></div>'


def _explorer_html(entries: list, node: str | None) -> str:
    """Model Explorer in an iframe: one file, or two side by side, with their overlays loaded."""
    first = entries[0]
    # the page paints the node-data source loaded last: the first overlay of each file (divergence, precision)
    overlays = [(o.name, e.name) for e in entries for o in reversed(e.overlays)]
    selected = node if first.label == "model.onnx" else None
    select = [selected if selected and selected in e.node_names else "" for e in entries]
    seen: dict[str, int] = {}
    models = []
    for e in entries:  # Model Explorer's page renames a graph id seen before: "main_graph (2)"
        n = seen[e.graph_id] = seen.get(e.graph_id, 0) + 1
        models.append((e.name, e.graph_id if n == 1 else f"{e.graph_id} ({n})"))
    flat = all(e.nodes is not None and e.nodes <= FLAT_NODES for e in entries)
    src = graph_explorer.explorer_url(first.token, models, overlays, select, len(entries) > 1, flat)
    what = " and ".join(esc(e.name) for e in entries)
    facts = " · ".join(
        f"{esc(e.name)} {size_text(e.size_bytes)}" + (f", {e.nodes:,} nodes" if e.nodes is not None else "")
        for e in entries
    )
    sync = " Side by side: navigation is synchronised by node id (the Sync button)." if len(entries) > 1 else ""
    if any(getattr(e, "beside", "") for e in entries[1:]):
        sync += " The two exporters name their nodes differently: only nodes named alike follow each other."
    data = [Path(e.data).name for e in entries if e.data]
    weights = f" Weights in {esc(', '.join(data))} are not loaded by this view." if data else ""
    return (
        f'{_legend(entries)}<div class="graph-facts muted">{facts} · <a href="{esc(src)}" target="_blank" '
        f'rel="noopener">open in a new tab</a></div>'
        f'<iframe id="graph-frame" class="graph-frame" title="Graph of {what}" src="{esc(src)}" '
        f'data-file="{esc(" ".join(e.name for e in entries))}" data-viewer="model-explorer"></iframe>'
        f'<div class="graph-note muted">Drawn by Model Explorer, served by the studio (nothing is fetched '
        f"elsewhere); click a node for its properties and numbers.{sync}{weights}</div>"
    )


def graph_html(found: list, choice: str | None = None, node: str | None = None) -> str:
    """The chosen file in Netron's viewer (an iframe of the studio's own copy), or, for a graph too big to
    draw, why not and its download; with the divergence node named (and selected in model.onnx's view)."""
    if choice and SPLIT in choice:
        left, right = choice.split(SPLIT, 1)
        other = next((e for e in found if e.label == right), None)
        first = found[0] if found and other is not None and left == other.beside else None
        pair = [first or next((e for e in found if e.label == left), None), other]
        if all(e is not None and _explorer(e) for e in pair):
            return _divergence_line(node, "selected in model.onnx, on the left") + _explorer_html(pair, node)
        choice = found[0].label if first is not None else left
    entry = next((e for e in found if e.label == choice), found[0] if found else None)
    if entry is None:
        return '<div class="muted" id="graph-none">No ONNX file to show.</div>'
    if _explorer(entry):
        where = "selected in the view below" if entry.label == "model.onnx" else "in model.onnx"
        return _divergence_line(node, where) + _explorer_html([entry], node)
    parts = []
    is_model = entry.label == "model.onnx"
    if node:
        where = "selected in the view below" if is_model and not entry.too_big and entry.url else "in model.onnx"
        parts.append(_divergence_line(node, where))
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


def _divergence_line(node: str | None, where: str) -> str:
    if not node:
        return ""
    return (
        f'<div class="graph-divergence" id="graph-divergence">ONNX Runtime first leaves PyTorch at '
        f"node <code>{esc(node)}</code> ({where}).</div>"
    )
