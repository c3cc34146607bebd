"""What the query deny list costs a query: the latency of a small query through the micromegas
client against a running `spanlake serve`, with no rule, then with N rules none of which matches
(every rule is evaluated), side by side; and how fast a matching query is refused.

    .venv/bin/python benchmarks/deny_list.py [--rules 10] [--queries 200]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import micromegas
import pyarrow.flight as flight
from _servers import spanlake_server

SQL = "SELECT 1 AS one"


def latencies(client: micromegas.flightsql.client.FlightSQLClient, queries: int, sql: str = SQL) -> list[float]:
    times = []
    for _ in range(queries):
        start = time.perf_counter()
        with contextlib.suppress(flight.FlightUnavailableError):  # refused: what the last round measures
            client.query_arrow(sql)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with spanlake_server() as server:
        client = micromegas.connect(server.flightsql_url)
        latencies(client, 20)  # warm up
        without = statistics.median(latencies(client, args.queries))
        for index in range(args.rules):
            client.query(f"SELECT * FROM deny_queries('entrypoint = ''never-{index}''', 'benchmark')")
        with_rules = statistics.median(latencies(client, args.queries))
        client.query("SELECT * FROM deny_queries('sql = ''SELECT 2 AS two''', 'benchmark')")
        refused = statistics.median(latencies(client, args.queries, "SELECT 2 AS two"))
    print(f"median latency of {SQL!r} over {args.queries} queries (micromegas client, loopback)")
    print(f"  no rule             {without:7.2f} ms")
    print(f"  {args.rules:3d} rules, no match {with_rules:7.2f} ms  ({with_rules / without:.2f}x)")
    print(f"  refused by a rule   {refused:7.2f} ms  ({refused / without:.2f}x)")


if __name__ == "__main__":
    main()
