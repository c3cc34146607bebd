"""measures rows from genuine Rust metric blocks and from synthetic tagged metrics."""

from __future__ import annotations

import struct

import pyarrow as pa
import rust_fixtures
from transit_builder import BufferWriter, member, metadata, udt

from spanlake.lakehouse.transit.decode import decode_buffers, stream_layout
from spanlake.views import measures
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.properties import decode_jsonb_object
from spanlake.views.time import TickConverter, converter_for_block


def test_fixture_metric_rows_match_the_ground_truth() -> None:
    (stream,) = rust_fixtures.streams_tagged("metrics")
    process = rust_fixtures.process()
    total = ticks_rows = 0
    for block, (meta, decoded) in zip(stream.blocks, stream.decoded(), strict=True):
        convert = converter_for_block(process, meta)
        assert convert.frequency == block.expected["estimated_frequency_blockmeta"]
        batch = measures.build_batch(decoded, meta, process, convert)
        assert batch.schema == measures.SCHEMA
        events = block.expected["events"]
        assert batch.column("time").cast(pa.int64()).to_pylist() == [event["time_ns_blockmeta"] for event in events]
        for row, event in zip(batch.to_pylist(), events, strict=True):
            properties = dict(event.get("properties", {}).get("properties", []))
            desc = event["desc"]
            target = properties.get("target", desc["target"])
            name = properties.get("name", desc["name"])
            unit = properties.get("unit", desc["unit"])
            value = float(event["value"])
            if unit == "ticks" and isinstance(event["value"], int):
                # micromegas: delta_ticks_to_ms(value) / 1000 with the block's frequency
                value = float(event["value"]) * (1000.0 / convert.frequency) / 1000.0
                unit = "seconds"
                ticks_rows += 1
            assert (row["target"], row["name"], row["unit"], row["value"]) == (target, name, unit, value)
            assert decode_jsonb_object(row["properties"]) == properties
        total += batch.num_rows
    assert total == 412
    assert ticks_rows > 0


def test_fixture_extreme_values_survive() -> None:
    (stream,) = rust_fixtures.streams_tagged("metrics")
    process = rust_fixtures.process()
    values = set()
    for meta, decoded in stream.decoded():
        values.update(
            measures.build_batch(decoded, meta, process, converter_for_block(process, meta))["value"].to_pylist()
        )
    assert {float(2**64 - 2), 1e-300, -12.5, 1.5e300} <= values


DEPENDENCY_TYPES = [
    udt("StaticString", 0),
    udt(
        "MetricMetadataDependency",
        48,
        [
            member("id", "u64", 0, 8),
            member("name", "* const u8", 8, 8, True),
            member("unit", "* const u8", 16, 8, True),
            member("target", "* const u8", 24, 8, True),
            member("file", "* const u8", 32, 8, True),
            member("line", "u32", 40, 4),
            member("lod", "u32", 44, 4),
        ],
    ),
    udt("PropertySetDependency", 0),
    udt("Property", 32, [member("name", "StaticStringRef", 0, 16), member("value", "StaticStringRef", 16, 16)]),
    udt("StaticStringRef", 16, [member("id", "usize", 0, 8, True)], is_reference=True),
]


def _metric_event(name: str, value_type: str, tagged: bool) -> dict:
    members = [member("desc", "& MetricMetadata", 0, 8, True)]
    if tagged:
        members.append(member("properties", "& PropertySet", 8, 8, True))
    offset = 16 if tagged else 8
    members += [member("value", value_type, offset, 8), member("time", "i64", offset + 8, 8)]
    return udt(name, offset + 16, members)


OBJECT_TYPES = [
    _metric_event("IntegerMetricEvent", "u64", False),
    _metric_event("FloatMetricEvent", "f64", False),
    _metric_event("TaggedFloatMetricEvent", "f64", True),
    _metric_event("TaggedIntegerMetricEvent", "u64", True),
]
STRINGS = {1: "frame", 2: "ticks", 3: "app", 4: "f.rs", 5: "unit", 6: "name", 7: "renamed", 8: "bytes", 9: "count"}
PROCESS = ProcessMeta("p", "exe", "user", "host", 0, 0, 2_000_000_000)  # a round CPUID frequency
META = BlockMeta("b", "s", "p", 0, 0, 0, 0, 0, 0, 0)


def _decode(objects: BufferWriter):
    deps = BufferWriter()
    for string_id, text in STRINGS.items():
        deps.dynamic(0, struct.pack("<Q", string_id) + text.encode())
    deps.fixed(1, struct.pack("<QQQQQII", 100, 1, 2, 3, 4, 1, 1))  # "frame" in ticks
    deps.fixed(1, struct.pack("<QQQQQII", 101, 1, 9, 3, 4, 1, 1))  # "frame" in count
    deps.dynamic(2, struct.pack("<QI", 200, 1) + struct.pack("<QQQQ", 5, 0, 2, 0))  # unit → ticks
    deps.dynamic(2, struct.pack("<QI", 201, 2) + struct.pack("<QQQQ", 6, 0, 7, 0) + struct.pack("<QQQQ", 5, 0, 8, 0))
    layout = stream_layout(metadata(DEPENDENCY_TYPES), metadata(OBJECT_TYPES))
    return decode_buffers(deps.getvalue(), objects.getvalue(), layout)


def test_ticks_metrics_become_seconds_after_tagged_overrides() -> None:
    objects = BufferWriter()
    objects.fixed(0, struct.pack("<QQq", 100, 3_000_000_001, 10))  # ticks → seconds
    objects.fixed(0, struct.pack("<QQq", 101, 7, 11))  # count stays
    objects.fixed(3, struct.pack("<QQQq", 101, 200, 4_000_000_000, 12))  # tagged unit → ticks → seconds
    objects.fixed(3, struct.pack("<QQQq", 100, 201, 5, 13))  # tagged name+unit override ticks → bytes
    objects.fixed(2, struct.pack("<QQdq", 100, 200, 2.5, 14))  # float: never converted
    objects.fixed(1, struct.pack("<Qdq", 101, -0.25, 15))
    convert = TickConverter(0, 0, PROCESS.tsc_frequency)
    rows = measures.build_batch(_decode(objects), META, PROCESS, convert).to_pylist()
    assert [(row["name"], row["unit"], row["value"]) for row in rows] == [
        ("frame", "seconds", 3_000_000_001 * (1000.0 / 2e9) / 1000.0),
        ("frame", "count", 7.0),
        ("frame", "seconds", 2.0),
        ("renamed", "bytes", 5.0),
        ("frame", "ticks", 2.5),
        ("frame", "count", -0.25),
    ]
    assert [row["time"].value for row in rows] == [5, 6, 6, 7, 7, 8]  # 0.5 ns per tick, rounded half up
    assert decode_jsonb_object(rows[3]["properties"]) == {"name": "renamed", "unit": "bytes"}


def test_u64_value_above_i64_range_is_a_float_unless_ticks() -> None:
    objects = BufferWriter()
    objects.fixed(0, struct.pack("<QQq", 101, 2**64 - 1, 0))
    objects.fixed(0, struct.pack("<QQq", 100, 2**64 - 1, 0))  # ticks: micromegas casts to i64 first (-1)
    rows = measures.build_batch(_decode(objects), META, PROCESS, TickConverter(0, 0, 1000)).to_pylist()
    assert [row["value"] for row in rows] == [float(2**64 - 1), -1.0 * (1000.0 / 1000) / 1000.0]
