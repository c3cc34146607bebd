"""Transit decoding against genuine Rust output (rust_parsed) and against malformed input."""

from __future__ import annotations

import json
import logging
import struct

import cbor2
import lz4.frame
import numpy as np
import pytest
import rust_fixtures
from rust_fixtures import FIXTURES
from transit_builder import (
    THREAD_TYPE_INDEX,
    BufferWriter,
    ThreadBlockWriter,
    compress,
    dyn_string,
    member,
    metadata,
    payload,
    thread_stream_metadata,
    udt,
)

from spanlake.lakehouse.transit.decode import (
    FrameCheck,
    InflationLimit,
    StreamLayout,
    TransitError,
    decode_block,
    decode_buffers,
    frame_objects,
    object_values,
    split_payload,
    stream_layout,
)
from spanlake.lakehouse.transit.metadata import parse_udts, udts_from_list
from spanlake.views.decoded import U8, TransitObject, Value

ALL_BLOCKS = [(stream, block) for stream in rust_fixtures.streams() for block in stream.blocks]


def as_rust_json(value: Value) -> object:
    """Our values in the notation of rust_parsed/*.json (`__type`, `__u8`, `__bytes_hex`)."""
    if isinstance(value, TransitObject):
        members = {name: as_rust_json(member) for name, member in value.members.items()}
        return {"__type": value.type_name, **members}
    if isinstance(value, U8):
        return {"__u8": int(value)}
    if isinstance(value, bytes):
        return {"__bytes_hex": value.hex()}
    return value


@pytest.mark.parametrize(("stream", "block"), ALL_BLOCKS, ids=[block.block_id[:8] for _, block in ALL_BLOCKS])
def test_fixture_block_decodes_like_the_rust_decoder(stream, block) -> None:
    rust = json.loads((FIXTURES / "rust_parsed" / f"{block.block_id}.json").read_text())
    decoded = decode_block(block.payload, stream.layout)

    assert decoded.nb_objects == block.meta.nb_objects == len(rust["objects"])
    assert {str(key): as_rust_json(value) for key, value in decoded.dependencies.items()} == rust["dependencies"]
    assert [as_rust_json(value) for value in object_values(decoded)] == rust["objects"]


def test_raw_buffers_decode_like_the_stored_payload() -> None:
    stream, block = ALL_BLOCKS[-1]
    dependencies = (FIXTURES / "raw" / f"{block.block_id}.dependencies.bin").read_bytes()
    objects = (FIXTURES / "raw" / f"{block.block_id}.objects.bin").read_bytes()
    from_raw = decode_buffers(dependencies, objects, stream.layout)
    from_payload = decode_block(block.payload, stream.layout)
    assert object_values(from_raw) == object_values(from_payload)
    assert from_raw.dependencies == from_payload.dependencies


def test_fixed_types_are_columns_with_resolved_references() -> None:
    stream, block = max(
        ALL_BLOCKS,
        key=lambda pair: sum(e["type"] == "BeginAsyncNamedSpanEvent" for e in pair[1].expected["events"]),
    )
    decoded = decode_block(block.payload, stream.layout)
    named = decoded.groups["BeginAsyncNamedSpanEvent"]
    expected_events = [e for e in block.expected["events"] if e["type"] == "BeginAsyncNamedSpanEvent"]
    assert len(expected_events) > 10

    assert named.numeric("span_id").tolist() == [event["span_id"] for event in expected_events]
    assert named.numeric("depth").dtype == np.uint32
    assert named.values("name").to_list() == [event["name"] for event in expected_events]
    lines = [location.members["line"] for location in named.values("span_location").to_list()]
    assert lines == [event["span_location"]["line"] for event in expected_events]
    # Each distinct location is resolved once.
    assert len(named.values("span_location").values) == len({e["span_location"]["id"] for e in expected_events})


def test_every_fixture_object_type_is_found() -> None:
    counts: dict[str, int] = {}
    for stream, block in ALL_BLOCKS:
        for name, group in decode_block(block.payload, stream.layout).groups.items():
            counts[name] = counts.get(name, 0) + len(group)
    assert counts == {
        "BeginThreadSpanEvent": 706,
        "EndThreadSpanEvent": 706,
        "BeginThreadNamedSpanEvent": 53,
        "EndThreadNamedSpanEvent": 53,
        "BeginAsyncSpanEvent": 265,
        "EndAsyncSpanEvent": 265,
        "BeginAsyncNamedSpanEvent": 297,
        "EndAsyncNamedSpanEvent": 297,
        "LogStaticStrEvent": 14,
        "LogStringEventV2": 128,
        "TaggedLogString": 3,
        "LogStaticStrInteropEvent": 2,
        "LogStringInteropEventV3": 1,
        "IntegerMetricEvent": 219,
        "FloatMetricEvent": 185,
        "TaggedFloatMetricEvent": 7,
        "TaggedIntegerMetricEvent": 1,
        "ImageEvent": 1,
    }


def test_stream_metadata_parses_type_lists() -> None:
    types = parse_udts(metadata([udt("A", 8, [member("x", "u64", 0, 8)])]))
    assert types[0].name == "A"
    assert types[0].members[0].offset == 0
    with pytest.raises(TransitError, match="not valid CBOR"):
        parse_udts(b"\xff\x00")
    with pytest.raises(TransitError, match=r"\[0\]\.size: expected int"):
        udts_from_list([{"name": "A", "size": "8", "members": [], "is_reference": False}])
    with pytest.raises(TransitError, match="expected an array"):
        parse_udts(cbor2.dumps({"name": "A"}))


# ---------------------------------------------------------------------------------------------------
# Synthetic blocks


def _thread_layout() -> StreamLayout:
    return stream_layout(*thread_stream_metadata())


def _sample_thread_block() -> ThreadBlockWriter:
    writer = ThreadBlockWriter()
    desc = writer.span_desc("work", line=7)
    location = writer.span_location(line=9)
    writer.thread(True, desc, 100)
    writer.async_named(True, location, "named", 5, 1, 110, 2)
    writer.async_event(False, desc, 6, 5, 120, 3)
    writer.thread(False, desc, 130)
    return writer


def test_synthetic_thread_block_round_trips() -> None:
    decoded = decode_block(_sample_thread_block().payload(), _thread_layout())
    values = object_values(decoded)
    assert [value.type_name for value in values] == [
        "BeginThreadSpanEvent",
        "BeginAsyncNamedSpanEvent",
        "EndAsyncSpanEvent",
        "EndThreadSpanEvent",
    ]
    assert values[1].members["name"] == "named"
    assert values[1].members["span_location"].members["line"] == 9
    assert values[2].members["span_desc"].members["name"] == "work"
    assert (values[2].members["span_id"], values[2].members["parent_span_id"], values[2].members["depth"]) == (6, 5, 3)
    assert decoded.groups["EndAsyncSpanEvent"].positions.tolist() == [2]


def test_legacy_int_array_payload_decodes_like_byte_strings() -> None:
    writer = _sample_thread_block()
    legacy = decode_block(writer.payload(legacy_int_arrays=True), _thread_layout())
    modern = decode_block(writer.payload(), _thread_layout())
    assert object_values(legacy) == object_values(modern)
    assert split_payload(writer.payload(legacy_int_arrays=True))[1][:4] == b"\x04\x22\x4d\x18"  # LZ4 magic


def test_uniform_and_mixed_framings_agree() -> None:
    writer = ThreadBlockWriter()
    desc = writer.span_desc("leaf")
    for tick in range(50):
        writer.thread(tick % 2 == 0, desc, tick)
    buffer = writer.objects.getvalue()
    types = udts_from_list(thread_stream_metadata_types())
    uniform = frame_objects(buffer, types, "objects")
    mixed = frame_objects(buffer + bytes([THREAD_TYPE_INDEX["BeginAsyncSpanEvent"]]) + bytes(40), types, "objects")
    assert uniform.body_start.tolist() == list(range(1, 50 * 17, 17))
    assert mixed.body_start.tolist()[:50] == uniform.body_start.tolist()
    assert mixed.body_start.tolist()[50] == 50 * 17 + 1
    assert mixed.type_index.tolist()[50] == THREAD_TYPE_INDEX["BeginAsyncSpanEvent"]


def thread_stream_metadata_types() -> list:
    return cbor2.loads(thread_stream_metadata()[1])


# ---------------------------------------------------------------------------------------------------
# Log-style dynamic objects


LOG_DEPENDENCY_TYPES = [
    udt("StaticString", 0),
    udt("StaticStringDependency", 0),
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
LOG_OBJECT_TYPES = [
    udt("LogStringEventV2", 0),
    udt("LogStringInteropEventV3", 0),
    udt("TaggedLogString", 0),
    udt("MysteryDynamicEvent", 0),
    udt("StaticStringRef", 16, [member("id", "usize", 0, 8, True)], is_reference=True),
]


def _log_layout() -> StreamLayout:
    return stream_layout(metadata(LOG_DEPENDENCY_TYPES), metadata(LOG_OBJECT_TYPES))


def _log_dependencies(extra: bytes = b"") -> BufferWriter:
    deps = BufferWriter()
    deps.dynamic(0, struct.pack("<Q", 11) + b"app::target")
    deps.dynamic(0, struct.pack("<Q", 12) + b"message {}")
    # UTF-16 strings, as the Unreal producer writes them.
    deps.dynamic(1, struct.pack("<Q", 21) + dyn_string("zone", codec=1))
    deps.dynamic(1, struct.pack("<Q", 22) + dyn_string("Zürich-東京", codec=1))
    deps.fixed(2, struct.pack("<QQQQQII", 30, 12, 11, 11, 11, 42, 4))
    deps.dynamic(3, struct.pack("<QI", 40, 1) + struct.pack("<QQQQ", 21, 0, 22, 0))
    deps.parts.append(extra)
    return deps


def test_dynamic_log_objects_and_utf16_strings() -> None:
    objects = BufferWriter()
    objects.dynamic(0, struct.pack("<Qq", 30, 1000) + dyn_string("héllo", codec=2))
    objects.dynamic(0, struct.pack("<Qq", 30, 1001) + dyn_string("wide ✓", codec=1))
    objects.dynamic(1, struct.pack("<qB", 1002, 2) + struct.pack("<QQ", 22, 0) + dyn_string("interop"))
    objects.dynamic(2, struct.pack("<QQq", 30, 40, 1003) + dyn_string("tagged", codec=0))
    decoded = decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())
    values = object_values(decoded)

    assert decoded.dependencies[22] == "Zürich-東京"
    assert decoded.dependencies[40] == TransitObject("property_set", {"zone": "Zürich-東京"})
    assert [value.members["msg"] for value in values] == ["héllo", "wide ✓", "interop", "tagged"]
    assert values[0].members["desc"].members["fmt_str"] == "message {}"
    assert values[2].members["level"] == U8(2)
    assert values[2].members["target"] == "Zürich-東京"
    assert values[3].members["properties"].members == {"zone": "Zürich-東京"}


def test_invalid_utf8_in_dynamic_strings_is_replaced_like_rust() -> None:
    objects = BufferWriter().dynamic(0, struct.pack("<Qq", 30, 1) + struct.pack("<BI", 2, 3) + b"a\xffb")
    decoded = decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())
    assert object_values(decoded)[0].members["msg"] == "a\ufffdb"


def test_unknown_dynamic_type_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    objects = BufferWriter()
    objects.dynamic(3, b"anything at all")
    objects.dynamic(0, struct.pack("<Qq", 30, 5) + dyn_string("after"))
    with caplog.at_level(logging.WARNING, logger="spanlake.lakehouse.transit"):
        decoded = decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())
    values = object_values(decoded)
    assert values[0] == TransitObject("MysteryDynamicEvent", {})
    assert values[1].members["msg"] == "after"
    assert "MysteryDynamicEvent" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_truncated_lz4_frame_is_rejected() -> None:
    frame = compress(_sample_thread_block().objects.getvalue())
    body = cbor2.dumps({"dependencies": compress(b""), "objects": frame[:-6]})
    with pytest.raises(TransitError, match="objects buffer: invalid or truncated LZ4 frame"):
        decode_block(body, _thread_layout())


def test_corrupt_cbor_is_rejected() -> None:
    with pytest.raises(TransitError, match="block payload: not valid CBOR"):
        decode_block(b"\xa2\x6cdependencies\x5a\xff\xff", _thread_layout())


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ([1, 2], "expected a CBOR map"),
        ({"objects": b""}, "missing or invalid 'dependencies'"),
        ({"dependencies": b"", "objects": "text"}, "missing or invalid 'objects'"),
        ({"dependencies": [1, 300], "objects": b""}, "dependencies is an array but not of bytes"),
    ],
)
def test_wrong_envelope_is_rejected(envelope: object, message: str) -> None:
    with pytest.raises(TransitError, match=message):
        decode_block(cbor2.dumps(envelope), _thread_layout())


def test_unknown_type_index_is_rejected() -> None:
    writer = _sample_thread_block()
    writer.objects.fixed(200, bytes(16))
    with pytest.raises(TransitError, match=r"objects buffer: invalid type index 200 at byte 132 \(9 types"):
        decode_block(writer.payload(), _thread_layout())


def test_reference_to_a_missing_dependency_is_rejected() -> None:
    writer = _sample_thread_block()
    writer.thread(True, 0xABCDEF, 200)
    with pytest.raises(TransitError, match=r"BeginThreadSpanEvent.thread_span_desc: dependency 11259375 not found"):
        decode_block(writer.payload(), _thread_layout())


def test_missing_string_inside_a_dependency_is_rejected() -> None:
    deps = BufferWriter().fixed(0, struct.pack("<QQQQQII", 1, 99, 99, 99, 99, 1, 1))
    with pytest.raises(TransitError, match=r"SpanRecord\.name: dependency 99 not found"):
        decode_buffers(deps.getvalue(), b"", _thread_layout())


def test_truncated_object_is_rejected() -> None:
    buffer = _sample_thread_block().objects.getvalue()[:-3]
    with pytest.raises(TransitError, match=r"object at byte 115 \(EndThreadSpanEvent\) runs past the 129-byte buffer"):
        decode_buffers(_sample_thread_block().dependencies.getvalue(), buffer, _thread_layout())


def test_truncated_dynamic_size_is_rejected() -> None:
    deps = _sample_thread_block().dependencies.getvalue() + bytes([2, 9, 0])  # StaticString, 2 of 4 size bytes
    with pytest.raises(TransitError, match=r"dependencies buffer: object at byte \d+ is truncated"):
        decode_buffers(deps, b"", _thread_layout())


def test_truncated_dynamic_string_is_rejected() -> None:
    objects = BufferWriter().dynamic(0, struct.pack("<Qq", 30, 1) + struct.pack("<BI", 2, 50) + b"short")
    with pytest.raises(TransitError, match=r"LogStringEventV2 object 0: truncated string: need 50 bytes, have 5"):
        decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())


def test_odd_utf16_length_is_rejected() -> None:
    deps = BufferWriter().dynamic(1, struct.pack("<Q", 5) + struct.pack("<BI", 1, 3) + b"abc")
    with pytest.raises(TransitError, match="wrong utf-16 buffer size"):
        decode_buffers(deps.getvalue(), b"", _log_layout())


def test_invalid_utf8_static_string_is_rejected() -> None:
    deps = BufferWriter().dynamic(0, struct.pack("<Q", 5) + b"\xff\xfe")
    with pytest.raises(TransitError, match="StaticString 5 is not UTF-8"):
        decode_buffers(deps.getvalue(), b"", _log_layout())


def test_duplicate_dependency_id_is_rejected() -> None:
    deps = BufferWriter()
    deps.dynamic(0, struct.pack("<Q", 5) + b"a")
    deps.dynamic(0, struct.pack("<Q", 5) + b"b")
    with pytest.raises(TransitError, match="duplicate dependency id 5"):
        decode_buffers(deps.getvalue(), b"", _log_layout())


def test_oversized_property_count_is_rejected() -> None:
    deps = BufferWriter().dynamic(3, struct.pack("<QI", 40, 1_000_000) + bytes(32))
    with pytest.raises(TransitError, match="1000000 properties exceed the buffer"):
        decode_buffers(deps.getvalue(), b"", _log_layout())


def test_bad_member_layout_is_rejected_when_used() -> None:
    bad_types = [udt("Broken", 8, [member("value", "u32", 0, 8)]), udt("Fine", 8, [member("x", "i64", 0, 8)])]
    layout = stream_layout(metadata([]), metadata(bad_types))
    fine = BufferWriter().fixed(1, struct.pack("<q", -5)).getvalue()
    assert object_values(decode_buffers(b"", fine, layout)) == [TransitObject("Fine", {"x": -5})]
    broken = BufferWriter().fixed(0, bytes(8)).getvalue()
    with pytest.raises(TransitError, match="member value of type u32 has size 8"):
        decode_buffers(b"", broken, layout)


def test_member_outside_its_object_is_rejected() -> None:
    layout = stream_layout(metadata([]), metadata([udt("Short", 8, [member("x", "u64", 4, 8)])]))
    with pytest.raises(TransitError, match=r"member x \(offset 4, size 8\) exceeds the 8-byte object"):
        decode_buffers(b"", BufferWriter().fixed(0, bytes(8)).getvalue(), layout)


def test_unknown_member_type_is_rejected() -> None:
    layout = stream_layout(metadata([]), metadata([udt("Odd", 8, [member("x", "Mystery", 0, 8)])]))
    with pytest.raises(TransitError, match="unknown member type Mystery"):
        decode_buffers(b"", BufferWriter().fixed(0, bytes(8)).getvalue(), layout)


def test_nested_structs_are_rebuilt() -> None:
    types = [
        udt("Outer", 24, [member("inner", "Inner", 0, 16), member("tail", "u8", 16, 1)]),
        udt("Inner", 16, [member("a", "u64", 0, 8), member("b", "f64", 8, 8)]),
    ]
    layout = stream_layout(metadata([]), metadata(types))
    objects = BufferWriter().fixed(0, struct.pack("<QdB7x", 3, 2.5, 9)).getvalue()
    decoded = decode_buffers(b"", objects, layout)
    assert decoded.groups["Outer"].numeric("inner.b").tolist() == [2.5]
    assert object_values(decoded) == [
        TransitObject("Outer", {"inner": TransitObject("Inner", {"a": 3, "b": 2.5}), "tail": U8(9)})
    ]


def test_payload_helper_matches_the_fixture_frames() -> None:
    block = rust_fixtures.streams()[0].blocks[0]
    raw = (FIXTURES / "raw" / f"{block.block_id}.objects.bin").read_bytes()
    assert cbor2.loads(block.payload)["objects"] == compress(raw)
    assert payload(b"", raw) == cbor2.dumps({"dependencies": compress(b""), "objects": compress(raw)})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (struct.pack("<Qq", 30, 1) + b"\x02", r"LogStringEventV2 object 1: truncated$"),
        (
            struct.pack("<Qq", 30, 1) + struct.pack("<BI", 7, 1) + b"x",
            r"LogStringEventV2 object 1: invalid string codec 7",
        ),
        (
            struct.pack("<Qq", 30, 1) + struct.pack("<BI", 1, 3) + b"abc",
            r"LogStringEventV2 object 1: wrong utf-16 buffer",
        ),
    ],
)
def test_malformed_log_string_objects_are_rejected(body: bytes, message: str) -> None:
    objects = BufferWriter()
    objects.dynamic(0, struct.pack("<Qq", 30, 0) + dyn_string("fine"))
    objects.dynamic(0, body)
    with pytest.raises(TransitError, match=message):
        decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())


def test_trailing_bytes_after_a_log_string_are_ignored_like_rust() -> None:
    objects = BufferWriter().dynamic(2, struct.pack("<QQq", 30, 40, 5) + dyn_string("msg") + b"\x00\x01")
    decoded = decode_buffers(_log_dependencies().getvalue(), objects.getvalue(), _log_layout())
    assert object_values(decoded)[0].members["msg"] == "msg"


def test_frame_check_run_in_steps_refuses_what_a_whole_run_refuses() -> None:
    # 3 MiB of zeros per frame (a few KiB compressed): within 64 MiB, past 100x the compressed size.
    zeros = lz4.frame.compress(bytes(3 << 20))
    within = InflationLimit(64 << 20, 100_000)
    check = FrameCheck(zeros, zeros, within)
    assert [check.run(1 << 20) for _ in range(5)] == [False] * 5  # 1 MiB more each time (64 KiB pieces)
    assert check.run()  # the rest of the second frame
    assert FrameCheck(zeros, zeros, within).run(7 << 20)  # the budget outlasts both frames
    refusing = FrameCheck(zeros, zeros, InflationLimit(64 << 20, 100))
    with pytest.raises(TransitError, match="dependencies buffer: inflates past"):
        refusing.run(2 << 20)  # refused within the first step: past 1.3 MB is past 100x
    truncated = FrameCheck(zeros, zeros[:-100], within)
    assert not truncated.run(4 << 20)  # the first frame whole, the second begun
    with pytest.raises(TransitError, match="objects buffer: invalid or truncated LZ4 frame"):
        truncated.run()
