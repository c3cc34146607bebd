"""How fast the maintenance daemon's catch-up indexes blocks stored before their traces could be read
(a lake upgraded from before the trace index, bulk ingestion, blocks before their process): the time
`lakehouse.trace_catch_up.catch_up` takes for B queued OTLP traces blocks (T traces of S spans each,
one service per block, as `benchmarks/trace_lookup.py` builds them) and for B queued SDK cpu blocks
(one SDK process per block, T traces of S spans), each stored as ingestion stores them but queued
instead of indexed. Prints blocks per second and checks the index then holds every trace.

    python benchmarks/trace_catch_up.py [--blocks B] [--traces T] [--spans S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PostgresServer
from trace_lookup import service_resource

from spanlake import tracing
from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.identity import resource_block
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.trace_catch_up import catch_up
from spanlake.server import wire
from spanlake.tracing.sink import INSERT_BLOCK, INSERT_PROCESS, INSERT_STREAM


def queue_otlp_blocks(lake: Lake, blocks: int, traces: int, spans: int) -> None:
    """Stores `blocks` OTLP traces blocks (one service each) queued for the catch-up."""
    now_ns = time.time_ns() - 60 * 10**9
    for index in range(blocks):
        block = resource_block("traces", service_resource(index, traces, spans, uuid.uuid4().bytes, now_ns))
        assert block is not None
        lake.loop.run(lake.catalog.insert_process(block.process))
        lake.loop.run(lake.catalog.insert_stream(block.stream))
        lake.loop.run(store_block(lake, block.block, block.payload, None))


def sdk_bodies(traces: int, spans: int) -> list[tuple[str, bytes]]:
    """What one SDK process sends for `traces` traces of `spans` nested spans."""
    sink = tracing.MemorySink()
    tracing.init(sink=sink, exe="catch-up-bench", flush_period=3600)

    async def program() -> None:
        for _ in range(traces):
            with tracing.async_span("root"):
                for _ in range(spans - 1):
                    with tracing.async_span("step"):
                        pass

    try:
        asyncio.run(program())
    finally:
        tracing.shutdown()
    return [(path, body) for _, path, body in sink.items]


def queue_sdk_blocks(lake: Lake, processes: int, traces: int, spans: int) -> int:
    """Stores the blocks of `processes` SDK processes queued for the catch-up; their count."""
    count = 0
    for _ in range(processes):
        for path, body in sdk_bodies(traces, spans):
            if path == INSERT_PROCESS:
                lake.loop.run(lake.catalog.insert_process(wire.parse_process(body)))
            elif path == INSERT_STREAM:
                lake.loop.run(lake.catalog.insert_stream(wire.parse_stream(body)))
            elif path == INSERT_BLOCK:
                record, payload = wire.parse_block(body)
                lake.loop.run(store_block(lake, record, payload, None))
                count += 1
    return count


def timed_catch_up(lake: Lake, what: str, blocks: int) -> None:
    """Runs the catch-up until the queue is empty; prints blocks per second and the index's size."""
    started = time.perf_counter()
    report = catch_up(lake, budget_s=3600)
    elapsed = time.perf_counter() - started
    left = lake.loop.run(lake.pool.fetchval("SELECT count(*) FROM trace_index_pending"))
    entries = lake.loop.run(lake.pool.fetchval("SELECT count(*) FROM trace_index"))
    assert (report.indexed, report.postponed, left) == (blocks, 0, 0), (report, left)
    print(f"{what:>5} {blocks:>7} {elapsed:>8.2f} {blocks / elapsed:>9.0f} {entries:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--spans", type=int, default=10)
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: the embedded server lives as long as the object
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        try:
            print(f"{'kind':>5} {'blocks':>7} {'seconds':>8} {'blocks/s':>9} {'index rows':>11}")
            queue_otlp_blocks(lake, args.blocks, args.traces, args.spans)
            timed_catch_up(lake, "OTLP", args.blocks)
            blocks = queue_sdk_blocks(lake, args.blocks, args.traces, args.spans)
            timed_catch_up(lake, "SDK", blocks)
        finally:
            lake.close()


if __name__ == "__main__":
    main()
