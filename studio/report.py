"""Report dataclasses -> JSON, Markdown and table rows. Results live here, never only in log lines."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "onnx-studio/report"
SCHEMA_VERSION = 1


@dataclass
class ExportAttempt:
    exporter: str  # "dynamo" | "torchscript"
    ok: bool
    error: str | None = None
    seconds: float | None = None
    opset_written: int | None = None
    diagnosis_path: str | None = None  # the exporter's own markdown report, when it wrote one
    skipped: bool = False  # not run: known to fail for this model and opset (the reason is in `error`)
    note: str | None = None  # what the studio did to the exporter's file (e.g. a rewrite of leftover ops)


@dataclass
class ExportInfo:
    exporter: str | None  # the exporter whose file was kept
    opset_requested: int
    opset: int | None  # read back from the file
    seconds: float
    attempts: list[ExportAttempt] = field(default_factory=list)
    external_data: bool = False
    # why this exporter's file was kept, e.g. "dynamo succeeded first", "dynamo failed: ...; fell back to
    # torchscript", or the comparison's verdict (--exporter compare)
    reason: str = ""


@dataclass
class CandidateRow:
    """One exporter's file, checked and timed beside the other's (--exporter compare, studio/compare.py)."""

    exporter: str
    exported: bool  # a usable file was written (else `error` says why, or that it was skipped)
    error: str | None = None
    skipped: bool = False
    opset: int | None = None  # read back from the file
    producer: str = ""
    checker: bool | None = None
    parity: bool | None = None
    parity_max_abs_diff: float | None = None
    dynamic: bool | None = None  # the shape probes; None when no dynamic axes were asked for
    failed_checks: list[str] = field(default_factory=list)
    nodes: int | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    size_bytes: int | None = None
    export_seconds: float | None = None
    ort_cpu: Timing | None = None  # timed side by side with the other file (latency.side_by_side)
    round_p50_ms: list[float] = field(default_factory=list)  # ORT CPU p50 of each alternating round
    latency_error: str | None = None

    @property
    def passes(self) -> bool:
        """Exported, and every check passed."""
        return self.exported and not self.failed_checks


@dataclass
class Comparison:
    rows: list[CandidateRow]
    winner: str
    reason: str  # how the winner was decided, with the numbers
    margin: float  # ORT CPU p50: the faster file wins only when it is this fraction below the other's
    threads: int | None = None
    budget_s: float | None = None


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str]  # ints for fixed dims, names for symbolic ones


@dataclass
class GraphInfo:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_counts: dict[str, int]
    size_bytes: int
    opset: int | None
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckerInfo:
    ok: bool
    message: str


@dataclass
class OutputDiff:
    name: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool
    argmax_agreement: float | None = None  # fraction of rows whose argmax agrees; None if n/a
    shape: list[int] = field(default_factory=list)
    # what a row is for argmax_agreement: "rows" (classes), "real tokens" (token classification, padding
    # left out), "rows, over real tokens" (question answering start / end positions)
    agreement_over: str | None = None
    topk: int | None = None  # k of topk_agreement (class outputs with >= 3 classes)
    topk_agreement: float | None = None  # fraction of rows whose top-k class sets are equal
    min_cosine: float | None = None  # embeddings: lowest cosine similarity ORT vs PyTorch over rows / real tokens
    # non-finite values, counted in each runtime (never replaced by numbers in a difference)
    torch_nan: int = 0
    torch_inf: int = 0
    ort_nan: int = 0
    ort_inf: int = 0
    same_nonfinite: int = 0  # elements non-finite alike in both (NaN and NaN, +inf and +inf): not differences
    nonfinite_rows: list[int] = field(default_factory=list)  # 1-based rows where they disagree on one
    note: str = ""  # what the counts mean, in words (empty when every value is finite)


@dataclass
class ParityInfo:
    ok: bool
    atol: float
    rtol: float
    outputs: list[OutputDiff]
    rows: int = 0
    provider: str = "CPUExecutionProvider"


@dataclass
class Probe:
    batch: int
    sequence: int | None
    ok: bool
    max_abs_diff: float | None
    message: str
    changed: str = ""  # which axis this probe varies: "batch" | "sequence" | ""


@dataclass
class DynamicInfo:
    ok: bool | None  # None = not requested (static export)
    probes: list[Probe] = field(default_factory=list)
    requested: dict[str, list[str]] = field(default_factory=dict)  # input -> dynamic axes asked


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    iterations: int
    batch: int
    sequence: int | None
    threads: int | None
    provider: str  # what really ran, e.g. "CPUExecutionProvider", "CUDAExecutionProvider", "torch-cpu"
    warmup: int = 0  # untimed calls made first
    io_binding: bool = False  # ORT CUDA: inputs and outputs bound on the device (no host copies timed)
    ci95_pct: float | None = None  # the median's 95% confidence interval, +- this % of p50 (None: < 6 calls)
    stopped: str | None = None  # why timing stopped: "precision" (CI within target), "budget", "max_iters"


@dataclass
class LatencyInfo:
    torch_cpu: Timing | None = None
    ort_cpu: Timing | None = None
    ort_cuda: Timing | None = None
    torch_cuda: Timing | None = None
    cuda_unavailable_reason: str | None = None
    threads: int | None = None
    budget_s: float | None = None
    errors: dict[str, str] = field(default_factory=dict)  # measurement -> why it could not run
    # the same measurements at batch 1 (key as above -> Timing); empty when the sample has one row
    batch1: dict[str, Timing] = field(default_factory=dict)
    seconds: float | None = None  # wall time spent measuring
    # what else the machine was doing: {"cpu", "logical_cpus", "load_avg_before", "load_avg_after"};
    # a load average above the core count means other processes competed for the CPU while timing
    machine: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantInfo:
    """An extra artifact (optimized / int8 / fp16) with its own checks."""

    name: str
    file: str | None
    ok: bool
    size_bytes: int | None = None
    parity: ParityInfo | None = None
    dynamic: DynamicInfo | None = None
    latency: LatencyInfo | None = None
    error: str | None = None
    notes: str = ""
    method: str = ""  # how it was built, e.g. "onnxscript ORT fusions", "onnxruntime dynamic quantization"
    source: str = ""  # the file it was built from, relative to the output folder
    files: list[str] = field(default_factory=list)  # every file of the artifact (.onnx + .data), relative
    tolerance: dict[str, Any] = field(default_factory=dict)  # {atol, rtol, min_argmax_agreement, rule}
    provider: str | None = None  # the execution provider its parity was checked on
    seconds: float | None = None  # time to build it
    speedup_vs_torch: float | None = None  # PyTorch CPU p50 / this variant's ORT CPU p50, sample batch
    speedup_vs_fp32: float | None = None  # fp32 model.onnx ORT CPU p50 / this variant's, sample batch


@dataclass
class Report:
    source: dict[str, Any]  # {kind, path, ...describe()}
    roles: dict[str, str]
    export: ExportInfo
    graph: GraphInfo | None
    checker: CheckerInfo | None
    parity: ParityInfo | None
    dynamic: DynamicInfo | None
    latency: LatencyInfo | None
    options: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # per row: ignored cols + outputs
    files: dict[str, str] = field(default_factory=dict)  # role -> file name inside the out dir
    variants: list[VariantInfo] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # tabular graph input -> [{"column", "start", "width"}]: the columns filling its feature indices, in order
    feeds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comparison: Comparison | None = None  # --exporter compare: both exporters' files side by side
    # where ONNX Runtime first leaves PyTorch (studio.locate's Divergence.to_dict()): when parity or a probe
    # failed, or on request (--locate); None when the locator did not run. It does not change `ok`.
    divergence: dict[str, Any] | None = None
    # where the time went: {"stages": {stage: s}, "export_attempts": [{exporter, ok, skipped, seconds}], "total": s}
    timings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """Every check that ran passed: checker, parity, dynamic probes (when requested), variants."""
        checks = [self.checker.ok if self.checker else False, self.parity.ok if self.parity else False]
        if self.dynamic is not None and self.dynamic.ok is not None:
            checks.append(self.dynamic.ok)
        checks += [v.ok for v in self.variants]
        return all(checks)

    @property
    def failed_checks(self) -> list[str]:
        failed = []
        if not (self.checker and self.checker.ok):
            failed.append("checker")
        if not (self.parity and self.parity.ok):
            failed.append("parity")
        if self.dynamic is not None and self.dynamic.ok is False:
            failed.append("dynamic")
        failed += [f"variant:{v.name}" for v in self.variants if not v.ok]
        return failed

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "ok": self.ok,
            "failed_checks": self.failed_checks,
        }
        body = asdict(self)
        body.pop("schema"), body.pop("schema_version")
        d.update(body)
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        return render_markdown(self)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays valid and honest."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


# --- table rows (used by the CLI, the Markdown and the app) -------------------------------------


def io_rows(report: Report) -> list[list[str]]:
    return graph_rows(report.graph)


def graph_rows(graph: GraphInfo | None) -> list[list[str]]:
    if graph is None:
        return []
    return [["input", t.name, t.dtype, _shape(t.shape)] for t in graph.inputs] + [
        ["output", t.name, t.dtype, _shape(t.shape)] for t in graph.outputs
    ]


def feed_rows(feeds: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """One row per column feeding a tabular input: input, feature index (or range), column."""
    rows = []
    for name, parts in feeds.items():
        for f in parts:
            start, width = int(f["start"]), int(f["width"])
            rows.append([name, str(start) if width == 1 else f"{start}-{start + width - 1}", str(f["column"])])
    return rows


PARITY_COLUMNS = [
    "output",
    "max abs diff",
    "max rel diff",
    "min cosine",
    "argmax agreement",
    "top-k agreement",
    "verdict",
]


def _agreement(o: OutputDiff) -> str:
    if o.argmax_agreement is None:
        return "-"
    over = o.agreement_over if o.agreement_over not in (None, "rows") else ""
    return f"{o.argmax_agreement:.1%}" + (f" ({over})" if over else "")


def _cosine(x: float | None) -> str:
    return "-" if x is None else format(x, ".7g")


def attempt_rows(e: ExportInfo) -> list[list[str]]:
    """One row per export attempt: a skipped one says so and why, never a time."""
    return [
        [
            a.exporter,
            "skipped" if a.skipped else _mark(a.ok),
            "-" if a.skipped else _num(a.seconds, ".2f"),
            "; ".join(x for x in (a.error, a.note) if x),
        ]
        for a in e.attempts
    ]


COMPARISON_COLUMNS = [
    "exporter",
    "export",
    "opset",
    "checker",
    "parity (max abs)",
    "probes",
    "nodes",
    "size",
    "export s",
    "ORT CPU p50 ms",
    "",
]


def comparison_rows(c: Comparison | None) -> list[list[str]]:
    """One row per exporter compared, in COMPARISON_COLUMNS order; the last cell marks the chosen one."""
    if c is None:
        return []
    rows = []
    for r in c.rows:
        if not r.exported:
            rows.append(
                [
                    r.exporter,
                    "skipped" if r.skipped else "FAIL",
                    *["-"] * 6,
                    "-" if r.skipped else _num(r.export_seconds, ".2f"),
                    "-",
                    r.error or "",
                ]
            )
            continue
        t = r.ort_cpu
        rows.append(
            [
                r.exporter,
                "ok",
                str(r.opset),
                _mark(r.checker),
                f"{_mark(r.parity)} ({_num(r.parity_max_abs_diff)})",
                _mark(r.dynamic),
                str(r.nodes),
                _size(r.size_bytes),
                _num(r.export_seconds, ".2f"),
                f"{t.p50_ms:.3f}" if t else f"- ({r.latency_error})",
                "chosen" if r.exporter == c.winner else "",
            ]
        )
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def parity_rows(p: ParityInfo | None) -> list[list[str]]:
    """One row per output, in PARITY_COLUMNS order."""
    if p is None:
        return []
    return [
        [
            o.name,
            _num(o.max_abs_diff),
            _num(o.max_rel_diff),
            _cosine(o.min_cosine),
            _agreement(o),
            "-" if o.topk_agreement is None else f"top-{o.topk} {o.topk_agreement:.1%}",
            _mark(o.ok) + (f" — {o.note}" if o.note else ""),
        ]
        for o in p.outputs
    ]


def nonfinite_lines(p: ParityInfo | None) -> list[str]:
    """One line per output holding a NaN / inf in either runtime: the counts, side by side."""
    return [
        f"- {o.name}: PyTorch {o.torch_nan} NaN, {o.torch_inf} inf; ONNX Runtime {o.ort_nan} NaN, "
        f"{o.ort_inf} inf" + (f" — {o.note}" if o.note else "")
        for o in (p.outputs if p else [])
        if o.torch_nan or o.torch_inf or o.ort_nan or o.ort_inf
    ]


def worst_diff(diffs: list[OutputDiff]) -> float | None:
    """Largest max abs diff; NaN (unknown) when any is NaN, never a smaller number in its place."""
    values = [d.max_abs_diff for d in diffs]
    return None if not values else (math.nan if any(math.isnan(v) for v in values) else max(values))


def probe_rows(d: DynamicInfo | None) -> list[list[str]]:
    if d is None:
        return []
    return [
        [
            p.changed or "-",
            str(p.batch),
            "-" if p.sequence is None else str(p.sequence),
            _mark(p.ok),
            _num(p.max_abs_diff),
            p.message,
        ]
        for p in d.probes
    ]


LATENCY_LABELS = (
    ("torch_cpu", "PyTorch CPU"),
    ("ort_cpu", "ORT CPU"),
    ("ort_cuda", "ORT CUDA"),
    ("torch_cuda", "PyTorch CUDA"),
)


def latency_rows(lat: LatencyInfo | None, skip_missing: bool = False) -> list[list[str]]:
    """One row per measurement; an unavailable one shows its reason, never a number.

    skip_missing: leave out measurements that were not attempted (no number and no recorded reason),
    as for a variant, whose PyTorch timings live in the main table."""
    if lat is None:
        return []
    rows = []
    for key, label in LATENCY_LABELS:
        t: Timing | None = getattr(lat, key)
        if t is not None:
            rows.append(_timing_row(label, t))
        elif skip_missing and key not in lat.errors:
            continue
        else:
            why = lat.errors.get(key) or (lat.cuda_unavailable_reason if "cuda" in key else None) or "not measured"
            rows.append([label, "-", "-", "-", "-", "-", "-", f"unavailable: {why}"])
    for key, label in LATENCY_LABELS:  # the same runs at batch 1, when the sample has more rows
        if key in lat.batch1:
            rows.append(_timing_row(f"{label} (batch 1)", lat.batch1[key]))
    return rows


def _timing_row(label: str, t: Timing) -> list[str]:
    provider = t.provider + (" + IO binding" if t.io_binding else "")
    return [
        label,
        f"{t.p50_ms:.2f}",
        f"{t.p90_ms:.2f}",
        f"{t.p99_ms:.2f}",
        str(t.iterations),
        f"{t.batch}x{t.sequence}" if t.sequence else str(t.batch),
        str(t.threads or "-"),
        provider,
    ]


def machine_line(lat: LatencyInfo | None) -> str:
    """One line on how busy the machine was while timing (empty when unknown)."""
    m = (lat.machine if lat else None) or {}
    if not m:
        return ""
    cpus, before, after = m.get("logical_cpus"), m.get("load_avg_before"), m.get("load_avg_after")
    line = f"Measured on {m.get('cpu') or 'unknown CPU'}, {cpus} logical CPUs"
    if before is not None and after is not None:
        line += f", 1-min load average {before:.1f} before / {after:.1f} after"
        if cpus and max(before, after) > cpus:
            line += " (other processes competed for the CPU: timings are pessimistic)"
    return line + "."


def variant_rows(variants: list[VariantInfo], lat: LatencyInfo | None = None) -> list[list[str]]:
    """One row per variant: verdict, size, worst diff, lowest cosine (embeddings), argmax agreement, ORT CPU
    p50 and speedups."""
    rows = (
        []
        if lat is None or lat.ort_cpu is None
        else [
            [
                "fp32 (model.onnx)",
                "PASS",
                "-",
                "-",
                "-",
                "-",
                f"{lat.ort_cpu.p50_ms:.2f}",
                _ratio(lat.torch_cpu.p50_ms / lat.ort_cpu.p50_ms if lat.torch_cpu else None),
                "1.00x",
                "",
            ]
        ]
    )
    for v in variants:
        diffs = v.parity.outputs if v.parity else []
        worst = worst_diff(diffs)
        agree = [d.argmax_agreement for d in diffs if d.argmax_agreement is not None]
        cosines = [d.min_cosine for d in diffs if d.min_cosine is not None]
        t = v.latency.ort_cpu if v.latency else None
        rows.append(
            [
                v.name,
                _mark(v.ok),
                f"{v.size_bytes / 1e6:.1f} MB" if v.size_bytes else "-",
                _num(worst),
                _cosine(min(cosines)) if cosines else "-",
                f"{min(agree):.1%}" if agree else "-",
                f"{t.p50_ms:.2f}" if t else "-",
                _ratio(v.speedup_vs_torch),
                _ratio(v.speedup_vs_fp32),
                v.error or v.method,
            ]
        )
    return rows


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_none_\n"
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return (
        "\n".join(
            ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in esc]
        )
        + "\n"
    )


def render_markdown(r: Report) -> str:
    e = r.export
    out = [
        f"# ONNX Studio report — {'PASS' if r.ok else 'FAIL: ' + ', '.join(r.failed_checks)}",
        "",
        f"- Source: `{r.source.get('path')}` ({r.source.get('kind')})",
        *([f"- Task: {r.source.get('task')} ({r.source.get('task_reason')})"] if r.source.get("task") else []),
        f"- Exporter: {e.exporter}, opset requested {e.opset_requested}, written {e.opset}, "
        f"{e.seconds:.1f} s" + (" (external data)" if e.external_data else ""),
        f"- Checker: {_mark(r.checker.ok if r.checker else None)}"
        + (f" — {r.checker.message}" if r.checker and not r.checker.ok else ""),
        f"- Parity: {_mark(r.parity.ok if r.parity else None)}"
        + (f" (atol {r.parity.atol:g}, rtol {r.parity.rtol:g}, {r.parity.rows} rows)" if r.parity else ""),
        f"- Dynamic dimensions: {_mark(r.dynamic.ok if r.dynamic else None)}",
        f"- Total time: {r.seconds:.1f} s",
        "",
    ]
    if len(e.attempts) > 1 or any(not a.ok for a in e.attempts):
        out += ["## Export attempts", markdown_table(["exporter", "ok", "seconds", "error / note"], attempt_rows(e))]
    elif any(a.note for a in e.attempts):
        out += [f"Export note: {'; '.join(a.note for a in e.attempts if a.note)}.", ""]
    if e.reason and r.comparison is None:
        out += [f"Why {e.exporter}: {e.reason}.", ""]
    if r.comparison is not None:
        c = r.comparison
        out += [
            "## Exporters compared",
            (
                f"Chosen: **{c.winner}** — {c.reason}. ORT CPU p50 timed side by side "
                f"({c.threads} threads, {c.budget_s:g} s budget each, sample batch)."
            ),
            "",
            markdown_table(COMPARISON_COLUMNS[:-1] + ["chosen / error"], comparison_rows(c)),
        ]
    out += ["## Column roles", markdown_table(["column", "role"], [[c, ro] for c, ro in r.roles.items()])]
    if r.feeds:
        out += [
            "## Tabular inputs: which column is which feature",
            markdown_table(["input", "feature index", "column"], feed_rows(r.feeds)),
        ]
    out += ["## Graph inputs and outputs", markdown_table(["", "name", "dtype", "shape"], io_rows(r))]
    if r.graph:
        ops = sorted(r.graph.op_counts.items(), key=lambda kv: -kv[1])
        out += [
            f"File size: {r.graph.size_bytes:,} bytes. Ops: "
            + ", ".join(f"{k} ×{v}" for k, v in ops[:15])
            + ("…" if len(ops) > 15 else ""),
            "",
        ]
    out += ["## Parity (PyTorch vs ONNX Runtime, sample rows)", markdown_table(PARITY_COLUMNS, parity_rows(r.parity))]
    if nonfinite_lines(r.parity):
        out += (
            ["Non-finite values (counted in each runtime, never replaced by numbers):"]
            + nonfinite_lines(r.parity)
            + [""]
        )
    out += [
        "## Dynamic-dimension probes",
        markdown_table(["varies", "batch", "sequence", "verdict", "max abs diff", "message"], probe_rows(r.dynamic)),
    ]
    out += [
        "## Latency",
        markdown_table(
            ["run", "p50 ms", "p90 ms", "p99 ms", "iterations", "batch", "threads", "provider"], latency_rows(r.latency)
        ),
    ]
    line = machine_line(r.latency)
    if line:
        out += [line, ""]
    if r.variants:
        out += [
            "## Variants",
            markdown_table(
                [
                    "variant",
                    "verdict",
                    "size",
                    "max abs diff",
                    "min cosine",
                    "argmax agreement",
                    "ORT CPU p50 ms",
                    "vs PyTorch",
                    "vs fp32",
                    "how",
                ],
                variant_rows(r.variants, r.latency),
            ),
        ]
    for v in r.variants:
        tol = v.tolerance or {}
        rule = tol.get("rule") or (f"atol {v.parity.atol:g}, rtol {v.parity.rtol:g}" if v.parity else "")
        out += [
            f"## Variant: {v.name} — {_mark(v.ok)}",
            f"File: {v.file or '-'}, {v.size_bytes or 0:,} bytes"
            + (f" (files: {', '.join(v.files)})" if len(v.files) > 1 else "")
            + (f"; built by {v.method}" if v.method else "")
            + (f" from {v.source}" if v.source else "")
            + (f" in {v.seconds:.1f} s" if v.seconds is not None else "")
            + ".",
            f"Verdict rule: {rule}." if rule else "",
            (f"Checked on {v.provider}. " if v.provider else "") + v.notes + (f" Error: {v.error}" if v.error else ""),
            "",
        ]
        out += [markdown_table(PARITY_COLUMNS, parity_rows(v.parity))]
        if v.dynamic is not None and v.dynamic.probes:
            out += [
                markdown_table(
                    ["varies", "batch", "sequence", "verdict", "max abs diff", "message"], probe_rows(v.dynamic)
                )
            ]
        if v.latency:
            out += [
                markdown_table(
                    ["run", "p50 ms", "p90 ms", "p99 ms", "iterations", "batch", "threads", "provider"],
                    latency_rows(v.latency, skip_missing=True),
                )
            ]
    if r.divergence:
        from .divergence import Divergence, to_markdown

        out += [to_markdown(Divergence.from_dict(r.divergence))]
    if r.warnings:
        out += ["## Warnings"] + [f"- {w}" for w in r.warnings] + [""]
    return "\n".join(out)


def map_leaves(obj: Any, leaf) -> Any:
    """`leaf` applied to every value (and dict key) inside dataclasses (changed in place), dicts, lists and
    tuples (a subclass of list or tuple comes back as a list)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            setattr(obj, f.name, map_leaves(getattr(obj, f.name), leaf))
        return obj
    if isinstance(obj, dict):
        return {map_leaves(k, leaf): map_leaves(v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = (map_leaves(v, leaf) for v in obj)
        return type(obj)(items) if type(obj) in (list, tuple) else list(items)
    return leaf(obj)
