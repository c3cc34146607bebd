"""Thread spans that run under async spans a recording drops (`tracing.recording`: a fast query keeps its
root only, a slow one its long spans and their ancestors) belong under the nearest kept ancestor, not at
the top of their trace: in the SDK's trace facts, and through a running server's `trace_spans`."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator

import cbor2
import micromegas
import pytest
from harness import PostgresServer, SpanlakeServer, running_server

from spanlake import tracing
from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.views.span_traces import block_facts

MS = 1_000_000


@tracing.span_fn
def sync_work() -> None:
    """A thread span with a nested one."""
    with tracing.span_scope("sync_inner"):
        pass


def run_query(recording: tracing.SpanRecording, flush_inside: bool = False) -> dict[str, int]:
    """Thread spans under a short async span inside a long one, in a worker thread (a copied context),
    and right under the root; returns the async spans' ids by name."""
    with tracing.attach(recording.context):
        with tracing.async_span("long") as long_span:
            with tracing.async_span("short") as short_span:
                sync_work()
                worker = threading.Thread(target=contextvars.copy_context().run, args=(sync_work,))
                worker.start()
                worker.join()
                if flush_inside:  # the blocks go out while the recording is open
                    assert tracing.flush(5)
            time.sleep(0.03)
        sync_work()
    return {"root": recording.context[0], "long": long_span[0], "short": short_span[0]}


def thread_parents(sink: tracing.MemorySink) -> list[int]:
    """The async span each thread span begin ran under (one per begin), from the sink's cpu blocks."""
    assert tracing.flush(5)
    infos, parents = {}, []
    for _, path, body in sink.items:
        message = cbor2.loads(body)
        if path.endswith("insert_stream"):
            infos[message["stream_id"]] = message
        if not path.endswith("insert_block") or "cpu" not in infos[message["stream_id"]]["tags"]:
            continue
        info = infos[message["stream_id"]]
        layout = stream_layout(cbor2.dumps(info["dependencies_metadata"]), cbor2.dumps(info["objects_metadata"]))
        threads = block_facts(decode_block(cbor2.dumps(message["payload"]), layout).dependencies, "block").threads
        parents += [
            parent for parent, count in zip(threads["parent"], threads["count"], strict=True) for _ in range(count)
        ]
    return sorted(parents)


def test_a_fast_recording_puts_its_thread_spans_under_its_root(sink: tracing.MemorySink) -> None:
    recording = tracing.begin_recording("query")
    ids = run_query(recording)
    outcome = recording.finish(slow_ns=10**12, min_span_ns=0)
    assert outcome.kept == {ids["root"]} and outcome.dropped_spans == 2
    assert thread_parents(sink) == [ids["root"]] * 6  # 3 calls of sync_work, 2 spans each


def test_a_slow_recording_puts_them_under_their_nearest_kept_ancestor(sink: tracing.MemorySink) -> None:
    recording = tracing.begin_recording("query")
    ids = run_query(recording)
    outcome = recording.finish(slow_ns=0, min_span_ns=15 * MS)
    assert outcome.kept == {ids["root"], ids["long"]}  # `short` is dropped: its thread spans go under `long`
    assert thread_parents(sink) == sorted([ids["long"]] * 4 + [ids["root"]] * 2)


def test_thread_spans_flushed_while_the_recording_is_open_go_under_its_root(sink: tracing.MemorySink) -> None:
    recording = tracing.begin_recording("query")
    ids = run_query(recording, flush_inside=True)
    recording.finish(slow_ns=10**12, min_span_ns=0)
    assert thread_parents(sink) == [ids["root"]] * 6


def test_spans_outside_recordings_keep_their_parent(sink: tracing.MemorySink) -> None:
    with tracing.async_span("plain") as plain:
        sync_work()
    assert thread_parents(sink) == [plain[0]] * 2


# --- through a running server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("recording_threads")) as server:
        yield server


def test_trace_spans_shows_them_under_the_kept_root(server: SpanlakeServer) -> None:
    tracing.init(server.http_url, exe="recording-threads-test", flush_period=3600)
    try:
        recording = tracing.begin_recording("query")
        run_query(recording)
        recording.finish(slow_ns=10**12, min_span_ns=0)
    finally:
        assert tracing.shutdown()
    root = recording.context
    client = micromegas.connect(server.flightsql_url)
    spans = client.query(f"SELECT name, span_id, parent_span_id, depth FROM trace_spans('{root.trace_id}')")
    name_of = dict(zip(spans["span_id"], spans["name"], strict=True))
    shape = sorted(
        (name, "" if parent is None else name_of.get(parent, "not in the trace"), depth)
        for name, parent, depth in zip(spans["name"], spans["parent_span_id"], spans["depth"], strict=True)
    )
    # Before: the thread spans under the dropped `short` named it as parent and were roots (depth 0).
    assert shape == sorted([("query", "", 0)] + [("sync_work", "query", 1)] * 3 + [("sync_inner", "sync_work", 2)] * 3)
