"""A Perfetto trace through the micromegas client next to a bare Flight read of the same trace, on this
code and on the previous code (`--baseline`, a git revision, default `main`), alternately.

One process of S thread spans and S async spans (benchmarks/perfetto_sql.py's) is loaded into two
running `spanlake serve`s, one per code, and materialized by a first pull. Then, R rounds, on each
server in turn:

  flight    DoGet of `perfetto_trace_chunks(...)` read to the end with pyarrow.flight (`read_all`)
  client    `micromegas.perfetto.write_process_trace` to a file

Prints the medians, the chunks per trace, client / flight on each code (the aim: at most 1.3), and
this code / the previous one; checks that `spanlake perfetto` writes the client's file.

    python benchmarks/perfetto_client.py [--spans S] [--runs R] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import micromegas
import pyarrow.flight as flight
from _servers import source_env, spanlake_server
from harness import SpanlakeServer
from perfetto_sql import load

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.server.flightsql import protocol


@contextlib.contextmanager
def loaded_server(revision: str | None, spans: int) -> Iterator[tuple[SpanlakeServer, str, int, int]]:
    """A running server of `revision` (None: this checkout) holding the benchmark's process."""
    with source_env(revision) as env, spanlake_server(extra_env=env) as server:
        lake = Lake.open(Settings(database_url=server.database_url, object_store_uri=server.object_store_uri))
        try:
            process_id, begin, end = load(lake, spans)
        finally:
            lake.close()
        yield server, process_id, begin, end + 1_000_000_000


def flight_read(server: SpanlakeServer, process_id: str, begin: int, end: int) -> int:
    """Reads the trace's rows with pyarrow.flight; returns the chunk count."""
    sql = (
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{process_id}', 'both',"
        f" TIMESTAMP '{format_rfc3339_ns(begin)}', TIMESTAMP '{format_rfc3339_ns(end)}')"
    )
    ticket = flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(ticket).read_all().num_rows


def window(begin: int, end: int) -> list[dt.datetime]:
    """The range as the client takes it (datetimes: microseconds)."""
    return [dt.datetime.fromtimestamp(t / 1e9, dt.UTC) for t in (begin, end)]


def client_write(server: SpanlakeServer, process_id: str, begin: int, end: int, path: Path) -> None:
    """Writes the trace with the micromegas client."""
    client = micromegas.connect(server.flightsql_url)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        micromegas.perfetto.write_process_trace(client, process_id, *window(begin, end), str(path))


def spanlake_perfetto(server: SpanlakeServer, process_id: str, begin: int, end: int, path: Path) -> bytes:
    """The file `spanlake perfetto` writes."""
    begin_time, end_time = (time.isoformat() for time in window(begin, end))
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--process-id", process_id]
    command += ["--begin", begin_time, "--end", end_time]
    subprocess.run([*command, "-o", str(path), "--uri", server.flightsql_url], check=True, capture_output=True)
    return path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=500_000, help="thread spans (as many async spans)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git revision of the previous code")
    args = parser.parse_args()
    codes = {"this": None, "previous": args.baseline}
    times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in codes for k in ("flight", "client")}
    chunks: dict[str, int] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        servers = {code: stack.enter_context(loaded_server(rev, args.spans)) for code, rev in codes.items()}
        files = {code: Path(tmp, f"{code}.pftrace") for code in codes}
        for code, (server, process_id, begin, end) in servers.items():
            client_write(server, process_id, begin, end, files[code])  # materializes the views
        for _ in range(args.runs):
            for code, trace in servers.items():
                start = time.perf_counter()
                chunks[code] = flight_read(*trace)
                times[code, "flight"].append(time.perf_counter() - start)
                start = time.perf_counter()
                client_write(*trace, files[code])
                times[code, "client"].append(time.perf_counter() - start)
        same = files["this"].read_bytes() == spanlake_perfetto(*servers["this"], Path(tmp, "cli.pftrace"))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{2 * args.spans:,} spans, {args.runs} alternating rounds, load {os.getloadavg()[0]:.2f}")
    print(f"{'code':9} {'chunks':>8} {'flight s':>9} {'client s':>9} {'client/flight':>14}")
    for code in codes:
        flight_s, client_s = median[code, "flight"], median[code, "client"]
        print(f"{code:9} {chunks[code]:>8,} {flight_s:>9.2f} {client_s:>9.2f} {client_s / flight_s:>14.2f}")
    print(f"client this/previous: {median['this', 'client'] / median['previous', 'client']:.2f}")
    print(f"micromegas's client and `spanlake perfetto` write the same file (this code): {same}")


if __name__ == "__main__":
    main()
