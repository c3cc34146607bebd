"""Seed 002 end to end through a running `spanlake serve`: an SDK process A (httpx) calls an
OpenTelemetry Python SDK service (OTLP/HTTP) that calls an SDK process B (aiohttp middleware, a
`run_in_executor` hop and a queue hop), with W3C `traceparent` both ways; the trace is read back as one
table with `trace_spans` over Flight SQL (the micromegas client), and as one row of `traces`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import micromegas
import pandas as pd
import pytest
from aiohttp import web
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, running_server, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_span_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROGRAMS = PROJECT_ROOT / "tests" / "trace_programs.py"
MIDDLE_EXE = "otel-middle"


class OtelMiddle:
    """An aiohttp service instrumented with the OpenTelemetry SDK (not spanlake's), on its own loop
    thread: `GET /items/{id}` continues the caller's `traceparent` in a server span and calls the
    service behind it from a client span, passing its own `traceparent` on."""

    def __init__(self, spanlake: SpanlakeServer, behind_port: int) -> None:
        resource = Resource.create({"service.name": MIDDLE_EXE, "service.instance.id": str(uuid.uuid4())})
        self.provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=spanlake.http_url + "/ingestion/otlp/v1/traces")
        self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("otel.middle")
        self.behind = f"http://127.0.0.1:{behind_port}"
        self.spans: dict[str, str] = {}  # server / client → span id (hex)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.port = self.runner.addresses[0][1]

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/items/{id}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    async def _handle(self, request: web.Request) -> web.Response:
        propagator = TraceContextTextMapPropagator()
        caller = propagator.extract(dict(request.headers))
        with self.tracer.start_as_current_span("middle GET /items", context=caller, kind=SpanKind.SERVER) as server:
            self.spans["server"] = format_span_id(server.get_span_context().span_id)
            with self.tracer.start_as_current_span("middle calls service", kind=SpanKind.CLIENT) as client:
                self.spans["client"] = format_span_id(client.get_span_context().span_id)
                headers: dict[str, str] = {}
                propagator.inject(headers)
                async with httpx.AsyncClient() as http:
                    answer = await http.get(f"{self.behind}/items/{request.match_info['id']}", headers=headers)
        return web.json_response(answer.json(), status=answer.status_code)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.provider.shutdown()


@dataclass(frozen=True)
class Mesh:
    """What ran: the server, the three processes' ids, the trace id and the caller's root span."""

    server: SpanlakeServer
    caller: dict
    service: dict
    middle_spans: dict[str, str]


@pytest.fixture(scope="module")
def mesh(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_server(postgres, tmp_path_factory.mktemp("trace_mesh")) as server:
        service = subprocess.Popen(
            [sys.executable, str(PROGRAMS), "service", server.http_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
        )
        middle = None
        try:
            assert service.stdout is not None
            service_info = json.loads(service.stdout.readline())
            middle = OtelMiddle(server, service_info["port"])
            called = subprocess.run(
                [sys.executable, str(PROGRAMS), "caller", server.http_url, str(middle.port)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=PROJECT_ROOT,
            )
            assert called.returncode == 0, called.stderr
            service.communicate("", timeout=60)  # closing stdin stops the service, which flushes
            assert service.returncode == 0
        finally:
            if middle is not None:
                middle.stop()
            if service.poll() is None:
                service.kill()
        yield Mesh(server, json.loads(called.stdout), service_info, middle.spans)


def _trace(mesh: Mesh) -> pd.DataFrame:
    client = micromegas.connect(mesh.server.flightsql_url)
    return client.query(f"SELECT * FROM trace_spans('{mesh.caller['trace_id']}')")


def test_trace_spans_follows_the_event_through_three_processes_and_two_hand_offs(mesh: Mesh) -> None:
    spans = _trace(mesh)
    assert set(spans["trace_id"]) == {mesh.caller["trace_id"]}
    by_process = spans.groupby("process_id")["name"].apply(set).to_dict()
    middle_pid = next(pid for pid in by_process if pid not in (mesh.caller["process_id"], mesh.service["process_id"]))
    assert by_process[mesh.caller["process_id"]] == {"caller", "GET 127.0.0.1/items/7"}
    assert by_process[middle_pid] == {"middle GET /items", "middle calls service"}
    assert by_process[mesh.service["process_id"]] == {"GET /items/{id}", "executor_work", "consume"}
    assert dict(zip(spans["process_id"], spans["exe"], strict=True)) == {
        mesh.caller["process_id"]: "trace-caller",
        middle_pid: MIDDLE_EXE,
        mesh.service["process_id"]: "trace-service",
    }
    span = spans.set_index("name")
    parent_of = span["parent_span_id"].to_dict()
    span_id = span["span_id"].to_dict()
    # A's root, A's client span, then the OpenTelemetry service continuing A's traceparent ...
    assert span_id["caller"] == mesh.caller["root"] and parent_of["caller"] is None
    assert parent_of["GET 127.0.0.1/items/7"] == span_id["caller"]
    assert span_id["middle GET /items"] == mesh.middle_spans["server"]
    assert parent_of["middle GET /items"] == span_id["GET 127.0.0.1/items/7"]
    assert parent_of["middle calls service"] == span_id["middle GET /items"]
    # ... then B's server span continuing the OpenTelemetry client span's traceparent, and B's hand-offs.
    assert parent_of["GET /items/{id}"] == span_id["middle calls service"] == mesh.middle_spans["client"]
    assert parent_of["executor_work"] == span_id["GET /items/{id}"]
    assert parent_of["consume"] == span_id["GET /items/{id}"]
    depth = span["depth"].to_dict()
    assert depth == {
        "caller": 0,
        "GET 127.0.0.1/items/7": 1,
        "middle GET /items": 2,
        "middle calls service": 3,
        "GET /items/{id}": 4,
        "executor_work": 5,
        "consume": 5,
    }
    kind = span["kind"].to_dict()
    assert (kind["GET 127.0.0.1/items/7"], kind["middle GET /items"], kind["middle calls service"]) == (
        "client",
        "server",
        "client",
    )
    assert (kind["GET /items/{id}"], kind["consume"], kind["executor_work"]) == ("server", "consumer", "internal")
    assert span["end"].notna().all() and (span["duration"] > 0).all()
    # Each span begins within its parent's time (one clock per machine: the processes agree).
    for name, parent in parent_of.items():
        if parent is not None:
            parent_name = next(n for n, s in span_id.items() if s == parent)
            assert span.loc[parent_name, "begin"] <= span.loc[name, "begin"] <= span.loc[parent_name, "end"], name
    assert list(spans["begin"]) == sorted(spans["begin"])


def test_the_traces_row_sums_the_trace_up(mesh: Mesh) -> None:
    client = micromegas.connect(mesh.server.flightsql_url)
    sql = f"SELECT * FROM traces WHERE trace_id = '{mesh.caller['trace_id']}'"
    spans = _trace(mesh)

    def complete() -> bool:  # the daemon materializes each second's blocks about 2 s after it
        rows = client.query(sql)
        assert len(rows) <= 1
        return len(rows) == 1 and rows["span_count"][0] == len(spans)

    wait_until(complete, 30, "the maintenance daemon to materialize the whole trace in traces")
    row = client.query(sql).iloc[0]
    assert row["root_name"] == "caller"
    assert row["root_process_id"] == mesh.caller["process_id"]
    assert row["root_exe"] == "trace-caller"
    assert row["span_count"] == len(spans) == 7
    assert row["process_count"] == 3
    assert sorted(row["process_ids"]) == sorted(set(spans["process_id"]))
    assert row["begin"] == spans["begin"].min()
    assert row["end"] == spans["end"].max()
    assert row["duration"] == (row["end"] - row["begin"]).value
    assert not row["has_error"]
