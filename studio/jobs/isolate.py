"""Run a task in its own process, under a time and a memory limit: the job runner of the app and of
`studio convert --memory-limit / --timeout`.

A crash, segfault or out-of-memory in torch / onnxruntime ends that job's process, never its caller.
The parent (`Job.wait`) streams `(stage, fraction)` progress back from the child over a pipe, enforces
the time and memory limits, and kills the child (its whole process group) on cancel, timeout or when
the job ends. The child sends back a result or the StudioError's text — the same text the CLI prints.

Tasks are registered by name (`register`): the core's own here ("convert-report", "selftest"), the app's
in studio/app/worker.py. The child gets the task's function itself (pickled by reference, so it imports
only that function's module). This module imports neither gradio nor torch (torch only inside the child).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from studio.errors import StudioError
from studio.jobs._watchdog import die_with_reader
from studio.report.model import Report, map_leaves

Progress = Callable[[str, float], None]
Task = Callable[[dict[str, Any], Progress], Any]

# Imported once by the fork server so each job starts in ~0.1 s instead of re-importing torch (~3 s on
# the 2-core CI machine). Nothing here starts threads or touches onnxruntime (it starts a thread on
# import, which a fork would not carry over): that is imported in the child. The app adds its own
# warm-up module (`preload`); a module that sets `THREADS` there gets torch's thread count restored in
# each job.
PRELOAD = [
    "torch",
    "numpy",
    "pandas",
    "onnx",
    "transformers",
    "transformers.modeling_utils",
    "transformers.activations",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "onnxscript",
    "torch.onnx._internal.exporter._core",
    "studio.spec",
    "studio.report.model",
    "studio.report.render",
    "studio.inputs.batch",
    "studio.sources",
    "studio.models",
    "studio.export.exporters",
]

# Settings of the server process a job must see even though the fork server started earlier.
FORWARD_ENV = ("ONNX_STUDIO_PLUGINS",)
POLL_S = 0.05
MEMORY_POLL_S = 0.25

_TASKS: dict[str, Task] = {}


def register(name: str, fn: Task) -> Task:
    """Make `fn(payload, progress)` runnable as `Job(name, payload)`. fn must be a module-level function
    (the child imports it by name)."""
    _TASKS[name] = fn
    return fn


def task_module(name: str) -> str:
    """The module that registers task `name` (a process that has not imported it imports it to run the task,
    e.g. a Ray worker); ValueError for an unknown task."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[name].__module__


def preload(*modules: str) -> None:
    """Add modules for the fork server to import once (before its first job; later calls change nothing)."""
    PRELOAD.extend(m for m in modules if m not in PRELOAD)


DEFAULT_MEMORY_MB = 8192  # a job's memory limit unless its runner sets one (the app's default)


@dataclass(frozen=True)
class Limits:
    """Per-job limits. timeout_s: wall time; memory_mb: resident memory of the job's process tree
    (also its address space where no CUDA is in use); None = no limit."""

    timeout_s: float | None = 600.0
    memory_mb: int | None = DEFAULT_MEMORY_MB


class JobError(StudioError):
    """A job ended without a result. `reason`: error | crashed | timeout | memory | cancelled."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "error",
        error_type: str | None = None,
        details: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, hint=hint, details=details)
        self.reason = reason
        self.error_type = error_type


# --------------------------------------------------------------------------------------------------
# Parent side


_ctx_lock = threading.Lock()
_contexts: dict[str, Any] = {}


def _context(start_method: str) -> Any:  # the start method's context: typeshed's BaseContext has no Process
    with _ctx_lock:
        if start_method not in _contexts:
            ctx = mp.get_context(start_method)
            if start_method == "forkserver":
                ctx.set_forkserver_preload(PRELOAD)
            _contexts[start_method] = ctx
        return _contexts[start_method]


def stop_fork_server() -> None:
    """Kill the fork server this process started, if any: a stopping server must not leave it behind, and
    while it is still importing torch (seconds) it would not notice that its parent is gone."""
    try:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        pid = getattr(server, "_forkserver_pid", None)
        if pid:
            os.kill(pid, signal.SIGKILL)
            stop = getattr(server, "_stop", None)  # reaps it and forgets it: the next job starts a new one
            if stop is not None:
                stop()
    except (ImportError, OSError):
        pass


def default_start_method() -> str:
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Job:
    """One task in its own process. `start()`, then `wait(on_progress)` returns the result or raises
    JobError; `cancel()` (from any thread) stops it. The process never outlives `wait`."""

    def __init__(
        self,
        task: str,
        payload: dict[str, Any],
        limits: Limits = Limits(),
        start_method: str | None = None,
        label: str = "",
    ):
        if task not in _TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(_TASKS))}")
        # builtin types only: gradio hands file paths over as its own str subclass, and unpickling one in
        # the child would import gradio there (~3 s per job)
        self.task, self.payload, self.limits = task, plain(payload), limits
        self.payload["_env"] = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        self.start_method = start_method or default_start_method()
        self.label = label or task
        self.proc: BaseProcess | None = None
        self.started_at: float | None = None
        self._conn: Connection | None = None
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> Job:
        ctx = _context(self.start_method)
        recv, send = ctx.Pipe(duplex=False)
        mem = self.limits.memory_mb * 2**20 if self.limits.memory_mb else None
        proc = ctx.Process(
            target=_child_main,
            name=f"studio-{self.task}",
            daemon=True,
            args=(self.task, _TASKS[self.task], self.payload, send, mem, tuple(PRELOAD)),
        )
        with self._lock:
            if self._cancel_reason:
                raise JobError(self._cancel_reason, reason="cancelled")
            proc.start()
            self.proc, self._conn, self.started_at = proc, recv, time.monotonic()
        send.close()  # the child holds the only writer: EOF on our side means it is gone
        return self

    def cancel(self, reason: str = "The job was cancelled.") -> None:
        """Never waits for `start` (which holds the lock while the fork server may still be importing
        torch): the reason is set at once, and a job that starts afterwards is killed by `wait`."""
        self._cancel_reason = self._cancel_reason or reason
        self.kill()

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.pid is None or proc.exitcode is not None:  # not started, or already gone
            return
        try:  # the child made itself a process-group leader: take its own children with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            try:
                proc.kill()
            except OSError:
                pass
        proc.join(5)

    def _rss_mb(self, pid: int | None) -> float:
        import psutil

        if pid is None:  # not started (psutil would measure this process)
            return 0.0
        try:
            p = psutil.Process(pid)
            procs = [p] + p.children(recursive=True)
            total = 0
            for q in procs:
                try:
                    total += q.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except psutil.Error:
            return 0.0

    def wait(self, on_progress: Callable[[str, float], None] | None = None) -> Any:
        if self.proc is None:
            self.start()
        proc, conn, started = self.proc, self._conn, self.started_at
        assert proc is not None and conn is not None and started is not None  # start() sets all three
        limits = self.limits
        deadline = started + limits.timeout_s if limits.timeout_s else None
        next_mem = 0.0
        try:
            while True:
                if self._cancel_reason:
                    raise JobError(self._cancel_reason, reason="cancelled")
                msg = None
                try:
                    if conn.poll(POLL_S):
                        msg = conn.recv()
                except Exception:  # noqa: BLE001 - EOF, a closed pipe, a message cut short by a dying child
                    msg = ("eof",)
                if msg is not None:
                    kind = msg[0]
                    if kind == "progress":
                        if on_progress is not None:
                            on_progress(msg[1], msg[2])
                        continue
                    if kind == "result":
                        return msg[1]
                    if kind == "error":
                        raise _error_from(msg[1], limits)
                    # eof: the child is gone without a word
                    proc.join(2)
                    if self._cancel_reason:
                        raise JobError(self._cancel_reason, reason="cancelled")
                    raise self._crashed(proc.exitcode)
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    self.kill()
                    raise JobError(
                        f"The {self.label} took longer than the {limits.timeout_s:g} s limit and was stopped.",
                        reason="timeout",
                        hint="Try a smaller sample, the legacy exporter, or ask the operator to "
                        "raise the job time limit.",
                    )
                if limits.memory_mb and now >= next_mem:
                    next_mem = now + MEMORY_POLL_S
                    rss = self._rss_mb(proc.pid)
                    if rss > limits.memory_mb:
                        self.kill()
                        raise JobError(
                            _memory_message(self.label, limits.memory_mb), reason="memory", hint=_MEMORY_HINT
                        )
        finally:
            self.kill()
            try:
                conn.close()
            except OSError:
                pass

    def _crashed(self, code: int | None) -> JobError:
        if code is None:
            how = "without reporting a result"
        elif code < 0:
            how = f"(killed by {_signal_name(code)})"
        else:
            how = f"(exit code {code})"
        likely = ""
        if code is not None and -code == signal.SIGKILL:
            likely = " It was killed from outside, most often by the system running out of memory."
        elif code is not None and -code in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL):
            likely = " torch or onnxruntime crashed on this model."
        return JobError(
            f"The {self.label} worker stopped unexpectedly {how}.{likely} The studio is still "
            "running: you can try again or change the options.",
            reason="crashed",
        )


_MEMORY_HINT = "Try a smaller sample or model, or ask the operator to raise the job memory limit."


def _memory_message(label: str, limit_mb: int) -> str:
    return f"The {label} ran out of memory (limit {limit_mb:,} MB) and was stopped."


def _error_from(info: dict[str, Any], limits: Limits) -> JobError:
    if info.get("reason") == "memory":
        return JobError(
            _memory_message(info.get("label", "job"), limits.memory_mb or 0),
            reason="memory",
            hint=_MEMORY_HINT,
            error_type=info.get("type"),
        )
    return JobError(info["message"], reason="error", error_type=info.get("type"), details=info.get("details"))


def run_job(
    task: str,
    payload: dict[str, Any],
    limits: Limits = Limits(),
    on_progress: Progress | None = None,
    start_method: str | None = None,
) -> Any:
    """Start a job and wait for it (convenience for scripts and tests)."""
    return Job(task, payload, limits, start_method).start().wait(on_progress)


# --------------------------------------------------------------------------------------------------
# Child side


def _limit_memory(limit_bytes: int | None) -> None:
    """Cap the address space so a runaway allocation fails inside the job (MemoryError) rather than
    swapping the machine. Skipped where CUDA is usable: its driver reserves far more address space than
    it uses, so there the parent's resident-memory watchdog alone enforces the limit."""
    if not limit_bytes:
        return
    try:
        import torch

        if torch.cuda.is_available():
            return
    except (ImportError, RuntimeError, OSError):  # no usable torch / CUDA driver: the limit applies
        pass
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))
    except (ValueError, OSError):
        pass


def _restore_threads(preloaded: tuple[str, ...]) -> None:
    """The fork server warmed up single-threaded; a job gets torch's usual thread count back."""
    for name in preloaded:
        threads = getattr(sys.modules.get(name), "THREADS", None)
        if threads:
            import torch

            torch.set_num_threads(threads)


def is_oom(e: BaseException) -> bool:
    """Whether `e` is the job running out of memory (under the address-space limit or not)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    if isinstance(e, (ImportError, OSError)):  # a library that cannot be mapped under the address-space limit
        return any(s in text for s in ("failed to map segment", "cannot allocate memory"))
    return isinstance(e, RuntimeError) and any(
        s in text
        for s in ("can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory", "failed to allocate")
    )


def _child_main(
    name: str,
    task: Task,
    payload: dict[str, Any],
    conn: Connection,
    memory_bytes: int | None,
    preloaded: tuple[str, ...] = (),
) -> None:
    try:
        os.setsid()  # own process group: a kill takes anything the job started with it
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server stops the server, which kills us
    die_with_reader(conn)
    label = payload.get("label", name)
    for k in FORWARD_ENV:  # e.g. the operator's --plugin list, as the server has it now
        os.environ.pop(k, None)
    os.environ.update(payload.pop("_env", None) or {})
    try:
        _restore_threads(preloaded)
        _limit_memory(memory_bytes)

        def progress(stage: str, fraction: float) -> None:
            conn.send(("progress", str(stage), float(fraction)))

        result = task(payload, progress)
        conn.send(("result", plain(result)))
    except StudioError as e:
        _send_error(conn, {"type": type(e).__name__, "message": str(e), "details": e.details})
    except BaseException as e:  # noqa: BLE001 - anything else is reported, never raised into the server
        if is_oom(e):
            _send_error(conn, {"reason": "memory", "type": type(e).__name__, "label": label})
        else:
            # the same words as the CLI (`error: unexpected ...`); the traceback stays in the server log
            from studio.escape import terminal  # the message may quote an upload's names: no raw control characters

            sys.stderr.write(terminal(traceback.format_exc(), newlines=True) + "\n")
            _send_error(conn, {"type": type(e).__name__, "message": error_text(e)})
    finally:
        try:
            conn.close()
        except OSError:
            pass


def error_text(e: BaseException) -> str:
    """A StudioError's own text; anything else in the CLI's words (`unexpected ValueError: ...`)."""
    return str(e) if isinstance(e, StudioError) else f"unexpected {type(e).__name__}: {e}"


def _send_error(conn: Connection, info: dict[str, Any]) -> None:
    try:
        conn.send(("error", info))
    except Exception:  # noqa: BLE001 - e.g. details that do not pickle: send the message alone
        conn.send(("error", {"type": info.get("type"), "message": str(info.get("message"))[:2000]}))


def plain(obj: Any) -> Any:
    """Builtin types only, in place through dataclasses: a str subclass such as torch's TorchVersion or a
    numpy scalar would make the web server import torch / numpy types just to unpickle the result."""
    return map_leaves(obj, _plain_leaf)


def _plain_leaf(obj: Any) -> Any:
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return plain(obj.item())
        except (TypeError, ValueError, RuntimeError):  # not a scalar after all (an array of several)
            pass
    return str(obj)


# --- the core's tasks (run in the child) ------------------------------------------------------------


def task_convert_report(payload: dict[str, Any], progress: Progress) -> Report:
    """pipeline.convert(spec) and its report, nothing else: `studio convert --memory-limit / --timeout`."""
    from studio.pipeline import convert

    return convert(payload["spec"], progress)


def task_selftest(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Exercise the runner without the engine: sleep, allocate, exit or crash on request."""
    action = payload.get("action", "ok")
    progress("selftest", 0.5)
    if action == "sleep":
        time.sleep(float(payload.get("seconds", 60)))
    elif action == "exit":
        os._exit(int(payload.get("code", 3)))
    elif action == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "allocate":
        blocks = []
        for _ in range(int(payload.get("mb", 10**6))):
            blocks.append(bytearray(2**20))
            time.sleep(0.0005)
    elif action == "raise":
        raise StudioError(payload.get("message", "selftest error"))
    return {"ok": True, "pid": os.getpid(), "env": {k: os.environ.get(k) for k in FORWARD_ENV}}


register("convert-report", task_convert_report)
register("selftest", task_selftest)
