"""The job limits of `studio convert` and `studio batch`: the one place their defaults are computed (a share
of this machine's memory, a generous but finite time), checked, and named in the error of a job a limit
stopped (`--memory-limit` / `--timeout`, with their value now)."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from studio.errors import StudioError
from studio.jobs.isolate import DEFAULT_MEMORY_MB, JobError, Limits

__all__ = [
    "MEMORY_SHARE",
    "TIMEOUT_DEFAULT_S",
    "BATCH_MEMORY_CAP_MB",
    "default_memory_mb",
    "job_limits",
    "limit_error",
    "machine_memory_mb",
]

MEMORY_SHARE = 0.75  # of this machine's memory (or its container's): the default --memory-limit
TIMEOUT_DEFAULT_S = 3600.0  # the default --timeout: generous, but a hung conversion still ends
BATCH_MEMORY_CAP_MB = DEFAULT_MEMORY_MB  # a batch job's default is also at most the app's (8 GB): jobs run side by side


@cache
def machine_memory_mb() -> int:
    """This machine's memory in MB, or its container's limit (cgroup v2 / v1) when that is lower."""
    import psutil

    total = psutil.virtual_memory().total
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return max(1, total // 2**20)


def default_memory_mb(batch: bool = False) -> int:
    """The default --memory-limit: MEMORY_SHARE of the machine's memory (a batch job: at most the app's 8 GB,
    and --jobs follows from it, so that the jobs running at once fit)."""
    mb = max(1, int(machine_memory_mb() * MEMORY_SHARE))
    return min(mb, BATCH_MEMORY_CAP_MB) if batch else mb


def job_limits(memory_mb: float | None, timeout_s: float | None, *, batch: bool = False) -> Limits:
    """--memory-limit / --timeout as the job runner's Limits: None is the default, 0 is no limit, anything
    else below 0 (or not finite) is an error naming the flag."""
    for flag_name, value in (("--memory-limit", memory_mb), ("--timeout", timeout_s)):
        if value is not None and (isinstance(value, bool) or not math.isfinite(value) or value < 0):
            raise StudioError(f"{flag_name} must be a number >= 0 (0: no limit), got {value!r}.")
    memory = default_memory_mb(batch) if memory_mb is None else (int(memory_mb) or None)
    if memory_mb is not None and 0 < memory_mb < 1:
        memory = 1
    timeout = TIMEOUT_DEFAULT_S if timeout_s is None else (float(timeout_s) or None)
    return Limits(timeout_s=timeout, memory_mb=memory)


def limit_error(e: StudioError, lim: Limits) -> StudioError:
    """A job stopped by a limit, its message naming the flag that sets it (and its value now)."""
    if not isinstance(e, JobError):
        return e
    if e.reason == "memory" and lim.memory_mb:
        option = f"--memory-limit (now {lim.memory_mb:,} MB)"
    elif e.reason == "timeout" and lim.timeout_s:
        option = f"--timeout (now {lim.timeout_s:g} s)"
    else:
        return e
    return JobError(
        f"{e.message} Raise {option}, or give 0 for no limit.",
        reason=e.reason,
        error_type=e.error_type,
        hint="Or try a smaller sample or model.",
    )
