"""Server memory before, during and after unread streams (issue 28): Flight SQL streams or web answers.

Starts a `spanlake serve` (embedded PostgreSQL) with a 64 MB result buffer and a short time limit,
runs `--queries` small queries through the door measured (the working set of the queries that follow
the streams is then in the figure before), opens `--streams` streams of 13 MiB batches that are never
read (`--door flight`: Flight SQL `DoGet`s; `--door web`: `/api/query-stream` requests on sockets with
a 4 KiB receive buffer, as tests/test_unread_streams.py sends them), lets their time limit stop them,
closes them, then prints the server's RSS: before, while open, after closing, and after `--queries`
more small queries (which let the allocators' thread heaps collect what other threads freed).
`--rounds N` runs N servers one after another.
The server sets mimalloc's options (server/startup.py, ALLOCATOR_OPTIONS); `--env NAME=VALUE` overrides
them, e.g. mimalloc's defaults: `--env MIMALLOC_ARENA_EAGER_COMMIT=2 --env MIMALLOC_ABANDONED_PAGE_PURGE=0
--env MIMALLOC_GENERIC_COLLECT=10000`.

    .venv/bin/python benchmarks/unread_memory.py [--door flight|web] [--streams 50] [--queries 50]
        [--rounds 1] [--env NAME=VALUE] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from collections.abc import Callable

import psutil
import pyarrow.flight as flight
from _servers import source_env, spanlake_server
from test_unread_streams import _unread_query_stream

from spanlake.server.flightsql import protocol

TIMEOUT_SECONDS = 4
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"
SMALL_QUERY = WIDE_ROWS.replace("1000000000", "131072")


def _ticket(sql: str) -> flight.Ticket:
    return flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _small_flight_queries(server: object, queries: int) -> None:
    """Runs `queries` Flight queries of 131,072 rows (2 batches), read in full."""
    with flight.connect(server.flightsql_url) as client:  # type: ignore[attr-defined]
        for _ in range(queries):
            client.do_get(_ticket(SMALL_QUERY)).read_all()


def _small_web_queries(server: object, queries: int) -> None:
    """Runs `queries` `/api/query-stream` queries of 131,072 rows (2 batches), read in full."""
    body = json.dumps({"sql": SMALL_QUERY}).encode()
    for _ in range(queries):
        request = urllib.request.Request(f"{server.http_url}/api/query-stream", body, method="POST")  # type: ignore[attr-defined]
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request) as answer:
            answer.read()


def _unread_flight_streams(server: object, streams: int) -> Callable[[], None]:
    """Opens `streams` Flight streams nobody reads; the function that closes them."""
    client = flight.connect(server.flightsql_url)  # type: ignore[attr-defined]
    options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 20)
    readers = [client.do_get(_ticket(WIDE_ROWS), options) for _ in range(streams)]

    def close() -> None:
        for reader in readers:
            reader.cancel()
        client.close()

    return close


def _unread_web_answers(server: object, streams: int) -> Callable[[], None]:
    """Sends `streams` web requests whose answers nobody reads; the function that closes them."""
    connections = [_unread_query_stream(server) for _ in range(streams)]

    def close() -> None:
        for connection in connections:
            connection.close()

    return close


DOORS = {"flight": (_small_flight_queries, _unread_flight_streams), "web": (_small_web_queries, _unread_web_answers)}


def _measure(server: object, door: str, streams: int, queries: int) -> tuple[float, float, float, float]:
    """RSS after `queries` queries, while the streams are open, after they closed, after `queries` more."""
    small_queries, open_unread = DOORS[door]
    pid = server.process.pid  # type: ignore[attr-defined]
    small_queries(server, queries)
    time.sleep(2)
    before = _rss_mb(pid)
    close = open_unread(server, streams)
    time.sleep(3)
    during = _rss_mb(pid)
    time.sleep(TIMEOUT_SECONDS + 2)
    close()
    time.sleep(3)
    closed = _rss_mb(pid)
    small_queries(server, queries)
    time.sleep(2)
    return before, during, closed, _rss_mb(pid)


def _one_round(args: argparse.Namespace, extra_env: dict[str, str]) -> tuple[float, float, float, float]:
    """The figures of one fresh server."""
    with source_env(args.baseline) as source, spanlake_server(extra_env=extra_env | source) as server:
        try:
            return _measure(server, args.door, args.streams, args.queries)
        except flight.FlightError:
            log = server.log_text()
            fault = log[log.find("Fatal Python") :]
            print(f"server exit code {server.process.poll()}; its log from the fault:\n{fault}")
            raise


def main() -> None:
    """Prints the RSS figures of each round, then the median growth after the small queries."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--door", choices=sorted(DOORS), default="flight")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--baseline", help="git revision whose code the server runs (default: this checkout)")
    args = parser.parse_args()
    extra_env = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SPANLAKE_RESULT_BUFFER_MB": "64"}
    extra_env.update(item.split("=", 1) for item in args.env)
    growths = []
    for _ in range(args.rounds):
        before, during, closed, after_queries = _one_round(args, extra_env)
        growths.append(after_queries - before)
        print(
            f"{args.door} rss MB: before {before:.0f}  open {during:.0f} ({during - before:+.0f})  "
            f"closed {closed:.0f} ({closed - before:+.0f})  after {args.queries} queries {after_queries:.0f} "
            f"({after_queries - before:+.0f})",
            flush=True,
        )
    print(f"median growth after the queries: {statistics.median(growths):+.0f} MB over {args.rounds} rounds")


if __name__ == "__main__":
    main()
