"""What the command line prints: text from an upload made safe to print (`shown`), plain-text tables, and
`studio convert`'s summary. The tables' columns are the report's (studio.report.render)."""

from __future__ import annotations

from studio.escape import terminal
from studio.report import generation
from studio.report.model import CheckerInfo, Comparison, ParityInfo, Report
from studio.report.render import (
    COMPARISON_COLUMNS,
    IO_COLUMNS,
    LATENCY_COLUMNS,
    PARITY_COLUMNS,
    PROBE_COLUMNS,
    comparison_rows,
    feed_rows,
    io_rows,
    latency_rows,
    machine_line,
    op_type_rows,
    parity_rows,
    probe_rows,
    profile_rows,
)
from studio.report.timings import timing_line

# the terminal's narrower names for some of the report's columns
NARROW = {"sequence": "seq", "max abs diff": "max abs", "iterations": "iters", "p50 95% CI": "p50 CI"}


def narrow(columns: list[str]) -> list[str]:
    """A table's columns with the terminal's narrower names."""
    return [NARROW.get(c, c) for c in columns]


def shown(value, *, newlines: bool = False) -> str:
    """Text from an upload (a column name, a metadata value, a path, a message quoting them), safe to
    print: control characters become visible escapes like \\x1b (`studio.escape.terminal`)."""
    return terminal(value, newlines=newlines)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Rows under their header, each column as wide as its widest cell; every cell made safe to print."""
    if not rows:
        return "  (none)"
    rows = [[shown(x) for x in r] for r in rows]  # cells hold names and values from the upload
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


def _group(rows: list[list[str]]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


def summary(report: Report) -> str:
    """What `studio convert` prints: the verdict, then one line or table per check."""
    e = report.export
    ok = lambda b: "n/a" if b is None else ("PASS" if b else "FAIL")  # noqa: E731
    main = report.files.get("model") or report.files.get("decoder") or "model.onnx"  # an encoder-decoder's decoder
    lines = [
        f"{'PASS' if report.ok else 'FAIL (' + ', '.join(report.failed_checks) + ')'}: "
        f"{shown(report.options.get('out'))}/{shown(main)}",
        f"source   {shown(report.source.get('kind'))} {shown(report.source.get('path'))}",
        *(
            [f"task     {shown(report.source.get('task'))} ({shown(report.source.get('task_reason'))})"]
            if report.source.get("task")
            else []
        ),
        "roles    " + ", ".join(f"{shown(c)}={shown(r)}" for c, r in report.roles.items()),
        *[
            f"feeds    {shown(name)} = " + ", ".join(f"{shown(col)}[{idx}]" for _, idx, col in rows)
            for name, rows in _group(feed_rows(report.feeds)).items()
            if len(rows) > 1
        ],
        f"export   {e.exporter}, opset {e.opset} (requested {e.opset_requested}), {e.seconds:.1f} s"
        + (
            f" ({shown(e.reason)})"
            if e.reason and report.comparison is None
            else "".join(f"; {a.exporter} failed: {shown(a.error)}" for a in e.attempts if not a.ok and not e.reason)
        ),
        *_comparison_lines(report.comparison),
        _checker_line(report.checker),
        _parity_line(report.parity),
        table(PARITY_COLUMNS, parity_rows(report.parity)),
        f"dynamic  {ok(report.dynamic.ok if report.dynamic else None)}",
        table(narrow(PROBE_COLUMNS), probe_rows(report.dynamic)),
        "graph",
        table(IO_COLUMNS, io_rows(report)),
        *(
            ["latency  a generator is timed by generating: time to first token and tokens/s (generate, below)"]
            if report.generation is not None
            else ["latency", table(narrow(LATENCY_COLUMNS), latency_rows(report.latency))]
        ),
    ]
    if machine_line(report.latency):
        lines.append("  " + machine_line(report.latency))
    lines += _generation_lines(report)
    if report.divergence:
        from studio.report.divergence import Divergence, format_lines

        lines += [shown(line) for line in format_lines(Divergence.from_dict(report.divergence))]
    for v in report.variants:
        lines.append(f"variant  {v.name}: {ok(v.ok)} {v.file or ''} {shown(v.error or v.notes)}".rstrip())
    lines += _profile_lines(report.profile)
    lines += [f"warning  {shown(w)}" for w in report.warnings]
    if report.timings:
        lines.append(f"time     {timing_line(report.timings)}")
    lines.append(f"files    {', '.join(report.files.values())} ({report.seconds:.1f} s)")
    return "\n".join(lines)


def _profile_lines(profile: dict | None) -> list[str]:
    """ONNX Runtime's per-node profile of model.onnx: the 3 nodes taking the most time and the top op types."""
    if not profile:
        return []
    if profile.get("error"):
        return [f"profile  n/a: {shown(profile['error'])}"]
    nodes = "; ".join(f"{shown(n)} ({shown(op)}) {share}" for n, op, _, share in profile_rows(profile)[:3])
    ops = ", ".join(f"{shown(op)} {share}" for op, _, _, share in op_type_rows(profile)[:4])
    return [
        f"profile  {profile.get('total_us', 0):.0f} µs of node time per run (median of {profile.get('runs')}): {nodes}",
        f"         by op type: {ops}",
    ]


def _generation_lines(report: Report) -> list[str]:
    """A generator's verdict: each run (one by one, batched), the first divergence, the probes, tokens/s."""
    g = report.generation
    if g is None:
        return []
    lines = [f"generate {'PASS' if g.ok else 'FAIL'} ({g.max_new_tokens} new tokens at most, greedy, vs transformers)"]
    lines += [f"  {shown(generation.run_line(run))}" for run in g.runs]
    lines += [f"  first divergence: {shown(line)}" for line in generation.first_divergences(g)]
    if g.probes:
        failed = [p for p in g.probes if not p.get("ok")]
        lines.append(f"  probes (batch, sequence, past length): {len(g.probes) - len(failed)} of {len(g.probes)} pass")
    speed = generation.speed_line(g.speed)
    if speed:
        lines.append(f"  speed: {shown(speed)}")
    if g.speed:
        lines.append(table(generation.SPEED_COLUMNS, generation.speed_rows(g.speed)))
    lines += [f"  variant {shown(row[0])}: {shown(' '.join(row[1:]))}" for row in generation.variant_rows(g)]
    return lines


def _checker_line(c: CheckerInfo | None) -> str:
    if c is None:  # a report made without the checker (not one of `studio convert`)
        return "checker  n/a"
    return f"checker  {'PASS' if c.ok else 'FAIL'}" + ("" if c.ok else f": {shown(c.message)}")


def _parity_line(p: ParityInfo | None) -> str:
    if p is None:
        return "parity   n/a"
    return f"parity   {'PASS' if p.ok else 'FAIL'} (atol {p.atol:g}, rtol {p.rtol:g})" + (
        f": {shown(p.error)}" if p.error else ""
    )


def _comparison_lines(c: Comparison | None) -> list[str]:
    """--exporter compare: the winner, why, and both exporters' rows."""
    if c is None:
        return []
    kept = [f"{r.exporter}: {shown(r.file)}" for r in c.rows if r.file and r.file != "model.onnx"]
    lines = [f"compare  {c.winner} chosen: {shown(c.reason)}", table(COMPARISON_COLUMNS, comparison_rows(c))]
    return lines + ([f"kept     {', '.join(kept)} (the other exporter's file, beside model.onnx)"] if kept else [])


class SafeStream:
    """A text stream (stdout / stderr) that shows control characters as escapes (studio.escape.terminal,
    line breaks and tabs kept) in everything written to it: what the studio prints is escaped where it is
    made, and this catches the rest (a library's warning or log line, a traceback with --debug). Our own
    cursor moves (studio.jobs.progress.BatchProgress's bars) go to `unfiltered`."""

    def __init__(self, stream):
        self.unfiltered = stream

    @classmethod
    def wrap(cls, stream):
        return stream if stream is None or isinstance(stream, cls) else cls(stream)

    def write(self, text: str) -> int:
        if not text.isprintable():
            text = "\n".join("\t".join(map(terminal, line.split("\t"))) for line in text.split("\n"))
        return self.unfiltered.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self.unfiltered, name)
