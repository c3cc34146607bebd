"""Row groups sized by rows: what small blocks cost a query, end to end through Flight SQL.

1. A process's async spans sent in small blocks (default 2,000 blocks of 100 spans) against the same
   spans in big blocks (10 blocks of 20,000): the first query (just-in-time materialization) and the
   warm query of `SELECT count(*), max(depth) FROM view_instance('async_events', …)`, medians of R
   runs, and the ratios small / big.
3. (`--part sizes`, this code only) the default of SPANLAKE_ROW_GROUP_ROWS: one file of N async_events
   rows written in row groups of 64Ki to 1Mi rows, read by plain DataFusion: a scan grouping every
   row, and a time-range query that row-group statistics and page indexes prune (wall and CPU time:
   the CPU time of all threads holds better on a loaded machine).
2. `log_entries` GROUP BY over H hourly partitions of the global view (the daemon's hour task over
   the genuine Rust log blocks of P processes), against plain DataFusion over the same rows in
   one-row-group files (one per partition), medians of R runs, and the ratio; with what makes it up:
   the same query through the query runner in this process (no Flight), plain DataFusion with a new
   context per query (its parquet footers read again), and a served `SELECT 1` against a bare
   pyarrow.flight round trip of the same one-row result (a served query's fixed cost). Then the CPU
   time (all threads of this process) of the query in process and of plain DataFusion's, and of the
   physical planning alone in a kept spanlake session and in plain DataFusion's kept context: figures
   that hold better than wall times on a loaded machine. Also plain DataFusion served behind a bare
   pyarrow.flight server in a process of its own (the GROUP BY executed per DoGet, read by a
   pyarrow.flight client), which separates what Flight costs anyone from what spanlake adds; the CPU
   time of each phase of the query (session, SQL to logical plan, physical plan, execution) in a kept
   spanlake session and in plain DataFusion's, next to the whole query through the runner; and plain
   DataFusion reading spanlake's own files against the one-row-group copies (the files' layout alone).

Each part loads its data with the lake in this process, then queries a `spanlake serve` started on the
same database and object store through the micromegas client. To measure the previous code, run this
script with PYTHONPATH naming a directory whose `spanlake` is a checkout of it.

    python benchmarks/row_groups.py [--spans 200000] [--small 100] [--big 20000] [--hours 50] [--runs R]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import micromegas
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
from datafusion import SessionContext
from decode import CONVERT, async_block
from global_views import DAY_NS, load_day
from harness import PostgresServer, SpanlakeServer
from materialize import load_process
from micromegas.flightsql.client import FlightSQLClient
from transit_builder import thread_stream_metadata
from warm_query import door_batches

from spanlake.lakehouse.batch_update import SECOND_NS, materialize_range
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.partitions import write_parquet
from spanlake.lakehouse.query.admission import lakehouse_runner
from spanlake.lakehouse.query.context import QueryContext
from spanlake.lakehouse.query.runner import QueryRunner
from spanlake.lakehouse.query.session import session_config
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views import async_events
from spanlake.views.meta import BlockMeta

HOUR_NS = 3600 * SECOND_NS
MINUTE_NS = 60 * SECOND_NS
ASYNC_SQL = "SELECT count(*) AS n, max(depth) AS d FROM view_instance('async_events', '{process}')"
GROUP_SQL = "SELECT target, level, count(*) AS n FROM {table} GROUP BY target, level ORDER BY target, level"


def median_seconds(run: Callable[[], object], runs: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The median time of `runs` calls (wall time, unless another clock is given)."""
    times = []
    for _ in range(runs):
        start = clock()
        run()
        times.append(clock() - start)
    return statistics.median(times)


def served(database_url: str, lake_dir: Path, row_group_rows: int | None) -> SpanlakeServer:
    """A `spanlake serve` on the lake's database and object store (its daemon looks at recent inserts:
    the log part's data is older than its window)."""
    extra_env = {} if row_group_rows is None else {"SPANLAKE_ROW_GROUP_ROWS": str(row_group_rows)}
    return SpanlakeServer(
        database_url=database_url, data_dir=lake_dir / "data", object_store_uri=lake_dir.as_uri(), extra_env=extra_env
    )


def stop(server: SpanlakeServer) -> None:
    """Stops the server; one that exited on its own has its log's end printed (why it did)."""
    if server.process is not None and server.process.poll() is not None:
        print(f"spanlake exited with {server.process.returncode}:\n{server.log_text()[-8000:]}", file=sys.stderr)
    server.stop()


def settled_files(client: FlightSQLClient, process_id: str) -> int:
    """The process's partition files once the settle queue's merges stopped changing them (the same
    files three times in a row, half a second apart)."""
    sql = f"SELECT file_path FROM list_partitions() WHERE view_instance_id = '{process_id}' ORDER BY file_path"
    seen: list[list[str]] = []
    while len(seen) < 3 or not seen[-1] == seen[-2] == seen[-3]:
        time.sleep(0.5)
        seen.append(client.query(sql).file_path.dropna().tolist())
    return len(seen[-1])


def async_spans(
    postgres: PostgresServer, spans: int, small: int, big: int, runs: int, row_group_rows: int | None
) -> None:
    """Part 1: first and warm queries of a process sent in small blocks against big blocks."""
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        database_url = postgres.new_database()
        lake = Lake.open(Settings(database_url=database_url, object_store_uri=Path(tmp).as_uri()))
        try:
            # async_block's events are begins and ends: two per span.
            processes = {size: load_process(lake, 2 * spans, spans // size) for size in (small, big)}
        finally:
            lake.close()
        server = served(database_url, Path(tmp), row_group_rows).start()
        try:
            client = micromegas.connect(server.flightsql_url)
            first, counts = {}, {}
            sql_of = {size: ASYNC_SQL.format(process=process_id) for size, process_id in processes.items()}
            for size, sql in sql_of.items():
                start = time.perf_counter()
                counts[size] = int(client.query(sql).n[0])
                first[size] = time.perf_counter() - start
            # The merges finished off the measured path; then the two warm queries run by turns.
            files = {size: settled_files(client, process_id) for size, process_id in processes.items()}
            warm = alternating_medians({size: lambda sql=sql: client.query(sql) for size, sql in sql_of.items()}, runs)
        finally:
            stop(server)
    assert counts[small] == counts[big] == 2 * spans, counts
    print(f"async_events of {spans:,} spans, blocks of {small} vs {big} spans, through Flight SQL")
    print(f"partition files once merged: {files[small]} ({small}-span blocks), {files[big]} ({big}-span blocks)")
    print(f"{'':<14} {f'{small}-span':>12} {f'{big}-span':>12} {'ratio':>7}")
    for label, times in (("first query", first), (f"warm (p50/{runs})", warm)):
        print(
            f"{label:<14} {times[small] * 1e3:>9.1f} ms {times[big] * 1e3:>9.1f} ms {times[small] / times[big]:>7.2f}"
        )


def log_group_by(postgres: PostgresServer, processes: int, hours: int, runs: int, row_group_rows: int | None) -> None:
    """Part 2: a log_entries GROUP BY over hourly partitions against one-row-group files. The served
    lines are timed with `spanlake serve` alone on its catalog (as a lone server runs: its warm queries
    make no catalog round trip), the in-process lines once it stopped, with this process's lake alone:
    two lakes on one catalog would make each query of either a round trip (catalog_changes.py)."""
    sized = (
        {} if row_group_rows is None else {"row_group_rows": row_group_rows}
    )  # the previous code has no such setting
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        database_url = postgres.new_database()
        settings = Settings(database_url=database_url, object_store_uri=Path(tmp).as_uri(), **sized)
        files = load_hours(settings, processes, hours, tmp)
        row_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
        plain_dir, own_dir = Path(tmp) / "plain", Path(tmp) / "spanlake-files"
        plain_dir.mkdir()
        own_dir.mkdir()
        for index, path in enumerate(files):
            table = pq.read_table(path)
            pq.write_table(table, plain_dir / f"{index:03d}.parquet", row_group_size=max(1, table.num_rows))
            os.link(path, own_dir / f"{index:03d}.parquet")  # spanlake's file itself, in plain DataFusion's listing
        sql = GROUP_SQL.format(table="log_entries")
        plain = plain_session(plain_dir)
        expected = plain.sql(sql).to_pandas()
        server = served(database_url, Path(tmp), row_group_rows).start()
        try:
            client = micromegas.connect(server.flightsql_url)
            assert client.query(sql)["n"].tolist() == expected["n"].tolist()
            with bare_flight() as bare, plain_flight(plain_dir) as plain_served:
                served_medians = alternating_medians(
                    {
                        "spanlake, Flight SQL": lambda: client.query(sql),
                        "plain DataFusion, one context kept": lambda: plain.sql(sql).to_pandas(),
                        "plain DataFusion, a context per query": lambda: plain_session(plain_dir).sql(sql).to_pandas(),
                        "plain DataFusion behind a bare pyarrow.flight DoGet": lambda: (
                            plain_served.do_get(flight.Ticket(sql.encode())).read_all().to_pandas()
                        ),
                        "Flight SQL `SELECT 1` (a served query's fixed cost)": lambda: client.query("SELECT 1 AS one"),
                        "bare pyarrow.flight DoGet of `SELECT 1`'s result": lambda: (
                            bare.do_get(ONE_TICKET).read_all().to_pandas()
                        ),
                    },
                    runs,
                )
        finally:
            stop(server)
        with Lake.open(settings) as lake:
            runner = lakehouse_runner(lake)
            in_process = functools.partial(runner_query, runner, sql)
            for _ in range(3):  # the lake finds itself alone on its catalog after its first query
                assert in_process()["n"].tolist() == expected["n"].tolist()
                time.sleep(0.5)
            in_process_medians = alternating_medians(
                {"in process": in_process, "plain": lambda: plain.sql(sql).to_pandas()}, runs
            )
            in_process_cpu = alternating_medians(
                {"in process": in_process, "plain": lambda: plain.sql(sql).to_pandas()}, runs, time.process_time
            )
            planning_cpu = physical_planning_cpu(runner, plain, sql, runs)
            phases_cpu = query_phases_cpu(runner, plain, sql, runs)
            own_files = plain_session(own_dir)
            files_cpu = alternating_medians(
                {"spanlake": lambda: own_files.sql(sql).to_pandas(), "plain": lambda: plain.sql(sql).to_pandas()},
                runs,
                time.process_time,
            )
            runner.shutdown()
    rows = int(expected["n"].sum())
    print(
        f"log_entries GROUP BY target, level: {rows:,} rows in {len(files)} hourly partitions"
        f" ({row_groups} row groups), medians of {runs} alternating runs"
    )
    plain_s = served_medians["plain DataFusion, one context kept"]
    flight_s = served_medians.pop("spanlake, Flight SQL")
    in_process_s, in_process_plain_s = in_process_medians["in process"], in_process_medians["plain"]
    # Each line's ratio is to plain DataFusion's time in its own rounds.
    lines = [
        ("spanlake, Flight SQL", flight_s, plain_s),
        ("spanlake, in process (the query runner, no Flight)", in_process_s, in_process_plain_s),
        *((label, seconds, plain_s) for label, seconds in served_medians.items()),
    ]
    for label, seconds, reference in lines:
        print(f"  {label:<52} {seconds * 1e3:7.1f} ms  {seconds / reference:5.2f}x")
    print(
        "  (in process: timed in rounds of its own, after the server stopped; its ratio is to plain there,"
        f" {in_process_plain_s * 1e3:.1f} ms)"
    )
    print(f"ratio (spanlake through Flight SQL / plain, context kept): {flight_s / plain_s:.2f}")
    plain_flight_s = served_medians["plain DataFusion behind a bare pyarrow.flight DoGet"]
    print(
        f"Flight: plain behind bare pyarrow.flight / plain {plain_flight_s / plain_s:.2f} (what Flight costs anyone);"
        f" spanlake through Flight SQL / plain behind bare pyarrow.flight {flight_s / plain_flight_s:.2f}"
        " (what spanlake adds)"
    )
    print(
        f"CPU time, all threads of this process: in process {in_process_cpu['in process'] * 1e3:.1f} ms, plain"
        f" {in_process_cpu['plain'] * 1e3:.1f} ms, ratio {in_process_cpu['in process'] / in_process_cpu['plain']:.2f};"
        f" physical planning {planning_cpu['spanlake'] * 1e3:.2f} ms in a kept session,"
        f" {planning_cpu['plain'] * 1e3:.2f} ms plain"
    )
    spanlake_phases, plain_phases = phases_cpu["spanlake"], phases_cpu["plain"]
    print(
        "CPU time by phase, all threads, kept spanlake session / plain DataFusion's kept context: "
        + ", ".join(
            f"{phase} {ours * 1e3:.2f} / {theirs * 1e3:.2f} ms"
            for phase, ours, theirs in zip(PHASES, spanlake_phases, plain_phases, strict=True)
        )
        + f"; the whole query through the runner (its batches as the Flight door takes them)"
        f" {phases_cpu['runner'][0] * 1e3:.2f} ms against {sum(spanlake_phases) * 1e3:.2f} ms for the phases"
    )
    print(
        f"files alone, CPU time of plain DataFusion reading spanlake's {len(files)} partition files"
        f" {files_cpu['spanlake'] * 1e3:.1f} ms, the one-row-group copies {files_cpu['plain'] * 1e3:.1f} ms,"
        f" ratio {files_cpu['spanlake'] / files_cpu['plain']:.2f}"
    )


def load_hours(settings: Settings, processes: int, hours: int, root: str) -> list[str]:
    """Loads `hours` hours of log blocks of `processes` processes ending a day ago, has the daemon's hour
    task materialize the global log_entries view over them, and returns its partition files' paths."""
    begin = (time.time_ns() // DAY_NS - 1) * DAY_NS - hours * HOUR_NS
    with Lake.open(settings) as lake:
        load_day(lake, processes, begin, hours * HOUR_NS)
        materialize_range(lake, VIEW_SETS["log_entries"], begin, begin + hours * HOUR_NS, HOUR_NS)
        rows = lake.loop.run(
            lake.pool.fetch(
                "SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'log_entries'"
                " AND view_instance_id = 'global' AND file_path IS NOT NULL"
            )
        )
    return [f"{root}/{row['file_path']}" for row in rows]


def physical_planning_cpu(runner: QueryRunner, plain: SessionContext, sql: str, runs: int) -> dict[str, float]:
    """Median CPU time (all threads: DataFusion asks the object store from its blocking threads) of planning
    `sql` physically, its logical plan made once: in a kept spanlake session (the runner's, given back
    after) and in plain DataFusion's kept context."""
    context = QueryContext("bench", None, None, None, {}, sql, "bench")
    session = runner.session_factory(context)
    try:
        plans = {"spanlake": session.sql(sql).execution_plan, "plain": plain.sql(sql).execution_plan}
        return alternating_medians(plans, runs, time.process_time)
    finally:
        runner.session_factory.give_back(session)


PHASES = ("session", "SQL to logical plan", "physical plan", "execution")


def query_phases_cpu(runner: QueryRunner, plain: SessionContext, sql: str, runs: int) -> dict[str, list[float]]:
    """Median CPU seconds (all threads) of each of PHASES of `sql` in a kept spanlake session (the
    runner's, given back after each run) and in plain DataFusion's kept context, and of the whole query
    through the runner (`door_batches`), the three alternating run after run."""
    context = QueryContext("bench", None, None, None, {}, sql, "bench")
    factory = runner.session_factory
    runs_of = {
        "spanlake": lambda: query_phases(lambda: factory(context), factory.give_back, sql),
        "plain": lambda: query_phases(lambda: plain, lambda _: None, sql),
        "runner": lambda: timed_cpu(lambda: door_batches(runner, sql)),
    }
    times: dict[str, list[list[float]]] = {label: [] for label in runs_of}
    for _ in range(runs):
        for label, run in runs_of.items():
            times[label].append(run())
    return {label: [statistics.median(phase) for phase in zip(*values, strict=True)] for label, values in times.items()}


def query_phases(
    session_of: Callable[[], SessionContext], give_back: Callable[[SessionContext], None], sql: str
) -> list[float]:
    """CPU seconds (all threads) of each of PHASES of one run of `sql` in the session `session_of` gives
    (its plan's partitions executed one after the other: the GROUP BY's plan has one)."""
    marks = [time.process_time()]
    session = session_of()
    marks.append(time.process_time())
    frame = session.sql(sql)
    marks.append(time.process_time())
    plan = frame.execution_plan()
    marks.append(time.process_time())
    for partition in range(plan.partition_count):
        for batch in session.execute(plan, partition):
            batch.to_pyarrow()
    marks.append(time.process_time())
    give_back(session)
    return [end - start for start, end in itertools.pairwise(marks)]


def timed_cpu(run: Callable[[], object]) -> list[float]:
    """The CPU seconds (all threads) of one call, as a one-phase list."""
    start = time.process_time()
    run()
    return [time.process_time() - start]


def plain_session(directory: Path) -> SessionContext:
    """Plain DataFusion's session of the one-row-group files (a listing table of their directory)."""
    plain = SessionContext(session_config())
    plain.register_parquet("log_entries", str(directory))
    return plain


def runner_query(runner: QueryRunner, sql: str) -> pd.DataFrame:
    """The query through the runner every door uses, its batches streamed as the Flight door streams
    them (no Flight; warm_query.door_batches)."""
    return pa.Table.from_batches(door_batches(runner, sql)[0]).to_pandas()


ONE_TICKET = flight.Ticket(b"one")


class _OneRow(flight.FlightServerBase):
    """A bare Flight server answering every DoGet with `SELECT 1 AS one`'s result."""

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        """The one-row table."""
        return flight.RecordBatchStream(pa.table({"one": pa.array([1], pa.int64())}))


@contextlib.contextmanager
def bare_flight() -> Iterator[flight.FlightClient]:
    """A client of a bare pyarrow.flight server on a loopback port, served from a thread of this process."""
    server = _OneRow("grpc://127.0.0.1:0")
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    try:
        yield flight.connect(f"grpc://127.0.0.1:{server.port}")
    finally:
        server.shutdown()
        serving.join()


class _PlainDataFusion(flight.FlightServerBase):
    """A bare Flight server running each DoGet's ticket, SQL, in plain DataFusion's kept context."""

    def __init__(self, location: str, directory: Path) -> None:
        """Serves plain DataFusion's session of the one-row-group files of `directory`."""
        super().__init__(location)
        self._plain = plain_session(directory)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        """The result of the ticket's SQL, executed now."""
        return flight.RecordBatchStream(self._plain.sql(ticket.ticket.decode()).to_arrow_table())


def serve_plain(directory: Path, ports: multiprocessing.Queue) -> None:
    """Serves plain DataFusion over bare Flight on a loopback port, put on `ports` (a process's target)."""
    server = _PlainDataFusion("grpc://127.0.0.1:0", directory)
    ports.put(server.port)
    server.serve()


@contextlib.contextmanager
def plain_flight(directory: Path) -> Iterator[flight.FlightClient]:
    """A client of plain DataFusion behind a bare pyarrow.flight server, in a process of its own (as
    `spanlake serve` is)."""
    spawn = multiprocessing.get_context("spawn")
    ports = spawn.Queue()
    process = spawn.Process(target=serve_plain, args=(directory, ports), daemon=True)
    process.start()
    try:
        yield flight.connect(f"grpc://127.0.0.1:{ports.get(timeout=60)}")
    finally:
        process.terminate()
        process.join()


def alternating_medians(
    runs_of: dict[Any, Callable[[], object]], runs: int, clock: Callable[[], float] = time.perf_counter
) -> dict[Any, float]:
    """Median seconds of each call, the calls alternating run after run (a loaded machine hits all alike);
    wall time, unless another clock is given."""
    times: dict[Any, list[float]] = {label: [] for label in runs_of}
    for _ in range(runs):
        for label, run in runs_of.items():
            start = clock()
            run()
            times[label].append(clock() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def row_group_sizes(events: int, runs: int) -> None:
    """Part 3: plain DataFusion over one file of async_events rows, by row group size."""
    layout = stream_layout(*thread_stream_metadata())
    decoded = decode_block(async_block(20_000, named_share=0.25), layout)
    blocks = [BlockMeta(f"b{i}", "s", "p", 0, 0, 0, 0, 0, 0, 0) for i in range(events // 20_000)]
    batches = [  # a block a minute after the previous one: a time range meets few row groups
        async_events.build_batch(
            decoded, meta, replace(CONVERT, process_start_ns=CONVERT.process_start_ns + i * MINUTE_NS)
        )
        for i, meta in enumerate(blocks)
    ]
    rows = sum(batch.num_rows for batch in batches)
    times = [batch.column("time") for batch in batches]
    middle = times[len(times) // 2]
    window = f"TIMESTAMP '{middle[0].as_py().isoformat()}' AND TIMESTAMP '{middle[100].as_py().isoformat()}'"
    queries = {
        "GROUP BY name": "SELECT name, count(*) AS n, max(depth) AS d FROM t GROUP BY name",
        "time range": f"SELECT count(*) AS n FROM t WHERE time BETWEEN {window}",
    }
    print(f"plain DataFusion over {rows:,} async_events rows in one file, by row group size, median of {runs}")
    print(f"{'rows/group':>10} " + " ".join(f"{f'{label} wall / cpu':>28}" for label in queries))
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        store = ObjectStore(Path(tmp).as_uri())
        for size in (64 * 1024, 128 * 1024, 256 * 1024, 512 * 1024, 1024 * 1024):
            key = f"rows-{size}.parquet"
            write_parquet(store, key, async_events.SCHEMA, batches, ("time", "time"), size)
            context = SessionContext(session_config())
            context.register_parquet("t", f"{tmp}/{key}")
            run = context.sql
            medians = [
                median_seconds(lambda sql=sql, run=run: run(sql).to_arrow_table(), runs, clock)
                for sql in queries.values()
                for clock in (time.perf_counter, time.process_time)
            ]
            pairs = zip(medians[::2], medians[1::2], strict=True)
            print(f"{size:>10} " + " ".join(f"{wall * 1e3:>16.1f} / {cpu * 1e3:>5.1f} ms" for wall, cpu in pairs))


def main() -> None:
    """Runs both parts and prints their ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=100, help="spans per block, small blocks")
    parser.add_argument("--big", type=int, default=20_000, help="spans per block, big blocks")
    parser.add_argument("--processes", type=int, default=2000, help="fixture processes of the log part")
    parser.add_argument("--hours", type=int, default=50)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--part", choices=("all", "async", "logs", "sizes"), default="all")
    parser.add_argument("--row-group-rows", type=int, help="SPANLAKE_ROW_GROUP_ROWS (default: the setting's)")
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: the embedded server lives as long as the object
    if args.part in ("all", "async"):
        async_spans(postgres, args.spans, args.small, args.big, args.runs, args.row_group_rows)
    if args.part in ("all", "logs"):
        log_group_by(postgres, args.processes, args.hours, args.runs, args.row_group_rows)
    if args.part == "sizes":
        row_group_sizes(args.spans * 2, args.runs)


if __name__ == "__main__":
    main()
