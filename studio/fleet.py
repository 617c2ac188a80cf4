"""`studio batch MANIFEST`: every conversion of a manifest, each in its own process under the app's job limits,
N at a time (or as Ray tasks: studio.fleet_ray), one output folder per entry, summary.json + summary.md.

Exit code: 0 every entry passed; 1 a check failed; 2 an entry could not be converted. An entry whose inputs
(the content of its checkpoint files, sample and config) and options are unchanged since a run that completed
its output folder is skipped (the hash is kept in the folder's `batch.json`); `--force` runs everything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import isolate
from .errors import StudioError, first_line
from .manifest import ManifestEntry, read_manifest

SUMMARY_SCHEMA, SUMMARY_VERSION = "onnx-studio/batch-summary", 1
STATE_FILE = "batch.json"  # in each entry's folder: the input hash and the entry's summary row
VERDICTS = ("PASS", "FAIL", "ERROR")
_CHUNK = 1 << 20


@dataclass
class BatchOptions:
    out: str = "studio-batch"
    jobs: int | None = None  # None: what the machine can hold (default_jobs)
    memory_mb: int | None = None  # per job; None: the app's default limit
    timeout_s: float | None = None  # per job; None: the app's default limit
    force: bool = False
    quiet: bool = False
    ray: str | None = None  # ADDRESS | auto | local: run the entries as Ray tasks (studio.fleet_ray)
    shared_dir: str | None = None  # Ray: a folder every node sees at the same path (no transfer through Ray)


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    exit_code: int
    summary_json: Path
    summary_md: Path


def limits(opts: BatchOptions):
    """The per-job limits: the app's defaults unless the batch sets its own."""
    Limits = isolate.Limits
    base = Limits()
    if opts.memory_mb is not None and opts.memory_mb < 1:
        raise StudioError(f"--memory-limit must be at least 1 MB, got {opts.memory_mb}.")
    if opts.timeout_s is not None and not opts.timeout_s > 0:
        raise StudioError(f"--timeout must be more than 0 s, got {opts.timeout_s:g}.")
    return Limits(timeout_s=opts.timeout_s or base.timeout_s, memory_mb=opts.memory_mb or base.memory_mb)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_jobs(memory_mb: int | None) -> int:
    """As many jobs as the machine holds: one per CPU, and no more than the available memory fits at the
    per-job memory limit."""
    import psutil

    by_memory = int(psutil.virtual_memory().available / 2**20 // memory_mb) if memory_mb else cpu_count()
    return max(1, min(cpu_count(), by_memory))


# --- what an entry is made of: its hash, and whether its folder is complete ------------------------------------


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _hash_tree(h, path: Path) -> None:
    """A file's content, or every file of a folder (relative names and contents, sorted by name)."""
    if path.is_file():
        h.update(b"F")
        _hash_file(h, path)
        return
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(b"\0" + str(p.relative_to(path)).encode() + b"\0")
            _hash_file(h, p)


def entry_hash(entry: ManifestEntry) -> str:
    """sha256 of the studio version, the entry's options and the content of every file it names."""
    from . import __version__

    h = hashlib.sha256()
    options = {k: (v if k not in ("checkpoint", "data", "config") else Path(v).name) for k, v in entry.options.items()}
    h.update(json.dumps({"studio": __version__, "options": options}, sort_keys=True, default=str).encode())
    for key in ("checkpoint", "data", "config"):
        if entry.options.get(key):
            h.update(f"\0{key}\0".encode())
            _hash_tree(h, Path(entry.options[key]))
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


def exit_code(rows: list[dict[str, Any]]) -> int:
    verdicts = {r["verdict"] for r in rows}
    return 2 if "ERROR" in verdicts else 1 if "FAIL" in verdicts else 0


# --- progress on stderr ----------------------------------------------------------------------------------------


class BatchProgress:
    """A bar over the batch and one per running job, redrawn in place on a terminal; on anything else (a CI
    log) one line per entry started, stage reached and entry finished."""

    def __init__(self, total: int, done: int = 0, stream=None, quiet: bool = False):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.running: dict[str, tuple[str, float]] = {}
        self.counts = dict.fromkeys(VERDICTS, 0)
        self._lock = threading.Lock()
        self._drawn = 0

    def start(self, name: str) -> None:
        self.update(name, "queued", 0.0)

    def update(self, name: str, stage: str, fraction: float) -> None:
        with self._lock:
            changed = self.running.get(name, ("", -1.0))[0] != stage
            self.running[name] = (stage, fraction)
            if self.tty:
                self._draw()
            elif changed:
                self._line(f"  {name}: [{fraction:4.0%}] {stage}")

    def finish(self, name: str, row: dict[str, Any]) -> None:
        with self._lock:
            self.running.pop(name, None)
            self.done += 1
            self.counts[row["verdict"]] = self.counts.get(row["verdict"], 0) + 1
            what = row["verdict"] + (f" ({', '.join(row['failed_checks'])})" if row.get("failed_checks") else "")
            what += f": {first_line(row['error'], 200)}" if row.get("error") else ""
            if self.tty:
                self._clear()
            self._line(f"[{self.done}/{self.total}] {name} {what} ({row.get('seconds') or 0:.1f} s)")
            if self.tty:
                self._draw()

    def _bar(self, fraction: float, width: int = 24) -> str:
        filled = int(round(max(0.0, min(1.0, fraction)) * width))
        return "#" * filled + "-" * (width - filled)

    def _draw(self) -> None:
        if self.quiet:
            return
        self._clear()
        counts = ", ".join(f"{n} {v}" for v, n in self.counts.items() if n)
        lines = [
            f"batch [{self._bar(self.done / max(1, self.total))}] {self.done}/{self.total} done"
            + (f", {counts}" if counts else "")
        ]
        lines += [
            f"  {name[:30]:<30} [{self._bar(f, 16)}] {f:4.0%} {stage}"
            for name, (stage, f) in sorted(self.running.items())
        ]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


# --- running ---------------------------------------------------------------------------------------------------


@dataclass
class Pending:
    entry: ManifestEntry
    folder: Path
    digest: str


_running: set = set()  # the jobs of this process's batches now running: cancelled when the batch is interrupted
_running_lock = threading.Lock()


def _run_isolated(spec, lim, on_progress: Callable[[str, float], None]):
    """pipeline.convert(spec) in a child process under `lim` (the app's job runner); the Report, or JobError /
    StudioError. What a killed child leaves in the output's parent folder is removed."""
    job = isolate.Job("convert-report", {"spec": spec, "label": "conversion"}, lim, label="conversion")
    with _running_lock:
        _running.add(job)
    try:
        return job.wait(on_progress)
    except BaseException:
        from .pipeline import remove_stale  # imports torch: only when a job did not end on its own

        job.kill()
        remove_stale(spec.out)
        raise
    finally:
        job.kill()
        with _running_lock:
            _running.discard(job)


def cancel_running(reason: str = "The batch was interrupted.") -> None:
    with _running_lock:
        jobs = list(_running)
    for job in jobs:
        job.cancel(reason)


def convert_entry(p: Pending, lim, threads: int | None, progress: BatchProgress) -> dict[str, Any]:
    """One entry in its own process into its folder; its summary row (and batch.json when it converted)."""
    p.folder.mkdir(parents=True, exist_ok=True)
    (p.folder / STATE_FILE).unlink(missing_ok=True)  # the folder is not complete until this run says so
    spec = replace(p.entry.spec, out=str(p.folder), threads=p.entry.spec.threads or threads)
    started = time.monotonic()
    try:
        report = _run_isolated(spec, lim, lambda stage, f: progress.update(p.entry.name, stage, f))
    except StudioError as e:
        return finish_error(p, error_row(p.entry, str(e), getattr(e, "reason", "error"), time.monotonic() - started))
    row = row_from_report(p.entry, report.to_dict(), time.monotonic() - started)
    write_state(p.folder, p.digest, row)
    return row


def finish_error(p: Pending, row: dict[str, Any]) -> dict[str, Any]:
    """An entry the studio refused (bad input, export impossible) is remembered, so that the same inputs are
    not tried again; a crash, a limit or a lost worker is not (the next run tries again)."""
    if row.get("reason") == "error":
        p.folder.mkdir(parents=True, exist_ok=True)
        write_state(p.folder, p.digest, row)
    return row


def run_local(pending: list[Pending], jobs: int, lim, progress: BatchProgress) -> dict[str, dict[str, Any]]:
    """Each entry in its own process, `jobs` at a time; each with CPUs / jobs threads unless it sets its own."""
    threads = max(1, cpu_count() // max(1, jobs))
    rows: dict[str, dict[str, Any]] = {}

    def one(p: Pending) -> None:
        progress.start(p.entry.name)
        try:
            row = convert_entry(p, lim, threads, progress)
        except Exception as e:  # noqa: BLE001 - a bug in one entry's handling must not stop the batch
            row = error_row(p.entry, f"unexpected {type(e).__name__}: {e}")
        rows[p.entry.name] = row
        progress.finish(p.entry.name, row)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="studio-batch")
    try:
        for future in [pool.submit(one, p) for p in pending]:
            future.result()
    except BaseException:  # Ctrl-C / SIGTERM: stop what runs, start nothing more
        pool.shutdown(wait=False, cancel_futures=True)
        cancel_running()
        raise
    pool.shutdown()
    return rows


def run_batch(manifest: str | Path, opts: BatchOptions, stream=None) -> BatchResult:
    """Read the manifest, skip what is unchanged, run the rest, write summary.json / summary.md."""
    entries = read_manifest(manifest)
    lim = limits(opts)
    if opts.jobs is not None and opts.jobs < 1:
        raise StudioError(f"--jobs must be at least 1, got {opts.jobs}.")
    out = Path(opts.out).expanduser().resolve()
    if opts.shared_dir:
        if not opts.ray:
            raise StudioError("--shared-dir is for --ray: a folder every node of the cluster sees at the same path.")
        from .fleet_ray import check_shared

        check_shared(entries, out, opts.shared_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    pending = []
    for e in entries:
        digest = entry_hash(e)
        row = None if opts.force else stored_row(out / e.name, digest)
        if row is not None:
            rows[e.name] = {**row, "skipped": True}
        else:
            pending.append(Pending(e, out / e.name, digest))
    progress = BatchProgress(len(entries), len(rows), stream, opts.quiet)
    if rows:
        progress._line(
            f"{len(rows)} of {len(entries)} entries unchanged since their last run: skipped (--force runs them again)"
        )
    if pending and opts.ray:
        from . import fleet_ray

        rows.update(fleet_ray.run_ray(pending, opts, lim, progress))
    elif pending:
        rows.update(run_local(pending, opts.jobs or default_jobs(lim.memory_mb), lim, progress))
    ordered = [rows[e.name] for e in entries]
    return write_summary(out, Path(manifest), ordered)


def write_summary(out: Path, manifest: Path, rows: list[dict[str, Any]]) -> BatchResult:
    code = exit_code(rows)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    data = {
        "schema": SUMMARY_SCHEMA,
        "schema_version": SUMMARY_VERSION,
        "manifest": str(manifest),
        "exit_code": code,
        "counts": {**counts, "skipped": sum(bool(r.get("skipped")) for r in rows)},
        "entries": rows,
    }
    js, md = out / "summary.json", out / "summary.md"
    js.write_text(json.dumps(data, indent=2, allow_nan=False))
    md.write_text(summary_markdown(data))
    return BatchResult(rows, code, js, md)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _size(n: Any) -> str:
    return "-" if not isinstance(n, (int, float)) else f"{n / 2**20:.2f} MB"


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def summary_markdown(data: dict[str, Any]) -> str:
    c = data["counts"]
    lines = [
        f"# Batch summary: {_cell(Path(data['manifest']).name)}",
        "",
        f"**{len(data['entries'])} {'entry' if len(data['entries']) == 1 else 'entries'}: "
        f"{c['PASS']} passed, {c['FAIL']} failed a check, {c['ERROR']} could "
        f"not be converted** ({c['skipped']} unchanged, skipped). Exit code {data['exit_code']}.",
        "",
        "| entry | verdict | failed checks / error | export s | model | ORT CPU vs PyTorch | variants |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["entries"]:
        why = ", ".join(r.get("failed_checks") or []) or (first_line(r["error"], 160) if r.get("error") else "")
        variants = ", ".join(
            f"{v['name']} {'PASS' if v.get('ok') else 'FAIL'} {_size(v.get('size_bytes'))} "
            f"{_x(v.get('speedup_vs_torch'))}"
            for v in r.get("variants") or []
        )
        export_s = r.get("export_seconds")
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in [
                    r["entry"],
                    r["verdict"] + (" (skipped)" if r.get("skipped") else ""),
                    why or "-",
                    "-" if export_s is None else f"{export_s:.1f}",
                    _size(r.get("model_bytes")),
                    _x(r.get("speedup_ort_cpu")),
                    variants or "-",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Speedups: PyTorch CPU p50 / ORT CPU p50 on the sample batch (variants: vs PyTorch CPU). Each "
        "entry's folder holds its report.md.",
    ]
    return "\n".join(lines) + "\n"
