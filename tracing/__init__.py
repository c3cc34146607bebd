"""spanlake's instrumentation SDK: spans (threads and asyncio), logs and metrics, sent to a spanlake
(or micromegas) ingestion server as micromegas transit blocks.

    from spanlake import tracing
    tracing.init("http://127.0.0.1:9000")      # or MICROMEGAS_TELEMETRY_URL
    @tracing.span_fn
    async def handle(request): ...
    tracing.info("started", {"region": "eu"})
    tracing.imetric("queue_depth", "count", 3)
    tracing.shutdown()

See docs/tracing.md. Modules (the public API is re-exported here):

    dispatch        the telemetry session: process info, streams, the flush thread, the sink
    spans           thread spans (sync code) and async spans (coroutines), context, suppression
    propagation     W3C trace context: `inject` / `extract` of `traceparent` and `tracestate`
    handoffs        `run_in_executor` carrying the caller's context (installed by `init`)
    integrations    aiohttp (server middleware, client TraceConfig) and httpx (event hooks) spans
    trace_facts     how a cpu block carries its spans' trace facts (a dependency micromegas skips)
    recording       a root span holding its descendants back until it ends, then keeping some
    logs            log entries and a `logging.Handler`
    metrics         integer and float metrics
    streams         where events wait between being recorded and being encoded
    event_records   how streams keep events (code, slots) and what encoding them gives
    transit_encode  recorded events → a transit block body (vectorized)
    udts            the transit type metadata the streams declare (micromegas's)
    registry        interned strings and descriptors with stable ids
    process_info    the process and its clock: the `insert_process` body
    sink            delivery to the ingestion API off the program's threads
    generator       `spanlake generate`: a workload that sends a realistic mix of telemetry
"""

from spanlake.tracing.dispatch import current_process, flush, init, shutdown, sink_stats
from spanlake.tracing.logs import (
    DEBUG,
    ERROR,
    FATAL,
    INFO,
    TRACE,
    WARN,
    LoggingHandler,
    debug,
    error,
    fatal,
    info,
    log,
    set_max_level,
    trace,
    warn,
)
from spanlake.tracing.metrics import fmetric, imetric
from spanlake.tracing.process_info import ProcessInfo
from spanlake.tracing.propagation import extract, inject
from spanlake.tracing.recording import RecordingOutcome, SpanRecording, begin_recording
from spanlake.tracing.sink import HttpSink, MemorySink, Priority, SinkConfig, SinkStats
from spanlake.tracing.spans import (
    ROOT_CONTEXT,
    OpenAsyncSpan,
    SpanContext,
    async_span,
    attach,
    begin_async_span,
    current_span_context,
    current_span_id,
    instrument,
    record_async_span,
    span_async_named,
    span_fn,
    span_scope,
    span_scope_named,
    suppressed,
)

__all__ = [
    "DEBUG",
    "ERROR",
    "FATAL",
    "INFO",
    "ROOT_CONTEXT",
    "TRACE",
    "WARN",
    "HttpSink",
    "LoggingHandler",
    "MemorySink",
    "OpenAsyncSpan",
    "Priority",
    "ProcessInfo",
    "RecordingOutcome",
    "SinkConfig",
    "SinkStats",
    "SpanContext",
    "SpanRecording",
    "async_span",
    "attach",
    "begin_async_span",
    "begin_recording",
    "current_process",
    "current_span_context",
    "current_span_id",
    "debug",
    "error",
    "extract",
    "fatal",
    "flush",
    "fmetric",
    "imetric",
    "info",
    "init",
    "inject",
    "instrument",
    "log",
    "record_async_span",
    "set_max_level",
    "shutdown",
    "sink_stats",
    "span_async_named",
    "span_fn",
    "span_scope",
    "span_scope_named",
    "suppressed",
    "trace",
    "warn",
]
