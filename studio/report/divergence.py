"""The divergence locator's result (studio.checks.locate) as data: the value where ONNX Runtime first leaves PyTorch,
the few after it and before it, how far the search got; to and from report.json, and in words (the CLI's
lines, the report's and the page's table). Imports neither torch nor onnx: the web server formats it too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Site:
    """One compared value: the ONNX node that produces it and the PyTorch module call it stands for."""

    value: str  # ONNX value name
    node: str  # the node producing it
    op_type: str
    module: str  # module path inside the user's model ("" is the model itself)
    module_type: str  # its class
    call: int  # which call of that module (0-based)
    shape: list[int]
    max_abs_diff: float  # NaN: non-finite in one runtime only
    max_rel_diff: float
    inputs_max_abs_diff: float | None  # over the values entering the module call; None: none of them known
    ok: bool
    position: int  # the producing node's index in the graph (graph order is topological)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


@dataclass
class Divergence:
    """The first diverging value (`first`), the next few, and the last ones before it that still agree."""

    found: bool
    exporter: str  # how nodes were tied to modules: "torchscript" (scope names) | "dynamo" (metadata) | "unknown"
    first: Site | None
    following: list[Site] = field(default_factory=list)
    agreeing: list[Site] = field(default_factory=list)  # graph order, the nearest last
    compared: int = 0  # module calls whose output was compared
    candidates: int = 0  # module calls tied to nodes of the graph (each could be compared)
    nodes: int = 0  # nodes in the graph
    reached: int = 0  # nodes up to the last compared value (graph order)
    complete: bool = False  # every candidate compared (or stopped after the first and the few after it)
    stopped: str | None = None  # why it stopped early: the value or time budget, an ORT error
    seconds: float = 0.0
    rows: list[int] = field(default_factory=list)  # 0-based rows of the feeds it ran on
    atol: float = 0.0
    rtol: float = 0.0
    outputs_max_abs_diff: float | None = None  # graph outputs in the locator's own run (None: not run)
    trigger: str | None = None  # what asked for it: "parity", "probe ...", "requested"
    message: str = ""
    # every value compared, by the ONNX node producing it (the graph view paints these): node name ->
    # {value, op_type, module, call, max_abs_diff, max_rel_diff, ok, position}; a node with several compared
    # outputs keeps its worst; NaN (non-finite in one runtime only) stays NaN ("nan" in report.json)
    per_node: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a generator's locator run (studio.generate.locate_step): the step it ran on, {run, prompt, step, expected,
    # got, margin, near_tie}; None for a classifier's
    generation_step: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: _json_float(v) for k, v in asdict(self).items() if k not in _NESTED}
        d["first"] = self.first.to_dict() if self.first else None
        d["following"] = [s.to_dict() for s in self.following]
        d["agreeing"] = [s.to_dict() for s in self.agreeing]
        d["per_node"] = {n: {k: _json_float(v) for k, v in e.items()} for n, e in self.per_node.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Divergence:
        """Back from `to_dict()` (report.json's `divergence`), so the CLI and the page format what the report holds."""
        sites = lambda items: [Site(**{k: _from_json(v) for k, v in x.items()}) for x in items]
        rest = {k: _from_json(v) for k, v in d.items() if k not in _NESTED}
        return cls(
            **rest,
            first=sites([d["first"]])[0] if d.get("first") else None,
            following=sites(d.get("following") or []),
            agreeing=sites(d.get("agreeing") or []),
            per_node={n: {k: _from_json(v) for k, v in e.items()} for n, e in (d.get("per_node") or {}).items()},
        )


_NESTED = ("first", "following", "agreeing", "per_node")


def per_node(sites: list[Site]) -> dict[str, dict[str, Any]]:
    """Divergence.per_node from the compared values (one Site per value): by producing node, in graph order;
    a node with several compared values keeps the one that differs most (NaN first)."""
    worst = lambda s: (not s.ok, math.isnan(s.max_abs_diff), s.max_abs_diff if not math.isnan(s.max_abs_diff) else 0)  # noqa: E731
    out: dict[str, Site] = {}
    for s in sorted(sites, key=lambda s: s.position):
        if s.node not in out or worst(s) > worst(out[s.node]):
            out[s.node] = s
    keys = ("value", "op_type", "module", "call", "max_abs_diff", "max_rel_diff", "ok", "position")
    return {n: {k: getattr(s, k) for k in keys} for n, s in out.items()}


def _from_json(v: Any) -> Any:
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


def _json_float(v: Any) -> Any:
    """NaN stays NaN in Python; in JSON (report.json) it is written as the string "nan", never a number."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# --- words: the summary, the CLI's lines, the report's table ---------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.3g}"


def _module(s: Site) -> str:
    where = s.module or "(the model)"
    return f"{where} ({s.module_type}{', call ' + str(s.call + 1) if s.call else ''})"


def _reach(div: Divergence) -> str:
    text = f"compared {div.compared} of {div.candidates} module calls, up to node {div.reached} of {div.nodes}"
    return text + (f"; stopped: {div.stopped}" if div.stopped else "")


def summary(div: Divergence) -> str:
    """One sentence: where it diverges, or that nothing compared diverges, and how far it got."""
    if div.first is not None:
        f = div.first
        return (
            f"ONNX Runtime leaves PyTorch first at node {f.node} ({f.op_type}) from module {_module(f)}: "
            f"max abs diff {_num(f.max_abs_diff)}, its inputs {_num(f.inputs_max_abs_diff)} "
            f"({_reach(div)}, {div.seconds:g} s)"
        )
    if not div.candidates:
        return (
            f"no PyTorch module output could be tied to a node of this file (exporter: {div.exporter}); {_reach(div)}"
        )
    return f"every module output compared agrees within atol {div.atol:g}, rtol {div.rtol:g} ({_reach(div)})"


def _rows(div: Divergence) -> list[tuple[str, Site]]:
    return (
        [("agrees", s) for s in div.agreeing]
        + ([("FIRST", div.first)] if div.first else [])
        + [("differs", s) for s in div.following]
    )


def format_lines(div: Divergence) -> list[str]:
    """The CLI's lines: the summary, then one line per value around the divergence."""
    lines = [f"divergence  {'FOUND' if div.found else 'none found'}: {div.message}"]
    for tag, s in _rows(div):
        lines.append(
            f"  {tag:<8} {s.node} ({s.op_type})  module {_module(s)}  "
            f"max abs {_num(s.max_abs_diff)}  inputs {_num(s.inputs_max_abs_diff)}"
        )
    return lines


HEADERS = ["", "node", "op", "module", "shape", "inputs max abs diff", "max abs diff", "max rel diff"]


def table_rows(div: Divergence) -> list[list[str]]:
    """The values around the divergence as table rows (HEADERS): the page's table and the report's."""
    return [
        [
            tag,
            s.node,
            s.op_type,
            _module(s),
            str(s.shape),
            _num(s.inputs_max_abs_diff),
            _num(s.max_abs_diff),
            _num(s.max_rel_diff),
        ]
        for tag, s in _rows(div)
    ]


def to_markdown(div: Divergence) -> str:
    """The report's section: the summary and a table of the values around the divergence (node names in
    code spans; every value escaped for Markdown: names come from the model)."""
    from studio.escape import md_code, md_inline

    head = ["## Divergence", "", md_inline(div.message), ""]
    rows = table_rows(div)
    if not rows:
        return "\n".join(head)
    table = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        cells = [md_code(x, table=True) if i == 1 else md_inline(x, cell=True) for i, x in enumerate(r)]
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + table) + "\n"
