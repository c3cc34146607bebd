"""The log_stats, images and otel_spans views of a running `spanlake serve`, read with the micromegas
client: micromegas's schemas (written here from its Rust sources), rows from the genuine Rust fixtures
(uploaded over HTTP as the Rust sink posts them) and from the OpenTelemetry SDK over OTLP/HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import micromegas
import pyarrow as pa
import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, wait_until
from lakehouse_support import EXPECTED, PROCESS_ID
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from spanlake.views import images, jsonb, log_stats, otel_spans
from spanlake.views.properties import decode_jsonb_object

DICT = pa.dictionary(pa.int32(), pa.utf8())
DICT_BIN = pa.dictionary(pa.int32(), pa.binary())
TS = pa.timestamp("ns", tz="+00:00")


def field(name: str, kind: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, kind, nullable=nullable)


# Written from micromegas: images_table.rs, otel/spans_table.rs, and log_stats_view.rs's extract query
# over log_entries as DataFusion types it (date_bin keeps the timestamp type, nullable; count(*) not null).
MICROMEGAS_SCHEMAS = {
    "images": pa.schema(
        [
            *(field(n, DICT) for n in ("process_id", "stream_id", "block_id")),
            field("insert_time", TS),
            *(field(n, DICT) for n in ("exe", "username", "computer")),
            field("time", TS),
            field("name", pa.utf8()),
            field("format", DICT),
            field("payload_size", pa.int64()),
            field("data", pa.binary()),
        ]
    ),
    "otel_spans": pa.schema(
        [
            *(field(n, DICT) for n in ("process_id", "stream_id", "block_id")),
            field("insert_time", TS),
            *(field(n, pa.utf8()) for n in ("exe", "username", "computer")),
            field("process_properties", DICT_BIN),
            field("trace_id", pa.binary(16)),
            field("span_id", pa.binary(8)),
            field("parent_span_id", pa.binary(8), nullable=True),
            field("start_time", TS),
            field("end_time", TS),
            field("duration", pa.int64()),
            *(field(n, DICT) for n in ("name", "kind", "status")),
            field("status_message", pa.utf8(), nullable=True),
            field("properties", DICT_BIN),
            field("events", pa.binary()),
            field("links", pa.binary()),
        ]
    ),
    "log_stats": pa.schema(
        [
            field("time_bin", TS, nullable=True),
            field("process_id", DICT),
            field("level", pa.int32()),
            field("target", DICT),
            field("count", pa.int64()),
        ]
    ),
}


@pytest.mark.parametrize("view", [images.VIEW, otel_spans.VIEW, log_stats.VIEW], ids=lambda v: v.name)
def test_view_schemas_are_micromegas_schemas(view) -> None:
    assert view.schema == MICROMEGAS_SCHEMAS[view.name]
    assert [f.nullable for f in view.schema] == [f.nullable for f in MICROMEGAS_SCHEMAS[view.name]]


@dataclass
class Traced:
    process_id: str
    trace_id: bytes
    span_ids: dict[str, bytes]


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    root = tmp_path_factory.mktemp("views15")
    server = SpanlakeServer(
        database_url=postgres.new_database(), data_dir=root / "data", object_store_uri=(root / "lake").as_uri()
    )
    server.start()
    try:
        for step in EXPECTED["upload_sequence"]:
            status, text = post(server.http_url + step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes())
            assert status == 200, (step, text)
        yield server
    finally:
        server.stop()


def client(server: SpanlakeServer, **options: bool) -> micromegas.flightsql.client.FlightSQLClient:
    return micromegas.connect(server.flightsql_url, **options)


# --- log_stats -------------------------------------------------------------------------------------


def fixture_log_events() -> list[dict]:
    (stream,) = [s for s in EXPECTED["streams"] if "log" in s["tags"]]
    return [event for block in stream["blocks"] for event in block["events"]]


def test_log_stats_counts_the_fixture_logs(server: SpanlakeServer) -> None:
    sql = "SELECT time_bin, process_id, level, target, count FROM log_stats ORDER BY time_bin, level, target"

    def counted() -> int:
        frame = client(server).query(f"SELECT sum(count) AS n FROM log_stats WHERE process_id = '{PROCESS_ID}'")
        return int(frame["n"][0]) if len(frame) and frame["n"][0] == frame["n"][0] else 0

    wait_until(lambda: counted() == len(fixture_log_events()), 60, "log_stats to count every fixture log")
    stats = client(server, preserve_dictionary=True).query_arrow(sql)
    assert stats.schema == MICROMEGAS_SCHEMAS["log_stats"]
    for row in stats.to_pylist():
        assert row["process_id"] == PROCESS_ID and row["time_bin"].second == 0 and row["time_bin"].microsecond == 0
    assert sum(stats.column("count").to_pylist()) == len(fixture_log_events())
    # Every level the process logged (tagged properties may override a descriptor's level and target).
    assert set(stats.column("level").to_pylist()) == {e["level"] for e in fixture_log_events()} == set(range(1, 7))
    # Against micromegas's own definition, evaluated by DataFusion over log_entries.
    definition = client(server).query(
        "SELECT date_bin('1 minute', time) AS time_bin, level, target, count(*) AS count FROM log_entries"
        f" WHERE process_id = '{PROCESS_ID}' GROUP BY level, target, time_bin ORDER BY time_bin, level, target"
    )
    assert [tuple(r) for r in definition.itertuples(index=False)] == [
        (r["time_bin"], r["level"], r["target"], r["count"]) for r in stats.to_pylist()
    ]


def test_log_stats_has_only_a_global_instance(server: SpanlakeServer) -> None:
    with pytest.raises(Exception, match="log_stats has only a global instance"):
        client(server).query(f"SELECT * FROM view_instance('log_stats', '{PROCESS_ID}')")
    assert len(client(server).query("SELECT * FROM view_instance('log_stats', 'global')")) > 0


def test_log_stats_merge_sums_counts_per_group() -> None:
    minute = 60 * 10**9
    rows = pa.table(
        {
            "time_bin": pa.array([0, minute, 0, 0], pa.int64()).cast(TS),
            "process_id": pa.array(["p", "p", "p", "q"]).dictionary_encode(),
            "level": pa.array([4, 4, 4, 2], pa.int32()),
            "target": pa.array(["a", "a", "a", "a"]).dictionary_encode(),
            "count": pa.array([3, 1, 2, 5], pa.int64()),
        }
    )
    merged = log_stats.merge(rows)
    assert merged.schema == log_stats.SCHEMA
    assert [(r["time_bin"].timestamp(), r["process_id"], r["count"]) for r in merged.to_pylist()] == [
        (0, "p", 5),
        (0, "q", 5),
        (60, "p", 1),
    ]


# --- images ----------------------------------------------------------------------------------------


def test_images_from_the_fixture_image_stream(server: SpanlakeServer) -> None:
    (stream,) = [s for s in EXPECTED["streams"] if "image" in s["tags"]]
    (block,) = stream["blocks"]
    (event,) = block["events"]
    table = client(server, preserve_dictionary=True).query_arrow(
        f"SELECT * FROM view_instance('images', '{PROCESS_ID}')"
    )
    assert table.schema == MICROMEGAS_SCHEMAS["images"]
    (row,) = table.to_pylist()
    process = EXPECTED["process"]["process_info"]
    assert (row["process_id"], row["stream_id"], row["block_id"]) == (
        PROCESS_ID,
        stream["stream_id"],
        block["block_id"],
    )
    assert (row["exe"], row["username"], row["computer"]) == (process["exe"], process["username"], process["computer"])
    assert (row["name"], row["format"]) == (event["name"], event["format"]) == ("thumbnail", "png")
    assert row["data"] == bytes.fromhex(event["data_hex"]) and row["payload_size"] == 12
    # The block's own clock (PostgreSQL keeps its times to the microsecond).
    assert abs(table.column("time").cast(pa.int64())[0].as_py() - event["time_ns_blockmeta"]) < 2_000


# --- otel_spans ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced(server: SpanlakeServer) -> Traced:
    """A trace from the OTel SDK: a SERVER root with an event and a failing CLIENT child with a link."""
    instance = str(uuid.uuid4())
    resource = Resource.create({"service.name": "cart", "service.instance.id": instance, "host.name": "h1"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=server.http_url + "/ingestion/otlp/v1/traces"))
    )
    tracer = provider.get_tracer("cart.http", "1.2")
    with tracer.start_as_current_span("GET /cart", kind=SpanKind.SERVER, attributes={"http.route": "/cart"}) as root:
        root.add_event("cache.miss", {"key": "c1", "size": 3})
        linked = root.get_span_context()
        with tracer.start_as_current_span("SELECT carts", kind=SpanKind.CLIENT, links=[Link(linked, {"why": 1})]) as db:
            db.set_status(Status(StatusCode.ERROR, "timeout"))
    provider.shutdown()
    pid = None

    def found() -> bool:
        nonlocal pid
        frame = client(server).query(
            "SELECT process_id FROM processes WHERE"
            f" property_get(properties, 'otel.resource.service.instance.id') = '{instance}'"
        )
        pid = frame["process_id"][0] if len(frame) else None
        return pid is not None

    wait_until(found, 30, "the OTel process")
    ids = {
        "GET /cart": linked.span_id.to_bytes(8, "big"),
        "SELECT carts": db.get_span_context().span_id.to_bytes(8, "big"),
    }
    return Traced(pid, linked.trace_id.to_bytes(16, "big"), ids)


def test_otel_spans_rows(server: SpanlakeServer, traced: Traced) -> None:
    table = client(server, preserve_dictionary=True).query_arrow(
        f"SELECT * FROM view_instance('otel_spans', '{traced.process_id}') ORDER BY start_time"
    )
    assert table.schema == MICROMEGAS_SCHEMAS["otel_spans"]
    root, child = table.to_pylist()
    assert (root["name"], root["kind"], root["status"], root["status_message"]) == (
        "GET /cart",
        "SERVER",
        "UNSET",
        None,
    )
    assert (child["name"], child["kind"], child["status"], child["status_message"]) == (
        "SELECT carts",
        "CLIENT",
        "ERROR",
        "timeout",
    )
    assert root["trace_id"] == child["trace_id"] == traced.trace_id
    assert (root["span_id"], child["span_id"]) == (traced.span_ids["GET /cart"], traced.span_ids["SELECT carts"])
    assert root["parent_span_id"] is None and child["parent_span_id"] == root["span_id"]
    assert {(row["exe"], row["computer"]) for row in (root, child)} == {("cart", "h1")}
    durations = (
        table.column("end_time").cast(pa.int64()).to_numpy() - table.column("start_time").cast(pa.int64()).to_numpy()
    )
    assert table.column("duration").to_pylist() == durations.tolist()
    root_properties = jsonb.decode(root["properties"])
    assert root_properties["http.route"] == "/cart"
    assert (root_properties["otel.scope.name"], root_properties["otel.scope.version"]) == ("cart.http", "1.2")
    [event] = jsonb.decode(root["events"])
    assert (event["name"], event["attributes"]) == ("cache.miss", {"key": "c1", "size": 3})
    assert root["start_time"].timestamp() <= event["time"] / 1e9 <= root["end_time"].timestamp() + 1e-6
    assert jsonb.decode(child["events"]) == [] and jsonb.decode(root["links"]) == []
    assert jsonb.decode(child["links"]) == [
        {"trace_id": traced.trace_id.hex(), "span_id": traced.span_ids["GET /cart"].hex(), "attributes": {"why": 1}}
    ]
    assert decode_jsonb_object(root["process_properties"])["otel.resource.service.name"] == "cart"


def test_otel_spans_sit_next_to_their_async_events(server: SpanlakeServer, traced: Traced) -> None:
    events = client(server).query(
        f"SELECT name, event_type, depth FROM view_instance('async_events', '{traced.process_id}') ORDER BY time"
    )
    assert sorted(zip(events["name"], events["event_type"], events["depth"], strict=True)) == [
        ("GET /cart", "begin", 0),
        ("GET /cart", "end", 0),
        ("SELECT carts", "begin", 1),
        ("SELECT carts", "end", 1),
    ]
    spans = client(server).query(
        f"SELECT name FROM view_instance('otel_spans', '{traced.process_id}')"
        " WHERE status = 'ERROR' AND property_get(properties, 'otel.scope.name') = 'cart.http'"
    )
    assert spans["name"].tolist() == ["SELECT carts"]


def test_images_of_a_process_without_images_is_empty(server: SpanlakeServer, traced: Traced) -> None:
    assert len(client(server).query(f"SELECT * FROM view_instance('images', '{traced.process_id}')")) == 0


def test_otel_spans_refuse_the_global_instance(server: SpanlakeServer) -> None:
    with pytest.raises(Exception, match="otel_spans has no global instance"):
        client(server).query("SELECT * FROM view_instance('otel_spans', 'global')")
    assert server.process.poll() is None
