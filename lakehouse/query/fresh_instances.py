"""Up-to-date partition sets of view instances, reused while the catalog announces no change to them.

A warm query of an instance nothing was written to since the last one needs no catalog round trip:
its partitions are those the last check found, as long as the instance's generation
(lakehouse/catalog_changes.py) is the one that check started at. A set found for a query range also
serves any range within it (the check covers the blocks of its range; the set holds every live
partition of the instance). A set with rows in memory (a tail not committed yet) is not kept: its
partitions alone would miss those rows, and their commit is about to change the generation anyway.
The sets kept are bounded: the least recently used instances go first.

A stream instance changes with its process's blocks and its own partitions: its generation is of both
keys, and the process of each stream queried is kept (a stream never changes process).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spanlake.lakehouse.catalog_changes import Generation

if TYPE_CHECKING:
    from spanlake.lakehouse.jit import FreshRows

# Instances whose sets are kept, and sets kept per instance (one per query range not within another's).
MAX_INSTANCES = 4096
MAX_RANGES = 4

QueryRange = tuple[int, int] | None
InstanceKey = Hashable  # (view set, instance id, schema hash), and for a global set its query range


@dataclass(frozen=True)
class _FreshSet:
    query_range: QueryRange
    generation: Generation
    rows: FreshRows

    def serves(self, query_range: QueryRange, generation: Generation) -> bool:
        """Whether this set answers a query of `query_range` at `generation`."""
        if generation != self.generation:
            return False
        if self.query_range is None:
            return True
        begin, end = self.query_range
        return query_range is not None and begin <= query_range[0] and query_range[1] <= end


class FreshInstances:
    """The partition sets last found up to date, per instance."""

    def __init__(self) -> None:
        self._sets: OrderedDict[InstanceKey, list[_FreshSet]] = OrderedDict()
        self._stream_processes: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def stream_process(self, stream_id: str, lookup: Callable[[], str | None]) -> str | None:
        """The process of a stream: the one kept, else `lookup()`'s (kept unless None: an unknown stream)."""
        with self._lock:
            process_id = self._stream_processes.get(stream_id)
        if process_id is not None:
            return process_id
        process_id = lookup()
        if process_id is not None:
            with self._lock:
                self._stream_processes[stream_id] = process_id
                while len(self._stream_processes) > MAX_INSTANCES:
                    self._stream_processes.popitem(last=False)
        return process_id

    def rows(
        self,
        key: InstanceKey,
        query_range: QueryRange,
        generation: Generation | None,
        check: Callable[[], FreshRows],
    ) -> FreshRows:
        """The instance's up-to-date rows: a set found at `generation` (read before calling) that serves
        the range, else `check()`'s, kept for the next query unless it has rows in memory. None: always
        `check()`."""
        if generation is None:
            return check()
        with self._lock:
            found = next((s for s in self._sets.get(key, ()) if s.serves(query_range, generation)), None)
            if found is not None:
                self._sets.move_to_end(key)
                return found.rows
        rows = check()
        if not rows.tail and not rows.frames:
            self._keep(key, _FreshSet(query_range, generation, rows))
        return rows

    def _keep(self, key: InstanceKey, fresh: _FreshSet) -> None:
        with self._lock:
            current = [s for s in self._sets.get(key, ()) if s.generation == fresh.generation]
            self._sets[key] = [fresh, *current][:MAX_RANGES]
            self._sets.move_to_end(key)
            while len(self._sets) > MAX_INSTANCES:
                self._sets.popitem(last=False)
