"""Global views before and after merging, and what the maintenance daemon costs.

A day of telemetry from P processes (default 1,000), each sending the genuine Rust log and metrics
blocks of the fixture, spread over 24 hours of insert time. The global views are materialized as the
daemon's minute task leaves them (1-minute partitions), then merged as its hour and day tasks do.
Printed side by side, medians of R runs:

* `SELECT count(*) FROM log_entries WHERE time > …` and a `processes` lookup by id, before and after
  merging, with the number of partition files each reads;
* the daemon's CPU time per minute of ingested data (1-minute materialization of the whole day / 1440).

    python benchmarks/global_views.py [--processes P] [--runs R]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import RUST_FIXTURES, PostgresServer
from lakehouse_support import EXPECTED

from spanlake.lakehouse.batch_update import SECOND_NS, materialize_range
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.records import BlockRecord, ProcessRecord
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.view_sets import MAINTAINED, VIEW_SETS
from spanlake.server.wire import parse_block, parse_process, parse_stream

DAY_NS = 86_400 * SECOND_NS
MINUTE_NS = 60 * SECOND_NS


def load_day(lake: Lake, processes: int, day: int, span_ns: int = DAY_NS) -> list[str]:
    """P copies of the fixture process (log and metrics streams), block insert times spread over the day
    (or over `span_ns` from `day`)."""
    template = parse_process((RUST_FIXTURES / "process.cbor").read_bytes())
    streams = [s for s in EXPECTED["streams"] if {"log", "metrics"} & set(s["tags"])]
    bodies = {s["stream_id"]: parse_stream((RUST_FIXTURES / s["insert_stream_request"]).read_bytes()) for s in streams}
    blocks = [
        parse_block((RUST_FIXTURES / b["files"]["insert_block_request"]).read_bytes())
        for s in streams
        for b in s["blocks"]
    ]
    ids, rows = [], []
    for index in range(processes):
        process_id = uuid.uuid4()
        ids.append(str(process_id))
        lake.loop.run(lake.catalog.insert_process(ProcessRecord(**{**template.__dict__, "process_id": process_id})))
        stream_ids = {sid: uuid.uuid4() for sid in bodies}
        for sid, stream in bodies.items():
            lake.loop.run(
                lake.catalog.insert_stream(
                    stream.__class__(**{**stream.__dict__, "stream_id": stream_ids[sid], "process_id": process_id})
                )
            )
        for n, (record, payload) in enumerate(blocks):
            block = BlockRecord(
                **{
                    **record.__dict__,
                    "block_id": uuid.uuid4(),
                    "process_id": process_id,
                    "stream_id": stream_ids[str(record.stream_id)],
                }
            )
            lake.loop.run(store_block(lake, block, payload))
            rows.append((block.block_id, day + (index * len(blocks) + n) * span_ns // (processes * len(blocks))))
    lake.loop.run(
        lake.pool.executemany(
            "UPDATE blocks SET insert_time = $2 WHERE block_id = $1",
            [(block_id, ns_to_datetime(at)) for block_id, at in rows],
        )
    )
    lake.loop.run(lake.pool.execute("UPDATE processes SET insert_time = $1", ns_to_datetime(day)))
    lake.loop.run(lake.pool.execute("UPDATE streams SET insert_time = $1", ns_to_datetime(day)))
    return ids


def median_ms(lake: Lake, sql: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        make_session_context(lake).sql(sql).to_pylist()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def files(lake: Lake, view: str) -> int:
    return lake.loop.run(
        lake.pool.fetchval(
            "SELECT count(*) FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = 'global'"
            " AND file_path IS NOT NULL",
            view,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: the embedded server lives as long as the object
    day = (time.time_ns() // DAY_NS - 2) * DAY_NS
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        try:
            ids = load_day(lake, args.processes, day)
            since = dt.datetime.fromtimestamp((day + DAY_NS // 2) / SECOND_NS, dt.UTC).isoformat()
            queries = {
                "count(*) log_entries, last 12 h": f"SELECT count(*) FROM log_entries WHERE time > TIMESTAMP '{since}'",
                "processes lookup by id": f"SELECT * FROM processes WHERE process_id = '{ids[len(ids) // 2]}'",
            }
            cpu = time.process_time()
            for name in MAINTAINED:
                materialize_range(lake, VIEW_SETS[name], day, day + DAY_NS, MINUTE_NS)
            per_minute = (time.process_time() - cpu) / 1440
            before = {label: median_ms(lake, sql, args.runs) for label, sql in queries.items()}
            files_before = {v: files(lake, v) for v in ("log_entries", "processes")}
            for name in MAINTAINED:
                materialize_range(lake, VIEW_SETS[name], day, day + DAY_NS, 3600 * SECOND_NS)
                materialize_range(lake, VIEW_SETS[name], day, day + DAY_NS, DAY_NS)
            after = {label: median_ms(lake, sql, args.runs) for label, sql in queries.items()}
            files_after = {v: files(lake, v) for v in ("log_entries", "processes")}
            print(f"{args.processes} processes, {len(ids) * 9} blocks over one day")
            print(f"{'query':<34} {'1-min partitions':>18} {'merged':>10} {'ratio':>7}")
            for label in queries:
                ratio = before[label] / after[label]
                print(f"{label:<34} {before[label]:>15.1f} ms {after[label]:>7.1f} ms {ratio:>7.1f}")
            print(
                f"files: log_entries {files_before['log_entries']} -> {files_after['log_entries']},"
                f" processes {files_before['processes']} -> {files_after['processes']}"
            )
            print(f"daemon CPU per minute of ingested data: {per_minute * 1000:.1f} ms")
        finally:
            lake.close()


if __name__ == "__main__":
    main()
