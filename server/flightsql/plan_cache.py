"""Planned DataFrames kept for a few seconds, so one ADBC query is planned once, not three times.

ADBC sends CreatePreparedStatement, GetFlightInfo and DoGet for one query, and each needs the
planned result schema (table functions run at planning time). Handles stay stateless (the handle is
the SQL, so any server process can answer any call); this cache only saves work when consecutive
calls land on the same process. Prepare and GetFlightInfo leave the plan in the cache; DoGet takes it
out, so a later run of the same SQL plans afresh and never sees a stale plan for long.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import datafusion
import pyarrow as pa

from spanlake.lakehouse.query.context import Principal

# (sql, query range, limit, principal): everything that changes what a plan reads (the whole principal:
# two keys of one name may read different audiences).
PlanKey = tuple[str, tuple[int, int] | None, int | None, Principal | None]


@dataclass(frozen=True)
class PlannedQuery:
    """A planned DataFrame, its result schema and the session it executes in."""

    df: datafusion.DataFrame
    schema: pa.Schema  # the DataFrame's result schema, before dictionary hydration
    ctx: datafusion.SessionContext | None = None  # the session that executes the plan


class PlanCache:
    """A small LRU with a time-to-live; thread-safe."""

    def __init__(self, ttl_seconds: float = 10.0, max_entries: int = 32) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[PlanKey, tuple[float, PlannedQuery]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: PlanKey, *, take: bool) -> PlannedQuery | None:
        """The plan of `key` if still fresh; `take` removes it (a plan streams once)."""
        now = time.monotonic()
        with self._lock:
            self._drop_expired(now)
            entry = self._entries.pop(key, None) if take else self._entries.get(key)
            if entry is not None and not take:
                self._entries.move_to_end(key)
        return entry[1] if entry is not None else None

    def put(self, key: PlanKey, planned: PlannedQuery) -> None:
        """Keeps a plan for the cache's time to live."""
        with self._lock:
            self._entries[key] = (time.monotonic() + self._ttl, planned)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forgets every plan."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _drop_expired(self, now: float) -> None:
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
