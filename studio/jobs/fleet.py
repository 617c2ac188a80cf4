"""`studio batch MANIFEST`: every conversion of a manifest, each in its own process under the app's job limits,
N at a time (or as Ray tasks: studio.jobs.ray_fleet), one output folder per entry, summary.json + summary.md.

Exit code: 0 every entry passed; 1 a check failed; 2 an entry could not be converted. An entry whose inputs
(the content of its checkpoint files, sample and config), options and the operator's settings are unchanged
since a run that completed its output folder is skipped (the hash is kept in the folder's `batch.json`);
`--force` runs everything. The manifest is validated in one pass before anything runs; each entry's inputs are
hashed when a job slot takes it (a file's digest is kept for the batch, keyed by its size and mtime), so the
first conversion starts while the rest wait, not after every input was read.

Everything printed (progress, errors) is escaped for the terminal and everything in summary.md for Markdown
(studio.escape): names, paths and messages come from the manifest and the uploads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError, first_line
from studio.escape import md_code, md_text, terminal
from studio.jobs import isolate
from studio.jobs.manifest import ManifestEntry, read_manifest, still_inside
from studio.spec import MAX_PARAMS_DEFAULT, ConvertSpec, SampleLimits, parse_sample_limits

SUMMARY_SCHEMA, SUMMARY_VERSION = "onnx-studio/batch-summary", 1
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


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    exit_code: int
    summary_json: Path
    summary_md: Path


def limits(opts: BatchOptions):
    """The per-job limits (studio.jobs.limits.job_limits: the one place the defaults are computed)."""
    from studio.jobs.limits import job_limits

    return job_limits(opts.memory_mb, opts.timeout_s, batch=True)


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


class Hasher:
    """sha256 digests of files and folders, each file read once per batch however many entries name it (kept
    by path, size, mtime and inode: a file changed during the batch is read again). Thread-safe."""

    def __init__(self):
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


def exit_code(rows: list[dict[str, Any]]) -> int:
    verdicts = {r["verdict"] for r in rows}
    return 2 if "ERROR" in verdicts else 1 if "FAIL" in verdicts else 0


# --- progress on stderr ----------------------------------------------------------------------------------------


class BatchProgress:
    """A bar over the batch and one per running job, redrawn in place on a terminal; on anything else (a CI
    log) one line per entry started, stage reached and entry finished. Every name, stage and message is
    escaped for the terminal (studio.escape.terminal); only the bars' own cursor moves are control codes."""

    def __init__(self, total: int, done: int = 0, stream=None, quiet: bool = False):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.running: dict[str, tuple[str, float]] = {}
        self.counts = dict.fromkeys(VERDICTS, 0)
        self.skipped = 0
        self._lock = threading.Lock()
        self._drawn = 0

    def start(self, name: str) -> None:
        self.update(name, "queued", 0.0)

    def update(self, name: str, stage: str, fraction: float) -> None:
        name, stage = terminal(name), terminal(stage)
        with self._lock:
            changed = self.running.get(name, ("", -1.0))[0] != stage
            self.running[name] = (stage, fraction)
            if self.tty:
                self._draw()
            elif changed:
                self._line(f"  {name}: [{fraction:4.0%}] {stage}")

    def skip(self, name: str) -> None:
        """An entry unchanged since its last run: counted as done, no line of its own."""
        with self._lock:
            self.done += 1
            self.skipped += 1
            if self.tty:
                self._draw()

    def finish(self, name: str, row: dict[str, Any]) -> None:
        name = terminal(name)
        with self._lock:
            self.running.pop(name, None)
            self.done += 1
            self.counts[row["verdict"]] = self.counts.get(row["verdict"], 0) + 1
            what = row["verdict"] + (f" ({', '.join(row['failed_checks'])})" if row.get("failed_checks") else "")
            what += f": {first_line(row['error'], 200)}" if row.get("error") else ""
            if self.tty:
                self._clear()
            self._line(f"[{self.done}/{self.total}] {name} {terminal(what)} ({row.get('seconds') or 0:.1f} s)")
            if self.tty:
                self._draw()

    def note(self, text: str) -> None:
        """A line of its own (above the bars on a terminal)."""
        with self._lock:
            if self.tty:
                self._clear()
            self._line(terminal(text))
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
        counts += (", " if counts else "") + f"{self.skipped} skipped" if self.skipped else ""
        lines = [
            f"batch [{self._bar(self.done / max(1, self.total))}] {self.done}/{self.total} done"
            + (f", {counts}" if counts else "")
        ]
        lines += [
            f"  {name[:30]:<30} [{self._bar(f, 16)}] {f:4.0%} {stage}"
            for name, (stage, f) in sorted(self.running.items())
        ]
        self._write("\n".join(lines) + "\n")
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            self._write(f"\x1b[{self._drawn}F\x1b[J", control=True)
            self._drawn = 0

    def _write(self, text: str, control: bool = False) -> None:
        """Our own cursor moves bypass a stream that escapes control characters (cli_text.SafeStream)."""
        stream = getattr(self.stream, "unfiltered", self.stream) if control else self.stream
        stream.write(text)
        stream.flush()

    def _line(self, text: str) -> None:
        if not self.quiet:
            self._write(text + "\n")


# --- running ---------------------------------------------------------------------------------------------------


@dataclass
class Pending:
    entry: ManifestEntry
    folder: Path
    digest: str


_running: set = set()  # the jobs of this process's batches now running: cancelled when the batch is interrupted
_running_lock = threading.Lock()


def _run_isolated(spec, lim, on_progress: Callable[[str, float], None], stop: threading.Event | None = None):
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
    with _running_lock:
        jobs = list(_running)
    for job in jobs:
        job.cancel(reason)


def convert_entry(
    p: Pending, lim, threads: int | None, progress: BatchProgress, stop: threading.Event | None = None
) -> dict[str, Any]:
    """One entry in its own process into its folder; its summary row (and batch.json when it converted)."""
    from studio.jobs.limits import limit_error

    p.folder.mkdir(parents=True, exist_ok=True)
    (p.folder / STATE_FILE).unlink(missing_ok=True)  # the folder is not complete until this run says so
    spec = replace(p.entry.spec, out=str(p.folder), threads=p.entry.spec.threads or threads)
    started = time.monotonic()
    try:
        report = _run_isolated(spec, lim, lambda stage, f: progress.update(p.entry.name, stage, f), stop)
    except StudioError as e:
        e = limit_error(e, lim)
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


def run_local(entries, prepare: Preparer, jobs: int, lim, progress: BatchProgress) -> dict[str, dict[str, Any]]:
    """Each entry in its own process, `jobs` at a time, each hashed when a slot takes it; each with CPUs / jobs
    threads unless it sets its own."""
    threads = max(1, cpu_count() // max(1, jobs))
    rows: dict[str, dict[str, Any]] = {}
    todo, take, stop = iter(entries), threading.Lock(), threading.Event()

    def one(e: ManifestEntry) -> None:
        try:
            got = prepare(e)
            if isinstance(got, dict):
                rows[e.name] = got
                progress.skip(e.name) if got.get("skipped") else progress.finish(e.name, got)
                return
            progress.start(e.name)
            row = convert_entry(got, lim, threads, progress, stop)
        except Exception as exc:  # noqa: BLE001 - a bug in one entry's handling must not stop the batch
            row = error_row(e, f"unexpected {type(exc).__name__}: {exc}")
        rows[e.name] = row
        progress.finish(e.name, row)

    left, finished = [max(1, jobs)], threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                with take:
                    e = next(todo, None)
                if e is None:
                    return
                one(e)
        finally:
            with take:
                left[0] -= 1
                if not left[0]:
                    finished.set()

    for i in range(left[0]):
        threading.Thread(target=worker, name=f"studio-batch-{i}").start()
    try:
        # an Event, not Thread.join: a join interrupted by Ctrl-C marks its thread as ended (CPython 3.11),
        # and exit_now would then not wait for the thread writing the interrupted entry's row
        while not finished.wait(0.2):
            pass
    except BaseException:  # Ctrl-C / SIGTERM: stop what runs, start nothing more
        stop.set()
        cancel_running()
        raise
    return rows


def run_batch(manifest: str | Path, opts: BatchOptions, stream=None) -> BatchResult:
    """Read the manifest (every line validated before anything runs), run each entry unless it is unchanged,
    write summary.json / summary.md."""
    entries = read_manifest(manifest, inputs_under=opts.inputs_under)
    lim = limits(opts)
    settings = opts.settings()
    if opts.jobs is not None and opts.jobs < 1:
        raise StudioError(f"--jobs must be at least 1, got {opts.jobs}.")
    out = Path(opts.out).expanduser().resolve()
    if opts.shared_dir:
        if not opts.ray:
            raise StudioError("--shared-dir is for --ray: a folder every node of the cluster sees at the same path.")
        from studio.jobs.ray_fleet import check_shared

        check_shared(entries, out, opts.shared_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = BatchProgress(len(entries), 0, stream, opts.quiet)
    prepare = Preparer(out, settings, opts.force)
    if opts.ray:
        from studio.jobs import ray_fleet as fleet_ray

        rows = fleet_ray.run_ray(entries, prepare, opts, lim, progress)
    else:
        rows = run_local(entries, prepare, opts.jobs or default_jobs(lim.memory_mb), lim, progress)
    if prepare.skipped:
        progress.note(
            f"{prepare.skipped} of {len(entries)} entries unchanged since their last run: skipped "
            "(--force runs them again)"
        )
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
    _write_atomic(js, json.dumps(data, indent=2, allow_nan=False))
    _write_atomic(md, summary_markdown(data))
    return BatchResult(rows, code, js, md)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _size(n: Any) -> str:
    return "-" if not isinstance(n, (int, float)) or isinstance(n, bool) else f"{n / 2**20:.2f} MB"


def _x(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.2f}x"


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,.()-]*")  # words that are the same text in Markdown


def _md(value: Any) -> str:
    """Markdown for a table cell: plain words as they are, anything else escaped (studio.escape.md_text)."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else md_text(text)


def _plain_cell(value: Any) -> str:
    """A cell of the summary as printed on the terminal: control characters escaped, `|` kept a cell's."""
    return terminal(value).replace("|", "\\|")


def summary_markdown(data: dict[str, Any], terminal_text: bool = False) -> str:
    """summary.md: every string from the manifest or an upload (names, paths, messages, labels) escaped for
    Markdown (studio.escape.md_text / md_code), so none becomes a link, an image, raw HTML or a cell break.
    terminal_text: the same table for the terminal (control characters escaped, the rest as it is)."""
    cell = _plain_cell if terminal_text else _md
    title = terminal(Path(data["manifest"]).name) if terminal_text else md_code(Path(data["manifest"]).name)
    c = data["counts"]
    lines = [
        f"# Batch summary: {title}",
        "",
        f"**{len(data['entries'])} {'entry' if len(data['entries']) == 1 else 'entries'}: "
        f"{c['PASS']} passed, {c['FAIL']} failed a check, {c['ERROR']} could "
        f"not be converted** ({c['skipped']} unchanged, skipped). Exit code {data['exit_code']}.",
        "",
        "| entry | verdict | failed checks / error | export s | model | ORT CPU vs PyTorch | variants |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["entries"]:
        why = ", ".join(map(str, r.get("failed_checks") or [])) or (
            first_line(r["error"], 160) if r.get("error") else ""
        )
        variants = ", ".join(
            f"{cell(v.get('name'))} {'PASS' if v.get('ok') else 'FAIL'} {_size(v.get('size_bytes'))} "
            f"{_x(v.get('speedup_vs_torch'))}"
            for v in r.get("variants") or []
        )
        export_s = r.get("export_seconds")
        cells = [
            cell(r["entry"]),
            r["verdict"] + (" (skipped)" if r.get("skipped") else ""),
            cell(why) if why else "-",
            "-" if not isinstance(export_s, (int, float)) else f"{export_s:.1f}",
            _size(r.get("model_bytes")),
            _x(r.get("speedup_ort_cpu")),
            variants or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Speedups: PyTorch CPU p50 / ORT CPU p50 on the sample batch (variants: vs PyTorch CPU). Each "
        "entry's folder holds its report.md.",
    ]
    return "\n".join(lines) + "\n"
