"""A served query's fixed cost: `SELECT 1` through `spanlake serve` against a bare pyarrow.flight server.

All answer the micromegas client (`client.query("SELECT 1 AS one")`, the same client code): the bare
server, a process of its own, answers every DoGet with the one-row result and does nothing else, so
the difference is what spanlake's served path costs (auth, limits, deny list, session, planning,
execution, stream, audit, spans). Each round starts one server per code (this checkout and, with
`--baseline REV`, the code of git revision REV, each on its own database) and measures, the servers
taking turns call by call (a loaded machine hits them alike):

  quiet   R `SELECT 1` of each server, one after another;
  after   R/10 `SELECT 1` of each server, each right after a large query (a GROUP BY of 20 M
          generated rows) on the same server (the bare server's after the baseline's large query):
          what a large query leaves in the server for the next query to pay;
  pause   R/10 `SELECT 1` of each server, each after PAUSE_SECONDS of idleness, as a query that
          follows other work (benchmarks/row_groups.py's alternation) meets the server.

The same three of plain DataFusion's `SELECT 1` in this process (a kept context: parse, plan,
execute, one batch) tell what the statement itself costs, warm and cold: on a busy machine the
caches are cold after a pause, and DataFusion's planner, the larger part of a served `SELECT 1`,
runs several times slower then.

It prints each round's median wall time of a call, and each server's CPU time per quiet `SELECT 1`
(its process's user + system over the quiet calls, less its idle rate measured just before, divided by
their number: work queued after the answer counts too). Then the medians over the rounds, the ratios
to the bare server, this / previous, and the machine's load.

    python benchmarks/served_fixed_cost.py [--runs 300] [--rounds 3] [--baseline c0c7a9c] [--self-tracing]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import micromegas
import psutil
import pyarrow as pa
import pyarrow.flight as flight
from _servers import source_env, spanlake_server
from datafusion import SessionContext

ONE_SQL = "SELECT 1 AS one"
LARGE_SQL = "SELECT value % 1000 AS k, count(*) AS n, sum(value) AS s FROM range(20000000) GROUP BY k"
WARM_UP_CALLS = 30
IDLE_SECONDS = 1.0
PAUSE_SECONDS = 0.05
KINDS = ("quiet", "after", "pause")


class PlainDataFusion:
    """`SELECT 1` in a kept DataFusion context of this process, as the micromegas client's `query` ends
    (a pandas frame)."""

    def __init__(self) -> None:
        """A context kept for every query."""
        self._ctx = SessionContext()

    def query(self, sql: str) -> object:
        """The statement's result as pandas; the large query runs on the baseline's server instead."""
        return self._ctx.sql(sql).to_pandas()


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


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """The bare server's URL and process id, a process of its own while the context lasts."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--bare-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        yield f"grpc://127.0.0.1:{process.stdout.readline().strip()}", process.pid
    finally:
        process.stdin.close()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(servers: dict[str, tuple[str, int]], runs: int) -> dict[str, dict[str, float]]:
    """One round: per server (and plain DataFusion), median ms of a quiet, an after-a-large-query and
    an after-a-pause `SELECT 1`, and each server's CPU ms a quiet `SELECT 1`."""
    clients: dict[str, Any] = {name: micromegas.connect(url) for name, (url, _) in servers.items()}
    for client in clients.values():
        assert client.query(ONE_SQL)["one"].tolist() == [1]
        for _ in range(WARM_UP_CALLS):
            client.query(ONE_SQL)
    idle_before = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    time.sleep(IDLE_SECONDS)
    idle_rate = {name: cpu_seconds(pid) - idle_before[name] for name, (_, pid) in servers.items()}
    clients["plain DataFusion"] = PlainDataFusion()
    times: dict[str, dict[str, list[float]]] = {name: {kind: [] for kind in KINDS} for name in clients}
    cpu_before = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    began = time.monotonic()
    for _ in range(runs):
        for name, client in clients.items():
            times[name]["quiet"].append(timed_one(client))
    elapsed = time.monotonic() - began
    cpu_after = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    large_on = clients[next(iter(servers))]  # the bare server and plain DataFusion: after a served one
    for _ in range(max(1, runs // 10)):
        for name, client in clients.items():
            (client if name in servers and name != "bare" else large_on).query(LARGE_SQL)
            times[name]["after"].append(timed_one(client))
            time.sleep(PAUSE_SECONDS)
            times[name]["pause"].append(timed_one(client))
    figures = {name: {kind: statistics.median(values) * 1e3 for kind, values in times[name].items()} for name in times}
    for name in servers:
        idle = idle_rate[name] * elapsed / IDLE_SECONDS
        figures[name]["cpu"] = (cpu_after[name] - cpu_before[name] - idle) / runs * 1e3
    return figures


def timed_one(client: Any) -> float:
    """Wall seconds of one `SELECT 1` through `client`."""
    start = time.perf_counter()
    client.query(ONE_SQL)
    return time.perf_counter() - start


def measure_round(revisions: dict[str, str | None], runs: int, self_tracing: bool) -> dict[str, dict[str, float]]:
    """One round on new servers, one per revision (None: this checkout), and the bare server."""
    tracing_env = {"SPANLAKE_SELF_TRACING": "true" if self_tracing else "false"}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, revision in revisions.items():
            source = stack.enter_context(source_env(revision))
            server = stack.enter_context(spanlake_server(extra_env=source | tracing_env))
            assert server.process is not None
            servers[name] = (server.flightsql_url, server.process.pid)
        servers["bare"] = stack.enter_context(bare_server())
        return measure(servers, runs)


def median_rounds(
    measure_one_round: Callable[[], dict[str, dict[str, float]]], rounds: int
) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Runs the rounds, printing each; the median of each figure by server, and the load averages seen."""
    figures = []
    loads = [os.getloadavg()[0]]
    for number in range(rounds):
        figures.append(measure_one_round())
        loads.append(os.getloadavg()[0])
        print(
            f"round {number + 1}: "
            + "; ".join(f"{name} " + " ".join(f"{k} {v:.2f}" for k, v in f.items()) for name, f in figures[-1].items()),
            flush=True,
        )
    medians = {
        name: {key: statistics.median(r[name][key] for r in figures) for key in figures[0][name]} for name in figures[0]
    }
    return medians, loads


def main() -> None:
    """Rounds of this checkout, the baseline and the bare server; prints each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="quiet calls per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="c0c7a9c", help="git revision to compare with ('' for none)")
    parser.add_argument("--self-tracing", action="store_true", help="servers trace themselves (production default)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare()
        return
    revisions: dict[str, str | None] = {"this": None} | ({args.baseline: args.baseline} if args.baseline else {})
    medians, loads = median_rounds(lambda: measure_round(revisions, args.runs, args.self_tracing), args.rounds)
    bare = medians["bare"]
    print(f"\nmedians of {args.rounds} rounds, {args.runs} quiet calls each (load {min(loads):.1f}-{max(loads):.1f})")
    for name, figures in medians.items():
        print(
            f"  {name:>16}: SELECT 1 "
            + ", ".join(f"{kind} {figures[kind]:.2f} ms ({figures[kind] / bare[kind]:.2f}x bare)" for kind in KINDS)
            + (f", server CPU {figures['cpu']:.2f} ms a query" if "cpu" in figures else "")
        )
    if args.baseline:
        this, previous = medians["this"], medians[args.baseline]
        print("  this / previous: " + ", ".join(f"{key} {this[key] / previous[key]:.2f}" for key in (*KINDS, "cpu")))


if __name__ == "__main__":
    main()
