"""Span recordings: a root span's descendants are held back until it ends, then kept by the slow rule."""

from __future__ import annotations

import threading
import time

from test_tracing_context import _spans

from spanlake import tracing
from spanlake.tracing import spans as span_module

MS = 1_000_000


def _query(recording: tracing.SpanRecording) -> None:
    """A long span with a short child, a short leaf, a span from another thread, a span with given times."""
    with tracing.attach(recording.context):
        with tracing.async_span("long") as long_span:
            time.sleep(0.03)
            with tracing.async_span("short_under_long"):
                pass
        with tracing.async_span("short_leaf"):
            pass
        thread = threading.Thread(target=_in_thread, args=(long_span,))
        thread.start()
        thread.join()
        now = time.perf_counter_ns()
        tracing.record_async_span("given_times", recording.context, now - 40 * MS, now - 10 * MS)


def _in_thread(parent: tracing.SpanContext) -> None:
    with tracing.async_span("long_in_thread", parent):
        time.sleep(0.02)


def test_a_slow_recording_keeps_long_spans_and_their_ancestors(sink) -> None:
    recording = tracing.begin_recording("query")
    _query(recording)
    outcome = recording.finish(slow_ns=0, min_span_ns=15 * MS)
    spans = _spans(sink)
    assert set(spans) == {"query", "long", "long_in_thread", "given_times"}
    assert outcome.slow and outcome.kept == {s["span_id"] for s in spans.values()} and outcome.dropped_spans == 2
    root = spans["query"]
    assert root["parent"] == 0 and root["depth"] == 0 and outcome.duration_ns == root["end"] - root["begin"]
    assert spans["long"]["parent"] == root["span_id"] and spans["long"]["depth"] == 1
    assert spans["long_in_thread"]["parent"] == spans["long"]["span_id"] and spans["long_in_thread"]["depth"] == 2
    given = spans["given_times"]
    assert given["end"] - given["begin"] == 30 * MS  # written with their original times
    assert span_module._recording_of == {}


def test_a_fast_recording_keeps_its_root_only(sink) -> None:
    recording = tracing.begin_recording("query")
    _query(recording)
    outcome = recording.finish(slow_ns=10**12, min_span_ns=0)
    spans = _spans(sink)
    assert set(spans) == {"query"} and not outcome.slow
    assert outcome.kept == {spans["query"]["span_id"]} and outcome.dropped_spans == 5
    assert span_module._recording_of == {}


def test_spans_outside_recordings_are_written_at_once(sink) -> None:
    recording = tracing.begin_recording("query")
    with tracing.async_span("unrelated"):
        pass
    assert set(_spans(sink)) == {"unrelated"}  # the recording's root waits for finish
    recording.finish(slow_ns=0, min_span_ns=0)
    assert set(_spans(sink)) == {"unrelated", "query"}
