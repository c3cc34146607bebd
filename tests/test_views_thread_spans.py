"""thread_spans: the vectorized call tree against a direct port of micromegas's stack machine."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import pyarrow as pa
import pytest
import rust_fixtures
from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.transit.decode import decode_block, decode_blocks, stream_layout
from spanlake.views import thread_spans
from spanlake.views.meta import BlockMeta, StreamMeta
from spanlake.views.scope import scope_hash
from spanlake.views.thread_spans import CallTreeError, group_contiguous_block_chains, thread_name
from spanlake.views.time import TickConverter

# ---------------------------------------------------------------------------------------------------
# Reference: micromegas's CallTreeBuilder (call_tree.rs) and pre-order walk (span_table.rs), event by event.


@dataclass
class Event:
    is_begin: bool
    time: int  # ns (the tests use 1 tick = 1 ns from 0)
    event_id: int
    name: str
    named: bool = False


def reference_rows(
    chains: list[tuple[int, int, list[list[Event]]]], root_name: str, hash_of: Callable[[str], int]
) -> list[tuple]:
    root_hash = scope_hash(root_name, "", "", 0)
    rows: list[tuple] = []
    for range_begin, range_end, blocks in chains:
        stack: list[dict] = []

        def attach(node: dict, stack: list[dict] = stack, range_begin: int = range_begin, range_end: int = range_end):
            if stack:
                stack[-1]["children"].append(node)
            else:
                root = {"id": None, "hash": root_hash, "begin": range_begin, "end": range_end, "name": root_name}
                stack.append({**root, "children": [node]})

        for events in blocks:
            for event in events:
                if event.time < range_begin:
                    continue
                if event.time > range_end:
                    break
                event_hash = hash_of(event.name)
                if event.is_begin:
                    node = {"id": event.event_id, "hash": event_hash, "begin": event.time, "end": range_end}
                    stack.append({**node, "name": event.name, "children": []})
                elif not stack:
                    node = {"id": event.event_id, "hash": event_hash, "begin": range_begin, "end": event.time}
                    attach({**node, "name": event.name, "children": []})
                else:
                    top = stack.pop()
                    if top["hash"] == event_hash:
                        top["end"] = event.time
                    elif top["hash"] == root_hash:
                        top.update(id=event.event_id, hash=event_hash, end=event.time, name=event.name)
                    else:
                        raise CallTreeError("top scope mismatch")
                    attach(top)
        while len(stack) > 1:
            top = stack.pop()
            stack[-1]["children"].append(top)
        if stack:
            _walk(stack[0], 0, 0, rows)
    # micromegas refuses to write a partition whose rows are not sorted by begin.
    if any(later[4] < earlier[4] for earlier, later in pairwise(rows)):
        raise CallTreeError("begin regressed")
    return rows


def _walk(node: dict, parent: int, depth: int, rows: list[tuple]) -> None:
    node_id = -1 if node["id"] is None else node["id"]
    rows.append((node_id, parent, depth, node["hash"], node["begin"], node["end"], node["name"]))
    for child in node["children"]:
        _walk(child, node_id, depth + 1, rows)


def _hash(name: str) -> int:
    return scope_hash(name, "src/app.rs", "app", 1)


def _rows(batch: pa.RecordBatch) -> list[tuple]:
    columns = [batch.column(name).to_pylist() for name in ("id", "parent", "depth", "hash")]
    times = [batch.column(name).cast(pa.int64()).to_pylist() for name in ("begin", "end")]
    return list(zip(*columns, *times, batch.column("name").to_pylist(), strict=True))


# ---------------------------------------------------------------------------------------------------
# Synthetic streams

STREAM = StreamMeta("stream-1", "process-1", ("cpu",), {"thread-name": "worker", "thread-id": "42"})
CONVERT = TickConverter(0, 0, 1_000_000_000)  # 1 tick = 1 ns


def _encode(blocks: list[tuple[int, int, list[Event]]], together: bool = False) -> list[tuple[BlockMeta, object]]:
    """Each block's meta and decoded objects; `together`: the blocks decoded in one run, as decoding ahead may."""
    layout = stream_layout(*thread_stream_metadata())
    metas, payloads = [], []
    offset = 0
    for number, (begin_ticks, end_ticks, events) in enumerate(blocks):
        writer = ThreadBlockWriter()
        for event in events:
            if event.named:
                writer.thread_named(event.is_begin, writer.span_location(line=1), event.name, event.time)
            else:
                writer.thread(event.is_begin, writer.span_desc(event.name, line=1), event.time)
        meta = BlockMeta(
            f"block-{number}", STREAM.stream_id, "process-1", 0, begin_ticks, 0, end_ticks, len(events), offset, 0
        )
        metas.append(meta)
        payloads.append(writer.payload())
        offset += len(events)
    decoded = decode_blocks(payloads, layout) if together else [decode_block(payload, layout) for payload in payloads]
    return list(zip(metas, decoded, strict=True))


def _build_both(
    blocks: list[tuple[int, int, list[Event]]], together: bool = False
) -> tuple[list[tuple] | str, list[tuple] | str]:
    """(vectorized rows, reference rows), or the error class name each raised (`together`: `_encode`)."""
    # Event ids: object_offset + index within the block, as the encoder lays them out.
    offset = 0
    for _, _, events in blocks:
        for index, event in enumerate(events):
            event.event_id = offset + index
        offset += len(events)
    metas = [BlockMeta("", "", "", 0, begin, 0, end, 0, 0, 0) for begin, end, _ in blocks]
    chains = [
        (blocks[chain[0]][0], blocks[chain[-1]][1], [blocks[index][2] for index in chain])
        for chain in group_contiguous_block_chains(metas)
    ]
    try:
        reference: list[tuple] | str = reference_rows(chains, thread_name(STREAM), _hash)
    except CallTreeError:
        reference = "CallTreeError"
    try:
        got: list[tuple] | str = _rows(thread_spans.build_batch(_encode(blocks, together), STREAM, CONVERT))
    except CallTreeError:
        got = "CallTreeError"
    return got, reference


def test_nested_spans_under_a_thread_root() -> None:
    events = [Event(True, 10, 0, "a"), Event(True, 20, 0, "b"), Event(False, 30, 0, "b"), Event(False, 40, 0, "a")]
    got, reference = _build_both([(0, 100, events)])
    assert got == reference
    assert [(row[0], row[1], row[2], row[4], row[5], row[6]) for row in got] == [
        (-1, 0, 0, 0, 100, "worker-42"),
        (0, -1, 1, 10, 40, "a"),
        (1, 0, 2, 20, 30, "b"),
    ]


def test_end_without_begin_wraps_what_came_before() -> None:
    events = [
        Event(False, 5, 0, "x"),  # began before the range
        Event(True, 10, 0, "a"),
        Event(False, 20, 0, "a"),
        Event(False, 30, 0, "y"),  # also began before the range: encloses x and a
        Event(True, 40, 0, "b"),
        Event(False, 50, 0, "b"),
    ]
    got, reference = _build_both([(0, 100, events)])
    assert got == reference
    assert [(row[0], row[1], row[2], row[4], row[5], row[6]) for row in got] == [
        (-1, 0, 0, 0, 100, "worker-42"),
        (3, -1, 1, 0, 30, "y"),
        (0, 3, 2, 0, 5, "x"),
        (1, 3, 2, 10, 20, "a"),
        (4, -1, 1, 40, 50, "b"),
    ]


def test_unclosed_spans_end_with_the_chain_and_without_root() -> None:
    events = [Event(True, 10, 0, "a"), Event(True, 20, 0, "b"), Event(False, 30, 0, "b"), Event(True, 35, 0, "c")]
    got, reference = _build_both([(0, 100, events)])
    assert got == reference
    # No end ever left the stack empty: the first span is the root (parent 0, depth 0).
    assert [(row[0], row[1], row[2], row[5]) for row in got] == [(0, 0, 0, 100), (1, 0, 1, 30), (3, 0, 1, 100)]


def test_mismatched_end_is_an_error() -> None:
    events = [Event(True, 10, 0, "a"), Event(True, 20, 0, "b"), Event(False, 30, 0, "a")]
    got, reference = _build_both([(0, 100, events)])
    assert got == reference == "CallTreeError"
    with pytest.raises(CallTreeError, match=r"event 2 closes 'a' but 'b' is open"):
        thread_spans.build_batch(_encode([(0, 100, events)]), STREAM, CONVERT)


def test_events_outside_the_chain_range() -> None:
    first = [Event(True, 5, 0, "early"), Event(True, 10, 0, "a"), Event(False, 20, 0, "a")]
    second = [Event(True, 60, 0, "b"), Event(True, 200, 0, "late"), Event(False, 70, 0, "b")]
    third = [Event(True, 80, 0, "c"), Event(False, 90, 0, "c")]
    got, reference = _build_both([(8, 50, first), (50, 100, second), (100, 150, third)])
    assert got == reference
    names = [row[6] for row in got]
    assert "early" not in names  # before the range
    assert "late" not in names  # after the range: stops its block, so b's end (70) is ignored too
    assert ("b", 150) in [(row[6], row[5]) for row in got]


def test_each_chain_gets_its_own_tree() -> None:
    blocks = [
        (0, 50, [Event(True, 10, 0, "a"), Event(False, 20, 0, "a")]),
        (60, 100, [Event(True, 70, 0, "b"), Event(False, 80, 0, "b")]),  # gap: a new chain
    ]
    got, reference = _build_both(blocks)
    assert got == reference
    assert [(row[0], row[4], row[5]) for row in got if row[0] == -1] == [(-1, 0, 50), (-1, 60, 100)]


def test_named_spans_use_their_dynamic_names() -> None:
    events = [Event(True, 10, 0, "frame_1", named=True), Event(False, 20, 0, "frame_1", named=True)]
    got, reference = _build_both([(0, 100, events)])
    assert got == reference
    assert got[1][6] == "frame_1"


def _random_blocks(rng: random.Random) -> list[tuple[int, int, list[Event]]]:
    names = ["a", "b", "c", "d"]
    stack: list[str] = []
    blocks = []
    tick = 0
    keep_first_open = rng.random() < 0.2  # a thread whose outermost span never ends: no root
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            tick += rng.randint(1, 30)  # a gap: a new chain
        begin = tick
        events = []
        for _ in range(rng.randint(0, 25)):
            tick += rng.randint(0, 3)
            time = tick
            if rng.random() < 0.02:
                time = begin - rng.randint(1, 5)  # before the block
            roll = rng.random()
            named = rng.random() < 0.3
            if roll < 0.45:
                name = rng.choice(names)
                stack.append(name)
                events.append(Event(True, time, 0, name, named))
            elif roll > 0.995:
                events.append(Event(False, time, 0, rng.choice(names), named))  # may not match: an error
            elif len(stack) > keep_first_open:
                events.append(Event(False, time, 0, stack.pop(), named))
            elif not stack and not keep_first_open:
                events.append(Event(False, time, 0, rng.choice(names), named))  # began before the range
        tick += rng.randint(0, 3)
        end = tick
        if events and rng.random() < 0.05:
            end = max(begin, events[-1].time - rng.randint(1, 4))  # events after the block end
        blocks.append((begin, end, events))
        tick = max(tick, end)
    return blocks


@pytest.mark.parametrize("seed", range(200))
def test_random_streams_match_the_stack_machine(seed: int) -> None:
    got, reference = _build_both(_random_blocks(random.Random(seed)))
    assert got == reference


@pytest.mark.parametrize("seed", range(0, 200, 4))
def test_random_streams_decoded_in_one_run_match_the_stack_machine(seed: int) -> None:
    """Blocks decoded together are parts of one run: their chain's events still come from their own objects."""
    got, reference = _build_both(_random_blocks(random.Random(seed)), together=True)
    assert got == reference


def test_random_streams_cover_every_case() -> None:
    """The random streams above are not all trivial: they produce each kind of tree."""
    kinds = set()
    for seed in range(200):
        got, _ = _build_both(_random_blocks(random.Random(seed)))
        if got == "CallTreeError":
            kinds.add("error")
            continue
        kinds.add("root" if any(row[0] == -1 for row in got) else "rootless" if got else "empty")
        if any(row[0] != -1 and row[4] == 0 for row in got):
            kinds.add("began before range")
    assert kinds == {"error", "root", "rootless", "empty", "began before range"}


# ---------------------------------------------------------------------------------------------------
# Genuine Rust streams


@pytest.mark.parametrize("stream", rust_fixtures.streams_tagged("cpu"), ids=lambda s: s.meta.stream_id[:8])
def test_fixture_streams_match_the_stack_machine(stream: rust_fixtures.FixtureStream) -> None:
    convert = rust_fixtures.latest_timing_converter()
    blocks = stream.decoded()
    batch = thread_spans.build_batch(blocks, stream.meta, convert)
    assert batch.schema == thread_spans.SCHEMA

    chains = []
    for chain in group_contiguous_block_chains([meta for meta, _ in blocks]):
        range_begin = convert.delta_ticks_to_ns_scalar(blocks[chain[0]][0].begin_ticks)
        range_end = convert.delta_ticks_to_ns_scalar(blocks[chain[-1]][0].end_ticks)
        chain_events = []
        for index in chain:
            block = stream.blocks[index]
            events = []
            for position, event in enumerate(block.expected["events"]):
                if "Thread" not in event["type"]:
                    continue
                named = "Named" in event["type"]
                scope = event["thread_span_location"] if named else event["thread_span_desc"]
                time = int(convert.ticks_to_ns([event["time"]])[0])
                name = event["name"] if named else scope["name"]
                events.append(
                    (event["type"].startswith("Begin"), time, block.meta.object_offset + position, name, scope)
                )
            chain_events.append(events)
        chains.append((range_begin, range_end, chain_events))

    expected = _fixture_reference(chains, thread_name(stream.meta))
    got = _rows(batch)
    assert got == expected
    assert len(got) > 1


def _fixture_reference(chains: list, root_name: str) -> list[tuple]:
    """The reference machine on fixture events, whose scopes carry their own file/target/line."""
    hashes: dict[str, int] = {}
    converted = []
    for range_begin, range_end, blocks in chains:
        blocks_events = []
        for events in blocks:
            block_events = []
            for is_begin, time, event_id, name, scope in events:
                key = f"{name}\x00{scope['file']}\x00{scope['target']}\x00{scope['line']}"
                hashes[key] = scope_hash(name, scope["file"], scope["target"], scope["line"])
                block_events.append(Event(is_begin, time, event_id, key))
            blocks_events.append(block_events)
        converted.append((range_begin, range_end, blocks_events))
    rows = reference_rows(converted, root_name, hashes.__getitem__)
    return [(*row[:6], row[6].split("\x00")[0]) for row in rows]


def test_fixture_main_thread_tree_shape() -> None:
    stream = next(s for s in rust_fixtures.streams_tagged("cpu") if s.meta.properties["thread-name"] == "main")
    batch = thread_spans.build_batch(stream.decoded(), stream.meta, rust_fixtures.latest_timing_converter())
    rows = batch.to_pylist()
    assert rows[0]["name"] == "main-140545062373504"
    assert (rows[0]["id"], rows[0]["parent"], rows[0]["depth"]) == (-1, 0, 0)
    # 3-level #[span_fn] nesting: sync_leaf sits under sync_middle.
    by_id = {row["id"]: row for row in rows}
    middles = {row["id"] for row in rows if row["name"].endswith("::sync_middle")}
    leaves_under_middles = [row for row in rows if row["parent"] in middles]
    assert len(middles) > 10
    assert all(row["name"].endswith("::sync_leaf") for row in leaves_under_middles)
    assert {row["parent"] for row in leaves_under_middles} == middles
    assert all(row["depth"] == by_id[row["parent"]]["depth"] + 1 for row in rows[1:])
    assert all(row["duration"] == (row["end"] - row["begin"]).value for row in rows)
    begins = batch.column("begin").cast(pa.int64()).to_pylist()
    assert begins == sorted(begins)


# ---------------------------------------------------------------------------------------------------
# Helpers


def test_thread_name_rules() -> None:
    assert thread_name(StreamMeta("s", "p", (), {"thread-name": "main", "thread-id": "7"})) == "main-7"
    assert thread_name(StreamMeta("s", "p", (), {"thread-id": "7"})) == "7"
    assert thread_name(StreamMeta("s", "p", (), {"thread-name": "main"})) == "main-s"
    assert thread_name(StreamMeta("s", "p", (), {})) == "s"


def test_contiguous_block_chains() -> None:
    def meta(begin: int, end: int) -> BlockMeta:
        return BlockMeta("", "", "", 0, begin, 0, end, 0, 0, 0)

    blocks = [meta(0, 10), meta(10, 20), meta(12, 15), meta(20, 30), meta(31, 40), meta(35, 38), meta(41, 50)]
    # touching and overlapping blocks chain; a short block inside a longer one does not break the chain.
    assert group_contiguous_block_chains(blocks) == [[0, 1, 2, 3], [4, 5], [6]]


def test_no_events_gives_no_rows() -> None:
    batch = thread_spans.build_batch(_encode([(0, 10, [])]), STREAM, CONVERT)
    assert batch.num_rows == 0
    assert batch.schema == thread_spans.SCHEMA
