"""OTLP traces blocks read from the protobuf wire format with numpy (`lakehouse/otlp/span_arrays.py`)
give the values the former per-span decoder gave (kept here as the reference, walking protobuf
objects), on a generated corpus of every attribute type, events, links, statuses, scopes and empty
fields; malformed or truncated blocks give a clear error, or, where the protobuf runtime still reads
them, the same values."""

from __future__ import annotations

import base64
import random
import struct
from typing import Any

import cbor2
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp import decode, jsonb_arrays, wire
from spanlake.lakehouse.otlp.decode import any_value_to_json, attributes_object, scope_extras
from spanlake.lakehouse.otlp.envelope import write_envelope
from spanlake.lakehouse.protobuf_wire import length_delimited
from spanlake.views import jsonb

T0 = 1_700_000_000_000_000_000


# --- the reference: the former decoder, one span at a time -----------------------------------------


def _is_kept(span: Span) -> bool:
    has_times = span.start_time_unix_nano != 0 and span.end_time_unix_nano != 0
    return has_times and len(span.trace_id) == 16 and len(span.span_id) == 8


def _i64(value: int) -> int:
    return struct.unpack("<q", struct.pack("<Q", value))[0]


def _enum(value: int, size: int) -> int:
    return value if 0 <= value < size else 0


def _valued(attributes: Any) -> dict:
    return {kv.key: any_value_to_json(kv.value) for kv in attributes if kv.HasField("value")}


def reference_otel_spans(resource: ResourceSpans) -> dict[str, list]:
    """The former `extract_otel_spans`, as plain columns."""
    rows: dict[str, list] = {name: [] for name in _OTEL_COLUMNS}
    for scope_spans in resource.scope_spans:
        extras = scope_extras(scope_spans.scope, scope_spans.schema_url)
        for s in filter(_is_kept, scope_spans.spans):
            has_parent = len(s.parent_span_id) == 8
            events = [
                {"time": _i64(e.time_unix_nano), "name": e.name, "attributes": _valued(e.attributes)} for e in s.events
            ]
            links = [
                {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(), "attributes": _valued(link.attributes)}
                for link in s.links
            ]
            values = {
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id if has_parent else bytes(8),
                "has_parent": has_parent,
                "start_ns": _i64(s.start_time_unix_nano),
                "end_ns": _i64(s.end_time_unix_nano),
                "name": s.name,
                "kind": _enum(s.kind, 6),
                "status": _enum(s.status.code if s.HasField("status") else 0, 3),
                "status_message": s.status.message or None,
                "properties": jsonb.encode(attributes_object(s.attributes, extras)),
                "events": jsonb.encode(events),
                "links": jsonb.encode(links),
            }
            for name, value in values.items():
                rows[name].append(value)
    return rows


_OTEL_COLUMNS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "has_parent",
    "start_ns",
    "end_ns",
    "name",
    "kind",
    "status",
    "status_message",
    "properties",
    "events",
    "links",
]


def reference_spans(resource: ResourceSpans) -> dict[str, list]:
    """The former `extract_spans` (async_events' columns), as plain columns."""
    rows: dict[str, list] = {"start_ns": [], "end_ns": [], "trace_id": [], "span_id": [], "parent": [], "name": []}
    rows["target"] = []
    for scope_spans in resource.scope_spans:
        for s in filter(_is_kept, scope_spans.spans):
            rows["start_ns"].append(_i64(s.start_time_unix_nano))
            rows["end_ns"].append(_i64(s.end_time_unix_nano))
            rows["trace_id"].append(s.trace_id)
            rows["span_id"].append(struct.unpack(">q", s.span_id)[0])
            parent = s.parent_span_id if len(s.parent_span_id) == 8 else bytes(8)
            rows["parent"].append(struct.unpack(">q", parent)[0])
            rows["name"].append(s.name)
            rows["target"].append(scope_spans.scope.name)
    return rows


# --- the columnar decoder's columns, as the same plain columns -------------------------------------


def otel_columns(payload: bytes) -> dict[str, list]:
    c = decode.read_spans(payload, decode.extract_otel_spans)
    as_bytes = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}
    plain = {name: [bytes(v).ljust(width, b"\0") for v in getattr(c, name)] for name, width in as_bytes.items()}
    for name in ("has_parent", "start_ns", "end_ns", "kind", "status"):
        plain[name] = getattr(c, name).tolist()
    for name in ("name", "status_message", "properties", "events", "links"):
        plain[name] = getattr(c, name).to_pylist()
    return plain


def span_columns(payload: bytes) -> dict[str, list]:
    c = decode.read_spans(payload, decode.extract_spans)
    return {
        "start_ns": c.start_ns.tolist(),
        "end_ns": c.end_ns.tolist(),
        "trace_id": [bytes(v).ljust(16, b"\0") for v in c.trace_id],
        "span_id": c.span_id.tolist(),
        "parent": c.parent_span_id.tolist(),
        "name": [c.name.values[i] for i in c.name.codes],
        "target": [c.target.values[i] for i in c.target.codes],
    }


# --- a generated corpus ----------------------------------------------------------------------------

_TEXTS = ["", "a", "key", "clé", "日本語", "emoji 🚀", "x" * 200, "otel.scope.name", "dup"]


def any_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.choice(["string", "bool", "int", "double", "bytes", "array", "kvlist", "empty", "strindex"])
    if kind in ("array", "kvlist") and depth >= 3:
        kind = "string"
    if kind == "string":
        return AnyValue(string_value=rng.choice(_TEXTS))
    if kind == "bool":
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == "int":
        return AnyValue(int_value=rng.choice([0, 1, -1, 127, 128, -129, 40_000, -(2**31), 2**40, 2**63 - 1, -(2**63)]))
    if kind == "double":
        return AnyValue(double_value=rng.choice([0.0, -0.0, 1.5, -2.25e300, float("nan"), float("inf"), -float("inf")]))
    if kind == "bytes":
        return AnyValue(bytes_value=bytes(rng.randrange(256) for _ in range(rng.randrange(8))))
    if kind == "array":
        values = AnyValue()
        values.array_value.values.extend(any_value(rng, depth + 1) for _ in range(rng.randrange(4)))
        return values
    if kind == "kvlist":
        values = AnyValue()
        values.kvlist_value.values.extend(key_values(rng, depth + 1))
        return values
    if kind == "strindex":
        return AnyValue(string_value_strindex=rng.randrange(5))
    return AnyValue()


def key_values(rng: random.Random, depth: int = 0) -> list[KeyValue]:
    found = []
    for _ in range(rng.randrange(5)):
        kv = KeyValue(key=rng.choice(_TEXTS))
        if rng.random() < 0.85:
            kv.value.CopyFrom(any_value(rng, depth))
        found.append(kv)
    return found


def random_span(rng: random.Random, i: int) -> Span:
    span = Span(name=rng.choice(_TEXTS), kind=rng.choice([0, 1, 2, 3, 4, 5, 6, 99, -3]))
    span.trace_id = rng.choice([bytes(16), rng.randbytes(16), rng.randbytes(16), rng.randbytes(15), b""])
    span.span_id = rng.choice([(i + 1).to_bytes(8, "big"), rng.randbytes(8), rng.randbytes(8), rng.randbytes(9), b""])
    span.parent_span_id = rng.choice([b"", rng.randbytes(8), rng.randbytes(8), rng.randbytes(4)])
    span.start_time_unix_nano = rng.choice([T0 + i, T0 + i, T0 + i, 0, 2**64 - 5])
    span.end_time_unix_nano = rng.choice([T0 + i + 50, T0 + i + 50, 0, 2**63 + 7])
    span.trace_state = rng.choice(["", "a=b"])
    span.flags = rng.choice([0, 0x100, 0xFFFFFFFF])
    span.dropped_attributes_count = rng.choice([0, 3])
    span.attributes.extend(key_values(rng))
    for _ in range(rng.choice([0, 0, 1, 3])):
        event = span.events.add(time_unix_nano=rng.choice([0, T0, 2**64 - 1]), name=rng.choice(_TEXTS))
        event.attributes.extend(key_values(rng))
    for _ in range(rng.choice([0, 0, 1, 2])):
        link = span.links.add(trace_id=rng.choice([rng.randbytes(16), b"", b"\x01"]), span_id=rng.randbytes(8))
        link.attributes.extend(key_values(rng))
        link.flags = rng.choice([0, 1])
    status = rng.choice([None, Status(), Status(code=1), Status(code=2, message="boom"), Status(code=7, message="?")])
    if status is not None:
        span.status.CopyFrom(status)
    return span


def random_resource(seed: int, spans: int = 12) -> ResourceSpans:
    """A resource of up to 3 scopes of up to `spans` - 1 random spans each."""
    rng = random.Random(seed)
    resource = ResourceSpans(schema_url=rng.choice(["", "https://resource"]))
    resource.resource.attributes.extend(key_values(rng))
    for s in range(rng.randrange(4)):
        scope_spans = resource.scope_spans.add(schema_url=rng.choice(["", "https://opentelemetry.io/schemas/1.21"]))
        if rng.random() < 0.8:
            scope_spans.scope.name = rng.choice(["", "lib", "日本"])
            scope_spans.scope.version = rng.choice(["", "1.2"])
            scope_spans.scope.attributes.extend(key_values(rng))
        scope_spans.spans.extend(random_span(rng, 1000 * s + i) for i in range(rng.randrange(spans)))
    return resource


def payload_of(resource: ResourceSpans) -> bytes:
    return write_envelope(resource.SerializeToString())


def reference_or_error(objects: bytes) -> tuple[dict, dict] | None:
    """The former decoder's columns of the objects, None when the protobuf runtime cannot read them."""
    try:
        resource = ResourceSpans.FromString(objects)
    except DecodeError:
        return None
    return reference_otel_spans(resource), reference_spans(resource)


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,spans", [(seed, 12) for seed in range(60)] + [(seed, 300) for seed in range(4)])
def test_columns_equal_the_former_decoders_on_a_varied_corpus(seed: int, spans: int) -> None:
    """Short bodies are read by stepping, long ones (hundreds of spans in a scope) by doubling too."""
    resource = random_resource(seed, spans)
    payload = payload_of(resource)
    assert otel_columns(payload) == reference_otel_spans(resource)
    assert span_columns(payload) == reference_spans(resource)


def test_corpus_covers_every_value_kind() -> None:
    """The corpus is varied: the decoded properties hold every JSON type, events and links exist."""
    kinds: set[str] = set()
    events = links = kept = 0
    for seed in range(60):
        columns = otel_columns(payload_of(random_resource(seed)))
        kept += len(columns["name"])
        for properties in columns["properties"]:
            kinds.update(type(v).__name__ for v in jsonb.decode(properties).values())
        events += sum(len(jsonb.decode(e)) for e in columns["events"])
        links += sum(len(jsonb.decode(link)) for link in columns["links"])
    assert kinds >= {"str", "bool", "int", "float", "list", "dict", "NoneType"}
    assert events > 20 and links > 20 and kept > 100


def test_a_merged_status_and_a_repeated_field_read_as_protobuf_reads_them() -> None:
    """A singular field given twice keeps its last value; a message given twice is merged."""
    span = Span(trace_id=bytes(range(16)), span_id=bytes(8), start_time_unix_nano=T0, end_time_unix_nano=T0 + 1)
    twice = (
        span.SerializeToString()
        + Span(name="first").SerializeToString()
        + Span(name="second", status=Status(message="m")).SerializeToString()
        + Span(status=Status(code=2)).SerializeToString()
    )
    resource = ResourceSpans()
    resource.scope_spans.add()
    objects = resource.SerializeToString() + b""
    scope = length_delimited(2, twice)  # ScopeSpans.spans
    objects = length_delimited(2, scope)  # ResourceSpans.scope_spans
    columns = otel_columns(write_envelope(objects))
    assert columns["name"] == ["second"] and columns["status"] == [2] and columns["status_message"] == ["m"]
    assert columns == reference_or_error(objects)[0]


# Fields the schema does not know: field 127 varint, field 100 LEN, field 6 fixed32 (and 0x12 inside).
_UNKNOWN = b"\xf8\x07\x2a" + b"\xa2\x06\x03\x12\x01\x0a" + b"\x35\x12\x02\x0a\x04"


@pytest.mark.parametrize("spans", [8, 200])
def test_unknown_fields_are_skipped(spans: int) -> None:
    """Fields the schema does not know (a newer OTLP, another wire type) are skipped, as protobuf does,
    in short bodies and in long ones (past the stepped fields, where the walk tries every byte)."""
    resource = random_resource(6, spans)  # 3 scopes
    body = b""
    for scope_spans in resource.scope_spans:
        scope = length_delimited(1, scope_spans.scope.SerializeToString())
        for i, span in enumerate(scope_spans.spans):
            for _ in range(20):  # past the stepped fields of a span too
                span.attributes.add(key=f"k{i}", value=AnyValue(int_value=i))
            scope += length_delimited(2, span.SerializeToString() + _UNKNOWN) + (_UNKNOWN if i % 7 == 3 else b"")
        body += length_delimited(2, scope + _UNKNOWN)
    objects = _UNKNOWN + body
    expected = reference_or_error(objects)
    assert expected is not None and len(expected[0]["name"]) >= spans // 8
    assert otel_columns(write_envelope(objects)) == expected[0]
    assert span_columns(write_envelope(objects)) == expected[1]


@pytest.mark.parametrize("seed", range(8))
def test_truncated_or_corrupted_blocks_error_clearly_or_read_as_protobuf_reads_them(seed: int) -> None:
    """Cut or with a byte changed, a block either fails as it does for the protobuf runtime, with an
    OtlpBlockError naming what it is not, or gives the values the runtime gives."""
    rng = random.Random(seed)
    objects = random_resource(1000 + seed, 12 if seed % 2 else 100).SerializeToString()
    failures = 0
    for _ in range(40):
        damaged = bytearray(objects[: rng.randrange(len(objects) + 1)])
        if damaged and rng.random() < 0.5:
            damaged[rng.randrange(len(damaged))] = rng.choice([0x00, 0x0A, 0x12, 0x80, 0xFF, rng.randrange(256)])
        expected = reference_or_error(bytes(damaged))
        if expected is None:
            failures += 1
            with pytest.raises(OtlpBlockError, match="not a ResourceSpans"):
                otel_columns(write_envelope(bytes(damaged)))
        else:
            assert otel_columns(write_envelope(bytes(damaged))) == expected[0]
    assert failures > 0


@pytest.mark.parametrize(
    "objects,fragment",
    [
        (b"\x12\x05\x12\x03\x0a", "malformed field"),  # a span whose field runs past it
        (b"\x12\x80", "malformed field"),  # a length cut in its varint
        (b"\x13\x00", "malformed field"),  # a group (wire type 3)
        (b"\x00\x01", "malformed field"),  # field number 0
        (b"\x12\x07\x12\x05\x2a\x03\xff\xfe\xfd", "not valid UTF-8"),  # a span name
        (b"\x12" + b"\xff" * 10 + b"\x01", "malformed field"),  # a varint of 11 bytes
    ],
)
def test_malformed_blocks_raise_a_clear_error(objects: bytes, fragment: str) -> None:
    assert reference_or_error(objects) is None  # the protobuf runtime refuses them too
    with pytest.raises(OtlpBlockError, match=f"not a ResourceSpans: .*{fragment}"):
        otel_columns(write_envelope(objects))


def test_values_nested_past_the_protobuf_limit_raise_a_clear_error() -> None:
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(105):  # AnyValue.array_value (5) holding ArrayValue.values (1)
        array = length_delimited(1, value)
        value = length_delimited(5, array)
    attribute = b"\x0a\x04deep" + length_delimited(2, value)  # KeyValue
    span = Span(trace_id=bytes(range(16)), span_id=bytes(8), start_time_unix_nano=T0, end_time_unix_nano=T0 + 1)
    body = span.SerializeToString() + length_delimited(9, attribute)  # Span.attributes
    scope = length_delimited(2, body)
    objects = length_delimited(2, scope)
    assert reference_or_error(objects) is None  # past protobuf's recursion limit too
    with pytest.raises(OtlpBlockError, match="nested more than 100 deep"):
        otel_columns(write_envelope(objects))


def test_a_bad_envelope_is_still_named() -> None:
    with pytest.raises(OtlpBlockError, match="not CBOR"):
        otel_columns(b"\xff\x00")
    with pytest.raises(OtlpBlockError, match="'objects' byte string"):
        otel_columns(cbor2.dumps([1]))


def test_jsonb_members_match_the_one_value_encoder() -> None:
    """Scalars of every kind and nested containers, built as arrays, give views.jsonb's bytes."""
    numbers = [0, 1, -1, 127, -128, 128, -129, 32767, -32769, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)]
    floats = [0.0, -0.0, 1.5, float("nan"), float("inf"), -float("inf"), 1e-310]
    members = jsonb_arrays.Members.concat(
        [
            jsonb_arrays.integers(np.array(numbers)),
            jsonb_arrays.floats(np.array(floats)),
            jsonb_arrays.booleans(np.array([True, False])),
            jsonb_arrays.nulls(1),
        ]
    )
    [array] = jsonb_arrays.arrays(members, np.zeros(len(members), np.int64), 1).to_pylist()
    assert array == jsonb.encode([*numbers, *floats, True, False, None])
    raw = [b"", b"a", b"ab", b"abc", bytes(range(256))]
    encoded = jsonb_arrays.base64_strings(wire.Buffer.of(b"".join(raw)).binary(*_bounds(raw))).to_pylist()
    assert encoded == [base64.b64encode(r) for r in raw]


def _bounds(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum([len(p) for p in parts])
    return ends - [len(p) for p in parts], ends


@pytest.mark.parametrize(
    "objects",
    [
        b"\x1a\x02\xff\xfe",  # ResourceSpans.schema_url not UTF-8: no column reads it
        length_delimited(2, length_delimited(1, b"\x12\x01\xff") + length_delimited(1, b"\x12\x01a")),  # a scope
        # given twice, its first version not UTF-8 (merged, the last one wins, but both are checked)
    ],
)
def test_strings_no_column_reads_are_checked_as_protobuf_does(objects: bytes) -> None:
    assert reference_or_error(objects) is None
    with pytest.raises(OtlpBlockError, match="not a ResourceSpans"):
        otel_columns(write_envelope(objects))
