"""Where a conversion's time went: each stage's seconds, measured from the progress announcements
(`StageClock`), and the same as table rows and one line (report.json `timings`, report.md, the CLI, the
page). No torch here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from studio.report.model import ExportInfo

TIMING_COLUMNS = ["stage", "seconds"]
Progress = Callable[[str, float], None]


class StageClock:
    """Wraps the progress callback: each stage runs from its announcement to the next one's, so
    `timings()` gives the seconds of every stage that ran (report.json `timings`) without a timer
    around each call. The last stage ("writing") is closed by `timings()` itself."""

    def __init__(self, progress: Progress | None):
        self._progress = progress or (lambda stage, fraction: None)
        self.started = time.perf_counter()
        self._marks: list[tuple[str, float]] = []

    def say(self, stage: str, fraction: float) -> None:
        if not self._marks or self._marks[-1][0] != stage:  # latency announces itself once per round
            self._marks.append((stage, time.perf_counter()))
        self._progress(stage, fraction)

    def timings(self, export_info: ExportInfo | None, finishing: str) -> dict[str, Any]:
        """{"stages": {stage: seconds}, "export_attempts": [{exporter, ok, seconds}], "total": seconds},
        `finishing` (a stage still running, written last) estimated as at the time of the call."""
        now = time.perf_counter()
        stages: dict[str, float] = {}
        for (stage, t0), (_, t1) in zip(self._marks, [*self._marks[1:], (finishing, now)]):
            stages[stage] = round(stages.get(stage, 0.0) + t1 - t0, 2)
        attempts = [
            {"exporter": a.exporter, "ok": a.ok, "skipped": a.skipped, "seconds": a.seconds}
            for a in (export_info.attempts if export_info else [])
        ]
        return {"stages": stages, "export_attempts": attempts, "total": round(now - self.started, 2)}


def timing_rows(timings: dict[str, Any]) -> list[list[str]]:
    """report.json `timings` as rows: each stage's seconds (the export's attempts indented below it), then
    the total."""
    rows = []
    for stage, seconds in (timings.get("stages") or {}).items():
        rows.append([stage, f"{seconds:.2f}"])
        if stage == "export":
            rows += [
                [
                    f"  {a['exporter']}" + (" (skipped)" if a.get("skipped") else "" if a["ok"] else " (failed)"),
                    f"{a['seconds']:.2f}",
                ]
                for a in timings.get("export_attempts") or []
            ]
    if timings.get("total") is not None:
        rows.append(["total", f"{timings['total']:.2f}"])
    return rows


def timing_line(timings: dict[str, Any]) -> str:
    """The same in one line: "loading 2.1 s · export 1.9 s (torchscript 1.8) · ... · total 9.8 s"."""
    attempts = timings.get("export_attempts") or []
    parts = []
    for stage, seconds in (timings.get("stages") or {}).items():
        inner = ", ".join(f"{a['exporter']} {a['seconds']:.1f}" for a in attempts if not a.get("skipped"))
        parts.append(f"{stage} {seconds:.1f} s" + (f" ({inner})" if stage == "export" and inner else ""))
    if timings.get("total") is not None:
        parts.append(f"total {timings['total']:.1f} s")
    return " · ".join(parts)
