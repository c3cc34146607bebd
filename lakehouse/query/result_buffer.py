"""Result batches computed but not yet taken by the client, bounded in bytes: per stream and in total.

A client that opens a stream and never reads it used to hold what DataFusion had computed for it: 50
such Flight SQL streams took the server from 175 to 1,507 MB. Now a query's producer (a reader thread
of `plan_spans.PlanStream`, or the query's thread before it pulls its next batch) waits while its
stream holds `stream_limit` bytes (SPANLAKE_STREAM_BUFFER_MB) or all streams together hold the
runner's `ByteBudget` (SPANLAKE_RESULT_BUFFER_MB); the query's time limit then stops it. A batch is
held from the moment it is computed until the consumer asks for the next one (Flight's generator and
the web's writer ask once the transport has taken the previous one). Before computing a batch, a
producer reserves the size of its stream's last batch (the stream's limit before the first), then
holds the batch's actual size: the total is passed by the differences only (50 streams opened at once
would otherwise all pass an empty budget).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from spanlake.lakehouse.query.query_thread import shielded, stopping

# How often a waiting thread looks up: to see its stream closed or its query stopped.
WAIT_SECONDS = 0.1
UNBOUNDED = 1 << 62


class ResultBufferFull(Exception):
    """A query waited longer than its budget's `wait_seconds` for room."""


class ByteBudget:
    """Bytes held against a limit. Thread-safe: only a plain lock, held by no Python frame but its
    `with` (query_thread, Shielding); waiters sleep on a lock of their own, released when bytes come back."""

    def __init__(self, limit: int, wait_seconds: float = 0.0, what: str = "") -> None:
        """A budget of `limit` bytes, none held; with `wait_seconds`, `reserve` raises ResultBufferFull
        (saying `what` is full) past that wait."""
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        # One lock per waiting thread, taken while it is in the set (under `_lock`): give_back releases them.
        self._waiting: set[threading.Lock] = set()
        self._wait_seconds = wait_seconds
        self._what = what

    def wait_for_room(self, gave_up: Callable[[], bool]) -> bool:
        """Waits while the limit is reached; False if `gave_up()` first."""
        return self.reserve(0, gave_up)

    def reserve(self, size: int, gave_up: Callable[[], bool]) -> bool:
        """Holds `size` bytes once they fit (at once when nothing is held: a batch larger than the limit
        passes alone); False, holding nothing, if `gave_up()` first."""
        wake = threading.Lock()
        deadline = time.monotonic() + self._wait_seconds
        while True:
            with self._lock:
                if self.used == 0 or self.used + size <= self.limit:
                    self.used += size
                    self._waiting.discard(wake)
                    return True
                wake.acquire(blocking=False)
                self._waiting.add(wake)
            # A waiter that leaves stays in the set until the next give_back: harmless, one lock.
            if gave_up():
                return False
            if self._wait_seconds and time.monotonic() > deadline:
                raise ResultBufferFull(
                    f"{self._what} stayed full for {self._wait_seconds:g} s (SPANLAKE_RESULT_BUFFER_WAIT_SECONDS)"
                )
            wake.acquire(timeout=WAIT_SECONDS)

    def take(self, size: int) -> None:
        """Holds `size` more bytes, room or not."""
        with self._lock:
            self.used += size

    def give_back(self, size: int) -> None:
        """Releases `size` bytes held (negative: takes them) and wakes the waiters."""
        if size:
            with self._lock:
                self.used -= size
                waiting, self._waiting = self._waiting, set()
                for wake in waiting:
                    wake.release()


class StreamBuffer:
    """The batches of one stream between its producers and its consumer: queued (against the stream's
    limit and the total) and the one last handed to the consumer (against the total until the next is
    asked for). Closing it gives back all it holds; producers then stop. A query's thread runs its
    methods shielded from stops (query_thread, Shielding): what it holds is always told right."""

    def __init__(self, stream_limit: int, total: ByteBudget) -> None:
        """An empty buffer of one stream."""
        self._items: queue.SimpleQueue[tuple[Any, int]] = queue.SimpleQueue()
        self._queued = ByteBudget(stream_limit)
        self._total = total
        self._estimate = stream_limit  # what the next batch may weigh: the last one's size
        self._lock = threading.Lock()
        self._held = 0  # against the total: reserved, queued and handed
        self._handed = 0
        self._closed = False

    def reserve(self) -> int | None:
        """(producer) Waits until the stream and all streams have room for a batch and reserves what it
        may weigh; the bytes reserved (give them to `put`, `hand` or `unreserve`), None once closed."""
        with shielded():
            if not self._queued.wait_for_room(self._gave_up):
                return None
            estimate = min(self._estimate, self._total.limit)
            if not self._total.reserve(estimate, self._gave_up):
                return None
            with self._lock:
                if not self._closed:
                    self._held += estimate
                    return estimate
            self._total.give_back(estimate)
            return None

    def unreserve(self, reserved: int) -> None:
        """(producer) Gives back a reservation unused (the partition ended)."""
        with shielded():
            self._settle(reserved, 0)

    def put(self, item: Any, size: int, reserved: int) -> None:
        """(producer) Queues an item of `size` bytes in place of its reservation (dropped once closed)."""
        with shielded():
            if self._settle(reserved, size):
                self._queued.take(size)
                self._items.put((item, size))

    def get(self) -> Any:
        """(consumer) The next queued item, waiting in short steps, unshielded (where a stop is taken:
        an item taken off the queue just before is given back with the rest by `close`); the item handed
        before is given back."""
        self.hand_back()
        while True:
            try:
                item, size = self._items.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                continue
            with shielded():
                self._queued.give_back(size)
                with self._lock:
                    self._handed = size
            return item

    def hand(self, size: int, reserved: int) -> None:
        """(consumer producing for itself) Holds the batch of `size` bytes it hands, unqueued."""
        with shielded():
            if self._settle(reserved, size):
                with self._lock:
                    self._handed = size

    def hand_back(self) -> None:
        """(consumer) Gives back the item handed before: the client has taken it (nothing once closed:
        `close`, maybe on another thread meanwhile, gave it back)."""
        with shielded():
            with self._lock:
                size, self._handed = (0 if self._closed else self._handed), 0
                self._held -= size
            self._total.give_back(size)

    def close(self) -> None:
        """Gives back all the stream holds; producers stop at their next look."""
        with shielded():
            with self._lock:
                self._closed = True
                held, self._held = self._held, 0
            self._total.give_back(held)
            self._drop_queued()

    def _drop_queued(self) -> None:
        """Drops the items queued: their memory goes back now, not when the stream is collected."""
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return

    def _gave_up(self) -> bool:
        """Whether a waiting producer stops: the stream is closed, or the query whose thread waits is stopped."""
        return self._closed or stopping()

    def _settle(self, reserved: int, size: int) -> bool:
        """Holds `size` in place of `reserved`; False (holding nothing) once closed."""
        with self._lock:
            if self._closed:
                return False
            self._held += size - reserved
            self._estimate = size or self._estimate
            self._total.give_back(reserved - size)  # negative: takes the excess
        return True
