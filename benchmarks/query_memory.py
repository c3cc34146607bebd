"""Server memory over many queries, and how fast an abandoned query stops.

Starts a `spanlake serve` (embedded PostgreSQL), sends it one generated process (`spanlake generate`),
then runs mixed queries through pyarrow.flight — SELECT 1, view_instance, list_partitions,
list_view_sets, perfetto_trace_chunks — printing the server's RSS every `--every` queries. Then
abandons endless CPU-bound queries (client deadline 1 s) and prints the delay from the client's
deadline to the server's CPU going idle.

With `--baseline REV`, the same runs against the code of git revision REV (e.g. the branch's base),
extracted to a temporary directory, side by side.

    .venv/bin/python benchmarks/query_memory.py [--queries 10000] [--every 1000] [--baseline f2ff3ec]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.flight as flight
from _servers import source_env, spanlake_server

from spanlake.server.flightsql import protocol

ROOT = Path(__file__).resolve().parents[1]
# Endless and CPU-bound: build rows against 10^15 probe rows. More build rows, more work per input
# batch between two yields to tokio (about every batch when split in round-robin, else every 128).
ENDLESS = "SELECT sum(a.value * b.value) AS s FROM range({build}) a CROSS JOIN range(1000000000000000) b"
DEADLINE_SECONDS = 2.0
IDLE_WINDOWS = 4  # a starved busy server can look idle for a moment on a loaded machine
MAX_WAIT_SECONDS = 30.0


def _ticket(sql: str) -> flight.Ticket:
    return flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))


def _mixed_queries(process_id: str) -> list[str]:
    trace = f"perfetto_trace_chunks('{process_id}', 'both', now() - INTERVAL '1 hour', now())"
    return [
        "SELECT 1",
        f"SELECT count(*) FROM view_instance('log_entries', '{process_id}')",
        "SELECT count(*) FROM list_partitions()",
        "SELECT view_set_name FROM list_view_sets()",
        f"SELECT count(*) FROM {trace}",
    ]


def _generate(server: object) -> str:
    command = [sys.executable, "-m", "spanlake.server.cli", "generate", "--url", server.http_url]  # type: ignore[attr-defined]
    options = ["--tasks", "40", "--threads", "2", "--async-tasks", "2", "--flush-period", "0.2"]
    result = subprocess.run(command + options, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.splitlines()[0].strip()


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _wait_for_process(client: flight.FlightClient, process_id: str) -> None:
    sql = f"SELECT count(*) AS n FROM processes WHERE process_id = '{process_id}'"
    deadline = time.monotonic() + 60
    while client.do_get(_ticket(sql)).read_all().column("n")[0].as_py() == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the generated process never showed in the processes view")
        time.sleep(0.5)


def rss_series(uri: str, pid: int, process_id: str, queries: int, every: int) -> list[tuple[int, float]]:
    """(queries done, server RSS in MiB) every `every` queries."""
    client = flight.connect(uri)
    mixed = _mixed_queries(process_id)
    series = [(0, _rss_mb(pid))]
    for done in range(1, queries + 1):
        client.do_get(_ticket(mixed[done % len(mixed)])).read_all()
        if done % every == 0:
            series.append((done, _rss_mb(pid)))
    client.close()
    return series


def _cpu_share(pid: int, seconds: float) -> float:
    """The server's CPU use over the next `seconds`, in cores."""
    before, started = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - before) / (time.monotonic() - started)


def stop_delay(uri: str, pid: int, build_rows: int) -> tuple[float, float]:
    """(cores the query used, seconds from the client's deadline to the server's CPU going idle:
    under a fifth of that for IDLE_WINDOWS quarter seconds in a row; MAX_WAIT_SECONDS if never)."""
    client = flight.connect(uri)
    done = threading.Event()

    def abandon() -> None:
        with contextlib.suppress(flight.FlightError):
            sql = ENDLESS.format(build=build_rows)
            client.do_get(_ticket(sql), flight.FlightCallOptions(timeout=DEADLINE_SECONDS)).read_all()
        done.set()

    threading.Thread(target=abandon, daemon=True).start()
    time.sleep(DEADLINE_SECONDS / 2)
    busy = _cpu_share(pid, DEADLINE_SECONDS / 4)
    done.wait()
    gave_up = time.monotonic()
    client.close()
    idle_since: float | None = None
    idle_windows = 0
    while time.monotonic() - gave_up < MAX_WAIT_SECONDS:
        window_start = time.monotonic()
        if _cpu_share(pid, 0.25) < busy / 5:
            idle_since = window_start if idle_windows == 0 else idle_since
            idle_windows += 1
            if idle_windows == IDLE_WINDOWS and idle_since is not None:
                return busy, max(0.0, idle_since - gave_up)
        else:
            idle_windows = 0
    return busy, MAX_WAIT_SECONDS


def measure(
    revision: str | None, queries: int, every: int
) -> tuple[list[tuple[int, float]], list[tuple[float, float]]]:
    with source_env(revision) as env, spanlake_server(extra_env=env) as server:
        assert server.process is not None
        process_id = _generate(server)
        _wait_for_process(flight.connect(server.flightsql_url), process_id)
        series = rss_series(server.flightsql_url, server.process.pid, process_id, queries, every)
        delays = [stop_delay(server.flightsql_url, server.process.pid, build) for build in (10, 1000)]
        return series, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--baseline", help="git revision to compare with (run first)")
    args = parser.parse_args()
    runs = {"this checkout": measure(None, args.queries, args.every)}
    if args.baseline:
        runs[f"baseline {args.baseline}"] = measure(args.baseline, args.queries, args.every)
    names = list(runs)
    print(f"\nserver RSS (MiB) over {args.queries} mixed queries")
    print(f"{'queries':>8} " + " ".join(f"{name:>22}" for name in names))
    for row, (done, _) in enumerate(runs[names[0]][0]):
        print(f"{done:>8} " + " ".join(f"{runs[name][0][row][1]:>22.1f}" for name in names))
    for name in names:
        series = runs[name][0]
        warm = series[min(1, len(series) - 1)][1]
        growth = series[-1][1] - warm
        per_query = growth * 2**20 / max(1, series[-1][0] - series[min(1, len(series) - 1)][0])
        print(f"{name}: after warm-up ({series[1][0]} queries) {growth:+.1f} MiB, {per_query / 1024:.1f} KiB/query")
    print(f"\nabandoned endless query (client deadline {DEADLINE_SECONDS:g} s): cores used, then seconds from the")
    print(f"deadline to the server's CPU idle ({MAX_WAIT_SECONDS:g} = never stopped)")
    for build, index in (("10 build rows", 0), ("1000 build rows", 1)):
        cells = [f"{name}: {runs[name][1][index][0]:.2f} cores, {runs[name][1][index][1]:.2f} s" for name in names]
        print(f"  {build:>16}: " + "   ".join(cells))


if __name__ == "__main__":
    main()
