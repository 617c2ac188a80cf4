"""Conversions as Ray tasks: `studio batch --ray ADDRESS|auto|local` (run_ray) and RayJob, a drop-in for the
job runner's Job (studio.jobs.isolate) that runs one job on a Ray cluster.

Each task asks Ray for what it needs: CPUs (the entry's `threads`, else 1), memory (estimated from the size of
the checkpoint, at most the job memory limit) and a GPU when CUDA latency or the fp16 variant is asked for and
the cluster has one. On the worker the job runs in its own process under the same limits as on one machine
(studio.jobs.entries.run_isolated). By default the inputs travel to the worker and the output folder comes back
through Ray (zip bytes: studio.artifacts.zip_bytes, studio.jobs._ray_files), so the nodes share no disk; with
`shared_dir` every node reads the inputs and writes the output at the same paths. A worker that dies fails only
its own entry. This module imports the runners' shared entry logic (studio.jobs.entries), never the batch
driver (studio.jobs.fleet), which reaches it through run_ray alone.

Only this module imports ray, and only when a batch or job is sent to Ray.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.artifacts import zip_bytes
from studio.errors import StudioError, first_line
from studio.jobs import _ray_files as ray_files
from studio.jobs import isolate
from studio.jobs.entries import (
    BatchOptions,
    Pending,
    Preparer,
    error_row,
    finish_error,
    row_from_report,
    run_isolated,
    write_state,
)
from studio.jobs.isolate import Limits, Progress
from studio.jobs.manifest import ManifestEntry
from studio.jobs.progress import BatchProgress
from studio.spec import ConvertSpec

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.util.queue import Queue

    Result = dict[str, Any]  # what a task sends back: its report or result, the zip, or the error
    Inputs = dict[tuple[tuple[str, str], ...], ObjectRef[bytes | None]]  # packed files by the paths they hold

HOOK_ENV = "ONNX_STUDIO_FLEET_TEST_HOOKS"  # "1": honour the manifest's test-only keys (tests/test_fleet_ray.py)
BASE_MB = 600  # a conversion process before the model: python + torch + onnx + onnxruntime imported
WEIGHT_FACTOR = 4  # bert-base (0.44 GB of weights) peaked at 2.17 GB for the whole process (measured, torch 2.13)
POLL_S = 0.2
STOP_GRACE_S = 10.0  # a cancelled task's time to stop its job's process before its worker is killed
_OUT = "\0studio-out\0"  # stands for the job's output parent folder in a result sent back by the worker


# --- the cluster ------------------------------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 10.0


def _reachable(address: str | None) -> None:
    """A HOST:PORT address must accept a connection before ray.init, which otherwise retries for minutes."""
    host, sep, port = str(address or "").removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return  # local, auto, or a form Ray resolves itself
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise StudioError(
            f"Cannot connect to the Ray cluster at {address}: nothing answers there ({e}).",
            hint="Start it with `ray start --head` (workers: `ray start --address=HEAD:6379`), "
            "or use --ray local for a cluster on this machine.",
        ) from e


def connect(address: str | None) -> bool:
    """Join the cluster at ADDRESS (`auto`: the one this machine belongs to), or start a local one (`local`).
    An already initialised Ray is used as it is. True when this call initialised Ray."""
    try:
        import ray
    except ImportError as e:
        raise StudioError(
            "--ray needs the ray package.",
            hint='pip install "onnx-studio[ray]" (ray>=2.40) on this machine and on every node of the cluster.',
        ) from e
    if ray.is_initialized():
        return False
    _reachable(address)
    try:
        if address in (None, "", "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise StudioError(
            f"Cannot connect to the Ray cluster at {address}: {first_line(e)}",
            hint="Start it with `ray start --head` (workers: `ray start --address=HEAD:6379`), "
            "or use --ray local for a cluster on this machine.",
        ) from e
    return True


def _size_bytes(path: str | None) -> int:
    if not path:
        return 0
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def resources(
    spec: ConvertSpec, memory_limit_mb: int | None, gpus_in_cluster: float, cuda_asked: bool = False
) -> dict[str, int]:
    """The Ray resource request of one conversion."""
    mb = BASE_MB + WEIGHT_FACTOR * _size_bytes(spec.checkpoint) / 2**20
    if memory_limit_mb:
        mb = min(mb, memory_limit_mb)
    wants_gpu = cuda_asked or "fp16" in tuple(spec.variants)
    return {
        "num_cpus": int(spec.threads or 1),
        "memory": int(mb * 2**20),
        "num_gpus": 1 if wants_gpu and gpus_in_cluster >= 1 else 0,
    }


def _gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _largest_node() -> tuple[float, float]:
    """CPUs and memory (bytes) of the cluster's largest live node: a task asking for more never starts."""
    import ray

    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    return max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("memory", 0) for n in nodes), default=0)


# --- a batch entry as a Ray task ---------------------------------------------------------------------------------


def _progress_sink(queue: Queue, key: str) -> Progress:
    def send(stage: str, fraction: float) -> None:
        try:
            queue.put_nowait((key, str(stage), float(fraction)))
        except Exception:  # noqa: BLE001 - progress is best effort; the result is what counts
            pass

    return send


def convert_task(
    name: str, spec: ConvertSpec, inputs: bytes | None, lim: Limits, queue: Queue, hooks: dict[str, Any]
) -> Result:
    """Runs on a Ray worker: the entry's conversion in its own process; its report and (without a shared
    folder) the output folder as zip bytes, or the error."""
    import json

    progress = _progress_sink(queue, name)
    progress("started on " + os.uname().nodename, 0.0)
    if hooks.get("_kill_worker") and os.environ.get(HOOK_ENV) == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # tests: a worker that dies in the middle of its task
    with tempfile.TemporaryDirectory(prefix="studio-ray-") as tmp:
        back: dict[str, str] = {}
        if inputs is not None:
            ray_files.unpack(inputs, Path(tmp) / "in")
            spec, back = ray_files.local_inputs(spec, Path(tmp))
            out = Path(tmp) / "out" / name
            back[str(out)], spec = str(spec.out), replace(spec, out=str(out))
        try:
            report = run_isolated(spec, lim, progress)
        except StudioError as e:
            from studio.jobs.limits import limit_error

            e = limit_error(e, lim)
            return {"error": ray_files.swap(back)(str(e)), "reason": getattr(e, "reason", "error")}
        out = Path(spec.out)
        if inputs is None:
            return {"report": report.to_dict()}
        ray_files.rewrite_texts(out, back)
        return {"report": json.loads((out / "report.json").read_text()), "zip": zip_bytes(out)}


def check_shared(entries: list[ManifestEntry], out: Path, shared: str) -> None:
    """With --shared-dir every input and the output folder must lie in it: the workers see nothing else."""
    root = Path(shared).expanduser().resolve()
    if not root.is_dir():
        raise StudioError(f"--shared-dir {root} is not a folder.")
    for e in entries:
        for key in ray_files.INPUT_KEYS:
            value = getattr(e.spec, key)
            if value and not Path(value).resolve().is_relative_to(root):
                raise StudioError(
                    f"--shared-dir {root}: entry {e.name!r} (line {e.line}) reads {key} {value}, "
                    "outside the shared folder the workers see."
                )
    if not Path(out).resolve().is_relative_to(root):
        raise StudioError(f"--shared-dir {root}: --out {out} is outside it; the workers could not write there.")


def run_ray(
    entries: list[ManifestEntry], prepare: Preparer, opts: BatchOptions, lim: Limits, progress: BatchProgress
) -> dict[str, dict[str, Any]]:
    """Every entry as a Ray task (Ray queues them by their resource requests), each hashed just before it is
    sent (studio.jobs.entries.Preparer), so the first ones run while the rest are hashed; rows by entry name."""
    shared = opts.shared_dir
    if shared:
        check_shared(entries, prepare.out, shared)
    started_ray = connect(opts.ray)
    import ray
    from ray.util.queue import Queue

    rows: dict[str, dict[str, Any]] = {}
    try:
        queue = Queue(actor_options={"num_cpus": 0})
        remote = ray.remote(max_retries=0)(convert_task)
        gpus, (node_cpus, node_memory) = _gpus(), _largest_node()
        refs: dict[ObjectRef[Result], Pending] = {}
        packed: Inputs = {}
        for e in entries:
            p = prepare(e)
            if isinstance(p, dict):  # unchanged since its last run, or its inputs unreadable
                rows[e.name] = p
                progress.skip(e.name) if p.get("skipped") else progress.finish(e.name, p)
                continue
            p.folder.mkdir(parents=True, exist_ok=True)
            (p.folder / "batch.json").unlink(missing_ok=True)
            spec = replace(p.entry.spec, out=str(p.folder))
            request = resources(spec, lim.memory_mb, gpus, cuda_asked=p.entry.options.get("cuda") is True)
            if node_memory:
                request["memory"] = int(min(request["memory"], node_memory))
            if node_cpus and request["num_cpus"] > node_cpus:  # Ray would queue it for ever
                rows[e.name] = error_row(
                    p.entry,
                    f"It asks for {request['num_cpus']} CPUs (threads); the cluster's largest node has "
                    f"{node_cpus:g}. Give the entry fewer threads.",
                )
                progress.finish(e.name, rows[e.name])
                continue
            spec = replace(spec, threads=spec.threads or request["num_cpus"])
            inputs = None if shared else _put_inputs(spec, packed)
            ref = remote.options(**request, name=f"studio-convert:{p.entry.name}").remote(
                p.entry.name, spec, inputs, lim, queue, dict(p.entry.hooks)
            )
            refs[ref] = p
        return {**rows, **_collect(refs, queue, progress)}
    finally:
        if started_ray:
            ray.shutdown()


def _input_paths(spec: ConvertSpec) -> dict[str, str]:
    return {k: getattr(spec, k) for k in ray_files.INPUT_KEYS if getattr(spec, k)}


def _put_files(paths: dict[str, str]) -> ObjectRef[bytes | None]:
    """The files in Ray's object store, as a task's `inputs: bytes | None` argument (the worker gets the bytes)."""
    import ray

    files: bytes | None = ray_files.pack(paths)
    return ray.put(files)


def _put_inputs(spec: ConvertSpec, packed: Inputs) -> ObjectRef[bytes | None]:
    """The entry's files in Ray's object store, sent once for entries that name the same files."""
    paths = _input_paths(spec)
    key = tuple(sorted(paths.items()))
    if key not in packed:
        packed[key] = _put_files(paths)
    return packed[key]


def stop(ref: ObjectRef[Result]) -> None:
    """Cancel a task: a KeyboardInterrupt in it first, so that its Job kills the job's own process group (a
    force-cancel kills only the Ray worker and would leave that process running), then after STOP_GRACE_S a
    force-cancel if it is still there. Nothing happens to a task that has finished."""
    import ray

    if ray.wait([ref], timeout=0)[0]:
        return
    try:
        ray.cancel(ref)
    except Exception:  # noqa: BLE001 - finished in the meantime
        return

    def force() -> None:
        if not ray.is_initialized():  # shut down meanwhile: ray.wait would start a new local Ray here
            return
        try:
            if not ray.wait([ref], timeout=0)[0]:
                ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - Ray already shut down, or the task is gone
            pass

    timer = threading.Timer(STOP_GRACE_S, force)
    timer.daemon = True
    timer.start()


def _drain(queue: Queue, progress: BatchProgress, started: dict[str, float]) -> None:
    try:
        items = queue.get_nowait_batch(queue.qsize())
    except Exception:  # noqa: BLE001
        return
    for name, stage, fraction in items:
        if name not in started:  # its time counts from when a worker took it, not from the queue
            started[name] = time.monotonic()
        progress.update(name, stage, fraction)


def _collect(
    refs: dict[ObjectRef[Result], Pending], queue: Queue, progress: BatchProgress
) -> dict[str, dict[str, Any]]:
    import ray

    rows: dict[str, dict[str, Any]] = {}
    started: dict[str, float] = {}  # entry name -> when a worker took it
    left = list(refs)
    submitted = time.monotonic()
    try:
        while left:
            done, left = ray.wait(left, num_returns=1, timeout=POLL_S)
            _drain(queue, progress, started)
            for ref in done:
                p = refs[ref]
                row = _finish(p, ref, time.monotonic() - started.get(p.entry.name, submitted))
                rows[p.entry.name] = row
                progress.finish(p.entry.name, row)
    except BaseException:
        for ref in left:
            stop(ref)
        raise
    return rows


def _finish(p: Pending, ref: ObjectRef[Result], seconds: float) -> dict[str, Any]:
    """The row of one finished task: its folder filled from the zip it sent back, or why it failed."""
    import ray

    try:
        res = ray.get(ref)
    except ray.exceptions.RayError as e:
        return error_row(
            p.entry,
            f"The Ray worker running this conversion died or was lost: {first_line(e, 400)}",
            "crashed",
            seconds,
        )
    if "error" in res:
        return finish_error(p, error_row(p.entry, res["error"], res.get("reason") or "error", seconds))
    if res.get("zip") is not None:
        tmp = p.folder.parent / f".{p.folder.name}.partial-ray-{uuid.uuid4().hex[:8]}"
        try:
            ray_files.unpack(res["zip"], tmp)
            ray_files.move_into(tmp, p.folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    row = row_from_report(p.entry, res["report"], seconds)
    write_state(p.folder, p.digest, row)
    return row


# --- RayJob: the app's Job, on Ray ------------------------------------------------------------------------------


def job_task(
    task: str, module: str, payload: dict[str, Any], inputs: bytes | None, lim: Limits, queue: Queue, key: str
) -> Result:
    """Runs on a Ray worker: one job (a task registered with studio.jobs.isolate by `module`, imported here to
    register it) in its own process under `lim`, on the
    inputs sent with it; the result (paths of the output parent folder written as a placeholder) and the files
    the job wrote there as zip bytes, or the JobError's fields."""
    send = _progress_sink(queue, key)
    send("pid", float(os.getpid()))
    importlib.import_module(module)
    with tempfile.TemporaryDirectory(prefix="studio-rayjob-") as tmp:
        spec = payload.get("spec")
        back: dict[str, str] = {}
        out_parent = Path(tmp) / "out"
        out_parent.mkdir()
        if spec is not None:
            if inputs is not None:
                ray_files.unpack(inputs, Path(tmp) / "in")
                spec, back = ray_files.local_inputs(spec, Path(tmp))
            payload = {**payload, "spec": replace(spec, out=str(out_parent / Path(spec.out).name))}
        try:
            result = isolate.Job(task, payload, lim, label=payload.get("label") or task).wait(send)
        except isolate.JobError as e:
            return {
                "error": {
                    "message": e.message,
                    "reason": e.reason,
                    "type": e.error_type,
                    "details": e.details,
                    "hint": e.hint,
                }
            }
        back[str(out_parent)] = _OUT
        result = ray_files.map_strings(result, ray_files.swap(back))
        return {"result": result, "zip": zip_bytes(out_parent)}


class RayJob:
    """studio.jobs.isolate.Job's interface, the job run as a Ray task: `start()`, then `wait(on_progress)` returns
    the result or raises JobError; `cancel(reason)` from any thread stops it (the task is force-cancelled,
    which kills its worker process and the job's process with it). The spec's checkpoint, sample and config
    travel to the worker; what the job writes beside `spec.out` comes back into the same place here."""

    def __init__(
        self,
        task: str,
        payload: dict[str, Any],
        limits: Limits | None = None,
        start_method: str | None = None,
        label: str = "",
        address: str | None = "auto",
        cuda: bool = False,
    ):
        self.module = isolate.task_module(task)  # ValueError for an unknown task
        self.task, self.payload = task, payload
        self.limits = limits if limits is not None else isolate.Limits()
        self.label = label or task
        self.address, self.cuda = address, cuda
        self.started_at: float | None = None
        self._ref: ObjectRef[Result] | None = None
        self._queue: Queue | None = None
        self._pid: int | None = None
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The Ray worker process running the job (on its node), once the task has started."""
        return self._pid

    def is_alive(self) -> bool:
        if self._ref is None:
            return False
        import ray

        done, _ = ray.wait([self._ref], timeout=0)
        return not done

    def start(self) -> RayJob:
        connect(self.address)
        import ray
        from ray.util.queue import Queue

        spec = self.payload.get("spec")
        inputs, request = None, {"num_cpus": 1}
        if spec is not None:
            inputs = _put_files(_input_paths(spec))
            request = resources(spec, self.limits.memory_mb, _gpus(), self.cuda)
        with self._lock:
            if self._cancel_reason:
                raise isolate.JobError(self._cancel_reason, reason="cancelled")
            self._queue = Queue(actor_options={"num_cpus": 0})
            self._ref = (
                ray.remote(max_retries=0)(job_task)
                .options(**request, name=f"studio-{self.task}")
                .remote(self.task, self.module, self.payload, inputs, self.limits, self._queue, self.label)
            )
            self.started_at = time.monotonic()
        return self

    def cancel(self, reason: str = "The job was cancelled.") -> None:
        with self._lock:
            self._cancel_reason = self._cancel_reason or reason
            ref = self._ref
        if ref is not None:
            stop(ref)

    def _drain(self, queue: Queue, on_progress: Progress | None) -> None:
        try:
            items = queue.get_nowait_batch(queue.qsize())
        except Exception:  # noqa: BLE001
            return
        for _, stage, fraction in items:
            if stage == "pid":
                self._pid = int(fraction)
            elif on_progress is not None:
                on_progress(stage, fraction)

    def wait(self, on_progress: Progress | None = None) -> Any:
        import ray

        if self._ref is None:
            self.start()
        ref, queue = self._ref, self._queue
        assert ref is not None and queue is not None  # start() set both, or raised
        try:
            while True:
                if self._cancel_reason:
                    raise isolate.JobError(self._cancel_reason, reason="cancelled")
                done, _ = ray.wait([ref], timeout=POLL_S)
                self._drain(queue, on_progress)
                if done:
                    return self._result(ray.get(ref))
        except ray.exceptions.RayError as e:
            if self._cancel_reason:
                raise isolate.JobError(self._cancel_reason, reason="cancelled") from e
            raise isolate.JobError(
                f"The {self.label} worker on the Ray cluster stopped unexpectedly "
                f"({first_line(e, 300)}). The studio is still running: you can try again.",
                reason="crashed",
            ) from e
        finally:
            self.cancel_quietly()

    def cancel_quietly(self) -> None:
        """Make sure the task is gone (after a result this does nothing)."""
        if self._ref is not None:
            stop(self._ref)

    def kill(self) -> None:
        self.cancel_quietly()

    def _result(self, res: Result) -> Any:
        if "error" in res:
            e = res["error"]
            raise isolate.JobError(
                e["message"],
                reason=e.get("reason") or "error",
                error_type=e.get("type"),
                details=e.get("details"),
                hint=e.get("hint"),
            )
        spec = self.payload.get("spec")
        if spec is None:
            return res["result"]
        out_parent = Path(spec.out).parent
        ray_files.unpack(res["zip"], out_parent)
        return ray_files.map_strings(res["result"], ray_files.swap({_OUT: str(out_parent)}))
