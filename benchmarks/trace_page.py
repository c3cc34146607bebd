"""How fast a 100,000-span trace's page shows its first screen, in Chromium, through a running server.

One OTLP export of an N-span trace over P processes (a chain of 1,000 spans, then a binary tree below
it; span i runs in process i % P) is posted to a `spanlake serve`; `/trace/<id>` is then opened in
Chromium (Debian's, through playwright) R times, each time measuring from navigation to the first
screen drawn (the waterfall's rows in the page and its status written), and the route
`/api/trace/<id>` alone with an HTTP client (the first page of 500 rows and the whole layout behind
it). The first open also materializes the processes' spans just in time; the medians are of the warm
runs. Last, the trace's Perfetto trace (`perfetto_trace_of`, what `spanlake perfetto --trace` writes)
over Flight SQL.

    python benchmarks/trace_page.py [--spans N] [--processes P] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow.flight as flight
from _servers import spanlake_server
from harness import post
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from web_support import CHROMIUM_ARGS, VIEWPORT, chromium_path

from spanlake.server.flightsql import protocol

CHAIN = 1_000


def parent_of(i: int) -> int:
    """Span i's parent (i > 0): a chain, then a binary tree hanging from its last span."""
    return i - 1 if i < CHAIN else CHAIN - 1 + (i - CHAIN) // 2


def trace_request(trace_id: bytes, spans: int, processes: int, start_ns: int) -> bytes:
    """One OTLP export of the trace, one resource (a spanlake process) per process number."""
    request = ExportTraceServiceRequest()
    for p in range(processes):
        resource = request.resource_spans.add()
        for key, value in (("service.name", f"bench-{p}"), ("service.instance.id", str(uuid.uuid4()))):
            attribute = resource.resource.attributes.add()
            attribute.key, attribute.value.string_value = key, value
        scope = resource.scope_spans.add()
        scope.scope.name = "bench"
        for i in range(p, spans, processes):
            span = scope.spans.add()
            span.trace_id = trace_id
            span.span_id = (i + 1).to_bytes(8, "big")
            if i:
                span.parent_span_id = (parent_of(i) + 1).to_bytes(8, "big")
            span.name = f"step {i % 7}"
            span.start_time_unix_nano = start_ns + i * 1000
            span.end_time_unix_nano = start_ns + i * 1000 + 50_000_000 - i
    return request.SerializeToString()


def first_screen_seconds(page: object, url: str) -> float:
    """Navigation to the waterfall's first rows drawn and its status written."""
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#waterfall[data-loaded=true] .span-row")
    return time.perf_counter() - started


def route_seconds(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def perfetto_seconds(flightsql_url: str, trace_id: str) -> tuple[float, int, int]:
    """The time to receive the trace's Perfetto chunks, their count and their bytes."""
    sql = f"SELECT chunk_id, chunk_data FROM perfetto_trace_of('{trace_id}') ORDER BY chunk_id"
    ticket = flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))
    started = time.perf_counter()
    with flight.connect(flightsql_url) as client:
        chunks = client.do_get(ticket).read_all().column("chunk_data")
    return time.perf_counter() - started, len(chunks), sum(len(c) for c in chunks.to_pylist())


def main() -> None:
    """Prints the first-screen times of a large trace's page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    trace_id = uuid.uuid4().bytes
    with spanlake_server() as server:
        body = trace_request(trace_id, args.spans, args.processes, time.time_ns() - 10**9)
        status, text = post(
            server.http_url + "/ingestion/otlp/v1/traces", body, {"Content-Type": "application/x-protobuf"}
        )
        assert status == 200, text
        page_url = f"{server.http_url}/trace/{trace_id.hex()}"
        api_url = f"{server.http_url}/api/trace/{trace_id.hex()}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            cold = first_screen_seconds(page, page_url)
            warm = [first_screen_seconds(page, page_url) for _ in range(args.runs)]
            rows = page.locator("#waterfall .span-row").count()
            status_line = page.inner_text("#waterfall .trace-status")
            browser.close()
        routes = [route_seconds(api_url) for _ in range(args.runs)]
        perfetto = [perfetto_seconds(server.flightsql_url, trace_id.hex()) for _ in range(args.runs)]
    print(f"trace of {args.spans:,} spans over {args.processes} processes: {status_line}")
    print(f"rows in the page (the visible window): {rows}")
    print(f"first screen, first open (materializes just in time): {cold:.2f} s")
    print(f"first screen, warm: median {statistics.median(warm):.2f} s, max {max(warm):.2f} s ({args.runs} runs)")
    print(f"/api/trace/<id> (first page, whole layout): median {statistics.median(routes):.2f} s")
    seconds, chunks, size = perfetto[-1]
    median = statistics.median(p[0] for p in perfetto)
    print(f"perfetto_trace_of: {chunks:,} chunks, {size / 1e6:.1f} MB, median {median:.2f} s ({seconds:.2f} s last)")


if __name__ == "__main__":
    main()
