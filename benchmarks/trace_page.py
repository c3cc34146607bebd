"""How fast a 100,000-span trace's page shows its first screen, in Chromium, through a running server.

One OTLP export of an N-span trace over P processes (a chain of 1,000 spans, then a binary tree below
it; span i runs in process i % P) is posted to a `spanlake serve`; `/trace/<id>` is then opened in
Chromium (Debian's, through playwright) R times, each time measuring from navigation to the first
screen drawn (the waterfall's rows in the page and its status written), and the route
`/api/trace/<id>` alone with an HTTP client (the first page of 500 rows and the whole layout behind
it). The first open also materializes the processes' spans just in time: each round starts a fresh
server, so each gives one first open. Last, the trace's Perfetto trace (`perfetto_trace_of`, what
`spanlake perfetto --trace` writes) over Flight SQL. With `--baseline REV`, each round runs that git
revision's code and then this checkout's, alternately, and the medians of both are printed.

    python benchmarks/trace_page.py [--spans N] [--processes P] [--runs R] [--rounds K] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow.flight as flight
from _servers import source_env, spanlake_server
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


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


@dataclass
class Timings:
    """One server's run: first open, warm opens, the route alone, Perfetto; what the page showed."""

    cold: float
    cold_cpu: float  # the server's CPU seconds during the first open (steadier than wall time on a busy machine)
    warm: list[float]
    routes: list[float]
    perfetto: list[tuple[float, int, int]]
    rows: int
    status_line: str


def measure(args: argparse.Namespace, env: dict[str, str]) -> Timings:
    """Ingests the trace into a fresh server running the code `env` names, then times its page."""
    from playwright.sync_api import sync_playwright

    trace_id = uuid.uuid4().bytes
    with spanlake_server(extra_env=env) as server:
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
            before = cpu_seconds(server.process.pid)
            cold = first_screen_seconds(page, page_url)
            cold_cpu = cpu_seconds(server.process.pid) - before
            warm = [first_screen_seconds(page, page_url) for _ in range(args.runs)]
            rows = page.locator("#waterfall .span-row").count()
            status_line = page.inner_text("#waterfall .trace-status")
            browser.close()
        routes = [route_seconds(api_url) for _ in range(args.runs)]
        perfetto = [perfetto_seconds(server.flightsql_url, trace_id.hex()) for _ in range(args.runs)]
    return Timings(cold, cold_cpu, warm, routes, perfetto, rows, status_line)


def report(code: str, runs: list[Timings]) -> None:
    """The medians of one code's rounds."""
    last = runs[-1]
    colds = [t.cold for t in runs]
    warm = [w for t in runs for w in t.warm]
    cpu = [t.cold_cpu for t in runs]
    print(f"[{code}] trace of {last.status_line}; rows in the page (the visible window): {last.rows}")
    print(
        f"[{code}] first screen, first open (materializes just in time): median {statistics.median(colds):.2f} s"
        f" over {len(colds)} servers ({', '.join(f'{c:.2f}' for c in colds)});"
        f" server CPU during it: median {statistics.median(cpu):.2f} s"
    )
    print(
        f"[{code}] first screen, warm: median {statistics.median(warm):.2f} s, max {max(warm):.2f} s ({len(warm)} runs)"
    )
    routes = [r for t in runs for r in t.routes]
    print(f"[{code}] /api/trace/<id> (first page, whole layout): median {statistics.median(routes):.2f} s")
    _, chunks, size = last.perfetto[-1]
    median = statistics.median(p[0] for t in runs for p in t.perfetto)
    print(f"[{code}] perfetto_trace_of: {chunks:,} chunks, {size / 1e6:.1f} MB, median {median:.2f} s")


def main() -> None:
    """Prints the first-screen times of a large trace's page, alternately on this code and a baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="warm opens per server")
    parser.add_argument("--rounds", type=int, default=1, help="fresh servers per code (each gives a first open)")
    parser.add_argument("--baseline", default=None, help="git revision to compare with, run alternately")
    args = parser.parse_args()
    codes = {"this": None} if args.baseline is None else {"baseline": args.baseline, "this": None}
    runs: dict[str, list[Timings]] = {code: [] for code in codes}
    for _ in range(args.rounds):
        for code, revision in codes.items():
            with source_env(revision) as env:
                runs[code].append(measure(args, env))
    print(f"{args.spans:,} spans over {args.processes} processes; load average {os.getloadavg()}")
    for code, timings in runs.items():
        report(code, timings)


if __name__ == "__main__":
    main()
