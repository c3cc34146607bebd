"""The OpenTelemetry Python SDK exporting to spanlake over OTLP/HTTP, then read back through the views."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, running_server
from lakehouse_support import LocalLake
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import Settings


@pytest.fixture
def exported(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[LocalLake, str]]:
    """A running `spanlake serve` that received one trace (3 nested spans), 2 log records and a counter
    from the OTel SDK, and a lake opened on the same database and store to read it back."""
    with (
        running_server(postgres, tmp_path) as server,
        Lake.open(Settings(database_url=server.database_url, object_store_uri=server.object_store_uri)) as opened,
    ):
        lake = LocalLake(opened, server.http_url)
        instance = str(uuid.uuid4())
        resource = Resource.create(
            {
                "service.name": "checkout",
                "service.namespace": "shop",
                "service.instance.id": instance,
                "host.name": "box-1",
            }
        )
        endpoint = lake.http_url + "/ingestion/otlp/v1"

        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/traces")))
        tracer = tracer_provider.get_tracer("shop.checkout")
        with (
            tracer.start_as_current_span("handle_order"),
            tracer.start_as_current_span("charge_card"),
            tracer.start_as_current_span("call_bank"),
        ):
            pass

        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint + "/logs")))
        logger = logging.getLogger("shop.orders")
        handler = LoggingHandler(logger_provider=logger_provider)
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning("order %s is late", 42)
        logger.error("card declined")
        logger.removeHandler(handler)

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint + "/metrics"), export_interval_millis=60_000
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader, InMemoryMetricReader()])
        meter_provider.get_meter("shop.metrics").create_counter("orders", unit="1").add(3)
        meter_provider.force_flush()
        for provider in (tracer_provider, logger_provider, meter_provider):
            provider.shutdown()
        lake.maintain()
        yield lake, instance


def test_otel_sdk_telemetry_lands_under_one_process(exported: tuple[LocalLake, str]) -> None:
    lake, instance = exported
    processes = lake.catalog("SELECT process_id, exe, computer, properties FROM processes")
    assert len(processes) == 1
    process = processes[0]
    assert process["exe"] == "shop/checkout" and process["computer"] == "box-1"
    assert ("otel.resource.service.instance.id", instance) in [(p["key"], p["value"]) for p in process["properties"]]
    streams = lake.catalog("SELECT process_id, tags, format FROM streams ORDER BY format")
    assert [(s["tags"], s["format"]) for s in streams] == [
        (["log"], "otlp/v1/logs"),
        (["metrics"], "otlp/v1/metrics"),
        (["trace"], "otlp/v1/traces"),
    ]
    assert {s["process_id"] for s in streams} == {process["process_id"]}


def test_otel_data_through_the_views(exported: tuple[LocalLake, str]) -> None:
    lake, instance = exported
    pid = (
        lake.sql(
            "SELECT process_id FROM processes WHERE property_get(properties,"
            f" 'otel.resource.service.instance.id') = '{instance}'"
        )
        .column(0)[0]
        .as_py()
    )
    logs = lake.sql(f"SELECT level, msg, target FROM view_instance('log_entries', '{pid}') ORDER BY time").to_pylist()
    assert [(r["level"], r["msg"]) for r in logs] == [(3, "order 42 is late"), (2, "card declined")]
    # Attributes keep their JSON types; property_get reads a number as its JSON text.
    lines = lake.sql(
        f"SELECT properties_length(properties) AS n, property_get(properties, 'code.line.number') AS a,"
        f" property_get(properties, 'code.lineno') AS b FROM view_instance('log_entries', '{pid}')"
    )
    assert all(n >= 1 for n in lines.column("n").to_pylist())
    assert all(
        (a or b or "").isdigit()
        for a, b in zip(lines.column("a").to_pylist(), lines.column("b").to_pylist(), strict=True)
    )
    measures = lake.sql(f"SELECT name, value FROM view_instance('measures', '{pid}')").to_pylist()
    # force_flush and shutdown each export the cumulative sum.
    assert measures and {(m["name"], m["value"]) for m in measures} == {("orders", 3.0)}
    spans = lake.sql(
        f"SELECT name, event_type, depth, target FROM view_instance('async_events', '{pid}') ORDER BY time, event_type"
    ).to_pylist()
    begins = {r["name"]: r["depth"] for r in spans if r["event_type"] == "begin"}
    assert begins == {"handle_order": 0, "charge_card": 1, "call_bank": 2}
    assert sum(r["event_type"] == "end" for r in spans) == 3
    assert {r["target"] for r in spans} == {"shop.checkout"}
