"""Flight SQL throughput: spanlake's server vs a plain pyarrow.flight server (the ceiling).

Both servers run in their own process and hold the same in-memory table (10M rows × int64, float64,
timestamp = 240 MB, 64Ki-row batches). spanlake answers `SELECT * FROM t` planned and streamed by
DataFusion in a fresh session per query (the session factory registers the table); the plain server
hands the table to `flight.RecordBatchStream`. The client reads with pyarrow.flight over loopback.
Modes are interleaved; figures are medians. Then 8 clients read at once from each server.

    .venv/bin/python benchmarks/flight_throughput.py [--rows 10000000] [--runs 7] [--clients 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from spanlake.server.flightsql import FlightSqlServer, QueryContext, default_session_config, protocol

BATCH_ROWS = 65536


def make_table(rows: int) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table(
        {"id": ids, "value": ids * 0.25, "ts": pa.array(1_704_067_200_000_000_000 + ids * 1000, pa.timestamp("ns"))}
    )
    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS))


class PlainServer(flight.FlightServerBase):
    """The ceiling: pyarrow.flight streaming an in-memory table, no SQL, no Python per batch."""

    def __init__(self, table: pa.Table) -> None:
        sys.setswitchinterval(1e-4)  # as spanlake's server does, so both start equal
        super().__init__("grpc://127.0.0.1:0")
        self._table = table

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        return flight.RecordBatchStream(self._table)


def serve(kind: str, rows: int) -> None:
    """Server process: prints its port, then serves until stdin closes."""
    table = make_table(rows)
    batches = table.to_batches()
    if kind == "plain":
        server: flight.FlightServerBase = PlainServer(table)
    else:

        def factory(_query: QueryContext) -> datafusion.SessionContext:
            ctx = datafusion.SessionContext(default_session_config())
            ctx.register_record_batches("t", [batches])
            return ctx

        server = FlightSqlServer("grpc://127.0.0.1:0", factory, None)
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()


def start(kind: str, rows: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--rows", str(rows)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, f"grpc://127.0.0.1:{process.stdout.readline().strip()}"


def reader_for(uri: str, ticket: flight.Ticket, rows: int) -> Callable[[], float]:
    def read() -> float:
        with flight.connect(uri) as client:
            started = time.perf_counter()
            table = client.do_get(ticket).read_all()
            elapsed = time.perf_counter() - started
        assert table.num_rows == rows, (table.num_rows, rows)
        return elapsed

    return read


def concurrent(read: Callable[[], float], clients: int) -> float:
    """Wall time for `clients` simultaneous full reads."""
    threads = [threading.Thread(target=read) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve", choices=("plain", "spanlake"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.rows)
        return

    megabytes = make_table(args.rows).nbytes / 1e6
    servers = {kind: start(kind, args.rows) for kind in ("plain", "spanlake")}
    tickets = {
        "plain": flight.Ticket(b"t"),
        "spanlake": flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=b"SELECT * FROM t"))),
    }
    readers = {kind: reader_for(uri, tickets[kind], args.rows) for kind, (_, uri) in servers.items()}
    try:
        for read in readers.values():
            read()  # warm-up
        single: dict[str, list[float]] = {kind: [] for kind in readers}
        for _ in range(args.runs):
            for kind, read in readers.items():
                single[kind].append(read())
        many: dict[str, list[float]] = {kind: [] for kind in readers}
        for _ in range(max(3, args.runs // 2)):
            for kind, read in readers.items():
                many[kind].append(concurrent(read, args.clients))
    finally:
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(60)

    print(
        f"{args.rows:,} rows, {megabytes:.0f} MB per read, medians of {args.runs} runs (1 client) "
        f"and {max(3, args.runs // 2)} runs ({args.clients} clients)"
    )
    print(f"{'server':<34}{'ms':>9}{'Mrows/s':>10}{'MB/s':>9}{'vs ceiling':>12}")
    ceiling = statistics.median(single["plain"])
    for kind, label in (("plain", "pyarrow.flight in-memory (ceiling)"), ("spanlake", "spanlake Flight SQL")):
        seconds = statistics.median(single[kind])
        print(
            f"{label:<34}{seconds * 1e3:>9.0f}{args.rows / seconds / 1e6:>10.1f}"
            f"{megabytes / seconds:>9.0f}{ceiling / seconds:>11.0%}"
        )
    ceiling_many = statistics.median(many["plain"])
    for kind, label in (
        ("plain", f"ceiling, {args.clients} clients"),
        ("spanlake", f"spanlake, {args.clients} clients"),
    ):
        seconds = statistics.median(many[kind])
        total = args.rows * args.clients
        print(
            f"{label:<34}{seconds * 1e3:>9.0f}{total / seconds / 1e6:>10.1f}"
            f"{megabytes * args.clients / seconds:>9.0f}{ceiling_many / seconds:>11.0%}"
        )


if __name__ == "__main__":
    main()
