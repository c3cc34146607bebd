"""The SDK's wire format: metadata identical to the Rust SDK's, blocks the project's decoder reads.

Programs here send to a `MemorySink` (the encoded request bodies, in order); the round trip through a
running server is in test_tracing_roundtrip.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import cbor2
import lz4.frame
import numpy as np
import pytest
from harness import RUST_FIXTURES

from spanlake import tracing
from spanlake.lakehouse.transit.decode import decode_block, object_values, read_block_dependencies, stream_layout
from spanlake.tracing import streams, transit_encode, udts
from spanlake.tracing.registry import DYNAMIC_ID_BASE, REGISTRY
from spanlake.views.decoded import TransitObject
from spanlake.views.span_traces import FACTS_ID, decode_facts

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}\+00:00$")


@pytest.fixture
def sink() -> Iterator[tracing.MemorySink]:
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600, exe="encode-test")
    yield sink
    tracing.shutdown()


def bodies(sink: tracing.MemorySink, path: str) -> list[dict]:
    return [cbor2.loads(body) for _, p, body in sink.items if p == path]


def decoded_streams(sink: tracing.MemorySink) -> dict[str, tuple[dict, list[tuple[dict, list]]]]:
    """stream_id → (StreamInfo, [(Block, decoded objects)]) decoded by lakehouse.transit."""
    result: dict[str, tuple[dict, list]] = {}
    for info in bodies(sink, "/ingestion/insert_stream"):
        result[info["stream_id"]] = (info, [])
    for block in bodies(sink, "/ingestion/insert_block"):
        info, blocks = result[block["stream_id"]]
        layout = stream_layout(cbor2.dumps(info["dependencies_metadata"]), cbor2.dumps(info["objects_metadata"]))
        blocks.append((block, object_values(decode_block(cbor2.dumps(block["payload"]), layout))))
    return result


def events_with_tag(sink: tracing.MemorySink, tag: str) -> list[TransitObject]:
    return [
        event
        for info, blocks in decoded_streams(sink).values()
        if tag in info["tags"]
        for _, events in blocks
        for event in events
    ]


# -- metadata -------------------------------------------------------------------------------------------


def rust_stream_infos() -> dict[str, dict]:
    """One Rust StreamInfo per tag (cpu, log, metrics, image)."""
    infos = {}
    for path in sorted((RUST_FIXTURES / "streams").glob("*.cbor")):
        info = cbor2.loads(path.read_bytes())
        infos.setdefault(info["tags"][0], info)
    return infos


@pytest.mark.parametrize(
    ("tag", "layout"), [("cpu", udts.THREAD_LAYOUT), ("log", udts.LOG_LAYOUT), ("metrics", udts.METRICS_LAYOUT)]
)
@pytest.mark.parametrize("which", ["objects_metadata", "dependencies_metadata"])
def test_stream_metadata_is_the_rust_sdks(tag: str, layout: udts.StreamLayout, which: str) -> None:
    rust = rust_stream_infos()[tag][which]
    ours = getattr(layout, which)()
    primary = len(layout.objects if which == "objects_metadata" else layout.dependencies)
    # The queue types give the wire type index: same order. Secondary types follow in any order.
    assert [u["name"] for u in ours[:primary]] == [u["name"] for u in rust[:primary]]
    assert {u["name"] for u in ours[primary:]} == {u["name"] for u in rust[primary:]}
    assert sorted(ours, key=lambda u: u["name"]) == sorted(rust, key=lambda u: u["name"])


def test_stream_info_bodies_carry_the_metadata_and_thread_properties(sink: tracing.MemorySink) -> None:
    @tracing.span_fn
    def work() -> None:
        pass

    worker = threading.Thread(target=work, name="encode-worker")
    worker.start()
    worker.join()
    tracing.info("x")
    tracing.imetric("m", "count", 1)
    tracing.flush()
    infos = {tuple(i["tags"]): i for i in bodies(sink, "/ingestion/insert_stream")}
    assert set(infos) == {("cpu",), ("log",), ("metrics",)}
    cpu = infos[("cpu",)]
    assert cpu["properties"] == {"thread-id": str(worker.ident), "thread-name": "encode-worker"}
    assert cpu["objects_metadata"] == udts.THREAD_LAYOUT.objects_metadata()
    assert infos[("log",)]["dependencies_metadata"] == udts.LOG_LAYOUT.dependencies_metadata()
    assert infos[("metrics",)]["properties"] == {}


def test_bodies_use_the_rust_key_order(sink: tracing.MemorySink) -> None:
    tracing.info("x")
    tracing.flush()
    rust_block = cbor2.loads(next((RUST_FIXTURES / "blocks").glob("*.cbor")).read_bytes())
    rust_stream = cbor2.loads(next((RUST_FIXTURES / "streams").glob("*.cbor")).read_bytes())
    rust_process = cbor2.loads((RUST_FIXTURES / "process.cbor").read_bytes())
    assert list(bodies(sink, "/ingestion/insert_process")[0]) == list(rust_process)
    assert list(bodies(sink, "/ingestion/insert_stream")[0]) == list(rust_stream)
    assert list(bodies(sink, "/ingestion/insert_block")[0]) == list(rust_block)
    assert list(bodies(sink, "/ingestion/insert_block")[0]["payload"]) == ["dependencies", "objects"]


# -- blocks ---------------------------------------------------------------------------------------------


def test_block_envelopes_chain_and_count_objects(sink: tracing.MemorySink) -> None:
    process = tracing.current_process()
    for batch in (3, 5, 2):
        for i in range(batch):
            tracing.info(f"message {i}")
        tracing.flush()
    blocks = bodies(sink, "/ingestion/insert_block")
    assert [b["nb_objects"] for b in blocks] == [3, 5, 2]
    assert [b["object_offset"] for b in blocks] == [0, 3, 8]
    for before, after in itertools.pairwise(blocks):
        assert (before["end_ticks"], before["end_time"]) == (after["begin_ticks"], after["begin_time"])
    for block in blocks:
        assert RFC3339_NS.match(block["begin_time"]) and RFC3339_NS.match(block["end_time"])
        assert 0 <= block["begin_ticks"] < block["end_ticks"]  # relative to the process start
        assert lz4.frame.decompress(block["payload"]["objects"])
    ((_, decoded),) = decoded_streams(sink).values()
    times = [event["time"] for _, events in decoded for event in events]
    # Event times are absolute ticks, inside their block's (relative) bounds.
    for block, events in decoded:
        begin, end = (process.start_ticks + block[key] for key in ("begin_ticks", "end_ticks"))
        assert all(begin <= event["time"] <= end for event in events)
    assert times == sorted(times)
    assert [event["msg"] for _, events in decoded for event in events] == [
        f"message {i}" for batch in (3, 5, 2) for i in range(batch)
    ]


def test_a_threads_first_span_lies_inside_its_block(sink: tracing.MemorySink) -> None:
    # An async span reads its begin time before its thread's stream exists: the block must still hold it.
    async def first_event_of_its_thread() -> None:
        await tracing.instrument(asyncio.sleep(0), "first")

    worker = threading.Thread(target=asyncio.run, args=(first_event_of_its_thread(),))
    worker.start()
    worker.join()
    tracing.flush()
    process = tracing.current_process()
    (cpu,) = [
        blocks
        for info, blocks in decoded_streams(sink).values()
        if info["properties"].get("thread-name") == worker.name
    ]
    for block, events in cpu:
        begin, end = (process.start_ticks + block[key] for key in ("begin_ticks", "end_ticks"))
        assert events and all(begin <= event["time"] <= end for event in events)


def test_process_body(sink: tracing.MemorySink) -> None:
    (body,) = bodies(sink, "/ingestion/insert_process")
    process = tracing.current_process()
    assert body["process_id"] == str(process.process_id)
    assert body["exe"] == "encode-test"
    assert body["tsc_frequency"] == 1_000_000_000
    assert RFC3339_NS.match(body["start_time"])
    assert body["start_ticks"] == process.start_ticks
    assert body["parent_process_id"] is None
    assert body["properties"]["exe"] == "encode-test"


@pytest.mark.parametrize(
    ("value", "expected"), [("9b2fa1c4-1b3d-4a4e-9a0b-0c3f6e0d2a11", True), ("", False), ("not-a-uuid", False)]
)
def test_parent_process_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("MICROMEGAS_TELEMETRY_PARENT_PROCESS", value)
    sink = tracing.MemorySink()
    process = tracing.init(sink=sink, flush_period=3600)
    tracing.shutdown()
    body = bodies(sink, "/ingestion/insert_process")[0]
    assert body["parent_process_id"] == (value if expected else None)
    assert process.parent_process_id == (uuid.UUID(value) if expected else None)


def test_every_event_kind_decodes(sink: tracing.MemorySink) -> None:
    @tracing.span_fn
    def sync_work() -> None:
        with tracing.span_scope("static_scope"), tracing.span_scope_named("dynamic_é_scope"):
            pass

    @tracing.span_fn
    async def async_work() -> None:
        await tracing.span_async_named("process_user_123", asyncio.sleep(0))
        await tracing.instrument(asyncio.sleep(0), "instrumented")

    sync_work()
    asyncio.run(async_work())
    tracing.info("plain")
    tracing.error("tagged", {"b": "2", "a": "1"})
    tracing.imetric("requests", "count", 7)
    tracing.imetric("wrapped", "count", -1)
    tracing.fmetric("latency", "ms", 1.25, {"route": "/x"})
    tracing.flush()

    cpu = events_with_tag(sink, "cpu")
    kinds = [e.type_name for e in cpu]
    assert kinds == [
        "BeginThreadSpanEvent",
        "BeginThreadSpanEvent",
        "BeginThreadNamedSpanEvent",
        "EndThreadNamedSpanEvent",
        "EndThreadSpanEvent",
        "EndThreadSpanEvent",
        "BeginAsyncSpanEvent",
        "BeginAsyncNamedSpanEvent",
        "EndAsyncNamedSpanEvent",
        "BeginAsyncSpanEvent",
        "EndAsyncSpanEvent",
        "EndAsyncSpanEvent",
    ]
    assert cpu[0]["thread_span_desc"]["name"].endswith("sync_work")
    assert cpu[0]["thread_span_desc"]["target"] == __name__
    assert cpu[1]["thread_span_desc"]["name"] == "static_scope"
    assert cpu[2]["name"] == "dynamic_é_scope"
    assert cpu[2]["thread_span_location"]["file"] == __file__
    assert cpu[7]["name"] == "process_user_123"
    assert cpu[9]["span_desc"]["name"] == "instrumented"
    outer = cpu[6]["span_id"]
    assert (cpu[7]["parent_span_id"], cpu[7]["depth"]) == (outer, 1)
    assert (cpu[9]["parent_span_id"], cpu[9]["depth"]) == (outer, 1)
    assert (cpu[6]["parent_span_id"], cpu[6]["depth"]) == (0, 0)

    logs = events_with_tag(sink, "log")
    assert [(e.type_name, e["msg"], e["desc"]["level"]) for e in logs] == [
        ("LogStringEventV2", "plain", 4),
        ("TaggedLogString", "tagged", 2),
    ]
    assert dict(logs[1]["properties"].members) == {"a": "1", "b": "2"}
    assert logs[0]["desc"]["target"] == __name__

    metrics = events_with_tag(sink, "metrics")
    assert [(e.type_name, e["desc"]["name"], e["desc"]["unit"], e["value"]) for e in metrics] == [
        ("IntegerMetricEvent", "requests", "count", 7),
        ("IntegerMetricEvent", "wrapped", "count", 2**64 - 1),
        ("TaggedFloatMetricEvent", "latency", "ms", 1.25),
    ]
    assert dict(metrics[2]["properties"].members) == {"route": "/x"}


def test_property_set_strings_are_static_string_dependencies(sink: tracing.MemorySink) -> None:
    tracing.info("tagged", {"zone": "eu", "host": "h1"})
    tracing.flush()
    (block,) = bodies(sink, "/ingestion/insert_block")
    dependencies = lz4.frame.decompress(block["payload"]["dependencies"])
    kinds, position = [], 0
    while position < len(dependencies):  # walk the framing: u8 type, u32 size, body (all dynamic or fixed)
        udt = udts.LOG_LAYOUT.dependencies[dependencies[position]]
        size = int.from_bytes(dependencies[position + 1 : position + 5], "little") if udt.size == 0 else udt.size
        position += 1 + (4 if udt.size == 0 else 0) + size
        kinds.append(udt.name)
    assert kinds.count("StaticStringDependency") == 4  # zone, eu, host, h1
    assert kinds[-1] == "PropertySetDependency" and kinds.count("LogMetadataRecord") == 1
    # Properties sorted by name, descending, as micromegas interns them.
    pairs = REGISTRY.property_sets[REGISTRY.property_set({"zone": "eu", "host": "h1"})]
    assert [REGISTRY.strings[n] for n, _ in pairs] == ["zone", "host"]


def test_a_log_line_inside_a_span_names_its_span_in_block_local_properties(sink: tracing.MemorySink) -> None:
    sets_before = len(REGISTRY.property_sets)
    tracing.info("outside")
    remote = tracing.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    with tracing.async_span("local root") as local:
        tracing.info("in local", {"zone": "eu"})
        tracing.info("in local again", {"zone": "eu"})
        with tracing.attach(remote), tracing.async_span("continued") as continued:
            tracing.warn("in continued")
    tracing.flush()
    logs = events_with_tag(sink, "log")
    assert [(e.type_name, e["msg"]) for e in logs] == [
        ("LogStringEventV2", "outside"),
        ("TaggedLogString", "in local"),
        ("TaggedLogString", "in local again"),
        ("TaggedLogString", "in continued"),
    ]
    in_span = {"otel.trace_id": local.trace_id, "otel.span_id": local.span_hex}
    assert dict(logs[1]["properties"].members) == {"zone": "eu", **in_span}
    assert dict(logs[2]["properties"].members) == {"zone": "eu", **in_span}
    assert dict(logs[3]["properties"].members) == {
        "otel.trace_id": "0af7651916cd43dd8448eb211c80319c",
        "otel.span_id": continued.span_hex,
    }
    assert len(REGISTRY.property_sets) == sets_before + 1  # {"zone": "eu"} only: span sets are per block


def test_many_dynamic_names_become_per_block_strings(sink: tracing.MemorySink) -> None:
    names = [f"process_user_{i % 500}" for i in range(2000)] + ["", "名前"]

    async def run() -> None:
        for name in names:
            await tracing.span_async_named(name, asyncio.sleep(0))

    asyncio.run(run())
    tracing.flush()
    cpu = events_with_tag(sink, "cpu")
    assert [e["name"] for e in cpu[0::2]] == names
    assert [e["name"] for e in cpu[1::2]] == names
    assert [e["span_id"] for e in cpu[0::2]] == [e["span_id"] for e in cpu[1::2]]


def test_a_full_stream_is_flushed_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "THREAD_BLOCK_EVENTS", 100)
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600)

    @tracing.span_fn
    def work() -> None:
        pass

    try:
        for _ in range(400):  # 800 events: full blocks are drained by the writer and encoded at once
            work()
        tracing.flush()
    finally:
        tracing.shutdown()
    blocks = bodies(sink, "/ingestion/insert_block")
    assert len(blocks) >= 7
    assert sum(b["nb_objects"] for b in blocks) == 800
    offsets = [b["object_offset"] for b in blocks]
    assert offsets == list(np.cumsum([0] + [b["nb_objects"] for b in blocks[:-1]]))


def test_a_span_whose_child_filled_the_stream_ends_in_the_next_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's end that fills the stream hands its lists over whole; the parent's end goes to the new one."""
    monkeypatch.setattr(streams, "THREAD_BLOCK_EVENTS", 4)  # a block fills every 5 edges: at every depth
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600)

    @tracing.span_fn("leaf")
    def leaf() -> None:
        pass

    @tracing.span_fn("outer")
    def outer() -> None:
        with tracing.span_scope("middle"):
            leaf()

    @tracing.span_fn("outer_async")
    async def outer_async() -> None:
        await tracing.instrument(asyncio.sleep(0), "inner_async")

    async def concurrently() -> None:  # interleaved edges
        await asyncio.gather(*(outer_async() for _ in range(30)))

    try:
        for _ in range(30):
            outer()
        asyncio.run(concurrently())
    finally:
        tracing.shutdown()
    ((_, blocks),) = [entry for entry in decoded_streams(sink).values() if entry[0]["tags"] == ["cpu"]]
    events = [e for _, block_events in blocks for e in block_events]
    edges = [
        (e.type_name[:3], e["thread_span_desc" if "Thread" in e.type_name else "span_desc"]["name"]) for e in events
    ]
    names = ("outer", "middle", "leaf")
    assert edges[:180] == [*(("Beg", n) for n in names), *(("End", n) for n in reversed(names))] * 30
    assert Counter(edges[180:]) == {
        (edge, name): 30 for edge in ("Beg", "End") for name in ("outer_async", "inner_async")
    }
    ends = [e["span_id"] for e in events[180:] if e.type_name == "EndAsyncSpanEvent"]
    assert sorted(ends) == sorted(e["span_id"] for e in events[180:] if e.type_name == "BeginAsyncSpanEvent")
    offsets = [block["object_offset"] for block, _ in blocks]
    assert offsets == list(np.cumsum([0] + [block["nb_objects"] for block, _ in blocks[:-1]]))
    assert len(blocks) >= 40 and all(block["nb_objects"] == len(objects) for block, objects in blocks)


def test_malformed_event_lists_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a multiple of 3 slots"):
        transit_encode.encode_thread_events([1, 2], [], REGISTRY)
    with pytest.raises(ValueError, match="unknown type index 9"):
        transit_encode.encode_thread_events([9, 1, None], [], REGISTRY)
    with pytest.raises(ValueError, match="unknown type index 0"):
        transit_encode.encode_log_events([(0, 1, "x", 0)], REGISTRY)
    with pytest.raises(ValueError, match="expected 4"):
        transit_encode.encode_metric_events([(0, 1, 2)], REGISTRY)


def test_dynamic_name_ids_never_collide_with_interned_ids() -> None:
    assert max(REGISTRY.strings) < DYNAMIC_ID_BASE


def test_concurrent_writers_and_flushes_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers on several threads while the flush thread drains every 10 ms and small blocks fill up."""
    monkeypatch.setattr(streams, "THREAD_BLOCK_EVENTS", 500)
    monkeypatch.setattr(streams, "LOG_BLOCK_EVENTS", 300)
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=0.01)

    @tracing.span_fn
    def step(i: int) -> None:
        with tracing.span_scope_named(f"item_{i % 5}"):
            tracing.info(f"step {i}")

    def writer() -> None:
        for i in range(3000):
            step(i)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tracing.shutdown()
    decoded = decoded_streams(sink)
    cpu = [(info, blocks) for info, blocks in decoded.values() if info["tags"] == ["cpu"]]
    assert len(cpu) == 4
    for _, blocks in cpu:
        events = [e for _, block_events in blocks for e in block_events]
        assert len(events) == 3000 * 4
        edges = [(e.type_name[:3], e["name"] if "Named" in e.type_name else "step") for e in events]
        assert edges == [
            edge
            for i in range(3000)
            for edge in (("Beg", "step"), ("Beg", f"item_{i % 5}"), ("End", f"item_{i % 5}"), ("End", "step"))
        ]
        offsets = [block["object_offset"] for block, _ in blocks]
        assert offsets == sorted(offsets) and offsets[0] == 0
    logs = events_with_tag(sink, "log")
    assert len(logs) == 4 * 3000
    assert sorted(Counter(e["msg"] for e in logs).values()) == [4] * 3000


def test_async_writers_filling_blocks_while_the_flush_thread_drains_lose_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full stream's owner takes its async list whole while the flush thread copies every 10 ms: every
    span's begin and end, and its trace fact, land in exactly one block, in order."""
    monkeypatch.setattr(streams, "THREAD_BLOCK_EVENTS", 300)
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=0.01)

    @tracing.span_fn
    async def child(i: int) -> None:
        await tracing.span_async_named(f"leaf_{i % 3}", asyncio.sleep(0))

    @tracing.span_fn
    async def request(i: int) -> None:
        await child(i)

    def writer() -> None:
        async def run() -> None:
            for i in range(1500):
                await request(i)

        asyncio.run(run())

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tracing.shutdown()
    for info, blocks in decoded_streams(sink).values():
        if info["tags"] != ["cpu"] or not blocks:
            continue
        events = [e for _, block_events in blocks for e in block_events]
        assert len(events) == 1500 * 6
        names = [e["name"] if "Named" in e.type_name else "" for e in events]
        assert names == [n for i in range(1500) for n in ("", "", f"leaf_{i % 3}", f"leaf_{i % 3}", "", "")]
        spans = [e["span_id"] for e in events if e.type_name.startswith("Begin")]
        assert [e["span_id"] for e in events if e.type_name.startswith("End")] == [
            span for i in range(0, len(spans), 3) for span in reversed(spans[i : i + 3])
        ]
        layout = stream_layout(cbor2.dumps(info["dependencies_metadata"]), cbor2.dumps(info["objects_metadata"]))
        facts = [
            decode_facts(read_block_dependencies(cbor2.dumps(block["payload"]), layout).get(FACTS_ID))
            for block, _ in blocks
        ]
        traced = np.concatenate([f.spans for f in facts])
        trace_of = dict(zip(*(traced[c].view(np.uint64).tolist() for c in ("span_id", "trace_low")), strict=True))
        assert len(trace_of) == len(traced) == len(spans)  # each span's fact once
        assert [trace_of[span] for span in spans] == [root for root in spans[0::3] for _ in range(3)]
        offsets = [block["object_offset"] for block, _ in blocks]
        assert offsets == list(np.cumsum([0] + [block["nb_objects"] for block, _ in blocks[:-1]]))
