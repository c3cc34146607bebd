"""A Flight SQL query in two RPCs, as ADBC and JDBC make it: GetFlightInfo (plans, announces the schema) then DoGet.

The micromegas client's `query` makes one RPC, a DoGet of the SQL (`benchmarks/served_fixed_cost.py`);
ADBC, JDBC and pyarrow's Flight SQL clients first ask GetFlightInfo for the schema and the ticket. Each
round starts one `spanlake serve` per code (this checkout and, with `--baseline REV`, git revision REV,
each on its own database), the servers taking turns call by call, and prints per server the median
wall time of the GetFlightInfo, of the DoGet after it and of the pair, and the server's CPU time per
pair (its process's user + system over the calls, less its idle rate measured just before). Then the
medians over the rounds, this / previous, and the machine's load.

    python benchmarks/flight_two_rpcs.py [--runs 300] [--rounds 3] [--baseline c0c7a9c] [--sql 'SELECT 1 AS one']
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pyarrow.flight as flight
from _servers import source_env, spanlake_server
from served_fixed_cost import IDLE_SECONDS, WARM_UP_CALLS, cpu_seconds, median_rounds

from spanlake.server.flightsql import protocol


def timed_pair(client: flight.FlightClient, descriptor: flight.FlightDescriptor) -> tuple[float, float]:
    """Wall seconds of a GetFlightInfo and of the DoGet of its ticket (the whole result read)."""
    start = time.perf_counter()
    info = client.get_flight_info(descriptor)
    planned = time.perf_counter()
    client.do_get(info.endpoints[0].ticket).read_all()
    return planned - start, time.perf_counter() - planned


def measure(servers: dict[str, tuple[str, int]], sql: str, runs: int) -> dict[str, dict[str, float]]:
    """One round: per server, median ms of GetFlightInfo, DoGet and the pair, and CPU ms a pair."""
    descriptor = flight.FlightDescriptor.for_command(protocol.pack(protocol.CommandStatementQuery(query=sql)))
    clients = {name: flight.FlightClient(url) for name, (url, _) in servers.items()}
    for client in clients.values():
        for _ in range(WARM_UP_CALLS):
            timed_pair(client, descriptor)
    idle_before = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    time.sleep(IDLE_SECONDS)
    idle_rate = {name: cpu_seconds(pid) - idle_before[name] for name, (_, pid) in servers.items()}
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    cpu_before = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    began = time.monotonic()
    for _ in range(runs):
        for name, client in clients.items():
            pairs[name].append(timed_pair(client, descriptor))
    elapsed = time.monotonic() - began
    figures = {}
    for name, (_, pid) in servers.items():
        cpu = cpu_seconds(pid) - cpu_before[name] - idle_rate[name] * elapsed / IDLE_SECONDS
        figures[name] = {
            "info": statistics.median(info for info, _ in pairs[name]) * 1e3,
            "get": statistics.median(get for _, get in pairs[name]) * 1e3,
            "pair": statistics.median(info + get for info, get in pairs[name]) * 1e3,
            "cpu": cpu / runs * 1e3,
        }
    for client in clients.values():
        client.close()
    return figures


def measure_round(revisions: dict[str, str | None], sql: str, runs: int) -> dict[str, dict[str, float]]:
    """One round on new servers, one per revision (None: this checkout)."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, revision in revisions.items():
            source = stack.enter_context(source_env(revision))
            server = stack.enter_context(spanlake_server(extra_env=source | {"SPANLAKE_SELF_TRACING": "false"}))
            assert server.process is not None
            servers[name] = (server.flightsql_url, server.process.pid)
        return measure(servers, sql, runs)


def main() -> None:
    """Rounds of this checkout and the baseline; prints each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="queries per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="c0c7a9c", help="git revision to compare with ('' for none)")
    parser.add_argument("--sql", default="SELECT 1 AS one")
    args = parser.parse_args()
    revisions: dict[str, str | None] = {"this": None} | ({args.baseline: args.baseline} if args.baseline else {})
    medians, loads = median_rounds(lambda: measure_round(revisions, args.sql, args.runs), args.rounds)
    print(f"\nmedians of {args.rounds} rounds, {args.runs} queries each (load {min(loads):.1f}-{max(loads):.1f})")
    for name, figures in medians.items():
        print(
            f"  {name:>10}: GetFlightInfo {figures['info']:.2f} ms, DoGet {figures['get']:.2f} ms, "
            f"pair {figures['pair']:.2f} ms, server CPU {figures['cpu']:.2f} ms a pair"
        )
    if args.baseline:
        this, previous = medians["this"], medians[args.baseline]
        print("  this / previous: " + ", ".join(f"{key} {this[key] / previous[key]:.2f}" for key in this))


if __name__ == "__main__":
    main()
