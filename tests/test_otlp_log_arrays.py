"""OTLP logs blocks read from the protobuf wire format with numpy (`lakehouse/otlp/log_arrays.py`) give
the values the former per-record decoder gave (kept here as the reference, walking protobuf objects), on
a generated corpus of bodies and attributes of every type, times, severities, ids and scopes; malformed
or truncated blocks give a clear error, or, where the protobuf runtime still reads them, the same values."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from test_otlp_span_arrays import _TEXTS, T0, any_value, key_values

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp import decode
from spanlake.lakehouse.otlp.decode import any_value_to_json, attributes_object, scope_extras
from spanlake.lakehouse.otlp.envelope import write_envelope
from spanlake.lakehouse.otlp.rust_text import rust_display_f64
from spanlake.lakehouse.protobuf_wire import length_delimited
from spanlake.views import jsonb

FALLBACK_NS = T0 - 7
_LEVELS = [4] + [6] * 4 + [5] * 4 + [4] * 4 + [3] * 4 + [2] * 4 + [1] * 4


# --- the reference: the former decoder, one record at a time ---------------------------------------


def _i64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def body_text(value: AnyValue) -> str:
    """micromegas's text of a log body (the former `any_value_to_string`)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return rust_display_f64(value.double_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("bytes_value", "array_value", "kvlist_value"):
        converted = any_value_to_json(value)
        return converted if kind == "bytes_value" else jsonb.compact_json(converted)
    return ""


def _properties(record: LogRecord, extras: list[tuple[str, Any]]) -> bytes:
    more = list(extras)
    if len(record.trace_id) == 16:
        more.append(("otel.trace_id", record.trace_id.hex()))
    if len(record.span_id) == 8:
        more.append(("otel.span_id", record.span_id.hex()))
    if record.severity_text:
        more.append(("otel.severity_text", record.severity_text))
    if record.event_name:
        more.append(("otel.event_name", record.event_name))
    return jsonb.encode(attributes_object(record.attributes, more))


def reference_logs(resource: ResourceLogs) -> dict[str, list]:
    """The former `extract_logs`, as plain columns."""
    rows: dict[str, list] = {"time_ns": [], "level": [], "msg": [], "target": [], "properties": []}
    for scope_logs in resource.scope_logs:
        extras = scope_extras(scope_logs.scope, scope_logs.schema_url)
        for r in scope_logs.log_records:
            time_ns = _i64(r.time_unix_nano) or _i64(r.observed_time_unix_nano) or FALLBACK_NS
            rows["time_ns"].append(time_ns)
            rows["level"].append(_LEVELS[r.severity_number] if 0 <= r.severity_number < len(_LEVELS) else 4)
            rows["msg"].append(body_text(r.body) if r.HasField("body") else "")
            rows["target"].append(scope_logs.scope.name)
            rows["properties"].append(_properties(r, extras))
    return rows


def log_columns(payload: bytes) -> dict[str, list]:
    c = decode.read_logs(payload, FALLBACK_NS)
    return {
        "time_ns": c.time_ns.tolist(),
        "level": c.level.tolist(),
        "msg": c.msg.to_pylist(),
        "target": [c.target.values[i] for i in c.target.codes],
        "properties": c.properties.to_pylist(),
    }


# --- a generated corpus ----------------------------------------------------------------------------


def random_record(rng: random.Random, i: int) -> LogRecord:
    record = LogRecord(severity_number=rng.choice([0, 1, 5, 9, 13, 17, 21, 24, 25, 99]))
    record.time_unix_nano = rng.choice([0, T0 + i, T0 + i, 2**64 - 3])
    record.observed_time_unix_nano = rng.choice([0, T0 + 2 * i])
    record.severity_text = rng.choice(["", "INFO", "warn"])
    record.event_name = rng.choice(["", "", "login"])
    record.trace_id = rng.choice([b"", rng.randbytes(16), rng.randbytes(8)])
    record.span_id = rng.choice([b"", rng.randbytes(8), rng.randbytes(16)])
    record.flags = rng.choice([0, 1])
    record.attributes.extend(key_values(rng))
    if rng.random() < 0.9:
        body = rng.choice([AnyValue(string_value=rng.choice(_TEXTS)), any_value(rng)])
        record.body.CopyFrom(body)
    return record


def random_logs(seed: int, records: int = 12) -> ResourceLogs:
    rng = random.Random(seed)
    resource = ResourceLogs(schema_url=rng.choice(["", "https://resource"]))
    resource.resource.attributes.extend(key_values(rng))
    for s in range(rng.randrange(4)):
        scope_logs = resource.scope_logs.add(schema_url=rng.choice(["", "https://schemas/1.21"]))
        if rng.random() < 0.8:
            scope_logs.scope.name = rng.choice(["", "lib", "日本"])
            scope_logs.scope.version = rng.choice(["", "1.2"])
            scope_logs.scope.attributes.extend(key_values(rng))
        scope_logs.log_records.extend(random_record(rng, 1000 * s + i) for i in range(rng.randrange(records)))
    return resource


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,records", [(seed, 12) for seed in range(50)] + [(seed, 300) for seed in range(3)])
def test_columns_equal_the_former_decoders_on_a_varied_corpus(seed: int, records: int) -> None:
    resource = random_logs(seed, records)
    assert log_columns(write_envelope(resource.SerializeToString())) == reference_logs(resource)


def test_corpus_covers_every_body_kind() -> None:
    kinds = {
        record.body.WhichOneof("value")
        for seed in range(50)
        for scope in random_logs(seed).scope_logs
        for record in scope.log_records
    }
    assert kinds >= {"string_value", "bool_value", "int_value", "double_value", "bytes_value", "array_value"}
    assert kinds >= {"kvlist_value", "string_value_strindex", None}


@pytest.mark.parametrize("seed", range(6))
def test_truncated_or_corrupted_blocks_error_clearly_or_read_as_protobuf_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    objects = random_logs(500 + seed, 12 if seed % 2 else 80).SerializeToString()
    failures = 0
    for _ in range(40):
        damaged = bytearray(objects[: rng.randrange(len(objects) + 1)])
        if damaged and rng.random() < 0.5:
            damaged[rng.randrange(len(damaged))] = rng.choice([0x00, 0x0A, 0x12, 0x80, 0xFF, rng.randrange(256)])
        try:
            expected = reference_logs(ResourceLogs.FromString(bytes(damaged)))
        except DecodeError:
            failures += 1
            with pytest.raises(OtlpBlockError, match="not a ResourceLogs"):
                log_columns(write_envelope(bytes(damaged)))
        else:
            assert log_columns(write_envelope(bytes(damaged))) == expected
    assert failures > 0


def test_an_empty_block_has_no_rows() -> None:
    columns = log_columns(write_envelope(b""))
    assert columns == {"time_ns": [], "level": [], "msg": [], "target": [], "properties": []}
    assert np.asarray(decode.read_logs(write_envelope(b""), 0).time_ns).dtype == np.int64


@pytest.mark.parametrize(
    "objects",
    [
        b"\x1a\x02\xff\xfe",  # ResourceLogs.schema_url not UTF-8: no column reads it
        length_delimited(2, length_delimited(1, b"\x12\x01\xff") + length_delimited(1, b"\x12\x01a")),  # a scope
        # given twice, its first version not UTF-8 (merged, the last one wins, but both are checked)
    ],
)
def test_strings_no_column_reads_are_checked_as_protobuf_does(objects: bytes) -> None:
    with pytest.raises(DecodeError):
        ResourceLogs.FromString(objects)
    with pytest.raises(OtlpBlockError, match="not a ResourceLogs"):
        log_columns(write_envelope(objects))
