"""process_spans(...), parse_block(...), get_payload(...) and perfetto_trace_chunks's argument errors
on a running `spanlake serve` holding micromegas's Rust fixtures, through the micromegas client and
ADBC; checked against the views themselves and against the Rust decoder's own output (rust_parsed/)."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, wait_until
from served_support import (
    ADMIN_KEY,
    EXPECTED,
    PROCESS_ID,
    READER_KEY,
    adbc_connect,
    micromegas_client,
    served_lakehouse,
)
from test_flightsql_support import grpc_status
from test_otlp_ingest import T0, kv, log, logs_request, metrics_request, resource_attrs, traces_request

from spanlake.views import jsonb

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
CPU_STREAMS = [s for s in EXPECTED["streams"] if "cpu" in s["tags"]]
ZERO = "00000000-0000-0000-0000-000000000000"
ALL_BLOCKS = [b for s in EXPECTED["streams"] for b in s["blocks"]]
LOG_BLOCK = next(s for s in EXPECTED["streams"] if "log" in s["tags"])["blocks"][1]


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("blocks")) as server:
        yield server


def _failure(run: object) -> tuple[str | None, str]:
    with pytest.raises(Exception) as caught:
        run()  # type: ignore[operator]
    return grpc_status(caught.value)


def _thread_name(stream: dict) -> str:
    return f"{stream['properties']['thread-name']}-{stream['properties']['thread-id']}"


def _async_pairs(served: SpanlakeServer) -> list[dict]:
    return (
        micromegas_client(served, READER_KEY)
        .query_arrow(f"""
        SELECT b.span_id AS id, CAST(b.time AS BIGINT) AS b, CAST(e.time AS BIGINT) AS e
        FROM (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'begin') b
        JOIN (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'end') e
        ON b.span_id = e.span_id WHERE b.time < e.time""")
        .to_pylist()
    )


def test_process_spans_thread_holds_every_thread_span(served: SpanlakeServer) -> None:
    client = micromegas_client(served, READER_KEY)
    spans = client.query_arrow(f"SELECT * FROM process_spans('{PROCESS_ID}', 'thread')")
    assert spans.schema.names[:2] == ["stream_id", "thread_name"]
    assert spans.schema.field("stream_id").type == pa.string() and spans.schema.field("begin").type.tz == "+00:00"
    counts = collections.Counter(spans.column("stream_id").to_pylist())
    for stream in CPU_STREAMS:
        instance = client.query_arrow(
            f"SELECT id, CAST(begin AS BIGINT) AS b FROM view_instance('thread_spans', '{stream['stream_id']}')"
        )
        assert counts[stream["stream_id"]] == instance.num_rows > 0
    names = dict(zip(spans.column("stream_id").to_pylist(), spans.column("thread_name").to_pylist(), strict=True))
    assert names == {s["stream_id"]: _thread_name(s) for s in CPU_STREAMS}
    ordered = spans.column("stream_id").to_pylist()
    assert ordered == sorted(ordered)  # thread by thread, by stream id
    begins, ends = (spans.column(name).cast(pa.int64()).to_numpy() for name in ("begin", "end"))
    assert (spans.column("duration").to_numpy() == ends - begins).all()


def test_process_spans_async_pairs_begin_and_end_events(served: SpanlakeServer) -> None:
    spans = micromegas_client(served, READER_KEY).query_arrow(
        f'SELECT id, CAST(begin AS BIGINT) AS b, CAST("end" AS BIGINT) AS e, duration, stream_id, thread_name'
        f" FROM process_spans('{PROCESS_ID}', 'async')"
    )
    pairs = _async_pairs(served)
    assert len(pairs) > 0
    assert sorted((r["id"], r["b"], r["e"]) for r in spans.to_pylist()) == sorted(
        (p["id"], p["b"], p["e"]) for p in pairs
    )
    assert set(spans.column("stream_id").to_pylist()) == {""} and set(spans.column("thread_name").to_pylist()) == {
        "async"
    }
    assert all(r["duration"] == r["e"] - r["b"] for r in spans.to_pylist())
    begins = spans.column("b").to_pylist()
    assert begins == sorted(begins)


def test_process_spans_keeps_the_spans_of_the_query_range(served: SpanlakeServer) -> None:
    client = micromegas_client(served, READER_KEY)
    spans = client.query_arrow(f"SELECT CAST(begin AS BIGINT) AS b FROM process_spans('{PROCESS_ID}', 'thread')")
    begins = sorted(spans.column("b").to_pylist())
    # A range starting mid-way: the spans meeting it, as view_instance gives them under the same range.
    begin = pd.Timestamp(begins[len(begins) // 2], tz="UTC")
    end = begin + pd.Timedelta(hours=1)
    ranged = client.query(f"SELECT count(*) AS n FROM process_spans('{PROCESS_ID}', 'thread')", begin, end)["n"][0]
    expected = sum(
        client.query(f"SELECT count(*) AS n FROM view_instance('thread_spans', '{s['stream_id']}')", begin, end)["n"][0]
        for s in CPU_STREAMS
    )
    assert 0 < ranged == expected < len(begins)


def test_process_spans_both_is_threads_then_async(served: SpanlakeServer) -> None:
    with adbc_connect(served, key=READER_KEY) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT thread_name, count(*) FROM process_spans('{PROCESS_ID}', 'both') GROUP BY thread_name")
        counts = dict(cur.fetchall())
    assert counts["async"] == len(_async_pairs(served))
    assert set(counts) == {"async", *(_thread_name(s) for s in CPU_STREAMS)}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT * FROM process_spans('not-a-uuid', 'both')",
            "First argument to process_spans must be a valid UUID (the process ID), given 'not-a-uuid'",
        ),
        (
            f"SELECT * FROM process_spans('{PROCESS_ID}', 'all')",
            "span_types must be 'thread', 'async', or 'both', given: all",
        ),
        (f"SELECT * FROM process_spans('{PROCESS_ID}')", "process_spans takes 2 arguments: (process_id, span_types)"),
        ("SELECT * FROM process_spans(42, 'both')", "First argument of process_spans must be a string, given int64"),
        (
            f"SELECT * FROM perfetto_trace_chunks('{PROCESS_ID}', 'both', TIMESTAMP '2026-11-23T08:00:00Z')",
            "Fourth argument to perfetto_trace_chunks must be a timestamp (end time), given None",
        ),
        (
            f"SELECT * FROM perfetto_trace_chunks('{PROCESS_ID}', 'both', 'soon', '2026-11-23T09:00:00Z')",
            'Third argument to perfetto_trace_chunks must be a timestamp (start time), given Utf8("soon")',
        ),
        ("SELECT * FROM parse_block('nope')", "parse_block: 'nope' is not a valid block id"),
        (
            "SELECT * FROM parse_block('00000000-0000-0000-0000-000000000000')",
            "parse_block: block '00000000-0000-0000-0000-000000000000' not found in `blocks`.",
        ),
        (
            f"SELECT get_payload('{PROCESS_ID}', 'x', 'y') AS p",
            "get_payload: 'x' is not a valid stream id",
        ),
        (
            f"SELECT get_payload('{PROCESS_ID}', '{LOG_BLOCK['stream_id']}', '{ZERO}') AS p",
            f"get_payload: no payload stored for block {ZERO}",
        ),
    ],
)
def test_bad_arguments_are_invalid_arguments(served: SpanlakeServer, sql: str, message: str) -> None:
    code, text = _failure(lambda: micromegas_client(served, READER_KEY).query(sql))
    assert code == "INVALID_ARGUMENT" and message in text, text


def _micromegas_json(value: object) -> object:
    """rust_parsed's notation → what micromegas's parse_block writes as JSONB (u8 as a number,
    bytes as "<binary N bytes>")."""
    if isinstance(value, dict):
        if set(value) == {"__u8"}:
            return value["__u8"]
        if set(value) == {"__bytes_hex"}:
            return f"<binary {len(value['__bytes_hex']) // 2} bytes>"
        return {k: _micromegas_json(v) for k, v in value.items()}
    return value


def test_parse_block_gives_each_object_as_jsonb(served: SpanlakeServer) -> None:
    offset = LOG_BLOCK["object_offset"]
    rows = micromegas_client(served, READER_KEY).query_arrow(
        f"SELECT object_index, type_name, value FROM parse_block('{LOG_BLOCK['block_id']}') ORDER BY object_index"
    )
    rust = json.loads((RUST_FIXTURES / "rust_parsed" / f"{LOG_BLOCK['block_id']}.json").read_text())["objects"]
    assert offset > 0 and rows.column("object_index").to_pylist() == list(range(offset, offset + len(rust)))
    assert rows.column("type_name").to_pylist() == [o["__type"] for o in rust]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b["block_id"][:8] for b in ALL_BLOCKS])
def test_parse_block_values_match_the_rust_decoder(served: SpanlakeServer, block: dict) -> None:
    rows = micromegas_client(served, READER_KEY).query_arrow(
        f"SELECT value FROM parse_block('{block['block_id']}') ORDER BY object_index"
    )
    rust = json.loads((RUST_FIXTURES / "rust_parsed" / f"{block['block_id']}.json").read_text())["objects"]
    assert [jsonb.decode(v) for v in rows.column("value").to_pylist()] == [_micromegas_json(o) for o in rust]


def test_get_payload_returns_the_stored_bytes(served: SpanlakeServer) -> None:
    blocks = micromegas_client(served, READER_KEY).query(
        "SELECT block_id, get_payload(process_id, stream_id, block_id) AS payload FROM blocks ORDER BY block_id LIMIT 5"
    )
    assert len(blocks) == 5
    for block_id, payload in zip(blocks["block_id"], blocks["payload"], strict=True):
        assert payload == served.read_object(f"blobs/{PROCESS_ID}/{_stream_of(block_id)}/{block_id}")


def _stream_of(block_id: str) -> str:
    return next(b["stream_id"] for s in EXPECTED["streams"] for b in s["blocks"] if b["block_id"] == block_id)


def _otlp_block(served: SpanlakeServer, signal: str, request: Any, instance: str) -> str:
    """POSTs one OTLP request and returns the id of the block it stored."""
    status, text = post(
        f"{served.http_url}/ingestion/otlp/v1/{signal}",
        request.SerializeToString(),
        {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert status == 200, text
    client = micromegas_client(served, READER_KEY)
    processes = (
        "SELECT process_id FROM processes"
        f" WHERE property_get(properties, 'otel.resource.service.instance.id') = '{instance}'"
    )
    wait_until(lambda: len(client.query(processes)) == 1, 30, f"the process of {instance}")
    process_id = client.query(processes)["process_id"][0]
    sql = f"SELECT block_id FROM blocks WHERE process_id = '{process_id}' AND \"streams.format\" = 'otlp/v1/{signal}'"
    wait_until(lambda: len(client.query(sql)) == 1, 30, f"the otlp/v1/{signal} block of {instance}")
    return client.query(sql)["block_id"][0]


def test_parse_block_reads_an_otlp_logs_block(served: SpanlakeServer) -> None:
    """micromegas's test_otlp_logs_parse_block_e2e: one row per log record, its attributes under __attributes."""
    records = [log(T0 + i, f"e2e log {i}") for i in range(5)]
    for i, record in enumerate(records):
        record.attributes.append(kv("seq", str(i)))
    block_id = _otlp_block(served, "logs", logs_request(*records, attrs=resource_attrs("parse-logs")), "parse-logs")
    # The values are decoded here: jsonb_get over parse_block's Binary `value` is the functions' type layer.
    rows = micromegas_client(served, READER_KEY).query_arrow(
        f"SELECT object_index, type_name, value FROM parse_block('{block_id}') ORDER BY object_index"
    )
    values = [jsonb.decode(v) for v in rows.column("value").to_pylist()]
    assert rows.column("object_index").to_pylist() == [0, 1, 2, 3, 4]
    assert set(rows.column("type_name").to_pylist()) == {"otlp.LogRecord"}
    assert [v["__attributes"]["seq"] for v in values] == ["0", "1", "2", "3", "4"]
    assert [v["body"] for v in values] == [{"stringValue": f"e2e log {i}"} for i in range(5)]
    assert {v["__scope"]["otel.scope.name"] for v in values} == {"app.module"}
    assert {v["__resource"]["service.instance.id"] for v in values} == {"parse-logs"}
    code, message = _failure(lambda: micromegas_client(served).query(f"SELECT * FROM parse_block('{ZERO}')"))
    assert code == "INVALID_ARGUMENT" and f"block '{ZERO}' not found" in message, message


def test_parse_block_reads_otlp_spans_and_metric_points(served: SpanlakeServer) -> None:
    traces, metrics = traces_request(), metrics_request()
    for request in (traces.resource_spans[0], metrics.resource_metrics[0]):
        del request.resource.attributes[:]
        request.resource.attributes.extend(resource_attrs("parse-traces-metrics"))
    spans_block = _otlp_block(served, "traces", traces, "parse-traces-metrics")
    metrics_block = _otlp_block(served, "metrics", metrics, "parse-traces-metrics")
    client = micromegas_client(served, READER_KEY)
    spans = client.query_arrow(f"SELECT type_name, value FROM parse_block('{spans_block}') ORDER BY object_index")
    values = [jsonb.decode(v) for v in spans.column("value").to_pylist()]
    assert spans.column("type_name").to_pylist() == ["otlp.Span", "otlp.Span"]
    assert [(v["name"], v["spanId"], v["parentSpanId"]) for v in values] == [
        ("root", "0000000000000001", ""),
        ("child", "0000000000000002", "0000000000000001"),
    ]
    assert values[0]["traceId"] == bytes(range(16)).hex()
    points = client.query_arrow(f"SELECT type_name, value FROM parse_block('{metrics_block}') ORDER BY object_index")
    metric_of = [jsonb.decode(v)["__metric"] for v in points.column("value").to_pylist()]
    assert points.column("type_name").to_pylist() == [
        "otlp.NumberDataPoint",
        "otlp.NumberDataPoint",
        "otlp.NumberDataPoint",
        "otlp.HistogramDataPoint",
        "otlp.SummaryDataPoint",
    ]
    assert [(m["name"], m["otel.metric.kind"]) for m in metric_of] == [
        ("memory", "gauge"),
        ("memory", "gauge"),
        ("requests", "sum"),
        ("latency", "histogram"),
        ("sizes", "summary"),
    ]
    assert (metric_of[2]["otel.metric.is_monotonic"], metric_of[2]["otel.metric.aggregation_temporality"]) == (True, 2)
