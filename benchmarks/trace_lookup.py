"""Finding a trace as the lake grows: `trace_spans('<trace id>')` with 10, 100 and 1,000 processes in
the lake, and the trace index lookup alone.

Each process is an OpenTelemetry service that sent one OTLP traces block of T traces (default 20) of
S spans (default 10), stored as ingestion stores it (the trace index filled on the way). One trace
also crosses the first three processes. The lake grows from 10 to 100 to 1,000 processes; at each
size, the fastest and the median of R runs (after one warm-up run, which materializes the three
processes' otel_spans) of the index lookup and of the whole query through a session. Lookup times
should stay flat: printed with their ratio to the 10-process lake.

    python benchmarks/trace_lookup.py [--traces T] [--spans S] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import PostgresServer
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.identity import resource_block
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.query.trace_spans import trace_locations
from spanlake.lakehouse.settings import Settings

SIZES = (10, 100, 1000)
SHARED_PROCESSES = 3


def service_resource(index: int, traces: int, spans: int, shared: bytes, now_ns: int) -> ResourceSpans:
    """One service's spans: `traces` traces of `spans` spans (a chain), plus a span of the shared trace
    for the first SHARED_PROCESSES services (each the child of the previous one's)."""
    resource = ResourceSpans()
    for key, value in (("service.name", f"service-{index}"), ("service.instance.id", str(uuid.uuid4()))):
        attribute = resource.resource.attributes.add()
        attribute.key, attribute.value.string_value = key, value
    scope = resource.scope_spans.add()
    scope.scope.name = "bench"
    own = [(uuid.uuid4().bytes, i) for i in range(traces)]
    if index < SHARED_PROCESSES:
        own.append((shared, index))
    for trace_id, _ in own:
        parent = b""
        for s in range(1 if trace_id == shared else spans):
            span = scope.spans.add()
            span.trace_id = trace_id
            span.span_id = uuid.uuid4().bytes[:8] if trace_id != shared else (index + 1).to_bytes(8, "big")
            span.parent_span_id = parent if trace_id != shared else (index.to_bytes(8, "big") if index else b"")
            span.name = f"step {s}"
            span.start_time_unix_nano = now_ns + s * 1000
            span.end_time_unix_nano = now_ns + s * 1000 + 500
            parent = span.span_id
    return resource


def grow(lake: Lake, first: int, last: int, traces: int, spans: int, shared: bytes) -> None:
    """Adds services first..last-1 to the lake, stored as the ingestion API stores an OTLP export."""
    now_ns = time.time_ns() - 60 * 10**9
    for index in range(first, last):
        block = resource_block("traces", service_resource(index, traces, spans, shared, now_ns))
        assert block is not None
        lake.loop.run(lake.catalog.insert_process(block.process))
        lake.loop.run(lake.catalog.insert_stream(block.stream))
        lake.loop.run(store_block(lake, block.block, block.payload, block.traces))


def timed_ms(run: Callable[[], object], runs: int) -> tuple[float, float]:
    """(fastest, median) of `runs` runs in ms, after a warm-up run (which materializes the trace's
    processes, JIT). On a shared machine the fastest is the cost; the median adds the contention."""
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1000, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--spans", type=int, default=10)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: the embedded server lives as long as the object
    shared = uuid.uuid4().bytes
    sql = f"SELECT span_id, parent_span_id, depth FROM trace_spans('{shared.hex()}')"
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        try:
            print("ms: fastest / median of the runs; ratio: fastest, to the 10-process lake")
            header = f"{'processes':>9} {'index rows':>10} {'lookup ms':>14} {'ratio':>6}"
            print(f"{header} {'trace_spans ms':>16} {'ratio':>6}")
            base: tuple[float, float] | None = None
            size = 0
            for target in SIZES:
                grow(lake, size, target, args.traces, args.spans, shared)
                size = target
                rows = make_session_context(lake).sql(sql).to_pylist()
                assert [row["depth"] for row in rows] == list(range(SHARED_PROCESSES)), rows
                lookup = timed_ms(lambda: trace_locations(lake, shared), args.runs)
                query = timed_ms(lambda: make_session_context(lake).sql(sql).to_pylist(), args.runs)
                base = base or (lookup[0], query[0])
                entries = lake.loop.run(lake.pool.fetchval("SELECT count(*) FROM trace_index"))
                print(
                    f"{size:>9} {entries:>10} {lookup[0]:>6.2f} / {lookup[1]:>5.2f} {lookup[0] / base[0]:>6.2f}"
                    f" {query[0]:>7.1f} / {query[1]:>6.1f} {query[0] / base[1]:>6.2f}"
                )
        finally:
            lake.close()


if __name__ == "__main__":
    main()
