"""Materialization and warm-query speed of `async_events`.

1. Async events decoded and written per second: a process with N async events in cpu blocks (built
   like the Rust producer's), materialized just in time by the first `view_instance` query.
2. Warm query: `SELECT count(*), max(depth) FROM view_instance('async_events', …)` on the partitions
   written in 1., side by side with plain DataFusion reading the same parquet files
   (`register_parquet`), medians of R runs, and the ratio.

    python benchmarks/materialize.py [--events N] [--blocks B] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cbor2
from datafusion import SessionContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from decode import async_block
from harness import PostgresServer
from transit_builder import thread_stream_metadata

from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context, session_config
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.settings import Settings

FREQUENCY = 1_000_000_000


def load_process(lake: Lake, events: int, blocks: int) -> str:
    process_id, stream_id = uuid.uuid4(), uuid.uuid4()
    start = time.time_ns() - 3_600_000_000_000
    dependencies, objects = thread_stream_metadata()
    lake.loop.run(
        lake.catalog.insert_process(
            ProcessRecord(process_id, "bench", "user", "user", "host", "linux", "cpu", FREQUENCY, start, 0, None, {})
        )
    )
    lake.loop.run(
        lake.catalog.insert_stream(
            StreamRecord(
                stream_id, process_id, dependencies, objects, ["cpu"], {"thread-name": "main", "thread-id": "1"}
            )
        )
    )
    payload = async_block(events // blocks, named_share=0.25)
    nb_objects = events // blocks
    for index in range(blocks):
        record = BlockRecord(
            uuid.uuid4(),
            stream_id,
            process_id,
            start + index * 1000,
            index * 1000,
            start + (index + 1) * 1000,
            (index + 1) * 1000,
            nb_objects,
            index * nb_objects,
            len(payload),
        )
        lake.loop.run(store_block(lake, record, payload))
    assert cbor2.loads(payload)
    return str(process_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: its embedded server lives as long as the object
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        try:
            process_id = load_process(lake, args.events, args.blocks)
            query = f"SELECT count(*) AS n, max(depth) AS d FROM view_instance('async_events', '{process_id}')"
            start = time.perf_counter()
            first = make_session_context(lake).sql(query).to_pylist()
            materialize_s = time.perf_counter() - start
            events = first[0]["n"]
            print(
                f"materialized {events:,} async events in {materialize_s:.2f} s:"
                f" {events / materialize_s:,.0f} events/s (decode + rows + parquet + catalog)"
            )

            files = [
                f"{tmp}/{r['file_path']}"
                for r in lake.loop.run(
                    lake.pool.fetch("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'async_events'")
                )
            ]
            spanlake_times, plain_times = [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                assert make_session_context(lake).sql(query).to_pylist() == first
                spanlake_times.append(time.perf_counter() - start)
                plain = SessionContext(session_config())
                start = time.perf_counter()
                for i, path in enumerate(files):
                    plain.register_parquet(f"p{i}", path)
                union = " UNION ALL ".join(f"SELECT depth FROM p{i}" for i in range(len(files)))
                rows = plain.sql(f"SELECT count(*) AS n, max(depth) AS d FROM ({union})").to_pylist()
                plain_times.append(time.perf_counter() - start)
                assert rows == first
            s, p = statistics.median(spanlake_times), statistics.median(plain_times)
            print(
                f"warm query over {len(files)} partition file(s), median of {args.runs}:"
                f" spanlake {s * 1000:.1f} ms, plain DataFusion {p * 1000:.1f} ms, ratio {s / p:.2f}"
            )
        finally:
            lake.close()


if __name__ == "__main__":
    main()
