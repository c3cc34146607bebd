"""A trace in the browser, through a running `spanlake serve` and Chromium: a spanlake SDK caller and two
OpenTelemetry Python SDK services (OTLP/HTTP, W3C propagation between them) and a queue hand-off; the
waterfall's bands, rows, critical path, links across processes and hand-offs, span details; a log line
and a span of a process's span tree linking to the trace; bad trace ids answering a clear page."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import PostgresServer, SpanlakeServer, http, post, running_server, wait_until
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from trace_processor import STANDARD_QUERIES, query_trace
from web_support import Browser, WatchedPage

from spanlake import tracing


@dataclass(frozen=True)
class Shop:
    """What the services sent: the trace id, span ids (hex) by name, process ids by service, the SDK log's span."""

    server: SpanlakeServer
    trace_id: str
    spans: dict[str, str]
    processes: dict[str, str]
    client_log_span: str  # the SDK span ("check stock") the client logged a line in


def _providers(server: SpanlakeServer, service: str) -> tuple[TracerProvider, LoggerProvider]:
    resource = Resource.create({"service.name": service, "service.instance.id": str(uuid.uuid4())})
    endpoint = server.http_url + "/ingestion/otlp/v1"
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/traces")))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint + "/logs")))
    return tracer_provider, logger_provider


def _run_shop(server: SpanlakeServer) -> tuple[str, dict[str, str]]:
    """The SDK's `shop-client` asks `frontend` (traceparent), which calls `backend` (traceparent);
    `backend` charges, logs a line inside its charge span, and queues a receipt that a consumer sends
    after the handler ended."""
    client_process = tracing.init(server.http_url, exe="shop-client", flush_period=3600)
    try:
        tracing.info("shop opens")  # outside any span: no link
        with tracing.async_span("place order", kind="client", attributes={"shop.order": "42"}) as order:
            with tracing.async_span("check stock") as stock:
                tracing.info("3 in stock", {"shop.sku": "tea"})
            request_headers: dict[str, str] = {}
            tracing.inject(request_headers)
            trace_id, spans = _run_services(server, request_headers)
    finally:
        assert tracing.shutdown(timeout=30)
    assert order.trace_id == trace_id
    client = {"client process": str(client_process.process_id), "client log span": stock.span_hex}
    return trace_id, {"place order": order.span_hex, **spans, **client}


def _run_services(server: SpanlakeServer, request_headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The two OpenTelemetry services' part of the trace, continuing `request_headers`."""
    (front, front_logs), (back, back_logs) = _providers(server, "frontend"), _providers(server, "backend")
    front_tracer, back_tracer = front.get_tracer("shop.frontend"), back.get_tracer("shop.backend")
    logger = logging.getLogger("shop.backend.web-test")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=back_logs)
    logger.addHandler(handler)
    propagator = TraceContextTextMapPropagator()
    spans: dict[str, object] = {}
    caller = propagator.extract(request_headers)
    with front_tracer.start_as_current_span("GET /checkout", context=caller, kind=SpanKind.SERVER) as root:
        spans["GET /checkout"] = root
        with front_tracer.start_as_current_span("render cart") as render:
            spans["render cart"] = render
            time.sleep(0.002)
        with front_tracer.start_as_current_span("call backend", kind=SpanKind.CLIENT) as client:
            spans["call backend"] = client
            headers: dict[str, str] = {}
            propagator.inject(headers)
            remote = propagator.extract(headers)
            with back_tracer.start_as_current_span("POST /charge", context=remote, kind=SpanKind.SERVER) as server_span:
                spans["POST /charge"] = server_span
                server_span.set_attribute("http.route", "/charge")
                with back_tracer.start_as_current_span("charge card") as charge:
                    spans["charge card"] = charge
                    charge.set_status(Status(StatusCode.ERROR, "card declined"))
                    logger.error("card declined for order 42")
                    time.sleep(0.003)
                queued = trace.set_span_in_context(server_span)  # the message carries the handler's context
        time.sleep(0.002)
    with back_tracer.start_as_current_span("nightly job", context=otel_context.Context()) as nightly:
        spans["nightly job"] = nightly  # another trace, which the receipt follows from (a link)
    token = otel_context.attach(queued)  # the consumer, after the handler and the request ended
    try:
        receipt_links = [trace.Link(nightly.get_span_context())]
        with back_tracer.start_as_current_span("send receipt", kind=SpanKind.CONSUMER, links=receipt_links) as receipt:
            spans["send receipt"] = receipt
    finally:
        otel_context.detach(token)
    logger.removeHandler(handler)
    for provider in (front, front_logs, back, back_logs):
        provider.shutdown()
    trace_id = format_trace_id(root.get_span_context().trace_id)
    ids = {name: format_span_id(span.get_span_context().span_id) for name, span in spans.items()}
    ids["nightly trace"] = format_trace_id(nightly.get_span_context().trace_id)
    return trace_id, ids


@pytest.fixture(scope="module")
def shop(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    with running_server(postgres, tmp_path_factory.mktemp("web-traces")) as server:
        trace_id, spans = _run_shop(server)
        client_process, client_log_span = spans.pop("client process"), spans.pop("client log span")
        status, body = api(server, f"/api/trace/{trace_id}")
        assert status == 200, body
        processes = {band["exe"]: band["process_id"] for band in body["bands"]}
        assert processes.get("shop-client") == client_process, body["bands"]
        yield Shop(server, trace_id, spans, processes, client_log_span)


def api(server: SpanlakeServer, path: str) -> tuple[int, dict]:
    status, body = http("GET", server.http_url + path)
    return status, json.loads(body)


def test_the_waterfall_lays_out_bands_critical_path_and_links(shop: Shop) -> None:
    status, body = api(shop.server, f"/api/trace/{shop.trace_id}")
    assert status == 200
    assert [(b["exe"], b["first_row"], b["spans"]) for b in body["bands"]] == [
        ("shop-client", 1, 2),
        ("frontend", 4, 3),
        ("backend", 8, 3),
    ]
    rows = {s["name"]: s for s in body["spans"]}
    assert [(s["row"], s["name"], s["band_depth"]) for s in body["spans"]] == [
        (1, "place order", 0),
        (2, "check stock", 1),
        (4, "GET /checkout", 0),
        (5, "render cart", 1),
        (6, "call backend", 1),
        (8, "POST /charge", 0),
        (9, "charge card", 1),
        (10, "send receipt", 1),
    ]
    others = ("nightly job", "nightly trace")
    assert {name: s["span_id"] for name, s in rows.items() if name != "check stock"} == {
        name: span for name, span in shop.spans.items() if name not in others
    }
    # Times are ns after the trace's begin: the order's, which holds everything else.
    assert rows["place order"]["begin"] == 0 and body["duration_ns"] == rows["place order"]["end"]
    assert rows["send receipt"]["begin"] >= rows["POST /charge"]["end"]
    assert 5_000_000 < body["duration_ns"] < 10**9
    links = {name: s["link"] for name, s in rows.items() if s["link"]}
    assert links == {"GET /checkout": "remote", "POST /charge": "remote", "send receipt": "handoff"}
    assert [rows[n]["parent_row"] for n in ("GET /checkout", "POST /charge", "send receipt")] == [1, 6, 8]
    # The order waited on the checkout, which waited on the backend call (it ends last), which waited on
    # the charge handler, which waited on the charge; the receipt ran after the handler had ended.
    critical = [s["name"] for s in body["spans"] if s["critical"]]
    assert critical == ["place order", "GET /checkout", "call backend", "POST /charge", "charge card"]
    assert body["critical_spans"] == 5
    assert rows["place order"]["kind"] == "client" and rows["place order"]["exe"] == "shop-client"
    assert rows["charge card"]["details"]["status"] == "ERROR" and rows["charge card"]["kind"] == "internal"
    assert json.loads(rows["POST /charge"]["details"]["attributes"])["http.route"] == "/charge"


def test_a_page_of_the_waterfall_and_the_page_of_a_span(shop: Shop) -> None:
    status, body = api(shop.server, f"/api/trace/{shop.trace_id}?limit=2&offset=2")
    assert status == 200 and [s["name"] for s in body["spans"]] == ["GET /checkout", "render cart"]
    status, body = api(shop.server, f"/api/trace/{shop.trace_id}?limit=2&span={shop.spans['charge card']}")
    assert (status, body["offset"], body["selected"]) == (200, 6, 6)
    assert [s["name"] for s in body["spans"]] == ["charge card", "send receipt"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/trace/not-a-trace", 400, "is not a trace id"),
        ("/api/trace/" + "0" * 32, 400, "is not a trace id"),
        ("/api/trace/" + uuid.UUID(int=7).hex, 404, "there is no trace"),
        ("/api/trace/{trace}?span=xyz", 400, "is not a span id"),
        ("/api/trace/{trace}?span=" + "ab" * 8, 404, "the trace has no span"),
    ],
)
def test_bad_ids_answer_a_clear_error(shop: Shop, path: str, status: int, words: str) -> None:
    answered, body = api(shop.server, path.format(trace=shop.trace_id))
    assert answered == status and words in body["error"], body


def test_bad_trace_pages(shop: Shop, watched: WatchedPage) -> None:
    page = watched.page
    watched.expect_error("Failed to load resource")
    response = page.goto(f"{shop.server.http_url}/trace/nope")
    assert response.status == 400 and "'nope' is not a trace id" in page.inner_text("#error")
    unknown = uuid.UUID(int=7).hex
    page.goto(f"{shop.server.http_url}/trace/{unknown}")
    page.wait_for_selector("#waterfall .trace-status.error")
    assert page.inner_text("#waterfall .trace-status") == f"error: there is no trace {unknown} in this lake"


def test_the_trace_page_in_the_browser(shop: Shop, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{shop.server.http_url}/trace/{shop.trace_id}")
    page.wait_for_selector("#waterfall[data-loaded=true]")
    status = page.inner_text("#waterfall .trace-status")
    assert status.startswith("8 spans in 3 processes · ") and "· 5 on the critical path · loaded in " in status
    headers = page.locator("#waterfall .band-header")
    assert headers.count() == 3
    assert headers.nth(2).locator("a").get_attribute("href") == f"/process/{shop.processes['backend']}"
    names = page.locator("#waterfall .span-row").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == [
        "place order",
        "check stock",
        "GET /checkout",
        "render cart",
        "call backend",
        "POST /charge",
        "charge card",
        "send receipt",
    ]
    critical = page.locator("#waterfall .span-row.critical").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert critical == ["place order", "GET /checkout", "call backend", "POST /charge", "charge card"]
    connectors = page.locator("#waterfall svg.connectors path")
    kinds = connectors.evaluate_all("paths => paths.map(p => [p.dataset.child, p.getAttribute('class')])")
    assert kinds == [
        [shop.spans["GET /checkout"], "connector remote"],
        [shop.spans["POST /charge"], "connector remote"],
        [shop.spans["send receipt"], "connector handoff"],
    ]
    page.click(f"#waterfall .span-row[data-span='{shop.spans['POST /charge']}']")
    details = page.locator("#waterfall .span-details")
    field = lambda name: details.locator(f"dd[data-field='{name}']").inner_text()  # noqa: E731
    assert field("trace id") == shop.trace_id and field("span id") == shop.spans["POST /charge"]
    assert field("parent span id") == shop.spans["call backend"] and field("kind") == "server"
    assert field("parent") == "call backend (frontend)" and field("link") == "remote"
    assert json.loads(field("attributes"))["http.route"] == "/charge"
    assert details.locator("dd[data-field=process] a").get_attribute("href") == f"/process/{shop.processes['backend']}"
    assert page.url.endswith(f"?span={shop.spans['POST /charge']}")
    page.click(f"#waterfall .span-row[data-span='{shop.spans['send receipt']}']")
    link = details.locator("dd[data-field=links] a")
    assert link.inner_text() == f"{shop.spans['nightly trace']} / {shop.spans['nightly job']}"
    assert link.get_attribute("href") == f"/trace/{shop.spans['nightly trace']}?span={shop.spans['nightly job']}"
    chrome.shot(page, "trace-waterfall")


def test_a_log_line_links_to_its_span(shop: Shop, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{shop.server.http_url}/process/{shop.processes['backend']}/logs")
    link = page.locator("#logs a.span-link")
    assert link.count() == 1 and link.inner_text() == f"span {shop.spans['charge card']}"
    link.click()
    selected = page.locator("#waterfall .span-row.selected")
    selected.wait_for()
    assert selected.get_attribute("data-name") == "charge card"
    assert page.inner_text("#waterfall .span-details dd[data-field=status]") == "ERROR"


def test_an_sdk_log_line_links_to_its_span(shop: Shop, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{shop.server.http_url}/process/{shop.processes['shop-client']}/logs")
    rows = page.locator("#logs tbody tr")
    assert rows.count() == 2
    link = page.locator("#logs a.span-link")
    assert link.count() == 1 and link.inner_text() == f"span {shop.client_log_span}"
    assert "3 in stock" in link.locator("xpath=ancestor::tr").inner_text()
    link.click()
    selected = page.locator("#waterfall .span-row.selected")
    selected.wait_for()
    assert selected.get_attribute("data-name") == "check stock"


def test_an_sdk_log_line_keeps_its_properties_with_its_span(shop: Shop) -> None:
    sql = (
        "SELECT msg, property_get(properties, 'shop.sku') AS sku, property_get(properties, 'otel.trace_id') AS trace"
        f" FROM view_instance('log_entries', '{shop.processes['shop-client']}') ORDER BY time"
    )
    status, body = http("POST", shop.server.http_url + "/api/sql", json.dumps({"sql": sql}).encode())
    assert status == 200, body
    assert json.loads(body)["rows"] == [["shop opens", None, None], ["3 in stock", "tea", shop.trace_id]]


def test_a_span_of_the_span_tree_links_to_its_trace_across_processes(shop: Shop, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{shop.server.http_url}/process/{shop.processes['shop-client']}/spans")
    page.wait_for_selector("#async-tree[data-loaded=true]")
    page.click("#async-tree .span-row[data-name='place order']")
    trace_field = page.locator("#async-tree .span-details dd[data-field=trace]")
    trace_field.wait_for()
    assert trace_field.inner_text() == f"{shop.trace_id} · across 3 processes (shop-client, frontend, backend)"
    assert page.inner_text("#async-tree .span-details dd[data-field=kind]") == "client"
    assert json.loads(page.inner_text("#async-tree .span-details dd[data-field=attributes]")) == {"shop.order": "42"}
    trace_field.locator("a").click()
    page.wait_for_selector("#waterfall .span-row.selected")
    assert page.locator("#waterfall .span-row.selected").get_attribute("data-name") == "place order"


FLOWS = (
    "SELECT o.name AS parent, i.name AS child FROM flow f JOIN slice o ON o.id = f.slice_out"
    " JOIN slice i ON i.id = f.slice_in ORDER BY i.ts"
)
SLICES = (
    "SELECT s.name, p.name AS process, s.dur FROM slice s JOIN process_track t ON t.id = s.track_id"
    " JOIN process p USING (upid) ORDER BY s.ts"
)


def test_spanlake_perfetto_writes_the_trace_with_its_flows(shop: Shop, tmp_path: Path) -> None:
    out = tmp_path / "trace.pftrace"
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--trace", shop.trace_id.upper()]
    command += ["-o", str(out), "--uri", shop.server.flightsql_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tables = query_trace(out.read_bytes(), {**STANDARD_QUERIES, "flows": FLOWS, "slices": SLICES})
    assert tables["stats"].dicts() == []
    assert [row["name"] for row in tables["process"].dicts()] == ["shop-client", "frontend", "backend"]
    slices = tables["slices"].dicts()
    assert [(row["name"], row["process"]) for row in slices] == [
        ("place order", "shop-client"),
        ("check stock", "shop-client"),
        ("GET /checkout", "frontend"),
        ("render cart", "frontend"),
        ("call backend", "frontend"),
        ("POST /charge", "backend"),
        ("charge card", "backend"),
        ("send receipt", "backend"),
    ]
    _, spans = api(shop.server, f"/api/trace/{shop.trace_id}")
    durations = {s["name"]: s["end"] - s["begin"] for s in spans["spans"]}
    assert {row["name"]: row["dur"] for row in slices} == durations
    # One arrow per parent in another process, and one per hand-off (the receipt, after the handler).
    assert [(row["parent"], row["child"]) for row in tables["flows"].dicts()] == [
        ("place order", "GET /checkout"),
        ("call backend", "POST /charge"),
        ("POST /charge", "send receipt"),
    ]


def test_spanlake_perfetto_refuses_a_bad_trace_id(shop: Shop, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pftrace"
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--trace", "xyz", "-o", str(bad), "--uri"]
    done = subprocess.run([*command, shop.server.flightsql_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "the trace id must be 32 hexadecimal characters" in done.stderr
    assert "given 'xyz'" in done.stderr and list(tmp_path.iterdir()) == []  # no file, not even a partial one
    unknown = tmp_path / "unknown.pftrace"
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--trace", uuid.UUID(int=9).hex, "-o"]
    done = subprocess.run([*command, str(unknown), "--uri", shop.server.flightsql_url], capture_output=True, timeout=60)
    assert done.returncode == 0 and unknown.read_bytes() == b""  # an unknown trace: no chunks


def traces_listed(page: object, url: str) -> list[str]:
    page.goto(url)
    return page.locator("#traces tbody tr").evaluate_all("rows => rows.map(r => r.dataset.trace)")


def test_the_traces_page_searches_traces(shop: Shop, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    base = f"{shop.server.http_url}/traces"
    wait_until(lambda: shop.trace_id in traces_listed(page, base), 30, "the trace in the traces view")
    row = page.locator(f"#traces tr[data-trace='{shop.trace_id}'] td").all_inner_texts()
    assert row[0] == shop.trace_id and row[1] == "place order" and row[2] == "shop-client"
    assert row[5:7] == ["8", "3"] and row[7] == "error"  # spans, processes, a failed span (the charge)
    link = page.locator(f"#traces tr[data-trace='{shop.trace_id}'] td a").nth(1)
    assert link.get_attribute("href") == f"/process/{shop.processes['shop-client']}"
    assert traces_listed(page, f"{base}?trace={shop.trace_id.upper()}") == [shop.trace_id]
    assert page.input_value("input[name=trace]") == shop.trace_id
    assert shop.trace_id in traces_listed(page, f"{base}?name=PLACE+ord&process=shop-cl")
    assert traces_listed(page, f"{base}?name=no-such-root") == []
    assert traces_listed(page, f"{base}?trace={shop.trace_id}&min_ms=100000") == []
    assert traces_listed(page, f"{base}?trace={shop.trace_id}&min_ms=1") == [shop.trace_id]
    page.click(f"#traces tr[data-trace='{shop.trace_id}'] td a >> nth=0")
    page.wait_for_selector("#waterfall[data-loaded=true]")
    chrome.shot(page, "traces")
    watched.expect_error("Failed to load resource")
    response = page.goto(f"{base}?trace=12345")
    assert response.status == 400 and "'12345' is not a trace id" in page.inner_text("#error")


def _wide_trace(server: SpanlakeServer, spans: int) -> str:
    """An OTLP trace of `spans` spans over two processes (a binary tree, span i in process i % 2)."""
    trace_id = uuid.uuid4().bytes
    request = ExportTraceServiceRequest()
    start = time.time_ns() - 10**9
    for process in range(2):
        resource = request.resource_spans.add()
        for key, value in (("service.name", f"wide-{process}"), ("service.instance.id", str(uuid.uuid4()))):
            attribute = resource.resource.attributes.add()
            attribute.key, attribute.value.string_value = key, value
        scope = resource.scope_spans.add()
        for i in range(process, spans, 2):
            span = scope.spans.add()
            span.trace_id, span.span_id, span.name = trace_id, (i + 1).to_bytes(8, "big"), f"span {i}"
            if i:
                span.parent_span_id = ((i - 1) // 2 + 1).to_bytes(8, "big")
            span.start_time_unix_nano, span.end_time_unix_nano = start + i * 1000, start + i * 1000 + 500
    status, body = post(
        server.http_url + "/ingestion/otlp/v1/traces",
        request.SerializeToString(),
        {"Content-Type": "application/x-protobuf"},
    )
    assert status == 200, body
    return trace_id.hex()


def test_a_large_trace_draws_its_window_and_pages_as_it_scrolls(shop: Shop, watched: WatchedPage) -> None:
    spans = 3_000
    trace_id = _wide_trace(shop.server, spans)
    status, last_page = api(shop.server, f"/api/trace/{trace_id}?offset={spans - 1}&limit=1")
    assert status == 200 and last_page["spans_total"] == spans and last_page["row_count"] == spans + 2
    [last] = last_page["spans"]
    page = watched.page
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "/api/trace/" in request.url else None)
    page.goto(f"{shop.server.http_url}/trace/{trace_id}")
    page.wait_for_selector("#waterfall[data-loaded=true] .span-row")
    drawn = page.locator("#waterfall .span-row").count()
    assert 10 < drawn < 100  # the window and its margins, not 3,000 rows
    page.locator("#waterfall .waterfall-scroll").evaluate("scroller => { scroller.scrollTop = scroller.scrollHeight; }")
    bottom = page.locator(f"#waterfall .span-row[data-row='{last['row']}']")
    bottom.wait_for()
    assert bottom.get_attribute("data-name") == last["name"] and page.locator("#waterfall .span-row").count() < 100
    assert len(fetched) == 2 and "offset=2500" in fetched[1]  # the first page, then the one at the bottom
    bottom.click()
    assert page.inner_text("#waterfall .span-details dd[data-field='span id']") == last["span_id"]
