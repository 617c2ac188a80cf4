"""Command line: `studio convert | inspect | roles | app`. Turns StudioError into a message + exit 2.

Exit codes: 0 exported and every check passed; 1 exported but a check failed;
2 bad input or export impossible (message on stderr, traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from .errors import StudioError
from .spec import (
    EXPORTERS,
    HEAD_NAMES,
    ID_DTYPES,
    SAMPLE_LIMITS_OPTION,
    TASKS,
    VARIANTS,
    ConvertSpec,
    SampleLimits,
    default,
    parse_roles,
    parse_sample_limits,
    parse_tabular,
)

SAMPLE_LIMITS_HELP = (
    "what the sample file may hold, e.g. rows=50000,size=200mb (defaults: "
    + ", ".join(f"{k}={v}" for k, v in vars(SampleLimits()).items())
    + ")"
)


def shown(value, *, newlines: bool = False) -> str:
    """Text from an upload (a column name, a metadata value, a path, a message quoting them), safe to
    print: control characters (terminal escape codes), other invisible or line-breaking characters become
    visible escapes like \\x1b, so nothing printed can move the cursor, clear the screen or forge a line.
    newlines=True keeps line breaks (multi-line messages of our own)."""
    text = str(value)
    if text.isprintable():
        return text
    if newlines:
        return "\n".join(shown(line) for line in text.split("\n"))
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _count(value: str) -> int:
    """A whole number written as 5000000000, 5_000_000_000 or 5e9."""
    try:
        return int(float(value.replace("_", "")))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number (e.g. 5e9)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="ONNX Studio: PyTorch checkpoint -> verified ONNX.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _convert_parser(sub)
    _inspect_parser(sub)
    _roles_parser(sub)
    _app_parser(sub)
    _add_batch_parser(sub)
    return p


def _convert_parser(sub) -> None:
    """`studio convert`: every ConvertSpec option is a flag, its default read from studio.spec.default."""
    c = sub.add_parser(
        "convert",
        help="export a checkpoint to ONNX and verify it on sample rows",
        description="Export CHECKPOINT to ONNX using the rows in --data, then check it: onnx "
        "checker, PyTorch-vs-ONNX Runtime parity, dynamic-dimension probes, latency.",
    )
    c.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        default=None,
        help="file (.pt .pth .ckpt .bin .zip ...) or model folder",
    )
    c.add_argument("--data", metavar="SAMPLE", default=None, help="sample rows: .csv .tsv .json .jsonl")
    c.add_argument(
        "--demo",
        action="store_true",
        help="convert the built-in demo (shipped in the package): its checkpoint and, without --data, its sample.csv",
    )
    c.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="COL=ROLE",
        help="text | tabular | ignore for a column (repeatable); others get the suggested role",
    )
    c.add_argument(
        "--tabular",
        action="append",
        default=[],
        metavar="INPUT=COL1,COL2,...",
        help="the columns feeding a tabular input, in order (ranges by name: FIRST..LAST; "
        "repeatable); default: the columns mapped tabular, in file order",
    )
    c.add_argument("--opset", type=int, default=default("opset"), help=f"ONNX opset (default {default('opset')})")
    dyn = c.add_mutually_exclusive_group()
    dyn.add_argument(
        "--dynamic",
        type=_csv_list,
        default=default("dynamic"),
        metavar="AXES",
        help="dynamic axes on every input: batch,sequence (default both)",
    )
    dyn.add_argument("--static", action="store_true", help="no dynamic axes: every shape fixed to the sample's")
    c.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=default("exporter"),
        help="auto = new torch.export-based exporter, falling back to the legacy one (default); "
        "compare = run both, check and time both files, keep the better one",
    )
    c.add_argument(
        "--max-length",
        type=int,
        default=default("max_length"),
        help=f"tokenizer max length (default {default('max_length')})",
    )
    c.add_argument(
        "--id-dtype",
        choices=ID_DTYPES,
        default=default("id_dtype"),
        help=f"dtype of token ids (default {default('id_dtype')})",
    )
    c.add_argument(
        "--fill-value",
        type=float,
        default=default("fill_value"),
        help="fill empty tabular cells with this number instead of failing",
    )
    c.add_argument(
        "--atol", type=float, default=default("atol"), help=f"parity absolute tolerance (default {default('atol'):g})"
    )
    c.add_argument(
        "--rtol", type=float, default=default("rtol"), help=f"parity relative tolerance (default {default('rtol'):g})"
    )
    c.add_argument(
        "--threads", type=int, default=default("threads"), help="intra-op threads for PyTorch and ORT (default: cores)"
    )
    c.add_argument(
        "--latency-budget",
        type=float,
        default=default("latency_budget_s"),
        metavar="SECONDS",
        help=f"time budget per latency measurement (default {default('latency_budget_s')})",
    )
    c.add_argument("--no-cuda", action="store_true", help="skip CUDA measurements even when a GPU is present")
    c.add_argument(
        "--variants",
        type=_csv_list,
        default=default("variants"),
        metavar="LIST",
        help=f"extra artifacts to build and check: {','.join(VARIANTS)}",
    )
    c.add_argument(
        "--config",
        default=default("config"),
        metavar="PATH",
        help="config.json (or model folder) for a bare state dict / .safetensors checkpoint",
    )
    c.add_argument(
        "--head", choices=HEAD_NAMES, default=default("head"), help="built-in head for a state-dict backbone"
    )
    c.add_argument(
        "--task",
        choices=TASKS,
        default=default("task"),
        help="what a model folder is exported as (default auto: modules.json -> sentence-embedding, "
        "else config.json's architectures)",
    )
    c.add_argument(
        "--locate",
        action="store_true",
        help="find where ONNX Runtime first leaves PyTorch even when every check passes (runs by "
        "itself when parity or a shape probe fails)",
    )
    _operator_flags(
        c,
        "(repeatable; also ONNX_STUDIO_PLUGINS and the 'onnx_studio.sources' entry points)",
        "allow TorchScript, .pt2 and pickled modules (they can run code)",
    )
    _max_params_flag(c)
    c.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        metavar="MB",
        help="run the conversion in a child process stopped above this much memory (default: no limit)",
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the conversion after this long (default: no limit)",
    )
    c.add_argument(SAMPLE_LIMITS_OPTION, default=None, metavar="KEY=N,...", help=SAMPLE_LIMITS_HELP)
    c.add_argument("--out", default=default("out"), metavar="DIR", help=f"output folder (default ./{default('out')})")
    c.add_argument("--json", action="store_true", help="print report.json to stdout instead of the summary")
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.add_argument("--debug", action="store_true", help="show tracebacks")
    c.set_defaults(func=cmd_convert)


def _operator_flags(parser, plugin_note: str, trust_note: str) -> None:
    """--trust-code and --plugin: code only the operator may let in (convert and app)."""
    parser.add_argument("--trust-code", action="store_true", help=f"operator only: {trust_note}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help=f"operator only: load checkpoint kinds from this plugin module or .py file {plugin_note}",
    )


def _max_params_flag(parser) -> None:
    parser.add_argument(
        "--max-params",
        type=_count,
        default=default("max_params"),
        metavar="N",
        help=f"refuse a checkpoint whose config declares more parameters (default {default('max_params'):,})",
    )


def _inspect_parser(sub) -> None:
    i = sub.add_parser(
        "inspect",
        help="print an .onnx file's inputs, outputs, opset and checker status",
        description="Print graph inputs/outputs (symbolic dims), opset, op counts and the checker.",
    )
    i.add_argument("model", metavar="MODEL.onnx")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--debug", action="store_true", help="show tracebacks")
    i.set_defaults(func=cmd_inspect)


def _roles_parser(sub) -> None:
    r = sub.add_parser(
        "roles",
        help="show a sample file's columns and their suggested roles",
        description="Read SAMPLE and print each column's detected type, example and suggested role.",
    )
    r.add_argument("data", metavar="SAMPLE")
    r.add_argument(SAMPLE_LIMITS_OPTION, default=None, metavar="KEY=N,...", help=SAMPLE_LIMITS_HELP)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    r.set_defaults(func=cmd_roles)


def _app_parser(sub) -> None:
    a = sub.add_parser("app", help="start the web studio", description="Start the Gradio web studio.")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    a.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    _operator_flags(a, "(repeatable)", "allow uploads that can run code when loaded (shown in the page)")
    a.add_argument("--max-jobs", type=int, default=2, help="conversions running at once; the rest queue (default 2)")
    a.add_argument(
        "--job-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a job running longer is stopped (default 600)",
    )
    a.add_argument(
        "--memory-limit", type=int, default=8192, metavar="MB", help="a job using more memory is stopped (default 8192)"
    )
    a.add_argument("--max-file-size", default="2gb", help="largest upload accepted (default 2gb)")
    _max_params_flag(a)
    a.add_argument(
        "--session-ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="an idle session's files are removed after this long (default 3600)",
    )
    a.add_argument(SAMPLE_LIMITS_OPTION, default=None, metavar="KEY=N,...", help=SAMPLE_LIMITS_HELP)
    a.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run each conversion as a Ray task: a cluster ADDRESS (HEAD:6379), auto, or local; "
        "previews stay on this machine",
    )
    a.add_argument(
        "--graph-max-nodes",
        type=int,
        default=None,
        metavar="N",
        help="the Graph panel draws graphs of at most N nodes, else offers the download (default 5000)",
    )
    a.add_argument(
        "--graph-max-mb",
        type=float,
        default=None,
        metavar="MB",
        help="... and .onnx files of at most MB megabytes, external weights not counted (default 200)",
    )
    a.add_argument("--debug", action="store_true", help="show tracebacks")
    a.set_defaults(func=cmd_app)


def _demo_paths(args: argparse.Namespace) -> tuple[str, str]:
    """CHECKPOINT and --data, or the packaged demo's with --demo."""
    if getattr(args, "demo", False):
        if args.checkpoint:
            raise StudioError(f"--demo converts the built-in demo; leave out CHECKPOINT ({args.checkpoint}).")
        from . import demo

        return str(demo.checkpoint()), str(args.data or demo.sample())
    if not args.checkpoint:
        raise StudioError(
            "No CHECKPOINT given.",
            hint="studio convert CHECKPOINT --data SAMPLE, or studio convert --demo for the built-in demo.",
        )
    if not args.data:
        raise StudioError("No sample file given (--data SAMPLE: a few real rows as CSV / TSV / JSON / JSONL).")
    return args.checkpoint, args.data


def spec_from_args(args: argparse.Namespace) -> ConvertSpec:
    """The one mapping from CLI flags to the ConvertSpec."""
    checkpoint, data = _demo_paths(args)
    return ConvertSpec(
        checkpoint=checkpoint,
        data=data,
        out=args.out,
        roles=parse_roles(args.role),
        tabular=parse_tabular(args.tabular),
        opset=args.opset,
        exporter=args.exporter,
        dynamic=() if args.static else tuple(args.dynamic),
        max_length=args.max_length,
        id_dtype=args.id_dtype,
        atol=args.atol,
        rtol=args.rtol,
        fill_value=args.fill_value,
        latency_budget_s=args.latency_budget,
        threads=args.threads,
        cuda=not args.no_cuda,
        variants=tuple(args.variants),
        config=args.config,
        head=args.head,
        task=args.task,
        trust_code=args.trust_code,
        max_params=args.max_params,
        locate=args.locate,
        debug=args.debug,
        sample_limits=parse_sample_limits(args.sample_limits),
    ).validated()


def _table(header: list[str], rows: list[list[str]]) -> str:
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


def summary(report) -> str:
    from .report_render import PARITY_COLUMNS, feed_rows, io_rows, latency_rows, machine_line, parity_rows, probe_rows

    e = report.export
    ok = lambda b: "n/a" if b is None else ("PASS" if b else "FAIL")  # noqa: E731
    lines = [
        f"{'PASS' if report.ok else 'FAIL (' + ', '.join(report.failed_checks) + ')'}: "
        f"{shown(report.options.get('out'))}/model.onnx",
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
        f"checker  {ok(report.checker.ok)}" + ("" if report.checker.ok else f": {shown(report.checker.message)}"),
        f"parity   {ok(report.parity.ok)} (atol {report.parity.atol:g}, rtol {report.parity.rtol:g})",
        _table(PARITY_COLUMNS, parity_rows(report.parity)),
        f"dynamic  {ok(report.dynamic.ok if report.dynamic else None)}",
        _table(["varies", "batch", "seq", "verdict", "max abs", "message"], probe_rows(report.dynamic)),
        "graph",
        _table(["", "name", "dtype", "shape"], io_rows(report)),
        "latency",
        _table(
            ["run", "p50 ms", "p90 ms", "p99 ms", "iters", "batch", "threads", "provider"], latency_rows(report.latency)
        ),
    ]
    if machine_line(report.latency):
        lines.append("  " + machine_line(report.latency))
    if report.divergence:
        from .divergence import Divergence, format_lines

        lines += [shown(line) for line in format_lines(Divergence.from_dict(report.divergence))]
    for v in report.variants:
        lines.append(f"variant  {v.name}: {ok(v.ok)} {v.file or ''} {shown(v.error or v.notes)}".rstrip())
    lines += [f"warning  {shown(w)}" for w in report.warnings]
    lines.append(f"files    {', '.join(report.files.values())} ({report.seconds:.1f} s)")
    return "\n".join(lines)


def _comparison_lines(c) -> list[str]:
    """--exporter compare: the winner, why, and both exporters' rows."""
    if c is None:
        return []
    from .report_render import COMPARISON_COLUMNS, comparison_rows

    return [f"compare  {c.winner} chosen: {shown(c.reason)}", _table(COMPARISON_COLUMNS, comparison_rows(c))]


def cmd_convert(args: argparse.Namespace) -> int:
    from .pipeline import convert

    spec = spec_from_args(args)

    def progress(stage: str, fraction: float) -> None:
        if _TERMINATED:  # a SIGTERM whose SystemExit was swallowed: stop at the next stage, before writing
            raise SystemExit(128 + _TERMINATED[0])
        if not args.quiet:
            print(f"[{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)

    if args.memory_limit is not None or args.timeout is not None:
        report = _convert_limited(spec, progress, args.memory_limit, args.timeout)
    else:
        report = convert(spec, progress)
    print(report.to_json() if args.json else summary(report))
    return 0 if report.ok else 1


def _convert_limited(spec: ConvertSpec, progress, memory_mb: int | None, timeout_s: float | None):
    """The conversion in a child process under the app's per-job limits (studio.isolate: address-space
    limit in the child, resident-memory watchdog and wall-clock limit in the parent, the child's whole
    process group killed when one is passed). What a killed child leaves is removed here."""
    from .isolate import Job, JobError, Limits
    from .pipeline import remove_stale

    if memory_mb is not None and memory_mb < 1:
        raise StudioError(f"--memory-limit must be at least 1 MB, got {memory_mb}.")
    if timeout_s is not None and not timeout_s > 0:
        raise StudioError(f"--timeout must be more than 0 s, got {timeout_s:g}.")
    import multiprocessing as mp

    # fork where there is one: this process has imported nothing heavy yet, so the child starts at once
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    job = Job(
        "convert-report",
        {"spec": spec, "label": "conversion"},
        Limits(timeout_s=timeout_s or None, memory_mb=memory_mb or None),
        method,
        label="conversion",
    )
    try:
        return job.wait(progress)
    except JobError as e:
        option = {
            "memory": f"--memory-limit (now {memory_mb} MB)",
            "timeout": f"--timeout (now {timeout_s:g} s)" if timeout_s else "--timeout",
        }.get(e.reason)
        if option:
            raise StudioError(e.message, hint=f"Raise {option}, or try a smaller sample or model.") from e
        raise
    finally:
        job.kill()
        remove_stale(spec.out)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .graph_info import check, graph_info
    from .report_render import graph_rows

    path = Path(args.model)
    if not path.is_file():
        raise StudioError(f"{path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise StudioError(f"{path} is an empty file, not an ONNX model.")
    g = graph_info(path)
    chk = check(path)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"graph": asdict(g), "checker": asdict(chk)}, indent=2))
    else:
        # everything but the numbers comes from the uploaded file: escaped, so it cannot forge a line
        print(f"{shown(path)}  opset {g.opset}  {g.size_bytes:,} bytes  {shown(g.producer)}")
        print(_table(["", "name", "dtype", "shape"], graph_rows(g)))
        print("ops      " + ", ".join(f"{shown(k)}x{v}" for k, v in sorted(g.op_counts.items(), key=lambda kv: -kv[1])))
        for k, v in g.metadata.items():
            print(f"meta     {shown(k)} = {shown(v)}")
        print(f"checker  {'PASS' if chk.ok else 'FAIL: ' + shown(chk.message)}")
    return 0 if chk.ok else 1


def cmd_roles(args: argparse.Namespace) -> int:
    from .roles import describe_columns
    from .sample import read_sample

    cols = describe_columns(read_sample(args.data, parse_sample_limits(args.sample_limits)))
    if args.json:
        print(json.dumps([vars(c) for c in cols], indent=2))
    else:
        print(
            _table(
                ["column", "detected", "suggested", "example"],
                [[c.name, c.detected, c.suggested, c.example] for c in cols],
            )
        )
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from .app import launch

    parse_sample_limits(args.sample_limits)  # a bad value stops here, before the server starts
    graph = {
        k: v
        for k, v in (("graph_max_nodes", args.graph_max_nodes), ("graph_max_mb", args.graph_max_mb))
        if v is not None
    }  # unset: the app's defaults (studio.app.config.AppConfig)
    launch(
        host=args.host,
        port=args.port,
        trust_code=args.trust_code,
        max_jobs=args.max_jobs,
        job_timeout_s=args.job_timeout,
        memory_limit_mb=args.memory_limit,
        max_file_size=args.max_file_size,
        session_ttl_s=args.session_ttl,
        max_params=args.max_params,
        sample_limits=args.sample_limits,
        ray_address=args.ray,
        **graph,
    )
    return 0


_TERMINATED: list[int] = []  # the signal received, kept: a SystemExit raised while Python runs a finalizer or
# callback is printed and dropped, so the next progress step raises it again


def _exit_on_sigterm(signum, frame):
    _TERMINATED.append(signum)
    raise SystemExit(128 + signum)  # unwinds through every `finally`: no half-written folder stays behind


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "plugin", None):
            from .sources import plugins  # operator-chosen code, registered before any upload is read

            plugins.use(args.plugin)
        return args.func(args)
    except StudioError as e:
        print(f"error: {shown(e, newlines=True)}", file=sys.stderr)
        if e.details:
            lines = e.details.strip().splitlines()
            print(
                "\nexporter diagnosis:\n" + "\n".join(map(shown, lines[:80])) + ("\n…" if len(lines) > 80 else ""),
                file=sys.stderr,
            )
        if getattr(args, "debug", False):
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # a bug, not the user's fault: say so plainly
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # SystemExit, GeneratorExit...; a Rust library's panic (pyo3) is a BaseException too
        print(f"error: unexpected {type(e).__name__}: {shown(e, newlines=True)}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


def _add_batch_parser(sub) -> None:
    """`studio batch MANIFEST` (studio/fleet.py; on Ray: studio/fleet_ray.py)."""
    b = sub.add_parser(
        "batch",
        help="run every conversion of a manifest (JSONL / CSV / YAML), locally or on Ray",
        description="Convert and check every entry of MANIFEST (one conversion per line: checkpoint, "
        "data, roles, options named as in ConvertSpec), each in its own process under "
        "the job limits, into OUT/NAME; writes OUT/summary.json and OUT/summary.md. "
        "Entries unchanged since a complete run are skipped. Exit 0 all passed, 1 a "
        "check failed, 2 an entry could not be converted.",
    )
    b.add_argument("manifest", metavar="MANIFEST", help=".jsonl, .csv or .yaml: one conversion per line")
    b.add_argument("--out", default="studio-batch", metavar="DIR", help="output folder (default ./studio-batch)")
    b.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="conversions at once (default: what this machine holds: CPUs, memory / --memory-limit); "
        "with --ray the cluster's resources decide",
    )
    b.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run each conversion as a Ray task: a cluster ADDRESS (HEAD:6379), auto, or local",
    )
    b.add_argument(
        "--shared-dir",
        default=None,
        metavar="DIR",
        help="with --ray: a folder every node mounts at the same path, holding the inputs and --out; "
        "default: inputs and outputs travel through Ray",
    )
    b.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        metavar="MB",
        help="a job using more memory is stopped (default: the app's, 8192)",
    )
    b.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a job running longer is stopped (default: the app's, 600)",
    )
    b.add_argument("--force", action="store_true", help="run every entry, also those unchanged since their last run")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.add_argument("--debug", action="store_true", help="show tracebacks")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from .fleet import BatchOptions, run_batch

    result = run_batch(
        args.manifest,
        BatchOptions(
            out=args.out,
            jobs=args.jobs,
            memory_mb=args.memory_limit,
            timeout_s=args.timeout,
            force=args.force,
            quiet=args.quiet,
            ray=args.ray,
            shared_dir=args.shared_dir,
        ),
    )
    print(result.summary_md.read_text(), end="")
    print(f"summary  {result.summary_json}, {result.summary_md}")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
