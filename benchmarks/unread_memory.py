"""Server memory before, during and after unread Flight SQL streams (issue 28).

Starts a `spanlake serve` (embedded PostgreSQL) with a 64 MB result buffer and a short time limit,
runs `--queries` small queries (the working set of the queries that follow the streams is then in the
figure before), opens `--streams` streams of 13 MiB batches that are never read, lets their time limit
stop them, cancels them, then prints the server's RSS: before, while open, after closing, and after
`--queries` more small queries (which let the allocators' thread heaps collect what other threads freed).
The server sets mimalloc's options (server/startup.py, ALLOCATOR_OPTIONS); `--env NAME=VALUE` overrides
them, e.g. mimalloc's defaults: `--env MIMALLOC_ARENA_EAGER_COMMIT=2 --env MIMALLOC_ABANDONED_PAGE_PURGE=0
--env MIMALLOC_GENERIC_COLLECT=10000`.

    .venv/bin/python benchmarks/unread_memory.py [--streams 50] [--queries 50] [--env NAME=VALUE] [--baseline REV]
"""

from __future__ import annotations

import argparse
import time

import psutil
import pyarrow.flight as flight
from _servers import source_env, spanlake_server

from spanlake.server.flightsql import protocol

TIMEOUT_SECONDS = 4
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"


def _ticket(sql: str) -> flight.Ticket:
    return flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _small_queries(client: flight.FlightClient, queries: int) -> None:
    """Runs `queries` queries of 131,072 rows (2 batches), then lets the server settle."""
    for _ in range(queries):
        client.do_get(_ticket(WIDE_ROWS.replace("1000000000", "131072"))).read_all()
    time.sleep(2)


def _measure(server: object, streams: int, queries: int) -> tuple[float, float, float, float]:
    """RSS after `queries` queries, while the streams are open, after they closed, after `queries` more."""
    pid = server.process.pid  # type: ignore[attr-defined]
    client = flight.connect(server.flightsql_url)  # type: ignore[attr-defined]
    _small_queries(client, queries)
    before = _rss_mb(pid)
    options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 20)
    readers = [client.do_get(_ticket(WIDE_ROWS), options) for _ in range(streams)]
    time.sleep(3)
    during = _rss_mb(pid)
    time.sleep(TIMEOUT_SECONDS + 2)
    for reader in readers:
        reader.cancel()
    time.sleep(3)
    closed = _rss_mb(pid)
    _small_queries(client, queries)
    after_queries = _rss_mb(pid)
    client.close()
    return before, during, closed, after_queries


def main() -> None:
    """Prints the RSS figures of one run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--baseline", help="git revision whose code the server runs (default: this checkout)")
    args = parser.parse_args()
    extra_env = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SPANLAKE_RESULT_BUFFER_MB": "64"}
    extra_env.update(item.split("=", 1) for item in args.env)
    with source_env(args.baseline) as source, spanlake_server(extra_env=extra_env | source) as server:
        try:
            before, during, closed, after_queries = _measure(server, args.streams, args.queries)
        except flight.FlightError:
            log = server.log_text()
            fault = log[log.find("Fatal Python") :]
            print(f"server exit code {server.process.poll()}; its log from the fault:\n{fault}")
            raise
    print(
        f"rss MB: before {before:.0f}  open {during:.0f} (+{during - before:.0f})  "
        f"closed {closed:.0f} (+{closed - before:.0f})  after {args.queries} queries {after_queries:.0f} "
        f"(+{after_queries - before:.0f})"
    )


if __name__ == "__main__":
    main()
