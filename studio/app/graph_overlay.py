"""The numbers painted on the graph view (studio.app.graph_explorer), as Model Explorer's node data: a value per
node id (the ONNX node's name, which the ONNX adapter uses as the id), each with its colour, and the legend the
panel shows above the view. From report.json's keys only (a Report object or its dict alike):
- divergence: `divergence.per_node` {node: {max_abs_diff, ok, ...}} (studio.checks.locate), else the sites of
  `divergence.first / following / agreeing`; green = agrees within the tolerance, red = differs, dark red = the
  first diverging node. A NaN (non-finite in one runtime only) cannot be a node-data value (numbers only): it
  is named in the legend instead, never painted as a number.
- time: `profile.graph_nodes` {node: us} (ORT's profiler, median us per run), for a variant
  `profile.variants[file].graph_nodes`; a gradient from the fastest node (pale) to the slowest (red).
- precision (a variant): each node of the variant's own file: 2 = quantized (an int8 operator: its op type),
  1 = kept in float by the repair (`VariantInfo.kept_float`), 0 = float as built. Read from the file.
No gradio in here."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGREES, DIFFERS, FIRST = "#2e7d32", "#e53935", "#7f0000"
QUANTIZED, KEPT, FLOAT = "#1565c0", "#ef6c00", "#e0e0e0"
TIME_GRADIENT = [
    {"stop": 0, "bgColor": "#fff3e0"},
    {"stop": 0.5, "bgColor": "#fb8c00"},
    {"stop": 1, "bgColor": "#b71c1c"},
]
INT8_OPS = {
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QAttention",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "QGemm",
    "DynamicQuantizeLSTM",
}


@dataclass
class Overlay:
    """One node-data document: its name (granted under the graph's token), what it paints, its legend."""

    name: str  # "divergence.json", "time.json", "precision-int8.json"
    title: str  # "max |ONNX Runtime - PyTorch|"
    legend: list[tuple[str, str]]  # (css colour, what it means)
    doc: str  # the JSON Model Explorer reads
    nodes: int  # nodes with a value
    note: str = ""  # what is not painted, and why
    first: str | None = None  # the node to select (divergence: the first diverging one)


@dataclass
class GraphData:
    """The overlays of one file of the view."""

    overlays: list[Overlay] = field(default_factory=list)


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _num(v: Any) -> float | None:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _doc(graph_id: str, results: dict[str, dict[str, Any]], **extra: Any) -> str:
    """Model Explorer's node data, keyed by graph id. Its page renames a graph id that a file shown before it
    already has (model.onnx and a variant side by side: "main_graph", then "main_graph (2)"), so the same
    values are given under that name too."""
    data = {"results": results, **extra}
    return json.dumps({graph_id: data, f"{graph_id} (2)": data}, separators=(",", ":"))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def divergence_overlay(report: Any, graph_id: str) -> Overlay | None:
    """max |difference| vs PyTorch per node (see the module text), or None without a divergence section."""
    div = _get(report, "divergence")
    if div is None:
        return None
    sites: dict[str, dict[str, Any]] = {}
    per_node = _get(div, "per_node") or _get(div, "nodes")
    if isinstance(per_node, dict) and per_node:
        sites = {str(n): dict(v) for n, v in per_node.items() if isinstance(v, dict)}
    else:
        for key in ("agreeing", "first", "following"):
            items = _get(div, key)
            for s in items if isinstance(items, list) else [items] if items else []:
                node = _get(s, "node")
                if node:
                    sites[str(node)] = {"max_abs_diff": _get(s, "max_abs_diff"), "ok": _get(s, "ok")}
    if not sites:
        return None
    first = _get(_get(div, "first"), "node")
    results: dict[str, dict[str, Any]] = {}
    nan: list[str] = []
    for node, s in sites.items():
        v = _num(s.get("max_abs_diff"))
        if v is None or not math.isfinite(v):
            nan.append(node)
            continue
        colour = FIRST if node == first else AGREES if s.get("ok") else DIFFERS
        results[node] = {"value": v, "bgColor": colour, "textColor": "#ffffff"}
    atol, rtol = _num(_get(div, "atol")), _num(_get(div, "rtol"))
    tol = f" (atol {_fmt(atol)}, rtol {_fmt(rtol)})" if atol is not None and rtol is not None else ""
    legend = [(AGREES, f"agrees with PyTorch{tol}"), (DIFFERS, "differs"), (FIRST, "the first diverging node")]
    note = ""
    if nan:
        note = f"non-finite in one runtime only (NaN, not painted): {', '.join(nan[:5])}" + (
            f" and {len(nan) - 5} more" if len(nan) > 5 else ""
        )
    return Overlay(
        "divergence.json",
        "max |ONNX Runtime − PyTorch| at the node's output",
        legend,
        _doc(graph_id, results),
        len(results),
        note,
        str(first) if first else None,
    )


def time_overlay(report: Any, graph_id: str, file: str | None = None) -> Overlay | None:
    """ORT's median µs per run in each node (model.onnx, or the variant `file`), or None without a profile."""
    prof = _get(report, "profile")
    if file is not None:
        prof = (_get(prof, "variants") or {}).get(file)
    if not prof or _get(prof, "error"):
        return None
    times = _get(prof, "graph_nodes") or _get(prof, "all_nodes") or {}
    results = {str(n): {"value": float(us)} for n, us in times.items() if _num(us) is not None and math.isfinite(us)}
    if not results:
        return None
    top = max(v["value"] for v in results.values())
    provider = _get(prof, "provider") or "ONNX Runtime"
    legend = [("#fff3e0", "fastest"), ("#fb8c00", "half the slowest"), ("#b71c1c", f"slowest ({_fmt(top)} µs)")]
    return Overlay(
        f"time-{_slug(file)}.json" if file else "time.json",
        f"{file + ': ' if file else ''}µs per run in the node ({provider}, median, profiler on the sample)",
        legend,
        _doc(graph_id, results, gradient=TIME_GRADIENT),
        len(results),
    )


def _slug(name: str | None) -> str:
    return "".join(c if c.isalnum() else "-" for c in (name or "")).strip("-")


def node_ops(path: Path) -> tuple[str, dict[str, str]]:
    """The graph's id as the ONNX adapter names it and {node name: op type} (no weights are read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.graph.name or "<main>", {n.name: n.op_type for n in model.graph.node if n.name}


def precision_overlay(variant: Any, graph_id: str, ops: dict[str, str]) -> Overlay | None:
    """Which nodes of an int8 / fp16 variant's file are quantized and which were kept in float (see the module
    text); None for a variant that quantizes nothing and keeps nothing (optimized)."""
    kept = set(_get(variant, "kept_float") or [])
    if not kept and _get(variant, "quantized") is None and _get(variant, "cast") is None:
        return None
    results: dict[str, dict[str, Any]] = {}
    counts = {"quantized": 0, "kept": 0}
    for name, op in ops.items():
        if op in INT8_OPS:
            results[name] = {"value": 2, "bgColor": QUANTIZED, "textColor": "#ffffff"}
            counts["quantized"] += 1
        elif name in kept:
            results[name] = {"value": 1, "bgColor": KEPT, "textColor": "#ffffff"}
            counts["kept"] += 1
        else:
            results[name] = {"value": 0, "bgColor": FLOAT}
    missing = sorted(kept - set(ops))
    note = f"kept in float but named differently in this file: {', '.join(missing[:5])}" if missing else ""
    name = str(_get(variant, "name") or "variant")
    return Overlay(
        f"precision-{_slug(name)}.json",
        f"{name}: 2 = quantized ({counts['quantized']} nodes), 1 = kept in float ({counts['kept']}), 0 = float",
        [(QUANTIZED, "quantized"), (KEPT, "kept in float by the repair"), (FLOAT, "float as built")],
        _doc(graph_id, results),
        len(results),
        note,
    )


def overlays_for(
    report: Any, out: Path, name: str, variant: Any | None, candidate: bool = False
) -> tuple[str, list[Overlay], frozenset[str]]:
    """The graph id of `out/name`, its overlays and its node names: model.onnx gets divergence and time, a
    variant its precision and time, --exporter compare's other file (`candidate`) its time only where the
    profile has it (the locator runs on model.onnx only). A file that cannot be read gets none (the view says
    why itself)."""
    try:
        graph_id, ops = node_ops(out / name)
    except Exception:  # noqa: BLE001 - the adapter's own message is what the view shows
        return "", [], frozenset()
    found: list[Overlay | None] = []
    if candidate:
        found = [time_overlay(report, graph_id, name)]
    elif variant is None:
        found = [divergence_overlay(report, graph_id), time_overlay(report, graph_id)]
    else:
        found = [precision_overlay(variant, graph_id, ops), time_overlay(report, graph_id, name)]
    return graph_id, [o for o in found if o is not None], frozenset(ops)


def attach(found: list, report: Any, out: Path) -> dict[str, str]:
    """Each drawable entry's graph id and overlays (studio.app.graph.GraphEntry), and the documents to grant
    beside the files ({name: JSON}); the variant an entry is, by its file."""
    variants = {_get(v, "file"): v for v in _get(report, "variants") or [] if _get(v, "file")}
    docs: dict[str, str] = {}
    for e in found:
        if e.too_big:
            continue
        compared = bool(getattr(e, "beside", ""))  # --exporter compare's other file
        e.graph_id, e.overlays, e.node_names = overlays_for(report, out, e.name, variants.get(e.name), compared)
        docs.update({o.name: o.doc for o in e.overlays})
    return docs
