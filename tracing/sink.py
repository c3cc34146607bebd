"""Delivery of encoded telemetry to the ingestion API, off the instrumented program's threads.

`HttpSink.submit` never blocks and never raises: it queues the body by priority (metadata, logs,
metrics, traces) within a byte budget and a sender thread POSTs it. Under backpressure the queue
sheds the lowest priority first: a new item evicts queued items of strictly lower priority, and is
itself dropped if that does not make room (metadata is never dropped). 5xx and network errors are
retried with exponential backoff, fewer times for lower priorities; 4xx responses are final.
Every item that does not reach the server is counted in `stats()`.
"""

from __future__ import annotations

import collections
import http.client
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

logger = logging.getLogger("spanlake.tracing.sink")


class Priority(IntEnum):
    """Delivery priority of a body: lower values are sent first and shed last."""

    METADATA = 0  # insert_process / insert_stream
    LOGS = 1
    METRICS = 2
    TRACES = 3  # cpu (thread) blocks


INSERT_PROCESS = "/ingestion/insert_process"
INSERT_STREAM = "/ingestion/insert_stream"
INSERT_BLOCK = "/ingestion/insert_block"


@dataclass
class SinkStats:
    """Counts per priority (indexed by `Priority`)."""

    sent: list[int] = field(default_factory=lambda: [0] * len(Priority))
    dropped: list[int] = field(default_factory=lambda: [0] * len(Priority))  # shed by the byte budget
    rejected: list[int] = field(default_factory=lambda: [0] * len(Priority))  # 4xx: the server refused it
    failed: list[int] = field(default_factory=lambda: [0] * len(Priority))  # retries exhausted / shut down
    queued_bytes: int = 0

    def lost(self) -> int:
        """Items that never reached the server: dropped, rejected or failed."""
        return sum(self.dropped) + sum(self.rejected) + sum(self.failed)

    def snapshot(self) -> SinkStats:
        """A copy the caller may keep while the sink goes on counting."""
        return SinkStats(list(self.sent), list(self.dropped), list(self.rejected), list(self.failed), self.queued_bytes)


class Sink(Protocol):
    """Where a session sends its encoded bodies."""

    def submit(self, priority: Priority, path: str, body: bytes) -> bool:
        """Queues one body for POST to `path`; False if it was dropped instead."""

    def stats(self) -> SinkStats:
        """Counts per priority so far."""

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued so far was handled; False on timeout."""

    def shutdown(self, timeout: float) -> bool:
        """Delivers what it can within `timeout` s, then stops; True if everything was delivered."""


@dataclass
class SinkConfig:
    """HttpSink's queue budget, request timeout and retry policy."""

    max_queue_bytes: int = 128 * 1024 * 1024
    request_timeout: float = 10.0  # one attempt: connect + send + response
    retries: tuple[int, int, int, int] = (10, 5, 2, 1)  # per priority, like micromegas's sink
    backoff_base: float = 0.01  # seconds; doubles per retry
    backoff_max: float = 2.0


@dataclass
class _Item:
    priority: Priority
    path: str
    body: bytes


class _PermanentError(Exception):
    pass


class _TransientError(Exception):
    pass


class HttpSink:
    """POSTs CBOR bodies to `url` + path with `Authorization: Bearer <api_key>` when a key is given."""

    def __init__(self, url: str, api_key: str | None = None, config: SinkConfig | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"telemetry url must be http(s)://host[:port][/prefix], got {url!r}")
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/cbor"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.config = config or SinkConfig()
        self._queues: list[collections.deque[_Item]] = [collections.deque() for _ in Priority]
        self._queued_bytes = [0] * len(Priority)
        self._stats = SinkStats()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._deadline = float("inf")  # set by shutdown: give up pending work after it
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="spanlake-sink", daemon=True)
        self._thread.start()

    # -- enqueue side (application threads) --------------------------------------------------------

    def submit(self, priority: Priority, path: str, body: bytes) -> bool:
        """Queues one POST; returns False if it was dropped instead."""
        item = _Item(priority, path, body)
        with self._cond:
            if self._closing:
                self._stats.failed[priority] += 1
                return False
            if priority != Priority.METADATA and not self._make_room(priority, len(body)):
                self._stats.dropped[priority] += 1
                return False
            self._queues[priority].append(item)
            self._count_queued(priority, len(body))
            self._cond.notify_all()
            return True

    def _make_room(self, priority: Priority, size: int) -> bool:
        """Evicts queued items of lower priority (lowest first, oldest first) if that makes `size` fit."""
        budget = self.config.max_queue_bytes
        lower = range(len(Priority) - 1, priority, -1)
        evictable = sum(self._queued_bytes[level] for level in lower)
        if self._stats.queued_bytes - evictable + size > budget:
            return False
        for level in lower:
            queue = self._queues[level]
            while queue and self._stats.queued_bytes + size > budget:
                self._count_queued(level, -len(queue.popleft().body))
                self._stats.dropped[level] += 1
        return True

    def _count_queued(self, priority: Priority | int, size: int) -> None:
        self._queued_bytes[priority] += size
        self._stats.queued_bytes += size

    def stats(self) -> SinkStats:
        """A snapshot of the counts so far."""
        with self._cond:
            return self._stats.snapshot()

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued so far was handled (sent or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(self._queues) or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def shutdown(self, timeout: float) -> bool:
        """Sends what it can within `timeout` seconds, then abandons the rest (counted as failed).
        True if everything ever submitted was delivered."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 0.5)
        with self._cond:
            for queue in self._queues:
                while queue:
                    item = queue.popleft()
                    self._count_queued(item.priority, -len(item.body))
                    self._stats.failed[item.priority] += 1
            return not self._thread.is_alive() and self._stats.lost() == 0

    # -- sender thread -------------------------------------------------------------------------------

    def _next_item(self) -> _Item | None:
        with self._cond:
            while True:
                for queue in self._queues:
                    if queue:
                        item = queue.popleft()
                        self._count_queued(item.priority, -len(item.body))
                        self._in_flight += 1
                        return item
                if self._closing:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while (item := self._next_item()) is not None:
            outcome = self._deliver(item)
            with self._cond:
                getattr(self._stats, outcome)[item.priority] += 1
                self._in_flight -= 1
                self._cond.notify_all()
        self._close_connection()

    def _deliver(self, item: _Item) -> str:
        """'sent', 'rejected' (4xx) or 'failed' (retries exhausted or past the shutdown deadline)."""
        delay = self.config.backoff_base
        for attempt in range(self.config.retries[item.priority] + 1):
            if time.monotonic() >= self._deadline:
                return "failed"
            try:
                self._post(item)
                return "sent"
            except _PermanentError as err:
                logger.warning("telemetry rejected by the server: %s", err)
                return "rejected"
            except _TransientError as err:
                logger.debug("telemetry upload attempt %d failed: %s", attempt + 1, err)
            if attempt < self.config.retries[item.priority]:
                self._sleep(min(delay, self.config.backoff_max))
                delay *= 2
        return "failed"

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            end = min(time.monotonic() + seconds, self._deadline)
            while (remaining := end - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def _post(self, item: _Item) -> None:
        try:
            connection = self._connect()
            connection.request("POST", self._prefix + item.path, body=item.body, headers=self._headers)
            response = connection.getresponse()
            detail = response.read(1024)
        except (OSError, http.client.HTTPException) as err:
            self._close_connection()
            raise _TransientError(f"{item.path}: {err!r}") from None
        if response.will_close:
            self._close_connection()
        if 200 <= response.status < 300:
            return
        message = f"{item.path}: HTTP {response.status} {detail[:200]!r}"
        if 400 <= response.status < 500:
            raise _PermanentError(message)
        raise _TransientError(message)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._parts.hostname, self._parts.port, timeout=self.config.request_timeout)
        return self._connection

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class MemorySink:
    """Keeps every submitted body in memory (in submission order): for programs that want the
    encoded telemetry without a server, and for measuring the SDK without network effects."""

    def __init__(self) -> None:
        self.items: list[tuple[Priority, str, bytes]] = []
        self._lock = threading.Lock()

    def submit(self, priority: Priority, path: str, body: bytes) -> bool:
        """Appends the body to `items`."""
        with self._lock:
            self.items.append((priority, path, body))
        return True

    def stats(self) -> SinkStats:
        """Counts of the bodies kept so far, all as sent."""
        stats = SinkStats()
        with self._lock:
            for priority, _, _ in self.items:
                stats.sent[priority] += 1
        return stats

    def flush(self, timeout: float) -> bool:
        """Nothing is ever pending: True at once."""
        return True

    def shutdown(self, timeout: float) -> bool:
        """Nothing is ever pending: True at once."""
        return True
