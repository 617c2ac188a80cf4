"""Work that does not depend on a long block of the main thread, run in another thread beside it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

POLL_S = 0.01


@contextlib.contextmanager
def alongside(
    work: Callable[..., object] | None,
    *args,
    name: str = "studio-alongside",
    after: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """`work(*args)` in a daemon thread while the block runs, joined when it ends (however it ends).
    `after`: the thread first waits (polling every POLL_S) until after() is true; if the block ends with
    after() still false, `work` is not run at all. An exception in `work` is dropped: the caller redoes,
    where it uses the results, whatever did not get done, and meets (and reports) the error there.
    `work` None: the block alone."""
    if work is None:
        yield
        return
    ended = threading.Event()

    def run():
        while after is not None and not after():
            if ended.wait(POLL_S) and not after():
                return
        try:
            work(*args)
        except Exception:  # noqa: BLE001, S110 - redone, and reported, by the caller
            pass

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        ended.set()
        thread.join()
