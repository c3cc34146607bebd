"""The maintenance daemon: keeps the global views materialized, merged and within retention.

Four schedules, as micromegas runs them (T = the scheduled tick truncated to the period):

| schedule | runs at        | insert range     | bucket | also                                    |
|----------|----------------|------------------|--------|-----------------------------------------|
| second   | each s + 0.5 s | [T-2 s, T-1 s)   | 1 s    | skipped when more than 10 s late        |
| minute   | each min + 30 s| [T-2 min, T-1 min)| 1 min |                                         |
| hour     | each h + 10 min| [T-2 h, T)       | 1 h    | retention, expired temporary files      |
| day      | each day + 4 h | [T-2 d, T)       | 1 day  |                                         |

So new data shows in the global views about 2 s after it arrives, in 1-second partitions merged into
minutes, hours and days (log_entries and measures stop at hours). Each schedule runs on its own
thread; views are processed in dependency order and one view's failure does not stop the others.
A run that fails as a whole (the database unreachable...) never ends its schedule: the next run waits
a backoff (1 s doubling up to a minute), and the first run that succeeds also covers the ticks missed
since the failure (up to 60 periods back).
Several daemons may run against one database: partition writes serialize on per-instance advisory
locks and an identical partition is written once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from spanlake import tracing
from spanlake.lakehouse.batch_update import SECOND_NS, materialize_range, nothing_to_materialize
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.retention import delete_expired
from spanlake.lakehouse.view_sets import MAINTAINED, VIEW_SETS

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
CATCH_UP_PERIODS = 60


@dataclass(frozen=True)
class Schedule:
    name: str
    period_s: int
    offset_s: float
    range_back: tuple[int, int]  # the insert range is [T - range_back[0] periods, T - range_back[1] periods)
    late_limit_s: float | None = None
    housekeeping: bool = False


SCHEDULES = (
    Schedule("second", 1, 0.5, (2, 1), late_limit_s=10),
    Schedule("minute", 60, 30, (2, 1)),
    Schedule("hour", 3600, 600, (2, 0), housekeeping=True),
    Schedule("day", 86400, 4 * 3600, (2, 0)),
)


class MaintenanceDaemon:
    def __init__(self, lake: Lake, retention_days: int, clock: Callable[[], float] = time.time) -> None:
        self.lake = lake
        self.retention_days = retention_days
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for schedule in SCHEDULES:
            thread = threading.Thread(
                target=self._loop, args=(schedule,), name=f"maintain-{schedule.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("maintenance daemon started (retention %d days)", self.retention_days)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self, schedule: Schedule) -> None:
        failures = 0
        first_undone: int | None = None  # the earliest tick (s) whose run failed, not covered since
        while not self._stop.is_set():
            now = self.clock()
            tick = (now // schedule.period_s + 1) * schedule.period_s + schedule.offset_s
            if self._stop.wait(max(0.0, tick - now)):
                return
            late = self.clock() - tick
            if schedule.late_limit_s is not None and late > schedule.late_limit_s:
                log.warning("%s maintenance %.1f s late: skipped", schedule.name, late)
                continue
            tick_s = int(tick // schedule.period_s) * schedule.period_s
            # After failures, the run covers the ticks missed meanwhile too (at most CATCH_UP_PERIODS).
            first = tick_s if first_undone is None else max(first_undone, tick_s - CATCH_UP_PERIODS * schedule.period_s)
            try:
                self.run(schedule, tick_s, first)
            except Exception:  # the schedule's supervisor: whatever failed, the schedule lives on
                failures += 1
                first_undone = first
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 16))
                log.exception("%s maintenance failed (%d in a row), next try in %g s", schedule.name, failures, delay)
                if self._stop.wait(delay):
                    return
                continue
            if failures:
                log.info("%s maintenance recovered after %d failure(s)", schedule.name, failures)
            failures, first_undone = 0, None

    def run(self, schedule: Schedule, tick_s: int, first_tick_s: int | None = None) -> None:
        """One run of a schedule for the tick T (seconds since the epoch, truncated to the period), or
        for every tick from `first_tick_s` to T (catching up after failures)."""
        if schedule.housekeeping:
            try:
                with tracing.async_span("maintenance.retention"):
                    delete_expired(self.lake, self.retention_days)
            except Exception:
                log.exception("retention failed")
        period_ns = schedule.period_s * SECOND_NS
        first = tick_s if first_tick_s is None else first_tick_s
        begin = first * SECOND_NS - schedule.range_back[0] * period_ns
        end = tick_s * SECOND_NS - schedule.range_back[1] * period_ns
        if self.lake.loop.run(nothing_to_materialize(self.lake.pool, begin, end)):
            return  # an idle range: one query, and no span in spanlake's own telemetry
        with tracing.async_span(f"maintenance.{schedule.name}", dynamic=True):
            for name in MAINTAINED:
                try:
                    with tracing.async_span(f"maintenance.{schedule.name}.{name}", dynamic=True):
                        written = materialize_range(self.lake, VIEW_SETS[name], begin, end, period_ns)
                    if written:
                        log.debug("%s maintenance wrote %d partition(s) of %s", schedule.name, written, name)
                except Exception:
                    log.exception("%s maintenance of %s failed", schedule.name, name)
