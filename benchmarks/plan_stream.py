"""Streaming a query's result: DataFusion's `execute_stream` vs `PlanStream` (the kept plan, every
partition read by a thread of its own into a bounded queue, so that its operators' metrics stay
reachable for the slow-query spans).

In process, on spanlake's session configuration (lakehouse.query.session) and the Flight SQL server's
switch interval; a table of `--rows` rows (int64, int64, float64) as 16 parquet files (a view
instance's partitions: one scan partition per file) and as 16 in-memory partitions (no decoding: the
per-batch cost of the threads shows most). Each query reads every batch (converted to pyarrow, as the
server does); the two ways alternate run by run; figures are medians in ms, with their ratio.

    .venv/bin/python benchmarks/plan_stream.py [--rows 20000000] [--runs 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spanlake.lakehouse.query.plan_spans import PlanStream
from spanlake.lakehouse.query.session import session_config
from spanlake.server.flightsql.service import SWITCH_INTERVAL_SECONDS

PARTITIONS = 16
QUERIES = {
    "scan": "SELECT * FROM {t}",
    "filter + project": "SELECT a, b * 2 AS b2 FROM {t} WHERE c > 0.5",
    "group by": "SELECT b % 1000 AS k, count(*) AS n, avg(c) AS m FROM {t} GROUP BY 1",
}


def context(rows: int, directory: Path) -> datafusion.SessionContext:
    """A session with the table as `parquet` (files in `directory`) and as `memory`."""
    ctx = datafusion.SessionContext(session_config(split_inputs=True))
    generator = np.random.default_rng(7)
    table = pa.table({"a": np.arange(rows), "b": generator.integers(0, 1 << 20, rows), "c": generator.random(rows)})
    size = -(-rows // PARTITIONS)
    parts = [table.slice(i * size, size) for i in range(PARTITIONS)]
    for index, part in enumerate(parts):
        pq.write_table(part, directory / f"part-{index:02d}.parquet", row_group_size=65536)
    ctx.register_parquet("parquet", str(directory))
    ctx.register_record_batches("memory", [part.to_batches(65536) for part in parts])
    return ctx


def drained(batches: Iterator) -> int:
    return sum(batch.to_pyarrow().num_rows for batch in batches)


def timed_ms(read: Callable[[], int]) -> float:
    started = time.perf_counter()
    read()
    return (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    with tempfile.TemporaryDirectory(prefix="spanlake-plan-stream-") as directory:
        ctx = context(args.rows, Path(directory))
        print(f"{'query':26} {'partitions':>10} {'execute_stream':>15} {'PlanStream':>11} {'ratio':>7}")
        for table in ("parquet", "memory"):
            for label, sql in QUERIES.items():
                compare(ctx, f"{label} ({table})", sql.format(t=table), args.runs)


def compare(ctx: datafusion.SessionContext, label: str, sql: str, runs: int) -> None:
    """Prints both ways' medians for one query."""
    ways = {
        "execute_stream": lambda: drained(ctx.sql(sql).execute_stream()),
        "PlanStream": lambda: drained(PlanStream.start(ctx, ctx.sql(sql))),
    }
    assert len({read() for read in ways.values()}) == 1  # same rows; also warms up
    times: dict[str, list[float]] = {way: [] for way in ways}
    for run in range(runs):
        for way in list(ways)[:: 1 if run % 2 == 0 else -1]:
            times[way].append(timed_ms(ways[way]))
    base, plan = (statistics.median(times[way]) for way in ways)
    partitions = ctx.sql(sql).execution_plan().partition_count
    print(f"{label:26} {partitions:10d} {base:15.1f} {plan:11.1f} {plan / base:7.3f}")


if __name__ == "__main__":
    main()
