"""The SDK's public behaviour: lifecycle, decorators, log levels, the logging handler, threads, contexts."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
from collections.abc import Iterator

import pytest
from test_tracing_encode import bodies, events_with_tag

from spanlake import tracing
from spanlake.tracing import dispatch
from spanlake.tracing.logs import level_from_logging


@tracing.span_fn
def double(x: int) -> int:
    """Doubles."""
    return 2 * x


@tracing.span_fn("custom_name")
def renamed() -> None:
    pass


@tracing.span_fn(name="keyword_name")
async def renamed_async() -> str:
    return "done"


@tracing.span_fn
def explode() -> None:
    raise KeyError("nope")


def test_events_outside_a_session_are_discarded() -> None:
    assert tracing.current_process() is None and tracing.sink_stats() is None
    for i in range(10):
        assert double(i) == 2 * i
    tracing.info("nobody listens")
    tracing.imetric("nobody", "count", 1)
    assert tracing.flush() and tracing.shutdown()
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600)
    tracing.shutdown()
    assert [path for _, path, _ in sink.items] == ["/ingestion/insert_process"]


def test_init_twice_is_refused(sink: tracing.MemorySink) -> None:
    with pytest.raises(RuntimeError, match="already initialized"):
        tracing.init(sink=tracing.MemorySink())


def test_span_fn_keeps_the_function(sink: tracing.MemorySink) -> None:
    assert (double.__name__, double.__doc__, double(21)) == ("double", "Doubles.", 42)
    renamed()
    assert asyncio.run(renamed_async()) == "done"
    with pytest.raises(KeyError, match="nope"):
        explode()
    tracing.flush()
    cpu = events_with_tag(sink, "cpu")
    names = [
        (e.type_name, e["thread_span_desc"]["name"] if "Thread" in e.type_name else e["span_desc"]["name"]) for e in cpu
    ]
    assert names == [
        ("BeginThreadSpanEvent", "double"),
        ("EndThreadSpanEvent", "double"),
        ("BeginThreadSpanEvent", "custom_name"),
        ("EndThreadSpanEvent", "custom_name"),
        ("BeginAsyncSpanEvent", "keyword_name"),
        ("EndAsyncSpanEvent", "keyword_name"),
        ("BeginThreadSpanEvent", "explode"),
        ("EndThreadSpanEvent", "explode"),
    ]


def test_generators_are_refused() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def stream() -> object:
        yield 1

    with pytest.raises(TypeError, match="cannot instrument generator"):
        tracing.span_fn(numbers)
    with pytest.raises(TypeError, match="cannot instrument generator"):
        tracing.span_fn(stream)


def test_log_levels(sink: tracing.MemorySink) -> None:
    try:
        tracing.set_max_level(tracing.WARN)
        for log in (tracing.fatal, tracing.error, tracing.warn, tracing.info, tracing.debug, tracing.trace):
            log(log.__name__)
        tracing.log(tracing.ERROR, "via log()")
        tracing.log(tracing.TRACE, "filtered")
    finally:
        tracing.set_max_level(tracing.TRACE)
    tracing.flush()
    assert [(e["msg"], e["desc"]["level"]) for e in events_with_tag(sink, "log")] == [
        ("fatal", 1),
        ("error", 2),
        ("warn", 3),
        ("via log()", 2),
    ]
    with pytest.raises(ValueError, match=r"between 1 \(fatal\) and 6 \(trace\)"):
        tracing.set_max_level(7)


def test_logging_handler(sink: tracing.MemorySink) -> None:
    assert [level_from_logging(n) for n in (50, 40, 30, 20, 10, 5)] == [1, 2, 3, 4, 5, 6]
    handler = tracing.LoggingHandler()
    app, own = logging.getLogger("api.app"), logging.getLogger("spanlake.tracing.test")
    for logger in (app, own):
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        app.debug("%d items", 3)
        app.info("no args %s")  # not a format string without args: kept verbatim, no fmt_str
        own.warning("telemetry about telemetry is not recorded")
    finally:
        for logger in (app, own):
            logger.removeHandler(handler)
    tracing.flush()
    events = events_with_tag(sink, "log")
    assert [(e["msg"], e["desc"]["fmt_str"], e["desc"]["level"], e["desc"]["target"]) for e in events] == [
        ("3 items", "%d items", 5, "api.app"),
        ("no args %s", "", 4, "api.app"),
    ]
    assert events[0]["desc"]["module_path"] == "test_tracing_api"


def test_a_finished_thread_stream_is_flushed_then_dropped(sink: tracing.MemorySink) -> None:
    thread = threading.Thread(target=double, args=(1,), name="short-lived")
    thread.start()
    thread.join()
    gc.collect()
    tracing.flush()
    session = dispatch._session
    assert [s.properties["thread-name"] for s in session.thread_streams] == []
    assert len(events_with_tag(sink, "cpu")) == 2
    double(2)  # the main thread gets its stream now
    tracing.flush()
    assert [s.properties["thread-name"] for s in session.thread_streams] == ["MainThread"]


def test_a_new_session_starts_with_new_streams() -> None:
    first, second = tracing.MemorySink(), tracing.MemorySink()
    process_1 = tracing.init(sink=first, flush_period=3600)
    double(1)
    tracing.shutdown()
    double(2)  # between sessions: discarded
    process_2 = tracing.init(sink=second, flush_period=3600)
    double(3)
    tracing.shutdown()
    assert process_1.process_id != process_2.process_id
    streams_1 = {b["stream_id"] for b in bodies(first, "/ingestion/insert_stream")}
    streams_2 = {b["stream_id"] for b in bodies(second, "/ingestion/insert_stream")}
    assert streams_1.isdisjoint(streams_2)
    assert [b["process_id"] for b in bodies(second, "/ingestion/insert_block")] == [str(process_2.process_id)]
    assert [b["nb_objects"] for b in bodies(second, "/ingestion/insert_block")] == [2]


def test_a_coroutine_closed_elsewhere_leaves_other_contexts_alone(sink: tracing.MemorySink) -> None:
    class Suspend:
        def __await__(self) -> Iterator[None]:
            yield

    @tracing.span_fn
    async def suspended() -> None:
        await Suspend()

    coroutine = suspended()
    contextvars.copy_context().run(coroutine.send, None)  # begins its span in its own context, suspends
    seen = []

    @tracing.span_fn
    async def unrelated() -> None:
        before = tracing.current_span_id()
        coroutine.close()  # as the garbage collector would, while another span is current
        seen.append((before, tracing.current_span_id()))

    asyncio.run(unrelated())
    ((before, after),) = seen
    assert before != 0 and after == before
    tracing.flush()
    edges = [(e.type_name, e["span_desc"]["name"].rsplit(".", 1)[-1]) for e in events_with_tag(sink, "cpu")]
    assert sorted(edges) == sorted(
        [
            ("BeginAsyncSpanEvent", "suspended"),
            ("EndAsyncSpanEvent", "suspended"),
            ("BeginAsyncSpanEvent", "unrelated"),
            ("EndAsyncSpanEvent", "unrelated"),
        ]
    )
