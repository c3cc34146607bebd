"""Live instances kept up to date in the background, so that a live process's next query finds them fresh.

A query of a process's instance (or of one of its streams') spends most of its time materializing what
arrived since the previous query. With `live_refresh_seconds` set, a queried instance is followed for
that long after its last query: each block
its process announces (`CatalogChanges.follow`) queues a refresh of it on the lake's settle queue (at
most one queued or running per instance), which materializes the new blocks the way a query would. The
next query then usually only checks that the instance is fresh; what arrived since the last refresh it
still materializes itself, so nothing acknowledged is ever missed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from spanlake.lakehouse.settle_queue import SettleQueue

# A followed instance is refreshed at most this often: blocks arriving faster share a refresh, queued
# that long after the previous one.
MIN_REFRESH_SECONDS = 0.1
# Queries between two sweeps of the instances no longer followed.
SWEEP_EVERY = 1024


@dataclass
class _Followed:
    refresh: Callable[[], object]
    last_queried: float
    last_refresh: float = 0.0  # when its last refresh was queued
    trailing: bool = False  # a refresh is due once MIN_REFRESH_SECONDS have passed since the last


class LiveRefresh:
    """The instances queried lately, by process id, with how to refresh each."""

    def __init__(self, seconds: float = 0.0) -> None:
        """Nothing followed yet; instances are followed `seconds` after their last query (0: none is)."""
        self.seconds = seconds
        self._lock = threading.Lock()
        self._by_process: dict[str, dict[Hashable, _Followed]] = {}
        self._process_of: dict[Hashable, str] = {}
        self._queries = 0

    def process_of(self, instance: Hashable) -> str | None:
        """The process of a followed instance (None: not followed)."""
        with self._lock:
            return self._process_of.get(instance)

    def queried(self, process_id: str, instance: Hashable, refresh: Callable[[], object]) -> None:
        """The instance (of the process) was just queried: follow it, refreshing it with `refresh`."""
        if self.seconds <= 0:
            return
        now = time.monotonic()
        with self._lock:
            followed = self._by_process.setdefault(process_id, {}).get(instance)
            if followed is None:
                self._by_process[process_id][instance] = _Followed(refresh, now)
            else:
                followed.last_queried = now
            self._process_of[instance] = process_id
            self._queries += 1
            if self._queries % SWEEP_EVERY == 0:
                for process in list(self._by_process):
                    self._drop_unfollowed(process, now)

    def announced(self, settler: SettleQueue, key: str) -> None:
        """A change of `key` was announced (on the lake's loop: this must not block): when it is a process
        whose instances are followed, queues their refresh, now or once MIN_REFRESH_SECONDS have passed
        since the previous one."""
        with self._lock:
            now = time.monotonic()
            for instance, followed in self._drop_unfollowed(key, now).items():
                wait = followed.last_refresh + MIN_REFRESH_SECONDS - now
                if wait <= 0:
                    self._queue(settler, instance, followed)
                elif not followed.trailing:
                    followed.trailing = True
                    asyncio.get_running_loop().call_later(wait, self._trail, settler, instance, followed)

    def _trail(self, settler: SettleQueue, instance: Hashable, followed: _Followed) -> None:
        with self._lock:
            self._queue(settler, instance, followed)

    def _queue(self, settler: SettleQueue, instance: Hashable, followed: _Followed) -> None:
        """Queues the instance's refresh (under the lock)."""
        followed.trailing = False
        followed.last_refresh = time.monotonic()
        settler.submit(("refresh", instance), followed.refresh)

    def _drop_unfollowed(self, process_id: str, now: float) -> dict[Hashable, _Followed]:
        """The process's instances still followed, the others forgotten (under the lock)."""
        instances = self._by_process.get(process_id, {})
        for instance in [i for i, followed in instances.items() if now - followed.last_queried > self.seconds]:
            del instances[instance]
            self._process_of.pop(instance, None)
        if not instances:
            self._by_process.pop(process_id, None)
        return instances
