"""A served query's fixed cost: `SELECT 1` through `spanlake serve` against a bare pyarrow.flight server.

Both answer the micromegas client (`client.query("SELECT 1 AS one")`, the same client code): the bare
server, a process of its own, answers every DoGet with the one-row result and does nothing else, so
the difference is what spanlake's served path costs (auth, limits, deny list, session, planning,
execution, stream, audit, spans). Each round starts a server per code (this checkout and, with
`--baseline REV`, the code of git revision REV, its own database) and measures, alternating call by
call:

  quiet   R served `SELECT 1` and R bare ones, one after another;
  after   R served `SELECT 1`, each right after a large query (a GROUP BY of 20 M generated rows over
          several partitions), and R bare ones right after the same large query (the client's state
          alike): what a large query leaves in the server for the next query to pay.

For each it prints the median wall time of a call, and the server's CPU time per served `SELECT 1`
(the process's user + system over the quiet calls, divided by their number: work queued after the
answer counts too). Medians over the rounds, then this / previous, with the machine's load.

    python benchmarks/served_fixed_cost.py [--runs 200] [--rounds 3] [--baseline dba72e1] [--self-tracing]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import micromegas
import psutil
import pyarrow as pa
import pyarrow.flight as flight
from _servers import source_env, spanlake_server

ONE_SQL = "SELECT 1 AS one"
LARGE_SQL = "SELECT value % 1000 AS k, count(*) AS n, sum(value) AS s FROM range(20000000) GROUP BY k"
WARM_UP_CALLS = 30


class OneRowServer(flight.FlightServerBase):
    """A bare Flight server answering every DoGet with `SELECT 1 AS one`'s result."""

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        """The one-row table, whatever the ticket."""
        return flight.RecordBatchStream(pa.table({"one": pa.array([1], pa.int64())}))


def serve_bare() -> None:
    """Runs the bare server on a free loopback port (prints it) until stdin closes."""
    server = OneRowServer("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(served_url: str, pid: int, bare_url: str, bare_pid: int, runs: int) -> dict[str, float]:
    """One round on one server: median ms of each kind of call, and each server's CPU ms a `SELECT 1`."""
    served, bare = micromegas.connect(served_url), micromegas.connect(bare_url)
    assert served.query(ONE_SQL)["one"].tolist() == [1]
    for _ in range(WARM_UP_CALLS):
        served.query(ONE_SQL)
        bare.query(ONE_SQL)
    quiet: dict[str, list[float]] = {"served": [], "bare": []}
    cpu_before = server_cpu_seconds(pid), server_cpu_seconds(bare_pid)
    for _ in range(runs):
        quiet["served"].append(timed(lambda: served.query(ONE_SQL)))
        quiet["bare"].append(timed(lambda: bare.query(ONE_SQL)))
    cpu_ms = [
        (server_cpu_seconds(p) - before) / runs * 1e3 for p, before in zip((pid, bare_pid), cpu_before, strict=True)
    ]
    after: dict[str, list[float]] = {"served": [], "bare": []}
    for _ in range(max(1, runs // 10)):
        for kind, client in (("served", served), ("bare", bare)):
            served.query(LARGE_SQL)
            after[kind].append(timed(lambda c=client: c.query(ONE_SQL)))
    figures = {
        f"{when} {kind}": statistics.median(times) * 1e3
        for when, by_kind in (("quiet", quiet), ("after", after))
        for kind, times in by_kind.items()
    }
    figures["server CPU"], figures["bare CPU"] = cpu_ms
    return figures


def round_for(revision: str | None, bare_url: str, bare_pid: int, runs: int, self_tracing: bool) -> dict[str, float]:
    """One round on a new server running `revision` (None: this checkout)."""
    tracing_env = {"SPANLAKE_SELF_TRACING": "true" if self_tracing else "false"}
    with source_env(revision) as source, spanlake_server(extra_env=source | tracing_env) as server:
        assert server.process is not None
        return measure(server.flightsql_url, server.process.pid, bare_url, bare_pid, runs)


def main() -> None:
    """Alternating rounds of this checkout and the baseline; prints each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="dba72e1", help="git revision to alternate with ('' for none)")
    parser.add_argument("--self-tracing", action="store_true", help="servers trace themselves (production default)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare()
        return
    codes: dict[str, str | None] = {"this": None} | ({args.baseline: args.baseline} if args.baseline else {})
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert bare.stdout is not None and bare.stdin is not None
    bare_url = f"grpc://127.0.0.1:{bare.stdout.readline().strip()}"
    results: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    loads = [os.getloadavg()[0]]
    try:
        for round_number in range(args.rounds):
            for name, revision in codes.items():
                figures = round_for(revision, bare_url, bare.pid, args.runs, args.self_tracing)
                results[name].append(figures)
                loads.append(os.getloadavg()[0])
                print(f"round {round_number + 1} {name:>10}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    finally:
        bare.stdin.close()
        bare.wait(10)
    print(f"\nmedians of {args.rounds} rounds, {args.runs} calls each (ms; load {min(loads):.1f}-{max(loads):.1f})")
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]} for name, rounds in results.items()
    }
    for name, figures in medians.items():
        print(
            f"  {name:>10}: quiet served {figures['quiet served']:.2f} / bare {figures['quiet bare']:.2f}"
            f" = {figures['quiet served'] / figures['quiet bare']:.2f}x;"
            f" after a large query served {figures['after served']:.2f} / bare {figures['after bare']:.2f}"
            f" = {figures['after served'] / figures['after bare']:.2f}x;"
            f" server CPU {figures['server CPU']:.2f} ms a query"
            f" (bare {figures['bare CPU']:.2f})"
        )
    if args.baseline:
        this, previous = medians["this"], medians[args.baseline]
        print(
            "  this / previous: "
            + ", ".join(
                f"{key} {this[key] / previous[key]:.2f}" for key in ("quiet served", "after served", "server CPU")
            )
        )


if __name__ == "__main__":
    main()
