"""A job's last line of defence: its process group dies once nobody reads its pipe (studio/jobs/isolate.py)."""

from __future__ import annotations

import os
import select
import signal
import threading
from multiprocessing.connection import Connection


def die_with_reader(conn: Connection) -> None:
    """Kill this job's process group once the reading end of its pipe is closed: nobody is waiting for the
    result any more. The owner normally kills the job itself (Job.kill); this covers an owner interrupted
    before it knew the job's pid (a Ray cancel's KeyboardInterrupt inside `Process.start`) or killed outright.
    A pipe's writing end reports POLLERR once its reader is gone; a daemon thread waits for that."""
    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    poller.register(conn.fileno(), 0)  # POLLERR / POLLHUP are reported whatever the mask

    def watch() -> None:
        while True:
            events = [ev for _, ev in poller.poll()]
            if any(ev & select.POLLNVAL for ev in events):
                return  # this process closed its own end: it is finishing
            if any(ev & (select.POLLERR | select.POLLHUP) for ev in events):
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="studio-job-watchdog", daemon=True).start()
