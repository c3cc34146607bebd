"""Long scans of `log_entries`: DataFusion on one node vs Daft on a two-node Ray cluster, end to end.

Synthetic `log_entries` partitions (one per hour, spanlake's own parquet writer and catalog rows)
grow in steps up to the largest size; at each step the same queries run through the micromegas client
on two servers over the same catalog and lake: one with no cluster, one sending every eligible query
to the cluster (threshold 1 byte). Printed: the median seconds of each, their ratio, the cluster's
fixed overhead (a query over one small partition), each engine's cost per 100 MB, and the size from
which N cluster machines would beat one node if the cluster's per-byte cost divides by N.

    python benchmarks/cluster_scan.py [--sizes-mb 50,150,500] [--runs 3]

On 2 cores both nodes share the machine with the servers: the cluster cannot win here; the figures to
read are the slopes and the overhead.
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

import micromegas
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import PostgresServer, SpanlakeServer
from ray_cluster import RayCluster

from spanlake.lakehouse.catalog.partitions import none_identical
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import Partition, RetireMatch, partition_key, write_parquet
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.view_sets import VIEW_SETS

HOUR_NS = 3_600 * 1_000_000_000
ROWS_PER_PARTITION = 1_000_000
QUERIES = {
    "counts by level": "SELECT level, count(*) AS n FROM log_entries GROUP BY level ORDER BY level",
    "like top-k": (
        "SELECT target, count(*) AS n FROM log_entries WHERE msg LIKE '%request 7%'"
        " GROUP BY target ORDER BY n DESC, target LIMIT 5"
    ),
    "distinct per day": (
        "SELECT date_trunc('day', time) AS day, count(DISTINCT process_id) AS p FROM log_entries"
        " GROUP BY date_trunc('day', time) ORDER BY day"
    ),
    "date_bin series": (
        "SELECT date_bin(INTERVAL '10 minutes', time) AS bin, count(*) AS n FROM log_entries"
        " GROUP BY date_bin(INTERVAL '10 minutes', time) ORDER BY bin"
    ),
}


def synthetic_batch(rng: np.random.Generator, begin_ns: int, rows: int) -> pa.RecordBatch:
    """A million log entries of a few hundred processes over one hour, shaped like real ones."""
    view = VIEW_SETS["log_entries"]
    processes = [str(uuid.UUID(int=int(i) + 1)) for i in range(300)]
    process_index = rng.integers(0, len(processes), rows)
    times = np.sort(begin_ns + rng.integers(0, HOUR_NS, rows))
    words = np.array([f"request {i} served" for i in range(1000)], dtype=object)
    text = lambda values: pa.array(values).dictionary_encode()  # noqa: E731 - a local shorthand
    columns = {
        "process_id": pa.DictionaryArray.from_arrays(pa.array(process_index, pa.int32()), pa.array(processes)),
        "stream_id": pa.DictionaryArray.from_arrays(pa.array(process_index, pa.int32()), pa.array(processes)),
        "block_id": text(np.full(rows, "b")),
        "insert_time": pa.array(times, view.schema.field("insert_time").type),
        "exe": text(np.full(rows, "service")),
        "username": text(np.full(rows, "user")),
        "computer": text(np.full(rows, "host")),
        "time": pa.array(times, view.schema.field("time").type),
        "target": text(np.array(["http", "db", "cache", "auth"], dtype=object)[rng.integers(0, 4, rows)]),
        "level": pa.array(rng.integers(1, 7, rows), pa.int32()),
        "msg": pa.array(words[rng.integers(0, len(words), rows)]),
        "properties": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([b""])),
        "process_properties": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([b""])),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in view.schema], schema=view.schema)


def add_partition(lake: Lake, rng: np.random.Generator, begin_ns: int) -> int:
    """One hour of synthetic log entries, written and committed as the daemon would; returns its bytes."""
    view = VIEW_SETS["log_entries"]
    key = partition_key(view.name, "global", begin_ns)
    batch = synthetic_batch(rng, begin_ns, ROWS_PER_PARTITION)
    size, rows, first, last = write_parquet(lake.store, key, view.schema, [batch], view.time_columns)
    partition = Partition(
        view_set_name=view.name,
        view_instance_id="global",
        begin_insert_ns=begin_ns,
        end_insert_ns=begin_ns + HOUR_NS,
        min_event_ns=first,
        max_event_ns=last,
        file_path=key,
        file_size=size,
        file_schema_hash=view.schema_hash,
        source_count=rows,
        num_rows=rows,
    )
    lake.loop.run(lake.catalog.swap_partitions([partition], RetireMatch.CONTAINED, none_identical))
    return size


def median_seconds(client: micromegas.flightsql.client.FlightSQLClient, sql: str, runs: int, **kw: str) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        client.query(sql, **kw)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="50,150,500", help="cumulative partition sizes to measure at")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(mb) * 1_000_000 for mb in args.sizes_mb.split(",")]
    with tempfile.TemporaryDirectory(prefix="spanlake-cluster-") as tmp:
        root = Path(tmp)
        (root / "ray").mkdir()
        cluster = RayCluster(root / "ray" / "t")
        postgres = PostgresServer()
        database_url = postgres.new_database()
        lake_uri = (root / "lake").as_uri()
        servers = [
            SpanlakeServer(database_url=database_url, data_dir=root / "single", object_store_uri=lake_uri),
            SpanlakeServer(
                database_url=database_url,
                data_dir=root / "clustered",
                object_store_uri=lake_uri,
                extra_env={"SPANLAKE_QUERY_CLUSTER": cluster.gcs_address, "SPANLAKE_CLUSTER_MIN_BYTES": "1"},
            ),
        ]
        try:
            for server in servers:
                server.start()
            with Lake.open(Settings(database_url=database_url, object_store_uri=lake_uri)) as lake:
                run(servers, lake, sizes, args.runs)
        finally:
            for server in servers:
                server.stop()
            cluster.stop()


def run(servers: list[SpanlakeServer], lake: Lake, sizes: list[int], runs: int) -> None:
    single, clustered = (micromegas.connect(s.flightsql_url) for s in servers)
    rng = np.random.default_rng(7)
    first_hour = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    written, hours, slopes = 0, 0, {"datafusion": [], "cluster": []}
    overhead = None
    print(f"{'MB':>6} {'query':<18} {'datafusion s':>13} {'cluster s':>10} {'cluster/df':>11}")
    for target in sizes:
        while written < target:
            written += add_partition(lake, rng, first_hour + hours * HOUR_NS)
            hours += 1
        if overhead is None:  # one partition: what the cluster costs before any data
            small = {"begin": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:01Z"}
            overhead = median_seconds(clustered, QUERIES["counts by level"], runs, **small) - median_seconds(
                single, QUERIES["counts by level"], runs, **small
            )
        for name, sql in QUERIES.items():
            on_df, on_cluster = median_seconds(single, sql, runs), median_seconds(clustered, sql, runs)
            slopes["datafusion"].append((written, on_df))
            slopes["cluster"].append((written, on_cluster))
            print(f"{written / 1e6:6.0f} {name:<18} {on_df:13.3f} {on_cluster:10.3f} {on_cluster / on_df:11.2f}")
    report(slopes, overhead)


def report(points: dict[str, list[tuple[int, float]]], overhead: float) -> None:
    per_100mb = {}
    for engine, samples in points.items():
        sizes, seconds = np.array([s for s, _ in samples], float), np.array([t for _, t in samples])
        per_100mb[engine] = float(np.polyfit(sizes / 1e8, seconds, 1)[0]) if len(set(sizes)) > 1 else float("nan")
        print(f"{engine}: {per_100mb[engine]:.3f} s per 100 MB (all queries, least squares)")
    print(f"cluster fixed overhead (one tiny partition): {overhead:.3f} s")
    df_slope, cluster_slope = per_100mb["datafusion"], per_100mb["cluster"]
    for machines in (2, 4, 8, 16):
        gain = df_slope - cluster_slope / (machines / 2)  # the measured cluster already has 2 nodes
        breakeven = overhead / gain * 100 if gain > 0 else float("inf")
        print(f"projected, {machines:2} cluster machines: faster than one node from ~{breakeven:,.0f} MB")


if __name__ == "__main__":
    main()
