"""Warm queries of a view instance next to plain DataFusion on the same parquet files, on this code and
on the previous code (`--baseline`, a git revision, default `main`), alternately.

Each round runs one child per code (the previous code from a `git archive` on PYTHONPATH), each on a
new database of one PostgreSQL: it loads a process of N async events in B blocks (benchmarks/
materialize.py's), materializes `async_events` with a first query, waits for the tail merges, then
R times, alternately:

  spanlake  `SELECT count(*), max(depth) FROM view_instance('async_events', …)` in a DataFusion
            session of the lake (the instance's freshness check included)
  plain     the same over the instance's partition files registered with `register_parquet`

Prints the medians per code over the rounds (of each child's medians), spanlake / plain per code (the
aim: at most 1.3), and spanlake this / previous, with the machine's load.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import source_env
from harness import PostgresServer

CODES = ("this", "previous")


def child(database_url: str, events: int, blocks: int, runs: int) -> dict[str, float]:
    """Loads, materializes and times the warm queries in this process; medians in seconds."""
    from datafusion import SessionContext
    from materialize import load_process

    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.query.session import make_session_context, session_config
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
            spanlake_times, plain_times = [], []
            for _ in range(runs):
                start = time.perf_counter()
                assert make_session_context(lake).sql(query).to_pylist() == first
                spanlake_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                plain = SessionContext(session_config())
                for i, path in enumerate(files):
                    plain.register_parquet(f"p{i}", path)
                assert plain.sql(f"SELECT count(*) AS n, max(depth) AS d FROM ({union})").to_pylist() == first
                plain_times.append(time.perf_counter() - start)
            return {"spanlake": statistics.median(spanlake_times), "plain": statistics.median(plain_times)}
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
    print(f"{'code':9} {'spanlake ms':>12} {'plain ms':>9} {'spanlake/plain':>15}")
    spanlake = {}
    for code in CODES:
        spanlake[code] = statistics.median(m["spanlake"] for m in medians[code])
        plain = statistics.median(m["plain"] for m in medians[code])
        print(f"{code:9} {spanlake[code] * 1000:>12.2f} {plain * 1000:>9.2f} {spanlake[code] / plain:>15.2f}")
    print(f"spanlake this/previous: {spanlake['this'] / spanlake['previous']:.2f}")


if __name__ == "__main__":
    main()
