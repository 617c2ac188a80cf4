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

This module is the driver (run_batch, the summary) and the local runner (run_local); what both runners do
with an entry (hash, state file, rows, the isolated run) is studio.jobs.entries, the progress on stderr
studio.jobs.progress. The Ray runner (studio.jobs.ray_fleet.run_ray) is reached only from run_batch and
imports neither this module nor the local runner.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError, first_line
from studio.escape import md_code, md_text, terminal
from studio.jobs.entries import (
    STATE_FILE,
    VERDICTS,
    BatchOptions,
    Pending,
    Preparer,
    cancel_running,
    error_row,
    finish_error,
    row_from_report,
    run_isolated,
    write_state,
)
from studio.jobs.isolate import Limits, error_text
from studio.jobs.manifest import ManifestEntry, read_manifest
from studio.jobs.progress import BatchProgress, Stream

SUMMARY_SCHEMA, SUMMARY_VERSION = "onnx-studio/batch-summary", 1


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    exit_code: int
    summary_json: Path
    summary_md: Path


def limits(opts: BatchOptions) -> Limits:
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


def exit_code(rows: list[dict[str, Any]]) -> int:
    verdicts = {r["verdict"] for r in rows}
    return 2 if "ERROR" in verdicts else 1 if "FAIL" in verdicts else 0


# --- running ---------------------------------------------------------------------------------------------------


def convert_entry(
    p: Pending, lim: Limits, threads: int | None, progress: BatchProgress, stop: threading.Event | None = None
) -> dict[str, Any]:
    """One entry in its own process into its folder; its summary row (and batch.json when it converted)."""
    from studio.jobs.limits import limit_error

    p.folder.mkdir(parents=True, exist_ok=True)
    (p.folder / STATE_FILE).unlink(missing_ok=True)  # the folder is not complete until this run says so
    spec = replace(p.entry.spec, out=str(p.folder), threads=p.entry.spec.threads or threads)
    started = time.monotonic()
    try:
        report = run_isolated(spec, lim, lambda stage, f: progress.update(p.entry.name, stage, f), stop)
    except StudioError as e:
        e = limit_error(e, lim)
        return finish_error(p, error_row(p.entry, str(e), getattr(e, "reason", "error"), time.monotonic() - started))
    row = row_from_report(p.entry, report.to_dict(), time.monotonic() - started)
    write_state(p.folder, p.digest, row)
    return row


def run_local(
    entries: list[ManifestEntry], prepare: Preparer, jobs: int, lim: Limits, progress: BatchProgress
) -> dict[str, dict[str, Any]]:
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
            row = error_row(e, error_text(exc))
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


def run_batch(manifest: str | Path, opts: BatchOptions, stream: Stream | None = None) -> BatchResult:
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
        from studio.jobs.ray_fleet import run_ray  # the one way into the Ray runner: it never imports this module

        rows = run_ray(entries, prepare, opts, lim, progress)
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
