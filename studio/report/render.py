"""Report -> what people read: the columns and rows of each table (the CLI, report.md and the app show the
same tables from them) and report.md. The report's data is in studio.report.model.

Every value written into Markdown here goes through `md_inline` (prose and table cells: names, messages,
reasons, errors) or `escape.md_code` (a name in a code span): column names, cells, labels, architecture
and file names come from uploads, and none of them may become markup (a link, an image, raw HTML, a code
span's end, a table cell's end, a list)."""

from __future__ import annotations

from typing import Any

from studio.escape import md_code, md_inline
from studio.report import generation as gen
from studio.report.model import (
    Comparison,
    DynamicInfo,
    ExportInfo,
    GraphInfo,
    LatencyInfo,
    OutputDiff,
    ParityInfo,
    Report,
    Timing,
    VariantInfo,
    worst_diff,
)
from studio.report.timings import TIMING_COLUMNS, timing_rows

MB = 2**20  # bytes: what "MB" means everywhere in the studio, the flags (--memory-limit, --max-disk ...) included

# --- the columns of each table (rows below come in the same order) ------------------------------

IO_COLUMNS = ["", "name", "dtype", "shape"]
ROLE_COLUMNS = ["column", "role"]
FEED_COLUMNS = ["input", "feature index", "column"]
ATTEMPT_COLUMNS = ["exporter", "ok", "seconds", "error / note"]
PROBE_COLUMNS = ["varies", "batch", "sequence", "verdict", "max abs diff", "message"]
LATENCY_COLUMNS = [
    "run",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "iterations",
    "p50 95% CI",
    "stopped by",
    "batch",
    "threads",
    "provider",
]
VARIANT_COLUMNS = [
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
]
PARITY_COLUMNS = [
    "output",
    "max abs diff",
    "max rel diff",
    "min cosine",
    "argmax agreement",
    "top-k agreement",
    "verdict",
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
                size_text(r.size_bytes),
                _num(r.export_seconds, ".2f"),
                f"{t.p50_ms:.3f}" if t else f"- ({r.latency_error})",
                "chosen" if r.exporter == c.winner else "",
            ]
        )
    return rows


def size_text(n_bytes: float | None) -> str:
    """A size in bytes as every table and message writes it: MB (2**20 bytes, the unit the flags count in)
    from 0.1 MB up, else KB (2**10 bytes); "-" when unknown. The report, the CLI and the app all use this."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / MB:.1f} MB" if n_bytes >= MB / 10 else f"{n_bytes / 2**10:.1f} KB"


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
    """One line per output holding a NaN / inf in either runtime: the counts, side by side (Markdown)."""
    return [
        f"- {md_code(o.name)}: PyTorch {o.torch_nan} NaN, {o.torch_inf} inf; ONNX Runtime {o.ort_nan} NaN, "
        f"{o.ort_inf} inf" + (f" — {md_inline(o.note)}" if o.note else "")
        for o in (p.outputs if p else [])
        if o.torch_nan or o.torch_inf or o.ort_nan or o.ort_inf
    ]


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
            rows.append([label, *["-"] * (len(LATENCY_COLUMNS) - 2), f"unavailable: {why}"])
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
        f"±{t.ci95_pct:.1f}%" if t.ci95_pct is not None else "-",
        STOPPED.get(t.stopped or "", "-"),
        f"{t.batch}x{t.sequence}" if t.sequence else str(t.batch),
        str(t.threads or "-"),
        provider,
    ]


# Timing.stopped -> the words in the latency table: why that runtime's timing ended
STOPPED = {"precision": "CI ≤ ±3%", "budget": "budget", "max_iters": "max calls"}


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
    line += "."
    if lat and lat.torch_attention:
        line += f" PyTorch ran with {lat.torch_attention}."
    return line


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
                _mark(v.ok) + (" (repaired)" if v.ok and v.repair.get("kept") else "") + (" · take" if v.take else ""),
                size_text(v.size_bytes or None),
                _num(worst),
                _cosine(min(cosines)) if cosines else "-",
                f"{min(agree):.1%}" if agree else "-",
                f"{t.p50_ms:.2f}" if t else "-",
                _ratio(v.speedup_vs_torch),
                _ratio(v.speedup_vs_fp32),
                (v.error or v.method) + (f"; kept in float: {', '.join(v.kept_float)}" if v.kept_float else ""),
            ]
        )
    return rows


def take_line(variants: list[VariantInfo]) -> str:
    """Which file to take on this CPU: the passing variant timed fastest there, else model.onnx."""
    if not variants:
        return ""
    best = next((v for v in variants if v.take), None)
    if best is None:
        return (
            "Take model.onnx on this CPU: no passing variant timed on CPU was faster "
            "(ORT CPU p50 at the sample's batch, through PyTorch)."
        )
    return (
        f"Take {md_code(best.name)} on this CPU: it passes and is the fastest passing variant, "
        f"{_ratio(best.speedup_vs_fp32)} model.onnx's speed (ORT CPU p50 at the sample's batch, through PyTorch)."
    )


def repair_line(v: VariantInfo) -> str:
    """What the repair of a failed variant did and what it cost (VariantInfo.repair)."""
    r = v.repair
    if not r:
        return ""
    kept = r.get("kept") or []
    line = f"Repair: it failed first ({md_inline(r.get('before', ''))}); "
    if kept:
        line += (
            f"{r.get('rounds', 0)} round(s) in {r.get('seconds') or 0:.1f} s kept {len(kept)} node(s) in float "
            f"({md_inline(', '.join(kept))})"
        )
    else:
        line += f"{r.get('rounds', 0)} round(s) found nothing better to keep in float"
    line += f"; now {md_inline(r.get('after', ''))}" + (
        "" if r.get("passed") else f" (stopped: {md_inline(r.get('stopped', ''))})"
    )
    price = []
    if kept and r.get("size_bytes_before") and r.get("size_bytes"):
        price.append(f"size {size_text(r['size_bytes_before'])} -> {size_text(r['size_bytes'])}")
    if r.get("p50_ms_before") is not None and r.get("p50_ms") is not None:
        slow = r.get("slowdown")
        price.append(
            f"ORT CPU p50 {r['p50_ms_before']:.3g} -> {r['p50_ms']:.3g} ms"
            + (f" ({slow:.2f}x the unrepaired file's time, through PyTorch)" if slow else "")
        )
    return line + (f". Price: {'; '.join(price)}." if price else ".")


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


# --- Markdown from values ---------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GFM table; every cell is md_inline (a cell may name a column, quote an error, ...)."""
    if not rows:
        return "_none_\n"
    cells = [[md_inline(c, cell=True) for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]]) + "\n"


LATENCY_NOTE = (
    "Each runtime is timed in alternating rounds with the others; timing stops once every median's 95% "
    "confidence interval (distribution-free, from the order statistics) is within ±3%, or when the budget is spent."
)


def render_markdown(r: Report) -> str:
    """report.md: the verdict and summary lines, then one section per table."""
    return "\n".join(
        _summary_lines(r)
        + _export_sections(r)
        + _input_sections(r)
        + _generation_sections(r)
        + _check_sections(r)
        + _variant_sections(r)
        + profile_sections(r.profile)
        + _closing_sections(r)
    )


def _summary_lines(r: Report) -> list[str]:
    e, src, m = r.export, r.source, md_inline
    return [
        f"# ONNX Studio report — {'PASS' if r.ok else 'FAIL: ' + m(', '.join(r.failed_checks))}",
        "",
        f"- Source: {md_code(src.get('path'))} ({m(src.get('kind'))})",
        *([f"- Task: {m(src.get('task'))} ({m(src.get('task_reason'))})"] if src.get("task") else []),
        f"- Exporter: {m(e.exporter)}, opset requested {e.opset_requested}, written {e.opset}, "
        f"{e.seconds:.1f} s" + (" (external data)" if e.external_data else ""),
        f"- Checker: {_mark(r.checker.ok if r.checker else None)}"
        + (f" — {m(r.checker.message)}" if r.checker and not r.checker.ok else ""),
        f"- Parity: {_mark(r.parity.ok if r.parity else None)}"
        + (f" (atol {r.parity.atol:g}, rtol {r.parity.rtol:g}, {r.parity.rows} rows)" if r.parity else "")
        + (f": {m(r.parity.error)}" if r.parity and r.parity.error else ""),
        f"- Dynamic dimensions: {_mark(r.dynamic.ok if r.dynamic else None)}",
        f"- Total time: {r.seconds:.1f} s",
        "",
    ]


def _export_sections(r: Report) -> list[str]:
    """The export attempts (or their note), why this exporter, and the comparison of both."""
    e, out = r.export, []
    if len(e.attempts) > 1 or any(not a.ok for a in e.attempts):
        out += ["## Export attempts", markdown_table(ATTEMPT_COLUMNS, attempt_rows(e))]
    elif any(a.note for a in e.attempts):
        out += [f"Export note: {md_inline('; '.join(a.note for a in e.attempts if a.note))}.", ""]
    if e.reason and r.comparison is None:
        out += [f"Why {md_inline(e.exporter)}: {md_inline(e.reason)}.", ""]
    if r.comparison is not None:
        c = r.comparison
        out += [
            "## Exporters compared",
            (
                f"Chosen: **{md_inline(c.winner)}** — {md_inline(c.reason)}. ORT CPU p50 timed side by side "
                f"({c.threads} threads, {c.budget_s:g} s budget each, sample batch)."
            ),
            "",
            markdown_table(COMPARISON_COLUMNS[:-1] + ["chosen / error"], comparison_rows(c)),
        ]
        kept = [f"{md_inline(x.exporter)}: {md_inline(x.file)}" for x in c.rows if x.file]
        if kept:
            out += [f"Files: {'; '.join(kept)}.", ""]
    return out


def _input_sections(r: Report) -> list[str]:
    """Column roles, which column feeds which tabular feature, the graph's inputs and outputs."""
    out = ["## Column roles", markdown_table(ROLE_COLUMNS, [[c, ro] for c, ro in r.roles.items()])]
    if r.feeds:
        out += ["## Tabular inputs: which column is which feature", markdown_table(FEED_COLUMNS, feed_rows(r.feeds))]
    out += ["## Graph inputs and outputs", markdown_table(IO_COLUMNS, io_rows(r))]
    if r.graph:
        ops = sorted(r.graph.op_counts.items(), key=lambda kv: -kv[1])
        out += [
            f"File size: {r.graph.size_bytes:,} bytes. Ops: "
            + md_inline(", ".join(f"{k} ×{v}" for k, v in ops[:15]))
            + ("…" if len(ops) > 15 else ""),
            "",
        ]
    return out


def _generation_sections(r: Report) -> list[str]:
    """A generator's: task, why, what the file can do, the verdict of each run, every prompt's two continuations,
    the first divergence, the probes over batch / sequence / past length, the speed and the variants."""
    g, m = r.generation, md_inline
    if g is None:
        return []
    one = next((run for run in g.runs if run.mode == "one by one"), g.runs[0] if g.runs else None)
    out = [
        f"## Generation — {_mark(g.ok)}",
        f"- Task: {m(g.task)}" + (f" ({m(r.source.get('task_reason'))})" if r.source.get("task_reason") else ""),
        f"- What the file can do: {m(g.can)}" if g.can and g.can not in str(r.source.get("task_reason")) else "",
        *[f"- {md_code(name)}: {m(gen.io_summary(g.io.get(role, [])))}" for role, name in g.files.items()],
        f"- Cache: {m(', '.join(f'{k} {v}' for k, v in g.cache.items()))}" if g.cache else "- Cache: none (--no-cache)",
        f"- Verdict: the same new token ids as transformers' greedy `generate` on every prompt, {g.max_new_tokens} "
        "new tokens at most (a near tie broken the other way is reported, not failed)",
        *[f"- {m(gen.run_line(run))}" for run in g.runs],
        *[f"- First divergence: {m(line)}" for line in gen.first_divergences(g)],
        *([f"- Error: {m(g.error)}"] if g.error else []),
        "",
        "### Prompts (one by one)",
        markdown_table(gen.PROMPT_COLUMNS, gen.prompt_rows(one)),
    ]
    batched = next((run for run in g.runs if run.mode == "batched"), None)
    if batched is not None and not batched.ok:
        side = f", {batched.padding_side} padding" if batched.padding_side else ""
        out += [f"### Prompts (batched{side})", markdown_table(gen.PROMPT_COLUMNS, gen.prompt_rows(batched))]
    out += ["### Probes: batch, sequence and past length", markdown_table(gen.PROBE_COLUMNS, gen.probe_rows(g))]
    out += ["### Speed: time to first token and tokens/s", markdown_table(gen.SPEED_COLUMNS, gen.speed_rows(g.speed))]
    if g.variants:
        out += ["### Variants judged by generation", markdown_table(gen.VARIANT_COLUMNS, gen.variant_rows(g))]
    return out


def _check_sections(r: Report) -> list[str]:
    """Parity (with the non-finite counts), the shape probes, latency and how busy the machine was."""
    rows = "the first step's logits on every prompt, past length 0" if r.generation is not None else "sample rows"
    out = [f"## Parity (PyTorch vs ONNX Runtime, {rows})", markdown_table(PARITY_COLUMNS, parity_rows(r.parity))]
    if nonfinite_lines(r.parity):
        out += (
            ["Non-finite values (counted in each runtime, never replaced by numbers):"]
            + nonfinite_lines(r.parity)
            + [""]
        )
    out += ["## Dynamic-dimension probes", markdown_table(PROBE_COLUMNS, probe_rows(r.dynamic))]
    if r.generation is not None:  # its speed is in tokens: the Generation section's table
        out += [
            "## Latency",
            "A generator is timed by generating: see Generation, Speed (time to first token, tokens/s).",
            "",
        ]
        return out
    out += ["## Latency", markdown_table(LATENCY_COLUMNS, latency_rows(r.latency))]
    out += [LATENCY_NOTE, ""]
    line = machine_line(r.latency)
    if line:
        out += [line, ""]
    return out


def _variant_sections(r: Report) -> list[str]:
    """The variants side by side, then one section per variant with its own tables."""
    out = (
        ["## Variants", markdown_table(VARIANT_COLUMNS, variant_rows(r.variants, r.latency)), take_line(r.variants), ""]
        if r.variants
        else []
    )
    for v in r.variants:
        out += _variant_section(v)
    return out


def _variant_section(v: VariantInfo) -> list[str]:
    tol = v.tolerance or {}
    rule = tol.get("rule") or (f"atol {v.parity.atol:g}, rtol {v.parity.rtol:g}" if v.parity else "")
    m = md_inline
    out = [
        f"## Variant: {m(v.name)} — {_mark(v.ok)}",
        f"File: {m(v.file or '-')}, {v.size_bytes or 0:,} bytes"
        + (f" (files: {m(', '.join(v.files))})" if len(v.files) > 1 else "")
        + (f"; built by {m(v.method)}" if v.method else "")
        + (f" from {m(v.source)}" if v.source else "")
        + (f" in {v.seconds:.1f} s" if v.seconds is not None else "")
        + ".",
        f"Verdict rule: {m(rule)}." if rule else "",
        (f"Checked on {m(v.provider)}. " if v.provider else "")
        + (m(v.notes) if v.notes else "")
        + (f" Error: {m(v.error)}" if v.error else ""),
        repair_line(v),
        "",
    ]
    out += [markdown_table(PARITY_COLUMNS, parity_rows(v.parity))]
    if v.dynamic is not None and v.dynamic.probes:
        out += [markdown_table(PROBE_COLUMNS, probe_rows(v.dynamic))]
    if v.latency:
        out += [markdown_table(LATENCY_COLUMNS, latency_rows(v.latency, skip_missing=True))]
    return out


def _closing_sections(r: Report) -> list[str]:
    """Where ONNX Runtime first leaves PyTorch (when the locator ran), and the warnings."""
    out = []
    if r.divergence:
        from studio.report.divergence import Divergence, to_markdown

        out += [to_markdown(Divergence.from_dict(r.divergence))]
    if r.warnings:
        out += ["## Warnings"] + [f"- {md_inline(w)}" for w in r.warnings] + [""]
    if r.timings:
        out += ["## Where the time went", markdown_table(TIMING_COLUMNS, timing_rows(r.timings))]
    return out


# --- where the time goes in the model (ONNX Runtime's per-node profile, studio.checks.profile) ------------

PROFILE_COLUMNS = ["node", "op", "µs per run", "share"]
OP_TYPE_COLUMNS = ["op", "nodes", "µs per run", "share"]


def profile_rows(profile: dict[str, Any] | None) -> list[list[str]]:
    """The profile's top nodes by time (PROFILE_COLUMNS): name, op type, median µs per run, share of node time."""
    return [
        [str(n["name"]), str(n["op_type"]), f"{n['us']:.1f}", f"{n['share']:.1%}"]
        for n in ((profile or {}).get("nodes") or [])
    ]


def op_type_rows(profile: dict[str, Any] | None) -> list[list[str]]:
    """The profile's time per op type (OP_TYPE_COLUMNS)."""
    return [
        [str(o["op_type"]), str(o["nodes"]), f"{o['us']:.1f}", f"{o['share']:.1%}"]
        for o in ((profile or {}).get("op_types") or [])
    ]


def profile_line(profile: dict[str, Any] | None, file: str = "model.onnx") -> str:
    """How the profile was taken, in one sentence (or why there is none)."""
    p = profile or {}
    if p.get("error"):
        return f"The profile of {file} could not be taken: {p['error']}"
    feeds = ", ".join(f"{n} {'x'.join(map(str, shape))}" for n, shape in (p.get("feeds") or {}).items())
    return (
        f"ONNX Runtime's profiler on {p.get('file') or file} ({p.get('provider')}, {p.get('threads')} threads, "
        f"graph optimisation {p.get('optimization')}), on the sample ({feeds}): the median of {p.get('runs')} runs "
        f"after {p.get('warmup')} warm-up runs. Node time {p.get('total_us', 0):.0f} µs per run, the whole run "
        f"{p.get('run_us', 0):.0f} µs."
    )


def _profile_table(header: list[str], rows: list[list[str]]) -> str:
    """A table whose first column names nodes or ops from the model (code spans), the rest md_inline."""
    cells = [[md_code(x, table=True) if i == 0 else md_inline(x, cell=True) for i, x in enumerate(r)] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def profile_sections(profile: dict[str, Any] | None) -> list[str]:
    """report.md's "Where the time goes in the model": model.onnx's top nodes by time and the time per op type,
    then each variant's top nodes; nothing when no profile was taken."""
    if not profile:
        return []
    out = ["## Where the time goes in the model", md_inline(profile_line(profile)), ""]
    if not profile.get("error"):
        out += [_profile_table(PROFILE_COLUMNS, profile_rows(profile))]
        unmapped = profile.get("unmapped_share") or 0.0
        if unmapped:
            out += [
                md_inline(
                    f"{unmapped:.1%} of the node time is in nodes ONNX Runtime's optimisations made and named "
                    "themselves (fusions): they stand for several nodes of the file."
                ),
                "",
            ]
        out += ["Per op type:", "", _profile_table(OP_TYPE_COLUMNS, op_type_rows(profile))]
    for file, p in (profile.get("variants") or {}).items():
        out += [f"### {md_inline(file)}", md_inline(profile_line(p, file)), ""]
        if not p.get("error"):
            out += [_profile_table(PROFILE_COLUMNS, profile_rows(p)[:5])]
    return out
