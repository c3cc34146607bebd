"""Parquet scans of partition files, built once per file list and reused by the queries that follow.

A scan (one DataFusion listing table of the files, `listing_scan.py`) depends only on its files and the
view's schema: a warm query of an instance whose partition set did not change (`fresh_instances.py`)
reads the same files, so it reuses the scan the first query built instead of building it again. A new
or a retired partition changes the file list, hence the key, so a scan is never reused past a catalog
change.
The frames hold no Python (built in a frames context of their own) and run in each query's session
(its memory pool, its cancellation); the least recently used go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datafusion import DataFrame

MAX_SCANS = 128  # each frame holds a copy of its context's state (tens of KiB)

ScanKey = Hashable  # (view set, schema hash, the files' keys)


class ScanFrames:
    """The scans built lately, by view and file list."""

    def __init__(self) -> None:
        """No scan kept yet."""
        self._frames: OrderedDict[ScanKey, DataFrame] = OrderedDict()
        self._lock = threading.Lock()

    def frame(self, key: ScanKey, build: Callable[[], DataFrame]) -> DataFrame:
        """The scan of this key: the one kept, else `build()`'s, kept for the next query."""
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                return frame
        frame = build()  # outside the lock: concurrent first queries may both build, one is kept
        with self._lock:
            self._frames[key] = frame
            while len(self._frames) > MAX_SCANS:
                self._frames.popitem(last=False)
        return frame
