"""Warm queries of a view instance next to plain DataFusion on the same parquet files, on this code and
on the previous code (`--baseline`, a git revision, default `main`), alternately.

Each round runs one child per code (the previous code from a `git archive` on PYTHONPATH), each on a
new database of one PostgreSQL: it loads a process of N async events in B blocks (benchmarks/
materialize.py's), materializes `async_events` with a first query, waits for the tail merges, then
R times, alternately:

  spanlake  `SELECT count(*), max(depth) FROM view_instance('async_events', …)` through the query
            runner every door uses (a served query without its transport: admission, session,
            planning with the instance's freshness check, the batches streamed, audit and spans)
  plain     the same over the instance's partition files registered with `register_parquet` in a new
            context (DataFusion's own cost of a query that finds its files)

Prints the medians per code over the rounds (of each child's medians), spanlake / plain per code (the
aim: at most 1.3) with each side's time split in building the session (plain: a context and its files
registered, their footers read), planning and executing, and the process's CPU a query (every thread's:
steadier than wall times on a loaded machine), and spanlake this / previous, with the load. Each child's
lake is the only one on its database: this code's warm queries then make no catalog round trip
(`lakehouse/catalog_changes.py`); the line of each code says whether its lake was alone.

    python benchmarks/warm_query.py [--events N] [--blocks B] [--runs R] [--rounds K] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from datafusion import SessionContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import source_env
from harness import PostgresServer

CODES = ("this", "previous")
SIDES = ("spanlake", "plain")
PHASES = ("session", "plan", "execute", "total", "cpu")


def timed_phases(session: Callable[[], SessionContext], sql: str) -> list[Any]:
    """Seconds to build the session, plan the SQL, execute it, in all, and the process's CPU seconds (every
    thread's: DataFusion's, the lake's loop); then the rows."""
    cpu = time.process_time()
    start = time.perf_counter()
    ctx = session()
    built = time.perf_counter()
    frame = ctx.sql(sql)
    planned = time.perf_counter()
    rows = frame.to_pylist()
    done = time.perf_counter()
    return [built - start, planned - built, done - planned, done - start, time.process_time() - cpu, rows]


def runner_phases(runner: Any, sql: str) -> list[Any]:
    """`timed_phases` of a query through the runner as the Flight door runs it: its session is built as
    it is planned (session phase 0), its planning (with `Query.start`, starting its execution too), then
    its batches streamed (its closing included); then the rows."""
    cpu = time.process_time()
    start = time.perf_counter()
    batches, planned = door_batches(runner, sql)
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    return [0.0, planned - start, done - planned, done - start, cpu, pa.Table.from_batches(batches).to_pylist()]


def door_batches(runner: Any, sql: str) -> tuple[list[pa.RecordBatch], float]:
    """The query's batches taken by the steps the Flight door takes, and when it was planned: with
    `Query.start`, one step builds the session, plans and starts executing; the previous code, without
    it, took a step to plan and one to start."""
    from spanlake.lakehouse.query.runner import QueryRequest

    query = runner.open(QueryRequest("bench", "bench.query", sql, None), lambda: False)
    try:
        if hasattr(query, "start"):
            results = query.run(query.start).results
            planned = time.perf_counter()
        else:
            frame = query.run(query.plan)
            planned = time.perf_counter()
            results = query.run(query.execute, frame)
        batches = []
        while (batch := query.run(results.next_batch)) is not None:
            batches.append(batch)
        results.close()
    finally:
        query.close()
    return batches, planned


def plain_context(files: list[str]) -> SessionContext:
    """Plain DataFusion's session of the files: one table each (their schemas read from their footers)."""
    from spanlake.lakehouse.query.session import session_config

    plain = SessionContext(session_config())
    for i, path in enumerate(files):
        plain.register_parquet(f"p{i}", path)
    return plain


def child(database_url: str, events: int, blocks: int, runs: int) -> dict[str, float]:
    """Loads, materializes and times the warm queries in this process; medians in seconds."""
    from materialize import load_process

    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.query.admission import lakehouse_runner
    from spanlake.lakehouse.query.session import make_session_context
    from spanlake.lakehouse.settings import Settings

    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=database_url, object_store_uri=Path(tmp).as_uri()))
        try:
            process_id = load_process(lake, events, blocks)
            query = f"SELECT count(*) AS n, max(depth) AS d FROM view_instance('async_events', '{process_id}')"
            make_session_context(lake).sql(query).to_pylist()  # materializes, queues the tail merges
            while lake.settler.pending():
                time.sleep(0.05)
            first = make_session_context(lake).sql(query).to_pylist()
            rows = lake.loop.run(
                lake.pool.fetch("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'async_events'")
            )
            files = [f"{tmp}/{row['file_path']}" for row in rows]
            union = " UNION ALL ".join(f"SELECT depth FROM p{i}" for i in range(len(files)))
            plain_sql = f"SELECT count(*) AS n, max(depth) AS d FROM ({union})"
            phases: dict[str, list[float]] = {f"{side} {phase}": [] for side in SIDES for phase in PHASES}
            runner = lakehouse_runner(lake)
            for _ in range(runs):
                spanlake = runner_phases(runner, query)
                assert spanlake.pop() == first
                plain = timed_phases(lambda: plain_context(files), plain_sql)
                assert plain.pop() == first
                for side, times in zip(SIDES, (spanlake, plain), strict=True):
                    for phase, seconds in zip(PHASES, times, strict=True):
                        phases[f"{side} {phase}"].append(seconds)
            runner.shutdown()
            medians = {name: statistics.median(times) for name, times in phases.items()}
            return {**medians, "alone": float(getattr(lake.catalog_changes, "alone", False))}
        finally:
            lake.close()


def run_child(code: str, baseline: str, database_url: str, args: argparse.Namespace) -> dict[str, float]:
    """One child of `code` ('this' or 'previous'); its medians."""
    flags = ["--events", str(args.events), "--blocks", str(args.blocks), "--runs", str(args.runs)]
    with source_env(None if code == "this" else baseline) as env:
        result = subprocess.run(
            [sys.executable, __file__, "--child", database_url, *flags],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git revision of the previous code")
    parser.add_argument("--child", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.events, args.blocks, args.runs)))
        return
    postgres = PostgresServer()  # kept referenced: its embedded server lives as long as the object
    medians: dict[str, list[dict[str, float]]] = {code: [] for code in CODES}
    for _ in range(args.rounds):
        for code in CODES:
            medians[code].append(run_child(code, args.baseline, postgres.new_database(), args))
    print(
        f"{args.events:,} async events in {args.blocks} blocks, {args.rounds} rounds of {args.runs} runs,"
        f" load {os.getloadavg()[0]:.2f}"
    )
    spanlake, cpu = {}, {}
    for code in CODES:
        median = {name: statistics.median(m[name] for m in medians[code]) for name in medians[code][0]}
        spanlake[code], cpu[code] = median["spanlake total"], median["spanlake cpu"]
        print(
            f"{code}: spanlake / plain {median['spanlake total'] / median['plain total']:.2f}"
            f" (CPU {median['spanlake cpu'] / median['plain cpu']:.2f}), alone: {median['alone'] == 1.0}"
        )
        for side in SIDES:
            print(f"  {side:9} " + "  ".join(f"{phase} {median[f'{side} {phase}'] * 1000:6.3f} ms" for phase in PHASES))
    print("(spanlake: its session is built as it is planned; `Query.start` plans and starts executing in one step)")
    ratio, cpu_ratio = spanlake["this"] / spanlake["previous"], cpu["this"] / cpu["previous"]
    print(f"spanlake this/previous: {ratio:.2f} (CPU {cpu_ratio:.2f})")


if __name__ == "__main__":
    main()
