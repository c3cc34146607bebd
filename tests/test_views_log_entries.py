"""log_entries rows from genuine Rust log blocks and from synthetic blocks of the other log types."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest
import rust_fixtures
from transit_builder import BufferWriter, dyn_string, member, metadata, udt

from spanlake.lakehouse.transit.decode import decode_block, decode_buffers, stream_layout
from spanlake.views import log_entries
from spanlake.views.decoded import BlockRowsError
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.properties import EMPTY_JSONB_OBJECT, decode_jsonb_object
from spanlake.views.time import TickConverter, converter_for_block

LEVEL_NUMBERS = {"fatal": 1, "error": 2, "warning": 3, "info": 4, "debug": 5, "trace": 6}


def _fixture_rows() -> list[tuple[rust_fixtures.FixtureBlock, pa.RecordBatch]]:
    (stream,) = rust_fixtures.streams_tagged("log")
    process = rust_fixtures.process()
    return [
        (block, log_entries.build_batch(decoded, meta, process, converter_for_block(process, meta)))
        for block, (meta, decoded) in zip(stream.blocks, stream.decoded(), strict=True)
    ]


def test_fixture_log_rows_match_the_ground_truth() -> None:
    total = 0
    for block, batch in _fixture_rows():
        assert batch.schema == log_entries.SCHEMA
        events = block.expected["events"]
        rows = batch.to_pylist()
        assert len(rows) == len(events) == block.meta.nb_objects
        for row, event in zip(rows, events, strict=True):
            # Tagged properties override the descriptor (an analytics rule: the process logged the desc's).
            properties = dict(event.get("properties", {}).get("properties", []))
            level = LEVEL_NUMBERS[properties["level"]] if "level" in properties else event["level"]
            assert (row["level"], row["target"], row["msg"]) == (
                level,
                properties.get("target", event["target"]),
                event["msg"],
            )
            assert decode_jsonb_object(row["properties"]) == properties
        times = batch.column("time").cast(pa.int64()).to_pylist()
        assert times == [event["time_ns_blockmeta"] for event in events]
        total += len(rows)
    assert total == 148


def test_fixture_log_rows_carry_block_and_process_columns() -> None:
    block, batch = _fixture_rows()[0]
    process = rust_fixtures.process()
    first = batch.to_pylist()[0]
    assert first["process_id"] == process.process_id
    assert first["stream_id"] == block.meta.stream_id
    assert first["block_id"] == block.block_id
    assert first["exe"] == process.exe
    assert first["username"] == "root"
    assert first["computer"] == "Vm"
    assert batch.column("insert_time").cast(pa.int64())[0].as_py() == block.meta.insert_time_ns
    assert decode_jsonb_object(first["process_properties"]) == dict(process.properties)
    # Constant columns are one-entry dictionaries.
    assert len(batch.column("process_properties").dictionary) == 1
    assert len(batch.column("block_id").dictionary) == 1


def test_fixture_special_messages() -> None:
    messages = [row["msg"] for _, batch in _fixture_rows() for row in batch.to_pylist()]
    assert "" in messages
    assert any("\n" in message for message in messages)
    assert any(message.startswith("long message (300 chars): ") and len(message) == 326 for message in messages)
    assert "static interop message" in messages
    assert "interop error x 1.5" in messages


# ---------------------------------------------------------------------------------------------------
# Synthetic blocks: legacy and interop types, tagged overrides, errors

DEPENDENCY_TYPES = [
    udt("StaticString", 0),
    udt(
        "LogMetadataRecord",
        48,
        [
            member("id", "u64", 0, 8),
            member("fmt_str", "* const u8", 8, 8, True),
            member("target", "* const u8", 16, 8, True),
            member("module_path", "* const u8", 24, 8, True),
            member("file", "* const u8", 32, 8, True),
            member("line", "u32", 40, 4),
            member("level", "u32", 44, 4),
        ],
    ),
    udt("PropertySetDependency", 0),
    udt("Property", 32, [member("name", "StaticStringRef", 0, 16), member("value", "StaticStringRef", 16, 16)]),
    udt("StaticStringRef", 16, [member("id", "usize", 0, 8, True)], is_reference=True),
]
OBJECT_TYPES = [
    udt("LogStaticStrEvent", 16, [member("desc", "& LogMetadata", 0, 8, True), member("time", "i64", 8, 8)]),
    udt("LogStringEvent", 0),
    udt("LogStringInteropEventV2", 0),
    udt("TaggedLogInteropEvent", 0),
    udt("TaggedLogString", 0),
    udt("StringId", 16, [member("id", "usize", 0, 8, True)], is_reference=True),
    udt("StaticStringRef", 16, [member("id", "usize", 0, 8, True)], is_reference=True),
    udt("SomethingElse", 8, [member("x", "u64", 0, 8)]),
]
STRINGS = {1: "fmt {}", 2: "app", 3: "other", 4: "target", 5: "level", 6: "overridden", 7: "error", 8: "verbose"}
PROCESS = ProcessMeta("p-1", "/bin/app", "alice", "box", 1_000_000_000, 500, 1_000_000, {"env": "test"})
META = BlockMeta("b-1", "s-1", "p-1", 0, 0, 0, 10, 0, 0, insert_time_ns=7)
CONVERT = TickConverter(PROCESS.start_ticks, PROCESS.start_time_ns, PROCESS.tsc_frequency)


def _dependencies(property_sets: dict[int, list[tuple[int, int]]]) -> bytes:
    deps = BufferWriter()
    for string_id, text in STRINGS.items():
        deps.dynamic(0, struct.pack("<Q", string_id) + text.encode())
    deps.fixed(1, struct.pack("<QQQQQII", 100, 1, 2, 2, 2, 10, 4))  # info, target "app"
    for set_id, pairs in property_sets.items():
        body = struct.pack("<QI", set_id, len(pairs))
        body += b"".join(struct.pack("<QQQQ", name, 0, value, 0) for name, value in pairs)
        deps.dynamic(2, body)
    return deps.getvalue()


def _decode(objects: BufferWriter, property_sets: dict[int, list[tuple[int, int]]] | None = None):
    layout = stream_layout(metadata(DEPENDENCY_TYPES), metadata(OBJECT_TYPES))
    return decode_buffers(_dependencies(property_sets or {}), objects.getvalue(), layout)


def test_every_log_type_becomes_a_row_in_block_order() -> None:
    objects = BufferWriter()
    objects.dynamic(1, struct.pack("<Qq", 100, 1500) + b"legacy message")  # LogStringEvent
    objects.fixed(7, struct.pack("<Q", 99))  # not a log event: ignored
    objects.fixed(0, struct.pack("<Qq", 100, 1000))  # LogStaticStrEvent
    objects.dynamic(2, struct.pack("<qI", 2500, 3) + struct.pack("<QQ", 3, 0) + b"legacy interop")
    objects.dynamic(
        3,
        struct.pack("<qB", 3000, 5) + struct.pack("<QQ", 3, 0) + struct.pack("<Q", 200) + dyn_string("tagged interop"),
    )
    batch = log_entries.build_batch(_decode(objects, {200: [(4, 6)]}), META, PROCESS, CONVERT)

    rows = batch.to_pylist()
    assert [(row["msg"], row["level"], row["target"]) for row in rows] == [
        ("legacy message", 4, "app"),
        ("fmt {}", 4, "app"),
        ("legacy interop", 3, "other"),
        ("tagged interop", 5, "other"),  # TaggedLogInteropEvent: properties are kept, never override
    ]
    assert batch.column("time").cast(pa.int64()).to_pylist() == [
        1_000_000_000 + 1_000_000,  # (1500 - 500) ticks at 1 MHz = 1 ms
        1_000_000_000 + 500_000,
        1_000_000_000 + 2_000_000,
        1_000_000_000 + 2_500_000,
    ]
    assert [decode_jsonb_object(row["properties"]) for row in rows][3] == {"target": "overridden"}
    assert rows[0]["properties"] == EMPTY_JSONB_OBJECT


def test_tagged_log_string_properties_override_target_and_level() -> None:
    objects = BufferWriter()
    objects.dynamic(4, struct.pack("<QQq", 100, 200, 1000) + dyn_string("both"))
    objects.dynamic(4, struct.pack("<QQq", 100, 201, 1001) + dyn_string("target only"))
    objects.dynamic(4, struct.pack("<QQq", 100, 200, 1002) + dyn_string("both again"))
    batch = log_entries.build_batch(_decode(objects, {200: [(4, 6), (5, 7)], 201: [(4, 3)]}), META, PROCESS, CONVERT)
    rows = batch.to_pylist()
    assert [(row["level"], row["target"]) for row in rows] == [(2, "overridden"), (4, "other"), (2, "overridden")]
    assert decode_jsonb_object(rows[0]["properties"]) == {"target": "overridden", "level": "error"}
    # Identical property sets share one dictionary entry.
    assert len(batch.column("properties").dictionary) == 2


def test_unknown_level_name_fails_the_block() -> None:
    objects = BufferWriter().dynamic(4, struct.pack("<QQq", 100, 200, 1000) + dyn_string("x"))
    decoded = _decode(objects, {200: [(5, 8)]})
    with pytest.raises(BlockRowsError, match="unknown log level 'verbose'"):
        log_entries.build_batch(decoded, META, PROCESS, CONVERT)


def test_block_without_log_events_gives_an_empty_batch() -> None:
    batch = log_entries.build_batch(_decode(BufferWriter().fixed(7, bytes(8))), META, PROCESS, CONVERT)
    assert batch.num_rows == 0
    assert batch.schema == log_entries.SCHEMA


def test_levels_keep_micromegas_integer_cast() -> None:
    objects = BufferWriter().dynamic(2, struct.pack("<qI", 0, 0xFFFFFFFF) + struct.pack("<QQ", 3, 0) + b"m")
    batch = log_entries.build_batch(_decode(objects), META, PROCESS, CONVERT)
    assert batch.column("level").to_pylist() == [np.int32(-1)]


def test_stored_blob_and_rows_agree_on_object_count() -> None:
    (stream,) = rust_fixtures.streams_tagged("log")
    block = stream.blocks[1]
    decoded = decode_block(block.payload, stream.layout)
    batch = log_entries.build_batch(
        decoded, block.meta, rust_fixtures.process(), converter_for_block(rust_fixtures.process(), block.meta)
    )
    assert batch.num_rows == decoded.nb_objects
