"""Instrumented programs → a running spanlake server → stored blocks decoded by lakehouse.transit.

The asyncio program records, from inside each span, the span id it is in (`tracing.current_span_id()`);
the decoded events must match what the program did: names, parents, depths, begin/end pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import subprocess
import sys
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, running_server

from spanlake import tracing
from spanlake.lakehouse.transit.decode import decode_block, object_values, stream_layout
from spanlake.views.decoded import TransitObject

PARENT = "2f1d1a4e-61a8-4a39-9d7e-3b7f4b0c9c55"

# -- decoding what the server stored ----------------------------------------------------------------------


@dataclass
class StoredStream:
    row: dict
    blocks: list[dict] = field(default_factory=list)
    events: list[TransitObject] = field(default_factory=list)

    @property
    def properties(self) -> dict[str, str]:
        return {p["key"]: p["value"] for p in self.row["properties"]}


def stored_streams(server: SpanlakeServer, process_id: uuid.UUID) -> list[StoredStream]:
    streams = {row["stream_id"]: StoredStream(row) for row in server.stream_rows(process_id)}
    for block, payload in sorted(
        server.stored_blocks(process_id), key=lambda b: (str(b[0]["stream_id"]), b[0]["object_offset"])
    ):
        stream = streams[block["stream_id"]]
        layout = stream_layout(bytes(stream.row["dependencies_metadata"]), bytes(stream.row["objects_metadata"]))
        values = object_values(decode_block(payload, layout))
        assert len(values) == block["nb_objects"]
        stream.blocks.append(block)
        stream.events.extend(values)
    return list(streams.values())


@dataclass
class AsyncSpan:
    name: str
    span_id: int
    parent: int
    depth: int
    named: bool
    begin: int
    end: int


def async_spans(streams: list[StoredStream]) -> dict[int, AsyncSpan]:
    """Every async span of the process, checking that each has exactly one begin and one end that agree."""
    edges: dict[int, list[tuple[str, TransitObject]]] = defaultdict(list)
    for stream in streams:
        for event in stream.events:
            if "Async" in event.type_name:
                edges[event["span_id"]].append((event.type_name, event))
    spans = {}
    for span_id, pair in edges.items():
        kinds = sorted(kind for kind, _ in pair)
        named = "Named" in kinds[0]
        family = "AsyncNamedSpanEvent" if named else "AsyncSpanEvent"
        assert kinds == [f"Begin{family}", f"End{family}"], (span_id, kinds)
        begin, end = (event for kind, event in sorted(pair, key=lambda p: p[0]))
        names = [e["name"] if named else e["span_desc"]["name"] for e in (begin, end)]
        assert names[0] == names[1]
        assert (begin["parent_span_id"], begin["depth"]) == (end["parent_span_id"], end["depth"])
        assert begin["time"] <= end["time"]
        spans[span_id] = AsyncSpan(
            names[0], span_id, begin["parent_span_id"], begin["depth"], named, begin["time"], end["time"]
        )
    return spans


def check_block_chain(stream: StoredStream) -> None:
    offsets = list(itertools.accumulate([0] + [b["nb_objects"] for b in stream.blocks[:-1]]))
    assert [b["object_offset"] for b in stream.blocks] == offsets
    for before, after in itertools.pairwise(stream.blocks):
        assert before["end_ticks"] == after["begin_ticks"]
        assert before["end_time"] == after["begin_time"]


def thread_span_names(stream: StoredStream) -> list[tuple[str, str]]:
    """('begin'|'end', name) for each thread event, checking begin/end nest properly."""
    stack, sequence = [], []
    for event in stream.events:
        if "Thread" not in event.type_name:
            continue
        name = event["name"] if "Named" in event.type_name else event["thread_span_desc"]["name"]
        if event.type_name.startswith("Begin"):
            stack.append(name)
            sequence.append(("begin", name))
        else:
            assert stack.pop() == name
            sequence.append(("end", name))
    assert not stack
    return sequence


# -- the instrumented program -----------------------------------------------------------------------------

seen: dict[str, int] = {}  # label → the span id the program was in


@tracing.span_fn
async def leaf(label: str) -> str:
    seen[label] = tracing.current_span_id()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return label


@tracing.span_fn
async def middle(label: str) -> None:
    seen[label] = tracing.current_span_id()
    await leaf(f"{label}/leaf")


@tracing.span_fn
async def failing() -> None:
    seen["failing"] = tracing.current_span_id()
    await asyncio.sleep(0)
    raise ValueError("boom")


@tracing.span_fn
async def sleeper() -> None:
    seen["sleeper"] = tracing.current_span_id()
    await asyncio.sleep(60)


@tracing.span_fn
async def outliving(release: asyncio.Event) -> None:
    seen["outliving"] = tracing.current_span_id()
    await release.wait()


@tracing.span_fn
async def root(release: asyncio.Event) -> asyncio.Task:
    seen["root"] = tracing.current_span_id()
    await asyncio.gather(leaf("sibling-a"), leaf("sibling-b"), middle("sibling-c"))
    await asyncio.create_task(leaf("spawned"))
    with contextlib.suppress(ValueError):
        await failing()
    doomed = asyncio.create_task(sleeper())
    await asyncio.sleep(0.01)
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    tracing.flush()  # the events so far go out in a first block
    background = asyncio.create_task(outliving(release))
    await asyncio.sleep(0)
    await tracing.span_async_named("process_user_42", leaf("named-child"))
    return background


async def program() -> None:
    release = asyncio.Event()
    background = await root(release)
    release.set()
    await background
    await tracing.instrument(leaf("instrumented-child"), "instrumented_root")


@tracing.span_fn
def sync_outer(count: int) -> None:
    for i in range(count):
        sync_inner(i)


@tracing.span_fn
def sync_inner(i: int) -> None:
    with tracing.span_scope_named(f"item_{i}"):
        pass


def worker(index: int) -> None:
    sync_outer(3)
    if index == 1:
        asyncio.run(leaf("thread-loop"))


def run_program() -> None:
    threads = [threading.Thread(target=worker, args=(i,), name=f"rt-worker-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(program())
    for thread in threads:
        thread.join()
    logger = logging.getLogger("roundtrip.app")
    logger.setLevel(logging.DEBUG)
    handler = tracing.LoggingHandler()
    logger.addHandler(handler)
    try:
        tracing.info("program started", {"phase": "setup"})
        logger.warning("user %s failed", "bob")
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            logger.exception("crashed")
        tracing.debug("a debug line")
    finally:
        logger.removeHandler(handler)
    tracing.imetric("Frame Time", "ticks", 1000)
    tracing.fmetric("CPU Usage", "percent", 75.5, {"core": "0"})


# -- tests ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploaded(
    postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SpanlakeServer, uuid.UUID]]:
    """The program run once against one server, for all the tests that look at what it stored."""
    with running_server(postgres, tmp_path_factory.mktemp("roundtrip")) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROMEGAS_TELEMETRY_PARENT_PROCESS", PARENT)
        seen.clear()
        process = tracing.init(server.http_url, api_key=server.api_key, exe="roundtrip-program", flush_period=3600)
        try:
            run_program()
        finally:
            assert tracing.shutdown(timeout=30)
        yield server, process.process_id


def test_async_spans_follow_the_task_tree(uploaded: tuple[SpanlakeServer, uuid.UUID]) -> None:
    server, process_id = uploaded
    spans = async_spans(stored_streams(server, process_id))
    by_label = {label: spans[span_id] for label, span_id in seen.items()}
    (named,) = [s for s in spans.values() if s.named]
    (instrumented,) = [s for s in spans.values() if s.name == "instrumented_root"]
    assert len(spans) == len(seen) + 2  # every span the program was in, plus the two wrappers

    def parent_of(label: str) -> AsyncSpan:
        return spans[by_label[label].parent]

    assert (by_label["root"].name, by_label["root"].parent, by_label["root"].depth) == ("root", 0, 0)
    for label in ("sibling-a", "sibling-b", "sibling-c", "spawned", "failing", "sleeper", "outliving"):
        assert (parent_of(label).name, by_label[label].depth) == ("root", 1), label
    assert (parent_of("sibling-c/leaf").span_id, by_label["sibling-c/leaf"].depth) == (seen["sibling-c"], 2)
    assert (named.name, named.parent, named.depth) == ("process_user_42", seen["root"], 1)
    assert (by_label["named-child"].parent, by_label["named-child"].depth) == (named.span_id, 2)
    assert (instrumented.parent, instrumented.depth) == (0, 0)
    assert (by_label["instrumented-child"].parent, by_label["instrumented-child"].depth) == (instrumented.span_id, 1)
    assert (by_label["thread-loop"].parent, by_label["thread-loop"].depth) == (0, 0)
    assert {by_label[label].name for label in ("sibling-a", "spawned", "named-child")} == {"leaf"}
    assert by_label["sibling-c"].name == "middle"

    siblings = [by_label[label] for label in ("sibling-a", "sibling-b", "sibling-c")]
    for a, b in itertools.combinations(siblings, 2):  # they ran concurrently
        assert a.begin < b.end and b.begin < a.end
    assert by_label["outliving"].end > by_label["root"].end  # the task outlived its parent span
    assert by_label["sleeper"].end - by_label["sleeper"].begin < 30 * 10**9  # ended by the cancellation


def test_thread_spans_and_streams(uploaded: tuple[SpanlakeServer, uuid.UUID]) -> None:
    server, process_id = uploaded
    streams = stored_streams(server, process_id)
    cpu = {s.properties["thread-name"]: s for s in streams if s.row["tags"] == ["cpu"]}
    assert set(cpu) == {"MainThread", "rt-worker-0", "rt-worker-1"}
    expected = [("begin", "sync_outer")]
    for i in range(3):
        expected += [("begin", "sync_inner"), ("begin", f"item_{i}"), ("end", f"item_{i}"), ("end", "sync_inner")]
    expected.append(("end", "sync_outer"))
    for name in ("rt-worker-0", "rt-worker-1"):
        assert thread_span_names(cpu[name]) == expected
    assert [e["span_desc"]["name"] for e in cpu["rt-worker-1"].events if "Async" in e.type_name] == ["leaf", "leaf"]
    assert len(cpu["MainThread"].blocks) >= 2  # flushed mid-program, then at shutdown
    for stream in streams:
        assert all(b["process_id"] == process_id for b in stream.blocks)
        check_block_chain(stream)
    events = [e for s in cpu.values() for e in s.events]
    assert Counter(e.type_name.replace("Begin", "").replace("End", "") for e in events) == Counter(
        {
            "AsyncSpanEvent": 2 * (len(seen) + 1),
            "AsyncNamedSpanEvent": 2,
            "ThreadSpanEvent": 2 * 2 * 4,
            "ThreadNamedSpanEvent": 2 * 2 * 3,
        }
    )


def test_process_logs_and_metrics(uploaded: tuple[SpanlakeServer, uuid.UUID]) -> None:
    server, process_id = uploaded
    process = server.process_row(process_id)
    assert process["exe"] == "roundtrip-program"
    assert process["tsc_frequency"] == 1_000_000_000
    assert str(process["parent_process_id"]) == PARENT
    streams = {tuple(s.row["tags"]): s for s in stored_streams(server, process_id)}
    logs = streams[("log",)].events
    assert [(e.type_name, e["desc"]["level"], e["desc"]["target"], e["msg"].splitlines()[0]) for e in logs] == [
        ("TaggedLogString", 4, __name__, "program started"),
        ("LogStringEventV2", 3, "roundtrip.app", "user bob failed"),
        ("LogStringEventV2", 2, "roundtrip.app", "crashed"),
        ("LogStringEventV2", 5, __name__, "a debug line"),
    ]
    assert dict(logs[0]["properties"].members) == {"phase": "setup"}
    assert logs[1]["desc"]["fmt_str"] == "user %s failed"
    assert logs[1]["desc"]["file"] == __file__
    assert "RuntimeError: kaput" in logs[2]["msg"]
    metrics = streams[("metrics",)].events
    assert [(e.type_name, e["desc"]["name"], e["desc"]["unit"], e["value"]) for e in metrics] == [
        ("IntegerMetricEvent", "Frame Time", "ticks", 1000),
        ("TaggedFloatMetricEvent", "CPU Usage", "percent", 75.5),
    ]
    assert dict(metrics[1]["properties"].members) == {"core": "0"}


def test_generator_sends_a_decodable_workload(spanlake_server: SpanlakeServer) -> None:
    command = [
        sys.executable,
        "-m",
        "spanlake.tracing.generator",
        "--url",
        spanlake_server.http_url,
        "--tasks",
        "300",
        "--threads",
        "2",
        "--async-tasks",
        "3",
        "--seed",
        "7",
        "--exe",
        "test-generator",
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    process_id = uuid.UUID(result.stdout.split()[0])
    assert spanlake_server.process_row(process_id)["exe"] == "test-generator"
    streams = stored_streams(spanlake_server, process_id)
    tags = Counter(tuple(s.row["tags"]) for s in streams)
    assert tags == {("log",): 1, ("metrics",): 1, ("cpu",): 3}
    spans = async_spans(streams)
    names = {s.name for s in spans.values()}
    assert {
        "database_migration",
        "user_workflow",
        "user_validation",
        "quick_lookup",
        "manual_work",
        "multi_threaded_async_work",
        "async_subtask",
    } <= names
    assert sum(name.startswith("process_user_") for name in names) == 5
    assert max(s.depth for s in spans.values()) >= 2
    for span in spans.values():
        assert span.parent == 0 or spans[span.parent].depth == span.depth - 1
    streams_with_async = [s for s in streams if any("Async" in e.type_name for e in s.events)]
    assert len(streams_with_async) == 3  # the main loop and one loop per worker thread
    for stream in streams:
        if stream.row["tags"] == ["cpu"]:
            thread_span_names(stream)
    assert any(e["desc"]["name"] == "Task Progress" for s in streams if s.row["tags"] == ["metrics"] for e in s.events)
