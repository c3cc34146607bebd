"""Async spans from synchronous code, carried across threads, begun and ended apart, and suppressed."""

from __future__ import annotations

import threading

from test_tracing_encode import events_with_tag

from spanlake import tracing


def _spans(sink: tracing.MemorySink) -> dict[str, dict]:
    """name → {span_id, parent, depth, begin, end} of every async span recorded."""
    assert tracing.flush(5)
    spans: dict[int, dict] = {}
    for event in events_with_tag(sink, "cpu"):
        if "Async" not in event.type_name:
            continue
        name = event["name"] if "Named" in event.type_name else event["span_desc"]["name"]
        span = spans.setdefault(
            event["span_id"],
            {"name": name, "span_id": event["span_id"], "parent": event["parent_span_id"], "depth": event["depth"]},
        )
        span["begin" if event.type_name.startswith("Begin") else "end"] = event["time"]
    return {span["name"]: span for span in spans.values()}


def test_async_span_nests_sync_code_and_follows_explicit_parents_across_threads(sink) -> None:
    def worker(context: tracing.SpanContext) -> None:
        with tracing.attach(context), tracing.async_span("in_thread"):
            pass
        with tracing.async_span("explicit_parent", context):
            pass

    with tracing.async_span("root") as root:
        assert tracing.current_span_context() == root and root[1] == 0
        with tracing.async_span(f"child_{7}", dynamic=True):
            thread = threading.Thread(target=worker, args=(tracing.current_span_context(),))
            thread.start()
            thread.join()
    assert tracing.current_span_context() == (0, -1)  # restored on exit
    spans = _spans(sink)
    assert spans["root"]["parent"] == 0 and spans["root"]["depth"] == 0
    child = spans["child_7"]
    assert child["parent"] == spans["root"]["span_id"] and child["depth"] == 1
    for name in ("in_thread", "explicit_parent"):
        assert spans[name]["parent"] == child["span_id"] and spans[name]["depth"] == 2
        assert child["begin"] <= spans[name]["begin"] <= spans[name]["end"] <= child["end"]


def test_begin_async_span_ends_on_another_thread_once(sink) -> None:
    span = tracing.begin_async_span("streamed")
    assert tracing.current_span_context() == (0, -1)  # beginning does not make it current
    with tracing.async_span("part", span.context):
        pass
    thread = threading.Thread(target=span.end)
    thread.start()
    thread.join()
    span.end()  # a second end writes nothing
    spans = _spans(sink)
    assert spans["part"]["parent"] == spans["streamed"]["span_id"]
    ends = [
        e
        for e in events_with_tag(sink, "cpu")
        if e.type_name == "EndAsyncSpanEvent" and e["span_id"] == spans["streamed"]["span_id"]
    ]
    assert len(ends) == 1


def test_suppressed_discards_this_threads_spans_only_during_the_body(sink) -> None:
    with tracing.suppressed():
        with tracing.async_span("hidden"):
            pass
        tracing.span_fn(lambda: None)()
    with tracing.async_span("kept"):
        pass
    assert set(_spans(sink)) == {"kept"}
    assert not [e for e in events_with_tag(sink, "cpu") if "Thread" in e.type_name]


def test_suppressed_body_survives_a_shutdown_during_it() -> None:
    """The self-tracing sink thread runs under `suppressed()` while the server shuts tracing down."""
    tracing.init(sink=tracing.MemorySink(), flush_period=3600)
    errors: list[AttributeError] = []
    inside, shut_down = threading.Event(), threading.Event()

    def sink_thread() -> None:
        try:
            with tracing.suppressed():
                inside.set()
                shut_down.wait(10)
        except AttributeError as err:  # the failure seen at every server shutdown
            errors.append(err)

    thread = threading.Thread(target=sink_thread)
    thread.start()
    assert inside.wait(10)
    tracing.shutdown()
    shut_down.set()
    thread.join(10)
    assert errors == []
    with tracing.async_span("after"):  # the thread-local of the new (absent) session is untouched
        pass
