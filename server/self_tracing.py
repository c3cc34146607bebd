"""spanlake traces itself: its spans, query audit records and query metrics go into its own lake.

`start_self_tracing(lake, role)` starts a tracing session (process exe `spanlake-<role>`) whose sink
stores telemetry straight into the lake (catalog rows, and blocks through `lakehouse.ingest.store_block`
as the ingestion API stores them, their traces in the trace index), so a lone `spanlake flightsql`
traces itself too. Its process is queried like any other: `view_instance('async_events', <process_id>)`,
`perfetto_trace_chunks(...)` (docs/self-tracing.md).

No feedback loop: the sink's thread runs under `tracing.suppressed()` and stores through the catalog,
the object store and `store_block` (run on the lake's loop), which carry no instrumentation; queries on
the self-traced process produce their own spans like any query (a bounded amount per query), never
spans about storing spans.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass

from spanlake import tracing
from spanlake.lakehouse.block_traces import TransitBlockTraces
from spanlake.lakehouse.errors import IngestRejected
from spanlake.lakehouse.ingest import BlockContexts, store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.audit import AUDIT_LOGGER
from spanlake.lakehouse.records import BlockRecord
from spanlake.server import wire
from spanlake.tracing.dispatch import FLUSH_PERIOD_ENV
from spanlake.tracing.sink import INSERT_BLOCK, INSERT_PROCESS, INSERT_STREAM, Priority, SinkStats

log = logging.getLogger("spanlake.self_tracing")

MAX_QUEUE_BYTES = 64 * 1024 * 1024
FLUSH_PERIOD_SECONDS = 5.0
_STORE_TIMEOUT_SECONDS = 30.0


@dataclass
class _Item:
    priority: Priority
    path: str
    body: bytes


class LakeSink:
    """A tracing sink that stores into `lake` from its own thread (never the lake's loop thread), in
    submission order, with a byte budget: over it, everything but metadata is dropped (and counted)."""

    def __init__(self, lake: Lake, max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        self._lake = lake
        self._block_contexts = BlockContexts(lake)
        self._block_traces = TransitBlockTraces(lake)
        self._max_queue_bytes = max_queue_bytes
        self._queue: collections.deque[_Item] = collections.deque()
        self._stats = SinkStats()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="spanlake-self-tracing", daemon=True)
        self._thread.start()

    def submit(self, priority: Priority, path: str, body: bytes) -> bool:
        """Queues a body to store; False when it is dropped (over budget, or closing)."""
        with self._cond:
            over_budget = self._stats.queued_bytes + len(body) > self._max_queue_bytes
            if self._closing or (over_budget and priority != Priority.METADATA):
                (self._stats.failed if self._closing else self._stats.dropped)[priority] += 1
                return False
            self._queue.append(_Item(priority, path, body))
            self._stats.queued_bytes += len(body)
            self._cond.notify_all()
            return True

    def stats(self) -> SinkStats:
        """A snapshot of what was sent, dropped, rejected and failed."""
        with self._cond:
            return self._stats.snapshot()

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued is stored; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def shutdown(self, timeout: float) -> bool:
        """Flushes, then stops the sink's thread; True when nothing was lost."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            while self._queue:
                item = self._queue.popleft()
                self._stats.queued_bytes -= len(item.body)
                self._stats.failed[item.priority] += 1
            self._cond.notify_all()
        self._thread.join(timeout)
        return delivered and self._stats.lost() == 0

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            item = self._queue.popleft()
            self._stats.queued_bytes -= len(item.body)
            self._in_flight += 1
            return item

    def _run(self) -> None:
        with tracing.suppressed():
            while (item := self._next()) is not None:
                outcome = self._store(item)
                with self._cond:
                    getattr(self._stats, outcome)[item.priority] += 1
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _store(self, item: _Item) -> str:
        """'sent', 'rejected' (a body the ingestion API would refuse) or 'failed' (storage error)."""
        lake = self._lake
        try:
            if item.path == INSERT_PROCESS:
                lake.loop.run(lake.catalog.insert_process(wire.parse_process(item.body)), _STORE_TIMEOUT_SECONDS)
            elif item.path == INSERT_STREAM:
                lake.loop.run(lake.catalog.insert_stream(wire.parse_stream(item.body)), _STORE_TIMEOUT_SECONDS)
            elif item.path == INSERT_BLOCK:
                record, payload = wire.parse_block(item.body)
                lake.loop.run(self._store_block(record, payload), _STORE_TIMEOUT_SECONDS)
            else:
                raise wire.WireError(f"unknown ingestion path {item.path}")
        except (wire.WireError, IngestRejected) as err:
            log.warning("self-tracing dropped a malformed %s: %s", item.path, err)
            return "rejected"
        except Exception as err:  # storage down: self-telemetry is lost, the server keeps serving
            log.warning("self-tracing could not store %s: %r", item.path, err)
            return "failed"
        return "sent"

    async def _store_block(self, record: BlockRecord, payload: bytes) -> None:
        """Stores a block as the ingestion API does: checked, its traces indexed, then its row."""
        process = await self._block_contexts.check(record)
        traces = await self._block_traces.of(record, payload, process)
        await store_block(self._lake, record, payload, traces)


class SelfTracing:
    """The running self-tracing session of this process; `stop()` flushes and ends it."""

    def __init__(self, lake: Lake, role: str, flush_period: float | None) -> None:
        self.sink = LakeSink(lake)
        self.process = tracing.init(
            sink=self.sink, exe=f"spanlake-{role}", flush_period=flush_period, properties={"spanlake_role": role}
        )
        self._audit_handler = tracing.LoggingHandler(own_loggers=True)
        logging.getLogger(AUDIT_LOGGER).addHandler(self._audit_handler)

    def stop(self, timeout: float = 10.0) -> bool:
        """Ends the session: stops capturing the audit log, flushes and shuts tracing down."""
        logging.getLogger(AUDIT_LOGGER).removeHandler(self._audit_handler)
        return tracing.shutdown(timeout)


def start_self_tracing(lake: Lake, role: str, flush_period: float | None = None) -> SelfTracing:
    """Starts tracing this process into `lake`; `role` names it (`exe` = `spanlake-<role>`). The flush
    period is `MICROMEGAS_FLUSH_PERIOD` seconds when set, else 5 s."""
    if flush_period is None:
        flush_period = FLUSH_PERIOD_SECONDS if FLUSH_PERIOD_ENV not in os.environ else None
    session = SelfTracing(lake, role, flush_period)
    log.info("self-tracing on: process %s (exe spanlake-%s)", session.process.process_id, role)
    return session
