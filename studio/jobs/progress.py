"""The progress of `studio batch` on stderr (both runners: studio.jobs.fleet and studio.jobs.ray_fleet)."""

from __future__ import annotations

import sys
import threading
from typing import Any, Protocol

from studio.errors import first_line
from studio.escape import terminal
from studio.jobs.entries import VERDICTS


class Stream(Protocol):
    """Where the progress goes: a text stream (sys.stderr, or studio.cli.text.SafeStream around it)."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


class BatchProgress:
    """A bar over the batch and one per running job, redrawn in place on a terminal; on anything else (a CI
    log) one line per entry started, stage reached and entry finished. Every name, stage and message is
    escaped for the terminal (studio.escape.terminal); only the bars' own cursor moves are control codes."""

    def __init__(self, total: int, done: int = 0, stream: Stream | None = None, quiet: bool = False):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream: Stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty is not None and isatty())
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
