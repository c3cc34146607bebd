"""SQL functions over 10M rows: property_get, jsonb_get + jsonb_as_string and make_histogram, next to a
plain DataFusion column scan of the same table.

The table is 10M rows in 64Ki-row batches: `properties`, a `Dictionary(Int32, Binary)` jsonb column of
1000 distinct objects (as a view's properties column), and `value`, Float64 in [0, 100). Each query
aggregates so that only the function's cost is timed, in process, in one DataFusion session with the
lakehouse's functions. Then one end-to-end figure: the same jsonb query through the micromegas client
from a Flight SQL server process. Figures are medians of interleaved runs.

    .venv/bin/python benchmarks/sql_functions.py [--rows 10000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import datafusion
import micromegas
import numpy as np
import pyarrow as pa
from datafusion import udtf

from spanlake.lakehouse.query import functions
from spanlake.lakehouse.query.off_runtime import OffRuntime
from spanlake.server.flightsql import FlightSqlServer, default_session_config
from spanlake.views import properties

BATCH_ROWS = 65536
# What a lake holds for its table functions; this script's sessions have no lake.
OFF_RUNTIME = OffRuntime()
DISTINCT_PROPERTIES = 1000
QUERIES = {
    "column scan (sum(value))": "SELECT sum(value) FROM t",
    "dictionary scan (count(properties))": "SELECT count(properties) FROM t",
    "property_get": "SELECT count(property_get(properties, 'thread-name')) FROM t",
    "jsonb_get + jsonb_as_string": "SELECT count(jsonb_as_string(jsonb_get(properties, 'thread-name'))) FROM t",
    "make_histogram": "SELECT count_from_histogram(make_histogram(0.0, 100.0, 100, value)) FROM t",
}
END_TO_END = (
    "SELECT jsonb_as_string(jsonb_get(properties, 'thread-name')) AS thread, count(*) AS n,"
    " quantile_from_histogram(make_histogram(0.0, 100.0, 100, value), 0.5) AS median FROM t GROUP BY thread"
)


def make_batches(rows: int) -> list[pa.RecordBatch]:
    generator = np.random.default_rng(0)
    distinct = [{"thread-name": f"worker-{i % 16}", "id": str(i)} for i in range(DISTINCT_PROPERTIES)]
    codes = generator.integers(0, DISTINCT_PROPERTIES, rows)
    table = pa.table(
        {
            "properties": properties.jsonb_dictionary(codes, distinct),
            "value": generator.uniform(0.0, 100.0, rows),
        }
    )
    return table.to_batches(max_chunksize=BATCH_ROWS)


def session(batches: list[pa.RecordBatch]) -> datafusion.SessionContext:
    """A session with the table and the lakehouse's SQL functions."""
    ctx = datafusion.SessionContext(default_session_config())
    ctx.register_record_batches("t", [batches])
    for function in functions.scalar_udfs():
        ctx.register_udf(function)
    for aggregate in functions.aggregate_udfs():
        ctx.register_udaf(aggregate)
    for name, table_function in functions.table_function_list(datafusion.SessionContext, OFF_RUNTIME):
        ctx.register_udtf(udtf(table_function, name))
    return ctx


def timed(ctx: datafusion.SessionContext, sql: str) -> float:
    started = time.perf_counter()
    ctx.sql(sql).collect()
    return time.perf_counter() - started


def serve(rows: int) -> None:
    """Server process: prints its port, then serves until stdin closes."""
    batches = make_batches(rows)
    server = FlightSqlServer("grpc://127.0.0.1:0", lambda _query: session(batches), None)
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()


def end_to_end(rows: int, runs: int) -> tuple[float, float]:
    """Median seconds of END_TO_END through the micromegas client, and in process."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--rows", str(rows)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    uri = f"grpc://127.0.0.1:{process.stdout.readline().strip()}"
    try:
        client = micromegas.connect(uri)
        assert len(client.query(END_TO_END)) == 16  # warm-up, and the answer has one row per thread name
        remote = []
        for _ in range(runs):
            started = time.perf_counter()
            client.query(END_TO_END)
            remote.append(time.perf_counter() - started)
    finally:
        process.stdin.close()
        process.wait(60)
    ctx = session(make_batches(rows))
    local = [timed(ctx, END_TO_END) for _ in range(runs)]
    return statistics.median(remote), statistics.median(local)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.rows)
        return

    # As spanlake's server does: DataFusion's threads take turns on the GIL to call the Python UDFs.
    sys.setswitchinterval(1e-4)
    ctx = session(make_batches(args.rows))
    for sql in QUERIES.values():
        timed(ctx, sql)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    for _ in range(args.runs):
        for name, sql in QUERIES.items():
            times[name].append(timed(ctx, sql))
    baseline = statistics.median(times["column scan (sum(value))"])
    print(f"{args.rows:,} rows, {DISTINCT_PROPERTIES} distinct properties, median of {args.runs} runs, in process")
    print(f"{'query':40} {'seconds':>9} {'Mrows/s':>9} {'vs scan':>8}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        print(f"{name:40} {seconds:9.3f} {args.rows / seconds / 1e6:9.1f} {seconds / baseline:7.1f}x")
    remote, local = end_to_end(args.rows, args.runs)
    print(f"\nend to end (micromegas client, group by thread + histogram): {remote:.3f} s")
    print(f"  {args.rows / remote / 1e6:.1f} Mrows/s; in process {local:.3f} s ({remote / local:.2f}x)")


if __name__ == "__main__":
    main()
