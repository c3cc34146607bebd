"""Work a query leaves for after its answer: its root span's rule and entries, its metrics.

A Flight stream's end reaches the client only once the handler's generator has returned, so whatever
runs there delays every answer: a `SELECT 1`'s span rule, entries and metrics took 0.1-0.2 ms of the
handler's CPU (benchmarks/served_fixed_cost.py). That work runs here instead, on one thread of its own,
in order, never awaited. The audit line stays on the answer's path: it is the query's record, read as
soon as the client has its answer. `drain` waits for what is queued (the runner's shutdown, before
self-tracing's last flush).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

_log = logging.getLogger(__name__)
_work: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_started = threading.Lock()
_thread: list[threading.Thread] = []


def later(work: Callable[[], object]) -> None:
    """Runs `work()` on the after-answer thread, after the work queued before it."""
    if not _thread:
        _start()
    _work.put(work)


def drain(timeout: float) -> bool:
    """Waits until the work queued so far has run (at most `timeout` seconds); whether it has."""
    done = threading.Event()
    later(done.set)
    return done.wait(timeout)


def _start() -> None:
    with _started:
        if not _thread:
            thread = threading.Thread(target=_serve, name="spanlake-after-answer", daemon=True)
            thread.start()
            _thread.append(thread)


def _serve() -> None:
    while True:
        work = _work.get()
        try:
            work()
        except Exception:  # one query's telemetry failing must not stop the next queries'
            _log.exception("work after a query's answer failed")
        del work  # not kept while idle
