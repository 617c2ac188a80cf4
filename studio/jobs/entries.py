"""A batch entry's life, shared by both runners of `studio batch` (studio.jobs.fleet runs entries in local
processes, studio.jobs.ray_fleet as Ray tasks): the batch's options, each entry's input hash and the state file
that remembers it (`batch.json` in the entry's folder), the Preparer that decides what runs, the conversion in
its own process (run_isolated), and the summary row of an entry that converted or could not be.

Nothing here imports either runner.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import first_line
from studio.jobs import isolate
from studio.jobs.isolate import Progress
from studio.jobs.manifest import ManifestEntry, still_inside
from studio.spec import MAX_PARAMS_DEFAULT, ConvertSpec, SampleLimits, parse_sample_limits

if TYPE_CHECKING:
    from studio.report.model import Report

STATE_FILE = "batch.json"  # in each entry's folder: the input hash and the entry's summary row
VERDICTS = ("PASS", "FAIL", "ERROR")
_CHUNK = 1 << 20


@dataclass
class BatchOptions:
    out: str = "studio-batch"
    jobs: int | None = None  # None: what the machine can hold (default_jobs)
    memory_mb: int | None = None  # per job; None: the default (studio.jobs.limits.job_limits), 0: no limit
    timeout_s: float | None = None  # per job; None: the default (studio.jobs.limits.job_limits), 0: no limit
    force: bool = False
    quiet: bool = False
    ray: str | None = None  # ADDRESS | auto | local: run the entries as Ray tasks (studio.jobs.ray_fleet)
    shared_dir: str | None = None  # Ray: a folder every node sees at the same path (no transfer through Ray)
    inputs_under: str | None = None  # every path a line names must lie in it; None: the manifest's folder
    # the operator's settings for every entry (a manifest line may not set them: studio.jobs.manifest.OPERATOR)
    trust_code: bool = False
    max_params: int = MAX_PARAMS_DEFAULT
    sample_limits: SampleLimits | str | dict | None = None  # None: SampleLimits()

    def settings(self) -> dict[str, Any]:
        """The ConvertSpec fields the operator sets for every entry, checked."""
        checked = ConvertSpec(
            checkpoint="-", data="-", trust_code=self.trust_code, max_params=self.max_params
        ).validated()  # the --max-params rule
        return {
            "trust_code": bool(self.trust_code),
            "max_params": checked.max_params,
            "sample_limits": parse_sample_limits(self.sample_limits),
        }


# --- what an entry is made of: its hash, and whether its folder is complete ------------------------------------


class Hasher:
    """sha256 digests of files and folders, each file read once per batch however many entries name it (kept
    by path, size, mtime and inode: a file changed during the batch is read again). Thread-safe."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def file(self, path: Path) -> str:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        with self._lock:
            known = self._files.get(str(path))
        if known is not None and known[0] == key:
            return known[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        with self._lock:
            self._files[str(path)] = (key, h.hexdigest())
        return h.hexdigest()

    def tree(self, path: Path) -> str:
        """A file's digest, or a folder's: every file's relative name and digest, sorted by name."""
        if path.is_file():
            return "F" + self.file(path)
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(b"\0" + str(p.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0")
                h.update(self.file(p).encode())
        return "D" + h.hexdigest()


def entry_hash(entry: ManifestEntry, settings: dict[str, Any] | None = None, hasher: Hasher | None = None) -> str:
    """sha256 of the studio version, the entry's options, the operator's settings (trust, limits: a batch's
    BatchOptions.settings(), by default its defaults) and the content of every file it names."""
    from studio._version import __version__

    settings = BatchOptions().settings() if settings is None else settings
    hasher = hasher or Hasher()
    h = hashlib.sha256()
    options = {k: (v if k not in ("checkpoint", "data", "config") else Path(v).name) for k, v in entry.options.items()}
    about = {"studio": __version__, "options": options, "operator": settings}
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    for key in ("checkpoint", "data", "config"):
        if entry.options.get(key):
            h.update(f"\0{key}\0{hasher.tree(Path(entry.options[key]))}".encode())
    return h.hexdigest()


def stored_row(folder: Path, digest: str) -> dict[str, Any] | None:
    """The entry's row from its last run when that run completed the folder with these same inputs."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("hash") != digest or not isinstance(state.get("row"), dict):
        return None
    if state["row"].get("verdict") == "ERROR":  # the same inputs stopped the same way last time
        return state["row"]
    files = list((report.get("files") or {}).values()) if isinstance(report, dict) else []
    if not files or not all((folder / f).exists() for f in files):
        return None
    return state["row"]


def write_state(folder: Path, digest: str, row: dict[str, Any]) -> None:
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"hash": digest, "row": row}, indent=2))
    os.replace(tmp, folder / STATE_FILE)


# --- summary rows ----------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _p50(latency: dict, key: str) -> float | None:
    t = (latency or {}).get(key)
    return _num(t.get("p50_ms")) if isinstance(t, dict) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def row_from_report(entry: ManifestEntry, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One summary row from a conversion's report.json."""
    lat = report.get("latency") or {}
    export = report.get("export") or {}
    return {
        **_row_base(entry),
        "verdict": "PASS" if report.get("ok") else "FAIL",
        "failed_checks": list(report.get("failed_checks") or []),
        "error": None,
        "reason": None,
        "exporter": export.get("exporter"),
        "opset": export.get("opset"),
        "export_seconds": _num(export.get("seconds")),
        "seconds": round(seconds, 2),
        "model_bytes": (report.get("graph") or {}).get("size_bytes"),
        "ort_cpu_p50_ms": _p50(lat, "ort_cpu"),
        "torch_cpu_p50_ms": _p50(lat, "torch_cpu"),
        "speedup_ort_cpu": _ratio(_p50(lat, "torch_cpu"), _p50(lat, "ort_cpu")),
        "speedup_ort_cuda": _ratio(_p50(lat, "torch_cuda"), _p50(lat, "ort_cuda")),
        "variants": [
            {
                "name": v.get("name"),
                "ok": v.get("ok"),
                "size_bytes": v.get("size_bytes"),
                "speedup_vs_torch": _num(v.get("speedup_vs_torch")),
                "speedup_vs_fp32": _num(v.get("speedup_vs_fp32")),
            }
            for v in report.get("variants") or []
        ],
        "skipped": False,
    }


def error_row(entry: ManifestEntry, message: str, reason: str = "error", seconds: float = 0.0) -> dict[str, Any]:
    """The row of an entry that could not be converted (bad input, export impossible, crash, limit)."""
    return {
        **_row_base(entry),
        "verdict": "ERROR",
        "failed_checks": [],
        "error": message,
        "reason": reason,
        "seconds": round(seconds, 2),
        "skipped": False,
    }


def _row_base(entry: ManifestEntry) -> dict[str, Any]:
    return {"entry": entry.name, "line": entry.line, "checkpoint": entry.options.get("checkpoint"), "out": entry.name}


# --- running one entry -----------------------------------------------------------------------------------------


@dataclass
class Pending:
    entry: ManifestEntry
    folder: Path
    digest: str


# the jobs of this process's batches now running: cancelled when the batch is interrupted
_running: set[isolate.Job] = set()
_running_lock = threading.Lock()


def run_isolated(
    spec: ConvertSpec, lim: isolate.Limits, on_progress: Progress, stop: threading.Event | None = None
) -> Report:
    """pipeline.convert(spec) in a child process under `lim` (the app's job runner); the Report, or JobError /
    StudioError. What a killed child leaves in the output's parent folder is removed. A set `stop` (the batch
    was interrupted) starts nothing."""
    job = isolate.Job("convert-report", {"spec": spec, "label": "conversion"}, lim, label="conversion")
    with _running_lock:
        if stop is not None and stop.is_set():
            raise isolate.JobError("The batch was interrupted.", reason="cancelled")
        _running.add(job)
    try:
        return job.wait(on_progress)
    except BaseException:
        from studio.pipeline import remove_stale  # imports torch: only when a job did not end on its own

        job.kill()
        remove_stale(spec.out)
        raise
    finally:
        job.kill()
        with _running_lock:
            _running.discard(job)


def cancel_running(reason: str = "The batch was interrupted.") -> None:
    """Cancel every job run_isolated started in this process and not yet ended (the batch was interrupted)."""
    with _running_lock:
        jobs = list(_running)
    for job in jobs:
        job.cancel(reason)


def finish_error(p: Pending, row: dict[str, Any]) -> dict[str, Any]:
    """An entry the studio refused (bad input, export impossible) is remembered, so that the same inputs are
    not tried again; a crash, a limit or a lost worker is not (the next run tries again)."""
    if row.get("reason") == "error":
        p.folder.mkdir(parents=True, exist_ok=True)
        write_state(p.folder, p.digest, row)
    return row


class Preparer:
    """Each entry just before it runs: its inputs hashed (Hasher) and its folder looked at; a Pending (its spec
    with the operator's settings), or the stored row of an entry unchanged since its last run (`force` runs
    every entry)."""

    def __init__(self, out: Path, settings: dict[str, Any], force: bool):
        self.out, self.settings, self.force = out, settings, force
        self.hasher = Hasher()
        self.skipped = 0

    def __call__(self, e: ManifestEntry) -> Pending | dict[str, Any]:
        moved = still_inside(e)  # a link changed since the manifest was read
        if moved:
            return error_row(e, f"The entry's inputs moved: {moved}")
        try:
            digest = entry_hash(e, self.settings, self.hasher)
        except (OSError, ValueError) as exc:  # a file gone or unreadable since the manifest was read
            return error_row(e, f"Cannot read the entry's inputs: {first_line(exc, 300)}")
        row = None if self.force else stored_row(self.out / e.name, digest)
        if row is not None:
            self.skipped += 1
            return {**row, "skipped": True}
        return Pending(replace(e, spec=replace(e.spec, **self.settings)), self.out / e.name, digest)
