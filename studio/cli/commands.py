"""Command line: `studio convert | inspect | roles | app | batch`. Turns StudioError into a message + exit 2.

Exit codes: 0 exported and every check passed; 1 exported but a check failed;
2 bad input or export impossible (message on stderr, traceback only with --debug).
The flags are declared in studio.cli.flags, what is printed in studio.cli.text. Everything printed that can
hold a name from an upload or a manifest is escaped for the terminal (cli_text.shown); the `studio` command
also wraps stdout / stderr so that nothing else written there (a library's warning, a traceback) can put a
control character on the terminal (cli_text.SafeStream).

`studio convert` runs the conversion in a child process under --memory-limit / --timeout, whose defaults
(studio.jobs.limits.job_limits) are finite; `main()` called from Python runs it in-process unless a limit is given or
`default_limits=True` (the `studio` command's entry() passes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from studio.cli.flags import build_parser, job_limits, limit_error, spec_from_args
from studio.cli.text import SafeStream, shown, summary, table
from studio.errors import StudioError
from studio.report.render import IO_COLUMNS, graph_rows
from studio.spec import ConvertSpec, parse_sample_limits

if TYPE_CHECKING:
    from studio.jobs.isolate import Limits, Progress
    from studio.report.model import Report


def cmd_convert(args: argparse.Namespace) -> int:
    from studio.pipeline import convert

    spec = spec_from_args(args)

    def progress(stage: str, fraction: float) -> None:
        if _TERMINATED:  # a SIGTERM whose SystemExit was swallowed: stop at the next stage, before writing
            raise SystemExit(128 + _TERMINATED[0])
        if not args.quiet:
            print(f"[{fraction:4.0%}] {shown(stage)}", file=sys.stderr, flush=True)

    given = args.memory_limit is not None or args.timeout is not None
    lim = job_limits(args.memory_limit, args.timeout) if given or getattr(args, "default_limits", False) else None
    if lim is not None and (lim.memory_mb or lim.timeout_s):
        report = _convert_limited(spec, progress, lim)
    else:  # from Python without limits, or `--memory-limit 0 --timeout 0`
        report = convert(spec, progress)
    print(report.to_json() if args.json else summary(report))
    return 0 if report.ok else 1


def _convert_limited(spec: ConvertSpec, progress: Progress, lim: Limits) -> Report:
    """The conversion in a child process under `lim` (studio.jobs.isolate, as the app runs its jobs: address-space
    limit in the child, resident-memory watchdog and wall-clock limit in the parent, the child's whole
    process group killed when one is passed). What a killed child leaves is removed here."""
    import multiprocessing as mp

    from studio.jobs.isolate import Job, JobError
    from studio.pipeline import remove_stale

    # fork where there is one: this process has imported nothing heavy yet, so the child starts at once
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    job = Job("convert-report", {"spec": spec, "label": "conversion"}, lim, method, label="conversion")
    try:
        return job.wait(progress)
    except JobError as e:
        raise limit_error(e, lim) from e
    finally:
        job.kill()
        remove_stale(spec.out)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from studio.checks.graph_info import check, graph_info

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
        print(table(IO_COLUMNS, graph_rows(g)))
        print("ops      " + ", ".join(f"{shown(k)}x{v}" for k, v in sorted(g.op_counts.items(), key=lambda kv: -kv[1])))
        for k, v in g.metadata.items():
            print(f"meta     {shown(k)} = {shown(v)}")
        print(f"checker  {'PASS' if chk.ok else 'FAIL: ' + shown(chk.message)}")
    return 0 if chk.ok else 1


def cmd_roles(args: argparse.Namespace) -> int:
    from studio.inputs.roles import describe_columns
    from studio.inputs.sample import read_sample

    cols = describe_columns(read_sample(args.data, parse_sample_limits(args.sample_limits)))
    if args.json:
        print(json.dumps([vars(c) for c in cols], indent=2))
    else:
        print(
            table(
                ["column", "detected", "suggested", "example"],
                [[c.name, c.detected, c.suggested, c.example] for c in cols],
            )
        )
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from studio.app import launch

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
        session_grace_s=args.session_grace,
        max_sessions=args.max_sessions,
        max_client_sessions=args.max_client_sessions,
        max_client_disk_mb=args.max_client_disk,
        max_disk_mb=args.max_disk,
        max_params=args.max_params,
        sample_limits=args.sample_limits,
        ray_address=args.ray,
        **graph,
    )
    return 0


_TERMINATED: list[int] = []  # the signal received, kept: a SystemExit raised while Python runs a finalizer or
# callback is printed and dropped, so the next progress step raises it again


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    _TERMINATED.append(signum)
    raise SystemExit(128 + signum)  # unwinds through every `finally`: no half-written folder stays behind


def entry() -> None:
    """`python -m studio` and the `studio` console script: main() with the default job limits, stdout and
    stderr escaping control characters, then the process ends at once (exit_now)."""
    sys.stdout, sys.stderr = SafeStream.wrap(sys.stdout), SafeStream.wrap(sys.stderr)
    exit_now(main(default_limits=True))


def exit_now(code: int) -> None:
    """End the process with `code`, skipping the interpreter's teardown: with torch, onnxruntime and
    transformers imported it takes 0.7 s, and 1.3-1.6 s with a bert-base model loaded (measured), spent
    freeing, one object at a time, the memory of a process that is ending. Nothing is lost: every file a
    command writes is complete (and moved into place) before main returns; the exit handlers (atexit:
    temporary folders' finalizers, logging) run first and the standard streams are flushed, after the threads that
    are not daemons have ended, as the interpreter would wait for them (a batch's rows are printed by its own)."""
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def main(argv: list[str] | None = None, *, default_limits: bool = False) -> int:
    """Run one command; its exit code. default_limits: `studio convert` runs under the default job limits
    even when no --memory-limit / --timeout is given (the `studio` command does; Python callers opt in)."""
    args = build_parser().parse_args(argv)
    args.default_limits = default_limits
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
            from studio.sources import plugins  # operator-chosen code, registered before any upload is read

            plugins.use(args.plugin)
        return COMMANDS[args.command](args)
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
        from studio.jobs.isolate import error_text  # the words a job's child process sends for the same error

        print(f"error: {shown(error_text(e), newlines=True)}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


def cmd_batch(args: argparse.Namespace) -> int:
    from studio.jobs.fleet import BatchOptions, run_batch, summary_markdown

    if args.plugin and args.ray:
        raise StudioError(
            "--plugin is not carried to Ray workers.",
            hint="Install the plugin on every node as an 'onnx_studio.sources' entry point, or run without --ray.",
        )
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
            inputs_under=args.inputs_under,
            trust_code=args.trust_code,
            max_params=args.max_params,
            sample_limits=args.sample_limits,
        ),
    )
    data = json.loads(result.summary_json.read_text())
    print(summary_markdown(data, terminal_text=True), end="")  # the table of summary.md, as terminal text
    print(f"summary  {shown(result.summary_json)}, {shown(result.summary_md)}")
    return result.exit_code


# the function running each command of studio.cli.flags.commands()
COMMANDS = {"convert": cmd_convert, "inspect": cmd_inspect, "roles": cmd_roles, "app": cmd_app, "batch": cmd_batch}

if __name__ == "__main__":
    raise SystemExit(main())
