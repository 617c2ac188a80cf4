"""One job, whoever runs it: the `Job` protocol that a job of this machine (studio.jobs.isolate.Job, a child
process) and a job on a Ray cluster (studio.jobs.ray_fleet.RayJob, a Ray task) both follow, and `new_job`,
the one place that picks between them. The web app holds, cancels and waits for its jobs through these
two names only: it never imports the runners or the batch driver.

`start()` then `wait(on_progress)` returns the job's result or raises studio.jobs.isolate.JobError (its
`reason`: error | crashed | timeout | memory | cancelled); `cancel(reason)` from any thread stops it, and a
job cancelled before it starts never runs; `kill()` makes sure nothing of it is left.
"""

from __future__ import annotations

from typing import Any, Protocol

from studio.jobs import isolate
from studio.jobs.isolate import Limits, Progress


class Job(Protocol):
    """A task running somewhere under job limits (see the module's docstring)."""

    task: str  # the registered task's name (studio.jobs.isolate.register)
    label: str  # the job's name in its messages ("conversion")
    started_at: float | None  # time.monotonic() when it started, None before

    @property
    def pid(self) -> int | None:
        """The process running the job (on a Ray cluster: the worker's, on its node), once started."""
        ...

    def start(self) -> Job: ...

    def wait(self, on_progress: Progress | None = None) -> Any: ...

    def cancel(self, reason: str = ...) -> None: ...

    def kill(self) -> None: ...

    def is_alive(self) -> bool: ...


def new_job(
    task: str,
    payload: dict[str, Any],
    limits: Limits,
    *,
    label: str = "",
    start_method: str | None = None,
    ray_address: str | None = None,
) -> Job:
    """The job running `task` on `payload` under `limits`, not yet started: a Ray task on the cluster at
    `ray_address` (HEAD:PORT, auto, local; studio.jobs.ray_fleet.RayJob) when one is given, else a child
    process of this one (studio.jobs.isolate.Job, started with `start_method`). ValueError for an unknown
    task."""
    if ray_address:
        from studio.jobs.ray_fleet import RayJob  # only when asked: the Ray runner imports ray on its first job

        return RayJob(task, payload, limits, label=label or task, address=ray_address)
    return isolate.Job(task, payload, limits, start_method, label=label or task)
