"""async_events rows from genuine Rust thread blocks and from synthetic ones."""

from __future__ import annotations

import math

import pyarrow as pa
import rust_fixtures
from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.views import async_events
from spanlake.views.meta import BlockMeta
from spanlake.views.scope import scope_hash
from spanlake.views.time import TickConverter


def _expected_rows(block: rust_fixtures.FixtureBlock) -> list[dict]:
    rows = []
    for event in block.expected["events"]:
        if "Async" not in event["type"]:
            continue
        named = "Named" in event["type"]
        location = event["span_location"] if named else event["span_desc"]
        name = event["name"] if named else location["name"]
        rows.append(
            {
                "stream_id": block.meta.stream_id,
                "block_id": block.block_id,
                "event_type": "begin" if event["type"].startswith("Begin") else "end",
                "span_id": event["span_id"],
                "parent_span_id": event["parent_span_id"],
                "depth": event["depth"],
                "hash": scope_hash(name, location["file"], location["target"], location["line"]),
                "name": name,
                "filename": location["file"],
                "target": location["target"],
                "line": location["line"],
                "ticks": event["time"],
            }
        )
    return rows


def test_fixture_async_rows_match_the_ground_truth() -> None:
    convert = rust_fixtures.latest_timing_converter()
    process = rust_fixtures.process()
    assert convert.frequency == rust_fixtures.expected()["process"]["latest_timing"]["estimated_frequency"]
    total = 0
    names = set()
    for stream in rust_fixtures.streams_tagged("cpu"):
        for block, (meta, decoded) in zip(stream.blocks, stream.decoded(), strict=True):
            batch = async_events.build_batch(decoded, meta, convert)
            assert batch.schema == async_events.SCHEMA
            expected = _expected_rows(block)
            rows = batch.to_pylist()
            assert len(rows) == len(expected)
            times = batch.column("time").cast(pa.int64()).to_pylist()
            for row, want, time in zip(rows, expected, times, strict=True):
                ticks = want.pop("ticks")
                assert {key: row[key] for key in want} == want
                delta = float(ticks - process.start_ticks) * (1e9 / convert.frequency)
                assert time == process.start_time_ns + math.floor(delta + 0.5)
                names.add(row["name"])
            total += len(rows)
    assert total == 2 * (265 + 297)
    # Static and named spans land in the same columns, incl. interned dynamic names.
    assert "mm_fixture_gen::scenario::async_operation" in names
    assert {"database_migration", "requête_42"} <= names
    assert any(name.startswith("process_user_") for name in names)


def test_every_begin_has_its_end_across_fixture_streams() -> None:
    convert = rust_fixtures.latest_timing_converter()
    batches = [
        async_events.build_batch(decoded, meta, convert)
        for stream in rust_fixtures.streams_tagged("cpu")
        for meta, decoded in stream.decoded()
    ]
    table = pa.Table.from_batches(batches)
    begins = {row["span_id"]: row for row in table.to_pylist() if row["event_type"] == "begin"}
    ends = {row["span_id"]: row for row in table.to_pylist() if row["event_type"] == "end"}
    assert len(begins) == len(ends) == 562
    assert all(begins[span]["time"] <= ends[span]["time"] for span in begins)
    moved = {span for span in begins if begins[span]["stream_id"] != ends[span]["stream_id"]}
    assert len(moved) == 56


def test_synthetic_block_keeps_producer_ids_and_order() -> None:
    writer = ThreadBlockWriter()
    desc = writer.span_desc("fetch", target="net", file="net.rs", line=12)
    location = writer.span_location(target="db", file="db.rs", line=40)
    writer.thread(True, desc, 5)  # thread events are ignored
    writer.async_event(True, desc, 2**64 - 1, 7, 10, 1)
    writer.async_named(True, location, "query", 8, 2**64 - 1, 20, 2)
    writer.async_named(False, location, "query", 8, 2**64 - 1, 30, 2)
    writer.async_event(False, desc, 2**64 - 1, 7, 40, 1)
    decoded = decode_block(writer.payload(), stream_layout(*thread_stream_metadata()))
    meta = BlockMeta("block", "stream", "process", 0, 0, 0, 0, 5, 0, 0)
    batch = async_events.build_batch(decoded, meta, TickConverter(0, 1_000, 1_000_000_000))
    rows = batch.to_pylist()
    assert [(row["event_type"], row["span_id"], row["parent_span_id"], row["name"]) for row in rows] == [
        ("begin", -1, 7, "fetch"),  # u64 ids are stored as i64
        ("begin", 8, -1, "query"),
        ("end", 8, -1, "query"),
        ("end", -1, 7, "fetch"),
    ]
    assert [row["time"].value for row in rows] == [1_010, 1_020, 1_030, 1_040]
    assert rows[1]["hash"] == scope_hash("query", "db.rs", "db", 40)
    assert rows[0]["hash"] == scope_hash("fetch", "net.rs", "net", 12)
    assert batch.column("event_type").dictionary.to_pylist() == ["begin", "end"]


def test_block_without_async_events_gives_an_empty_batch() -> None:
    writer = ThreadBlockWriter()
    writer.thread(True, writer.span_desc("f"), 1)
    decoded = decode_block(writer.payload(), stream_layout(*thread_stream_metadata()))
    batch = async_events.build_batch(decoded, BlockMeta("b", "s", "p", 0, 0, 0, 0, 1, 0, 0), TickConverter(0, 0, 1))
    assert batch.num_rows == 0
    assert batch.schema == async_events.SCHEMA
