"""The lake's settle queue: background merges of small partitions, one at a time, at most one pending
per view instance (or, with `submit_latest`, the latest work submitted for it). Closing it finishes what
is queued (merges are small and leave the catalog consistent either way) and ignores what is submitted
afterwards."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class SettleQueue:
    """One worker thread (started with the first submission) running settle work in submission order."""

    def __init__(self) -> None:
        """An empty, open queue."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jit-settle")
        self._lock = threading.Lock()
        self._pending: set[Hashable] = set()
        self._latest: dict[Hashable, Callable[[], object]] = {}  # `submit_latest` work not started yet
        self._running_latest: set[Hashable] = set()
        self._closed = False

    def submit(self, key: Hashable, work: Callable[[], object]) -> None:
        """Queues `work` unless work for `key` is already queued or running, or the queue is closed."""

        def run() -> None:
            try:
                work()
            finally:
                with self._lock:
                    self._pending.discard(key)

        with self._lock:  # submitted under the lock: `close` cannot shut the executor down in between
            if self._closed or key in self._pending:
                return
            self._pending.add(key)
            self._executor.submit(run).add_done_callback(_log_failure)

    def submit_latest(self, key: Hashable, work: Callable[[], object]) -> None:
        """Queues `work` for `key`, replacing the work for it submitted so and not started yet: the latest
        wins (the work started meanwhile is not stopped; this runs after it)."""
        with self._lock:
            if self._closed:
                return
            queued = key in self._latest
            self._latest[key] = work
            if not queued:
                self._executor.submit(self._run_latest, key).add_done_callback(_log_failure)

    def _run_latest(self, key: Hashable) -> None:
        with self._lock:
            work = self._latest.pop(key)
            self._running_latest.add(key)
        try:
            work()
        finally:
            with self._lock:
                self._running_latest.discard(key)

    def pending(self) -> frozenset[Hashable]:
        """The keys whose work is queued or running."""
        with self._lock:
            return frozenset(self._pending | self._latest.keys() | self._running_latest)

    def close(self) -> None:
        """Refuses new work, then waits for the queued work to finish and the worker thread to end."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)


def _log_failure(future: Future) -> None:
    error = future.exception()
    if error is not None:
        log.error("settling partitions failed; the next query retries", exc_info=error)
