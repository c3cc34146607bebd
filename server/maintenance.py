"""The maintenance daemon: keeps the global views materialized, merged and within retention.

Four schedules, as micromegas runs them (T = the scheduled tick truncated to the period):

| schedule | runs at        | insert range     | bucket | also                                    |
|----------|----------------|------------------|--------|-----------------------------------------|
| second   | each s + 0.5 s | [T-2 s, T-1 s)   | 1 s    | skipped when more than 10 s late        |
| minute   | each min + 30 s| [T-2 min, T-1 min)| 1 min |                                         |
| hour     | each h + 10 min| [T-2 h, T)       | 1 h    | retention, expired temporary files      |
| day      | each day + 4 h | [T-2 d, T)       | 1 day  | orphan files (`lakehouse.orphan_files`)  |

So new data shows in the global views about 2 s after it arrives, in 1-second partitions merged into
minutes, hours and days (log_entries and measures stop at hours). Each second's run first indexes the
blocks queued for the trace index (`lakehouse.trace_catch_up`, for up to TRACE_CATCH_UP_BUDGET_S).

Which ranges a run covers: the range of its tick, extended back to where the schedule's previous run
stopped (from the daemon's start on), so no slice is ever skipped — a slow run (the first one imports
and warms up), a tick skipped for lateness or a stall are caught up by the next run (at most
`CATCH_UP_PERIODS` periods back: older slices are the next schedule's). A view's partition that
crosses the range's edges (an admin's `materialize_partitions` over a range still receiving blocks)
is materialized as one bucket, rebuilt from source when blocks arrived in it since: it never
freezes the range it covers. Each schedule runs on its own
thread; views are processed in dependency order and one view's failure does not stop the others.
A run that fails as a whole (the database unreachable...) never ends its schedule: the next run waits
a backoff (1 s doubling up to a minute), and the first run that succeeds also covers the ticks missed
since the failure (up to CATCH_UP_PERIODS periods back). While waiting, the schedule asks the database
`SELECT 1` every PROBE_INTERVAL_S: once it answers again after not answering, the backoff is reset and
the run starts at once, so the global views catch up within seconds of an outage's end. A view that
fails for want of storage fails its run as a whole: its slices stay to be covered by the next run.
Several daemons may run against one database: partition writes serialize on per-instance advisory
locks and an identical partition is written once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from spanlake import tracing
from spanlake.lakehouse.batch_update import GLOBAL, SECOND_NS, materialize_range
from spanlake.lakehouse.errors import STORAGE_FAILURES, is_storage_failure
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.orphan_files import delete_orphan_files
from spanlake.lakehouse.retention import delete_expired
from spanlake.lakehouse.trace_catch_up import catch_up
from spanlake.lakehouse.view_sets import MAINTAINED, SPANLAKE_MAINTAINED, VIEW_SETS
from spanlake.views.view import View

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
# While a schedule waits its backoff: how often it asks whether the database answers again.
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 2.0
# The time a second's run may spend on the trace index's queue: a backlog (a lake upgraded from before
# the index) drains over many runs, and materialization keeps its pace meanwhile.
TRACE_CATCH_UP_BUDGET_S = 0.5


@dataclass(frozen=True)
class Schedule:
    """When one maintenance schedule runs and which insert range each run covers."""

    name: str
    period_s: int
    offset_s: float
    range_back: tuple[int, int]  # the insert range is [T - range_back[0] periods, T - range_back[1] periods)
    late_limit_s: float | None = None
    housekeeping: bool = False
    trace_catch_up: bool = False
    orphan_sweep: bool = False


# How far back a run catches up on slices its schedule missed, in periods.
CATCH_UP_PERIODS = 120

SCHEDULES = (
    Schedule("second", 1, 0.5, (2, 1), late_limit_s=10, trace_catch_up=True),
    Schedule("minute", 60, 30, (2, 1)),
    Schedule("hour", 3600, 600, (2, 0), housekeeping=True),
    Schedule("day", 86400, 4 * 3600, (2, 0), orphan_sweep=True),
)


class MaintenanceDaemon:
    """Runs the SCHEDULES, one thread each, against a lake."""

    def __init__(self, lake: Lake, retention_days: int, clock: Callable[[], float] = time.time) -> None:
        self.lake = lake
        self.retention_days = retention_days
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._covered_until: dict[str, int] = {}  # schedule name → end (ns) of the last range it covered

    def start(self) -> None:
        """Starts one thread per schedule, covering the slices from now on."""
        self.cover_from(self.clock())
        for schedule in SCHEDULES:
            thread = threading.Thread(
                target=self._loop, args=(schedule,), name=f"maintain-{schedule.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.debug("maintenance daemon started (retention %d days)", self.retention_days)

    def stop(self, timeout: float = 30) -> None:
        """Stops the schedules and waits up to `timeout` s for each thread."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self, schedule: Schedule) -> None:
        failures = 0  # runs failed in a row
        backoff = 0  # of those, the ones since the database last answered again: the backoff's exponent
        database_was_down = False  # seen not answering since the last successful run
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
            try:  # after failures, the run covers the ticks missed too (insert_range: from the last covered)
                self.run(schedule, tick_s)
            except Exception:  # the schedule's supervisor: whatever failed, the schedule lives on
                failures, backoff = failures + 1, backoff + 1
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(backoff - 1, 16))
                log.exception("%s maintenance failed (%d in a row), next try in %g s", schedule.name, failures, delay)
                waited = self._wait_backoff(delay, database_was_down)
                if waited is None:
                    return
                database_was_down = waited
                if database_was_down and self._database_answers():  # back: the backoff starts anew
                    log.info("%s maintenance: the database answers again, running now", schedule.name)
                    backoff, database_was_down = 0, False
                continue
            if failures:
                log.info("%s maintenance recovered after %d failure(s)", schedule.name, failures)
            failures, backoff, database_was_down = 0, 0, False

    def _wait_backoff(self, delay: float, database_was_down: bool) -> bool | None:
        """Waits `delay` s, or until the database answers after having been seen not answering;
        returns whether it was seen down (so far, this streak of failures), None when stopping."""
        deadline = time.monotonic() + delay
        while True:
            answers = self._database_answers()
            if answers and database_was_down:
                return True
            database_was_down = database_was_down or not answers
            left = deadline - time.monotonic()
            if left <= 0:
                return database_was_down
            if self._stop.wait(min(PROBE_INTERVAL_S, left)):
                return None

    def _database_answers(self) -> bool:
        """The catalog database answers `SELECT 1` within PROBE_TIMEOUT_S."""
        try:
            self.lake.loop.run(_select_one(self.lake.pool, PROBE_TIMEOUT_S))
        except STORAGE_FAILURES:
            return False
        return True

    def cover_from(self, start_s: float) -> None:
        """Every schedule's runs cover the slices from `start_s` on (with the range its first tick
        would have had one period earlier, for blocks stored while the daemon was starting)."""
        for schedule in SCHEDULES:
            period_ns = schedule.period_s * SECOND_NS
            start_period = int(start_s // schedule.period_s) * period_ns
            self._covered_until[schedule.name] = start_period - schedule.range_back[0] * period_ns

    def insert_range(self, schedule: Schedule, tick_s: int) -> tuple[int, int]:
        """[begin, end) (ns) a run for the tick T covers: the tick's range, from where the previous run
        of the schedule stopped if that is earlier (at most CATCH_UP_PERIODS periods back)."""
        period_ns = schedule.period_s * SECOND_NS
        begin = tick_s * SECOND_NS - schedule.range_back[0] * period_ns
        end = tick_s * SECOND_NS - schedule.range_back[1] * period_ns
        covered_until = self._covered_until.get(schedule.name, begin)
        return max(min(begin, covered_until), end - CATCH_UP_PERIODS * period_ns), end

    def run(self, schedule: Schedule, tick_s: int) -> None:
        """One run of a schedule for the tick T (seconds since the epoch, truncated to the period)."""
        if schedule.housekeeping:
            try:
                with tracing.async_span("maintenance.retention"):
                    delete_expired(self.lake, self.retention_days)
            except Exception:
                log.exception("retention failed")
        if schedule.orphan_sweep:
            try:
                with tracing.async_span("maintenance.orphan_sweep"):
                    delete_orphan_files(self.lake)
            except STORAGE_FAILURES:  # the next day's sweep finds the same orphans
                log.exception("orphan sweep failed")
        if schedule.trace_catch_up:
            try:
                catch_up(self.lake, TRACE_CATCH_UP_BUDGET_S)
            except Exception:  # its blocks stay queued for the next run; materialization goes on
                log.exception("trace index catch-up failed")
        period_ns = schedule.period_s * SECOND_NS
        begin, end = self.insert_range(schedule, tick_s)
        if self.lake.loop.run(self.lake.catalog.nothing_to_materialize(begin, end)):
            self._covered_until[schedule.name] = max(end, self._covered_until.get(schedule.name, end))
            return  # an idle range: one query, and no span in spanlake's own telemetry
        storage_failure: Exception | None = None
        with tracing.async_span(f"maintenance.{schedule.name}", dynamic=True):
            for view in self._maintained():
                try:
                    with tracing.async_span(f"maintenance.{schedule.name}.{view.name}", dynamic=True):
                        written = self._materialize(view, begin, end, period_ns)
                    if written:
                        log.debug("%s maintenance wrote %d partition(s) of %s", schedule.name, written, view.name)
                except Exception as err:
                    log.exception("%s maintenance of %s failed", schedule.name, view.name)
                    if is_storage_failure(err):
                        storage_failure = err
        if storage_failure is not None:  # the range stays uncovered: the next run materializes it again
            raise storage_failure
        self._covered_until[schedule.name] = max(end, self._covered_until.get(schedule.name, end))

    def _maintained(self) -> list[View]:
        """The built-in global views, then the SQL-defined ones by update group (they read the former)."""
        built_in = (VIEW_SETS[name] for name in (*MAINTAINED, *SPANLAKE_MAINTAINED))
        return [*built_in, *self.lake.sql_views.by_update_group(self.lake)]

    def _materialize(self, view: View, begin: int, end: int, period_ns: int) -> int:
        """[begin, end) in buckets of the period, except where a partition crossing its edges covers
        it: that partition's range is one bucket (rebuilt from source if blocks arrived in it)."""
        crossing = [
            p
            for p in self.lake.loop.run(self.lake.catalog.overlapping_partitions(view.name, GLOBAL, begin, end))
            if p.file_schema_hash == view.schema_hash and (p.begin_insert_ns < begin or p.end_insert_ns > end)
        ]
        written, bucket = 0, begin
        for partition in crossing:  # ordered by begin, and live partitions do not overlap
            if bucket < partition.begin_insert_ns:
                written += materialize_range(self.lake, view, bucket, partition.begin_insert_ns, period_ns)
            span = partition.end_insert_ns - partition.begin_insert_ns
            written += materialize_range(self.lake, view, partition.begin_insert_ns, partition.end_insert_ns, span)
            bucket = max(bucket, partition.end_insert_ns)
        if bucket < end:
            written += materialize_range(self.lake, view, bucket, end, period_ns)
        return written


async def _select_one(pool: asyncpg.Pool, timeout: float) -> None:
    await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)
