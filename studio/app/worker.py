"""One process per job: preview, mapping check and conversion run outside the web server.

A crash, segfault or out-of-memory in torch / onnxruntime ends that job's process, never the server.
The parent (`Job.wait`) streams `(stage, fraction)` progress back from the child over a pipe, enforces
the time and memory limits, and kills the child (its whole process group) on cancel, timeout or when
the job ends. The child sends back a result or the StudioError's text — the same text the CLI prints.

This module must not import gradio (the child imports it) and imports torch only inside the child.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import StudioError

# Imported once by the fork server so each job starts in ~0.1 s instead of re-importing torch (~3 s on
# the 2-core CI machine). Nothing here starts threads or touches onnxruntime (it starts a thread on
# import, which a fork would not carry over): that is imported in the child.
PRELOAD = ["torch", "numpy", "pandas", "onnx", "transformers", "transformers.modeling_utils",
           "transformers.activations", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto", "onnxscript", "torch.onnx._internal.exporter._core",
           "studio.spec", "studio.report", "studio.batch", "studio.sources", "studio.models", "studio.export",
           "studio.app._warm"]

# Settings of the server process a job must see even though the fork server started earlier.
FORWARD_ENV = ("ONNX_STUDIO_PLUGINS",)
POLL_S = 0.05
MEMORY_POLL_S = 0.25
DIAGNOSIS_CHARS = 20_000


@dataclass(frozen=True)
class Limits:
    """Per-job limits. timeout_s: wall time; memory_mb: resident memory of the job's process tree
    (also its address space where no CUDA is in use); None = no limit."""

    timeout_s: float | None = 600.0
    memory_mb: int | None = 8192


class JobError(StudioError):
    """A job ended without a result. `reason`: error | crashed | timeout | memory | cancelled."""

    def __init__(self, message: str, *, reason: str = "error", error_type: str | None = None,
                 details: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint, details=details)
        self.reason = reason
        self.error_type = error_type


# --------------------------------------------------------------------------------------------------
# Parent side


_ctx_lock = threading.Lock()
_contexts: dict[str, Any] = {}


def _context(start_method: str):
    with _ctx_lock:
        if start_method not in _contexts:
            ctx = mp.get_context(start_method)
            if start_method == "forkserver":
                ctx.set_forkserver_preload(PRELOAD)
            _contexts[start_method] = ctx
        return _contexts[start_method]


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

    def __init__(self, task: str, payload: dict[str, Any], limits: Limits = Limits(),
                 start_method: str | None = None, label: str = ""):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        # builtin types only: gradio hands file paths over as its own str subclass, and unpickling one in
        # the child would import gradio there (~3 s per job)
        self.task, self.payload, self.limits = task, _plain(payload), limits
        self.payload["_env"] = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        self.start_method = start_method or default_start_method()
        self.label = label or task
        self.proc = None
        self.started_at: float | None = None
        self._conn = None
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> "Job":
        ctx = _context(self.start_method)
        recv, send = ctx.Pipe(duplex=False)
        mem = self.limits.memory_mb * 2**20 if self.limits.memory_mb else None
        proc = ctx.Process(target=_child_main, args=(self.task, self.payload, send, mem),
                           name=f"studio-{self.task}", daemon=True)
        with self._lock:
            if self._cancel_reason:
                raise JobError(self._cancel_reason, reason="cancelled")
            proc.start()
            self.proc, self._conn, self.started_at = proc, recv, time.monotonic()
        send.close()  # the child holds the only writer: EOF on our side means it is gone
        return self

    def cancel(self, reason: str = "The job was cancelled.") -> None:
        with self._lock:
            self._cancel_reason = self._cancel_reason or reason
        self.kill()

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.exitcode is not None:
            return
        try:  # the child made itself a process-group leader: take its own children with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            try:
                proc.kill()
            except Exception:
                pass
        proc.join(5)

    def _rss_mb(self) -> float:
        import psutil
        try:
            p = psutil.Process(self.proc.pid)
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
        limits = self.limits
        deadline = self.started_at + limits.timeout_s if limits.timeout_s else None
        next_mem = 0.0
        try:
            while True:
                if self._cancel_reason:
                    raise JobError(self._cancel_reason, reason="cancelled")
                msg = None
                try:
                    if self._conn.poll(POLL_S):
                        msg = self._conn.recv()
                except (EOFError, OSError):
                    msg = ("eof",)
                except Exception as e:  # a message cut short by a dying child
                    msg = ("eof", f"{type(e).__name__}: {e}")
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
                    self.proc.join(2)
                    if self._cancel_reason:
                        raise JobError(self._cancel_reason, reason="cancelled")
                    raise self._crashed()
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    self.kill()
                    raise JobError(f"The {self.label} took longer than the {limits.timeout_s:g} s limit and "
                                   "was stopped.", reason="timeout",
                                   hint="Try a smaller sample, the legacy exporter, or ask the operator to "
                                        "raise the job time limit.")
                if limits.memory_mb and now >= next_mem:
                    next_mem = now + MEMORY_POLL_S
                    rss = self._rss_mb()
                    if rss > limits.memory_mb:
                        self.kill()
                        raise JobError(_memory_message(self.label, limits.memory_mb), reason="memory",
                                       hint=_MEMORY_HINT)
        finally:
            self.kill()
            try:
                self._conn.close()
            except Exception:
                pass

    def _crashed(self) -> JobError:
        code = self.proc.exitcode
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
        return JobError(f"The {self.label} worker stopped unexpectedly {how}.{likely} The studio is still "
                        "running: you can try again or change the options.", reason="crashed")


_MEMORY_HINT = "Try a smaller sample or model, or ask the operator to raise the job memory limit."


def _memory_message(label: str, limit_mb: int) -> str:
    return f"The {label} ran out of memory (limit {limit_mb:,} MB) and was stopped."


def _error_from(info: dict[str, Any], limits: Limits) -> JobError:
    if info.get("reason") == "memory":
        return JobError(_memory_message(info.get("label", "job"), limits.memory_mb or 0), reason="memory",
                        hint=_MEMORY_HINT, error_type=info.get("type"))
    return JobError(info["message"], reason="error", error_type=info.get("type"), details=info.get("details"))


def run_job(task: str, payload: dict[str, Any], limits: Limits = Limits(), on_progress=None,
            start_method: str | None = None) -> Any:
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
    except Exception:
        pass
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))
    except (ValueError, OSError):
        pass


def _restore_threads() -> None:
    """The fork server warmed up single-threaded; a job gets torch's usual thread count back."""
    import sys
    warm = sys.modules.get("studio.app._warm")
    if warm is not None and getattr(warm, "THREADS", None):
        import torch
        torch.set_num_threads(warm.THREADS)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    if isinstance(e, (ImportError, OSError)):  # a library that cannot be mapped under the address-space limit
        return any(s in text for s in ("failed to map segment", "cannot allocate memory"))
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory", "failed to allocate"))


def _child_main(task: str, payload: dict[str, Any], conn, memory_bytes: int | None) -> None:
    try:
        os.setsid()  # own process group: a kill takes anything the job started with it
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server stops the server, which kills us
    label = payload.get("label", task)
    for k in FORWARD_ENV:  # e.g. the operator's --plugin list, as the server has it now
        os.environ.pop(k, None)
    os.environ.update(payload.pop("_env", None) or {})
    try:
        _restore_threads()
        _limit_memory(memory_bytes)

        def progress(stage: str, fraction: float) -> None:
            conn.send(("progress", str(stage), float(fraction)))

        result = TASKS[task](payload, progress)
        conn.send(("result", _plain(result)))
    except StudioError as e:
        _send_error(conn, {"type": type(e).__name__, "message": str(e), "details": e.details})
    except BaseException as e:  # noqa: BLE001 - anything else is reported, never raised into the server
        if _is_oom(e):
            _send_error(conn, {"reason": "memory", "type": type(e).__name__, "label": label})
        else:
            # the same words as the CLI (`error: unexpected ...`); the traceback stays in the server log
            traceback.print_exc()
            _send_error(conn, {"type": type(e).__name__, "message": f"unexpected {type(e).__name__}: {e}"})
    finally:
        try:
            conn.close()
        except Exception:
            pass


def _send_error(conn, info: dict[str, Any]) -> None:
    try:
        conn.send(("error", info))
    except Exception:
        conn.send(("error", {"type": info.get("type"), "message": str(info.get("message"))[:2000]}))


# --- tasks (run in the child) -----------------------------------------------------------------------

def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, StudioError) else f"unexpected {type(e).__name__}: {e}"


def _mapping(loaded, df, roles: dict[str, str], spec, data: str) -> dict[str, Any]:
    """Build the batch with this mapping: the final role of every column, the tensors it makes, or why
    the mapping cannot work (the same BatchError text a conversion would stop with)."""
    from .. import batch as batch_mod
    from .. import roles as roles_mod
    try:
        b = batch_mod.build_batch(df, loaded, roles, spec, file=os.path.basename(data))
    except StudioError as e:
        roles_out = dict(roles)
        try:  # still show the model-aware suggestions for the columns the user did not set
            roles_out = {**roles_mod.suggest_roles(df, loaded), **roles}
        except Exception:
            pass
        return {"ok": False, "error": str(e), "roles": roles_out, "tensors": {}}
    return {"ok": True, "error": None, "roles": dict(b.roles),
            "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                        for n, t in b.tensors.items()},
            "feeds": {n: [dict(f) for f in parts] for n, parts in b.features.items()}}


def task_preview(payload: dict[str, Any], progress) -> dict[str, Any]:
    """What was uploaded: the model (kind, inputs, tokenizer), the sample's columns and first rows and,
    when both are there, the model-aware role suggestions checked against the model."""
    from .. import pipeline, sources
    from .. import sample as sample_mod
    ckpt, data, spec = payload.get("checkpoint"), payload.get("data"), payload.get("spec")
    out: dict[str, Any] = {"model": None, "model_error": None, "columns": [], "rows": [], "data_error": None,
                           "mapping": None}
    loaded = df = None
    if data:
        progress("reading sample", 0.1)
        try:
            out.update({k: v for k, v in pipeline.preview(None, data, spec).items() if k != "model"})
            df = sample_mod.read_sample(data, getattr(spec, "sample_limits", None))
        except Exception as e:  # noqa: BLE001 - shown next to the upload
            out["data_error"] = _error_text(e)
    if ckpt:
        progress("loading checkpoint", 0.4)
        try:
            loaded = sources.load(ckpt, spec, workdir=payload.get("workdir"))
            out["model"] = loaded.describe()
        except Exception as e:  # noqa: BLE001
            if _is_oom(e):
                raise
            out["model_error"] = _error_text(e)
    if loaded is not None and df is not None:
        progress("checking mapping", 0.8)
        out["mapping"] = _mapping(loaded, df, dict(payload.get("roles") or {}), spec, data)
    return out


def task_check(payload: dict[str, Any], progress) -> dict[str, Any]:
    """Check a role mapping against the model before export."""
    from .. import sources
    from .. import sample as sample_mod
    spec, data = payload["spec"], payload["data"]
    loaded = sources.load(payload["checkpoint"], spec, workdir=payload.get("workdir"))
    df = sample_mod.read_sample(data, getattr(spec, "sample_limits", None))
    return _mapping(loaded, df, dict(payload.get("roles") or {}), spec, data)


def _zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stored = path.suffix in (".onnx", ".data", ".npz")  # weights barely compress
                zf.write(path, f"{dest.stem}/{path.relative_to(folder)}",
                         compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return dest


def _diagnoses(report, out: Path) -> str:
    """The exporter's own markdown diagnosis of every failed attempt (the new exporter writes one)."""
    parts = []
    for a in report.export.attempts:
        if a.ok or not a.diagnosis_path:
            continue
        for base in (out / "diagnostics", out):
            p = base / a.diagnosis_path
            if p.is_file():
                parts.append(f"### {a.exporter} exporter\n\n" + p.read_text(errors="replace"))
                break
    text = "\n\n".join(parts)
    return text[:DIAGNOSIS_CHARS] + ("\n\n…(truncated: see the diagnostics folder in the zip)"
                                     if len(text) > DIAGNOSIS_CHARS else "")


def task_convert(payload: dict[str, Any], progress) -> dict[str, Any]:
    """pipeline.convert(spec) with progress, then one zip of every artifact beside the out folder."""
    from .. import pipeline
    spec = payload["spec"]
    progress("starting", 0.0)
    report = pipeline.convert(spec, progress)
    out = Path(spec.out)
    _without_server_paths(report, [spec.checkpoint, spec.data, spec.config, out], out)
    zip_path = _zip_folder(out, out.parent / f"{payload.get('zip_stem') or 'onnx-studio'}.zip")
    return {"report": report, "zip": str(zip_path), "diagnosis": _diagnoses(report, out)}


def task_convert_report(payload: dict[str, Any], progress):
    """pipeline.convert(spec) and its report, nothing else: `studio convert --memory-limit / --timeout`."""
    from .. import pipeline
    return pipeline.convert(payload["spec"], progress)


def _without_server_paths(report, paths: list, out: Path) -> None:
    """The downloads name `sample.csv` and `out`, not the server's job folders (which mean nothing to the
    person downloading them): scrub every string of the report, then rewrite report.json / report.md."""
    from .handlers import scrub_paths
    _map_leaves(report, lambda v: scrub_paths(v, paths) if isinstance(v, str) else v)
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.to_markdown())


def _map_leaves(obj: Any, leaf) -> Any:
    """`leaf` applied to every value (and dict key) inside dataclasses (changed in place), dicts, lists and
    tuples (a subclass of list or tuple comes back as a list)."""
    import dataclasses
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            setattr(obj, f.name, _map_leaves(getattr(obj, f.name), leaf))
        return obj
    if isinstance(obj, dict):
        return {_map_leaves(k, leaf): _map_leaves(v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = (_map_leaves(v, leaf) for v in obj)
        return type(obj)(items) if type(obj) in (list, tuple) else list(items)
    return leaf(obj)


def _plain(obj: Any) -> Any:
    """Builtin types only, in place through dataclasses: a str subclass such as torch's TorchVersion or a
    numpy scalar would make the web server import torch / numpy types just to unpickle the result."""
    return _map_leaves(obj, _plain_leaf)


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
            return _plain(obj.item())
        except Exception:
            pass
    return str(obj)


def task_selftest(payload: dict[str, Any], progress) -> dict[str, Any]:
    """Exercise the worker without the engine: sleep, allocate, exit or crash on request."""
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


TASKS: dict[str, Callable[[dict[str, Any], Callable[[str, float], None]], Any]] = {
    "preview": task_preview, "check": task_check, "convert": task_convert, "convert-report": task_convert_report,
    "selftest": task_selftest}
