"""Command line: `studio convert | inspect | roles | app | batch`. Turns StudioError into a message + exit 2.

Exit codes: 0 exported and every check passed; 1 exported but a check failed;
2 bad input or export impossible (message on stderr, traceback only with --debug).
The flags are declared in studio.cli_flags, what is printed in studio.cli_text.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from .cli_flags import build_parser, spec_from_args
from .cli_text import shown, summary, table
from .errors import StudioError
from .report_render import IO_COLUMNS, graph_rows
from .spec import ConvertSpec, parse_sample_limits


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
    from .roles import describe_columns
    from .sample import read_sample

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


def entry() -> None:
    """`python -m studio` and the `studio` console script: main(), then the process ends at once (exit_now)."""
    exit_now(main())


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
        print(f"error: unexpected {type(e).__name__}: {shown(e, newlines=True)}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


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


# the function running each command of studio.cli_flags.commands()
COMMANDS = {"convert": cmd_convert, "inspect": cmd_inspect, "roles": cmd_roles, "app": cmd_app, "batch": cmd_batch}

if __name__ == "__main__":
    raise SystemExit(main())
