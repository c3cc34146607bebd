"""`trace_spans` under access control, through a running `spanlake serve`: one trace across two
OpenTelemetry services of two teams (each exporting OTLP/HTTP with its team's ingestion key); a reader
of one team sees that team's spans of the trace only, an admin sees them all."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from micromegas.web_client import WebClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from served_support import ADMIN_KEY, micromegas_client
from test_access_control import StaticToken, api


def _provider(server: SpanlakeServer, service: str, key: str) -> TracerProvider:
    resource = Resource.create({"service.name": service, "service.instance.id": str(uuid.uuid4())})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(
        endpoint=server.http_url + "/ingestion/otlp/v1/traces", headers={"Authorization": f"Bearer {key}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture(scope="module")
def scoped(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpanlakeServer, str]]:
    """A server holding one trace: team A's `front` calls team B's `back`; its trace id."""
    extra_env = {"SPANLAKE_API_KEYS": json.dumps([{"name": "admin", "key": ADMIN_KEY}]), "SPANLAKE_ADMINS": "admin"}
    with running_server(postgres, tmp_path_factory.mktemp("trace-scope"), extra_env=extra_env) as server:
        admin = WebClient(server.http_url, auth_provider=StaticToken(ADMIN_KEY))
        keys = {team: admin.mint_ingestion_api_key(f"{team}-ingest", audience=team)["key"] for team in ("a", "b")}
        front, back = _provider(server, "front", keys["a"]), _provider(server, "back", keys["b"])
        propagator = TraceContextTextMapPropagator()
        with front.get_tracer("t").start_as_current_span("front call", kind=SpanKind.CLIENT) as call:
            headers: dict[str, str] = {}
            propagator.inject(headers)
            with back.get_tracer("t").start_as_current_span(
                "back serve", context=propagator.extract(headers), kind=SpanKind.SERVER
            ):
                pass
        for provider in (front, back):
            provider.shutdown()
        yield server, format_trace_id(call.get_span_context().trace_id)


def _names(server: SpanlakeServer, key: str, trace_id: str) -> list[str]:
    spans = micromegas_client(server, key).query(f"SELECT name FROM trace_spans('{trace_id}') ORDER BY name")
    return spans["name"].tolist()


def test_a_reader_sees_its_team_s_spans_of_a_trace_only(scoped: tuple[SpanlakeServer, str]) -> None:
    server, trace_id = scoped
    reader = {"name": "a-read", "read_audiences": ["a"]}
    status, minted = api(server, "POST", "/api/analytics-api-keys", ADMIN_KEY, reader)
    assert status == 201, minted
    assert _names(server, ADMIN_KEY, trace_id) == ["back serve", "front call"]
    assert _names(server, minted["key"], trace_id) == ["front call"]
    # Its Perfetto trace (perfetto_trace_of, built on trace_spans) holds less: one process, one span.
    sql = f"SELECT chunk_data FROM perfetto_trace_of('{trace_id}')"
    chunks = [micromegas_client(server, key).query(sql)["chunk_data"] for key in (minted["key"], ADMIN_KEY)]
    sizes = [sum(map(len, column)) for column in chunks]
    assert 0 < sizes[0] < sizes[1], sizes


def _trace_rows(server: SpanlakeServer, key: str, trace_id: str) -> int:
    sql = f"SELECT count(*) AS n FROM traces WHERE trace_id = '{trace_id}'"
    return int(micromegas_client(server, key).query(sql)["n"][0])


def test_a_trace_row_is_read_by_readers_of_all_its_processes(scoped: tuple[SpanlakeServer, str]) -> None:
    server, trace_id = scoped
    keys = {}
    for name, audiences in (("a-only", ["a"]), ("a-and-b", ["a", "b"])):
        status, minted = api(
            server, "POST", "/api/analytics-api-keys", ADMIN_KEY, {"name": name, "read_audiences": audiences}
        )
        assert status == 201, minted
        keys[name] = minted["key"]
    wait_until(lambda: _trace_rows(server, ADMIN_KEY, trace_id) == 1, 60, "the trace's row in traces")
    assert _trace_rows(server, keys["a-and-b"], trace_id) == 1
    assert _trace_rows(server, keys["a-only"], trace_id) == 0  # its row counts team B's span and process
