"""The telemetry session: process info, streams, the flush thread and the sink.

Hot paths (spans, logs, metrics) read three module attributes: `local` (per-thread: the thread's
cpu stream), `log_stream` and `metrics_stream`. `init` and `shutdown` replace them, so events
recorded outside a session go to null streams that discard themselves when full, and a new
session never sees a previous session's streams.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref

from spanlake.tracing import handoffs, streams
from spanlake.tracing.event_records import TYPE_BITS
from spanlake.tracing.process_info import ProcessInfo, make_process_info, now_ticks
from spanlake.tracing.registry import REGISTRY
from spanlake.tracing.sink import INSERT_PROCESS, HttpSink, Priority, Sink, SinkConfig, SinkStats
from spanlake.tracing.udts import INTEGER_METRIC_INDEX

logger = logging.getLogger("spanlake.tracing")

URL_ENV = "MICROMEGAS_TELEMETRY_URL"
API_KEY_ENV = "MICROMEGAS_INGESTION_API_KEY"
FLUSH_PERIOD_ENV = "MICROMEGAS_FLUSH_PERIOD"
DEFAULT_FLUSH_PERIOD = 60.0

local = threading.local()
log_stream: streams.LogStream | streams.NullTupleStream = streams.NullTupleStream(streams.LOG_BLOCK_EVENTS)
metrics_stream: streams.MetricsStream | streams.NullTupleStream = streams.NullTupleStream(streams.METRICS_BLOCK_EVENTS)
_null_thread_stream = streams.NullThreadStream()
_session: Session | None = None
_lifecycle = threading.Lock()


def thread_stream() -> streams.ThreadStream | streams.NullThreadStream:
    """The calling thread's cpu stream, created on its first event (the slow path of every span)."""
    tls, session = local, _session
    stream = session.new_thread_stream(tls) if session is not None else _null_thread_stream
    tls.stream = stream
    return stream


class DiscardSink:
    """Used when no telemetry URL is configured: sends nothing, counts what it got."""

    def __init__(self) -> None:
        self._stats = SinkStats()

    def submit(self, priority: Priority, path: str, body: bytes) -> bool:
        """Counts the body as sent and drops it."""
        self._stats.sent[priority] += 1
        return True

    def stats(self) -> SinkStats:
        """The counts so far."""
        return self._stats

    def flush(self, timeout: float) -> bool:
        """Nothing is ever pending: True at once."""
        return True

    def shutdown(self, timeout: float) -> bool:
        """Nothing is ever pending: True at once."""
        return True


class _FlushRequest:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class Session:
    """One telemetry session: the process, its streams, the sink and the thread that flushes full blocks."""

    def __init__(self, process: ProcessInfo, sink: Sink, flush_period: float) -> None:
        self.process = process
        self.sink = sink
        self.flush_period = flush_period
        self.work: queue.SimpleQueue = queue.SimpleQueue()  # full blocks, flush requests, stop
        self.log_stream = streams.LogStream(process, self.work.put)
        self.metrics_stream = streams.MetricsStream(process, self.work.put)
        self.thread_streams: list[streams.ThreadStream] = []
        self._streams_lock = threading.Lock()
        self.encode_errors = 0
        self._reported_losses = [0] * len(Priority)
        self._flusher = threading.Thread(target=self._run, name="spanlake-flush", daemon=True)

    def start(self) -> None:
        """Sends the process info and starts the flush thread."""
        self.sink.submit(Priority.METADATA, INSERT_PROCESS, self.process.to_wire())
        self._flusher.start()

    def new_thread_stream(self, tls: threading.local) -> streams.ThreadStream:
        """A new cpu stream for the calling thread, flushed one last time when the thread ends."""
        stream = streams.ThreadStream(self.process, threading.current_thread(), self.work.put)
        # The thread-local sentinel dies with the thread: its stream is then flushed one last time and dropped.
        tls.exit_sentinel = sentinel = _ThreadExitSentinel()
        weakref.finalize(sentinel, setattr, stream, "finished", True)
        with self._streams_lock:
            self.thread_streams.append(stream)
        return stream

    # -- flush thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_period
        while True:
            try:
                item = self.work.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if isinstance(item, _FlushRequest):
                self._flush_all()
                item.done.set()
            elif item is not None:
                self._send(item)
            if time.monotonic() >= next_flush:
                self._report_losses()
                self._flush_all()
                next_flush = time.monotonic() + self.flush_period
        self._flush_all()

    def _flush_all(self) -> None:
        while True:  # blocks drained by writers first, so a stream's blocks go out in order
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, streams.PendingBlock):
                self._send(item)
            elif isinstance(item, _FlushRequest):
                item.done.set()  # satisfied by this flush
            else:
                self.work.put(item)  # the stop marker: handled by the loop
                break
        with self._streams_lock:
            thread_streams = list(self.thread_streams)
        for stream in [self.log_stream, self.metrics_stream, *thread_streams]:
            finished = stream.finished
            block = stream.drain()
            if block is not None:
                self._send(block)
            if finished:
                with self._streams_lock:
                    self.thread_streams.remove(stream)

    def _send(self, block: streams.PendingBlock) -> None:
        try:
            requests = block.requests(REGISTRY)
        except Exception:  # a bug in encoding must not take the program down; the block is lost
            self.encode_errors += 1
            logger.exception("could not encode a telemetry block of stream %s", block.stream.stream_id)
            return
        for priority, path, body in requests:
            self.sink.submit(priority, path, body)

    def _report_losses(self) -> None:
        """Emits `telemetry_dropped_*` metrics for what the sink lost since the last report."""
        stats = self.sink.stats()
        for priority in Priority:
            lost = stats.dropped[priority] + stats.rejected[priority] + stats.failed[priority]
            if lost > self._reported_losses[priority]:
                name = f"telemetry_dropped_{priority.name.lower()}"
                desc = REGISTRY.metric(name, "count", "spanlake.tracing", __file__, 0)
                code = desc << TYPE_BITS | INTEGER_METRIC_INDEX
                self.metrics_stream.events.append((code, now_ticks(), lost - self._reported_losses[priority], 0))
                self._reported_losses[priority] = lost

    # -- control (application threads) -------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Flushes every stream and waits (up to `timeout` s) for the sink; False on timeout."""
        request = _FlushRequest()
        self.work.put(request)
        deadline = time.monotonic() + timeout
        if not request.done.wait(timeout):
            return False
        return self.sink.flush(max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float) -> bool:
        """Flushes, stops the flush thread and shuts the sink down within `timeout` s; True if all was delivered."""
        deadline = time.monotonic() + timeout
        self.work.put(_STOP)
        self._flusher.join(timeout)
        return self.sink.shutdown(max(0.0, deadline - time.monotonic())) and not self._flusher.is_alive()


class _ThreadExitSentinel:
    __slots__ = ("__weakref__",)


def init(
    url: str | None = None,
    *,
    api_key: str | None = None,
    exe: str | None = None,
    properties: dict[str, str] | None = None,
    flush_period: float | None = None,
    sink: Sink | None = None,
    sink_config: SinkConfig | None = None,
) -> ProcessInfo:
    """Starts telemetry for this process and returns its ProcessInfo.

    `url` defaults to `MICROMEGAS_TELEMETRY_URL`, `api_key` to `MICROMEGAS_INGESTION_API_KEY`,
    `flush_period` (seconds) to `MICROMEGAS_FLUSH_PERIOD` or 60. Without a URL or a `sink`, events are
    encoded and discarded. Raises RuntimeError if telemetry is already initialized.
    """
    global _session, local, log_stream, metrics_stream
    with _lifecycle:
        if _session is not None:
            raise RuntimeError("spanlake tracing is already initialized; call tracing.shutdown() first")
        session = Session(
            make_process_info(exe, properties),
            sink or _make_sink(url, api_key, sink_config),
            _flush_period(flush_period),
        )
        session.start()
        handoffs.install()
        log_stream, metrics_stream = session.log_stream, session.metrics_stream
        local = threading.local()
        _session = session
    return session.process


def shutdown(timeout: float = 5.0) -> bool:
    """Flushes every stream and waits up to `timeout` seconds for the sink to deliver; later events are
    discarded. Returns False if something could not be delivered in time (it is then abandoned)."""
    global _session, local, log_stream, metrics_stream
    with _lifecycle:
        session = _session
        if session is None:
            return True
        _session = None
        handoffs.uninstall()
        local = threading.local()
        log_stream = streams.NullTupleStream(streams.LOG_BLOCK_EVENTS)
        metrics_stream = streams.NullTupleStream(streams.METRICS_BLOCK_EVENTS)
    return session.stop(timeout)


def flush(timeout: float = 5.0) -> bool:
    """Sends every event recorded so far and waits (up to `timeout` s) for the sink to deliver it."""
    session = _session
    return session.flush(timeout) if session is not None else True


def current_process() -> ProcessInfo | None:
    """The process of the current session, or None outside one."""
    session = _session
    return session.process if session is not None else None


def sink_stats() -> SinkStats | None:
    """What the sink sent, dropped, had rejected or gave up on (per priority); None outside a session."""
    session = _session
    return session.sink.stats() if session is not None else None


def _make_sink(url: str | None, api_key: str | None, config: SinkConfig | None) -> Sink:
    url = url or os.environ.get(URL_ENV)
    if not url:
        return DiscardSink()
    return HttpSink(url, api_key or os.environ.get(API_KEY_ENV) or None, config)


def _flush_period(value: float | None) -> float:
    if value is None:
        text = os.environ.get(FLUSH_PERIOD_ENV, "")
        try:
            value = float(text) if text else DEFAULT_FLUSH_PERIOD
        except ValueError:
            logger.warning("ignoring %s=%r: not a number of seconds", FLUSH_PERIOD_ENV, text)
            value = DEFAULT_FLUSH_PERIOD
    return max(value, 0.01)


def _shutdown_at_exit() -> None:
    if _session is not None:
        shutdown()


atexit.register(_shutdown_at_exit)
