"""Query latency with self-tracing off, on keeping every span, and on under the slow-query rule.

Three `spanlake serve` processes (embedded PostgreSQL, local lake) receive the same generated process
(`spanlake generate`, same seed): `off` (`SPANLAKE_SELF_TRACING=false`), `all` (self-tracing with
`SPANLAKE_SLOW_QUERY_SECONDS=0 SPANLAKE_SLOW_SPAN_MS=0`: every query slow, every span kept, as before
the rule) and `rule` (self-tracing with the default rule: these queries are fast, their root span
only is kept). Each query below then runs `--runs` times on each server, the servers' order rotating
run by run; figures are medians in ms. `rule/all` is the rule's overhead (aims: ≤ 1.01 on `select 1`,
≤ 1.02 on the mixed set, the sum of the other queries' medians); `rule/off` what self-tracing costs
in all. Queries are warm (the instances are materialized by a first, untimed run).

    .venv/bin/python benchmarks/self_tracing.py [--runs 41] [--tasks 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time

import micromegas
from _servers import spanlake_server
from harness import PROJECT_ROOT


def queries(process_id: str) -> dict[str, str]:
    return {
        "select 1": "SELECT 1 AS one",
        "async_events count": f"SELECT count(*) AS n FROM view_instance('async_events', '{process_id}')",
        "async_events by name": f"SELECT name, count(*) AS n FROM view_instance('async_events', '{process_id}')"
        f" GROUP BY name ORDER BY n DESC",
        "log_entries scan": f"SELECT time, msg FROM view_instance('log_entries', '{process_id}')",
    }


def generate(url: str, tasks: int) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanlake.server.cli",
            "generate",
            "--url",
            url,
            "--tasks",
            str(tasks),
            "--threads",
            "2",
            "--async-tasks",
            "6",
            "--flush-period",
            "0.5",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout.splitlines()[0].strip()


SERVER_ENV = {
    "off": {"SPANLAKE_SELF_TRACING": "false"},
    "all": {"SPANLAKE_SELF_TRACING": "true", "SPANLAKE_SLOW_QUERY_SECONDS": "0", "SPANLAKE_SLOW_SPAN_MS": "0"},
    "rule": {"SPANLAKE_SELF_TRACING": "true"},
}


def timed_ms(client: micromegas.flightsql.client.FlightSQLClient, sql: str) -> float:
    started = time.perf_counter()
    client.query(sql)
    return (time.perf_counter() - started) * 1000.0


def medians(
    clients: dict[str, micromegas.flightsql.client.FlightSQLClient], sql_of: dict[str, str], runs: int
) -> dict[str, float]:
    """The median latency of one query on each server, the servers' order rotating run by run."""
    modes = list(clients)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for mode in modes:
        timed_ms(clients[mode], sql_of[mode])  # materializes; not timed
    for run in range(runs):
        for mode in modes[run % len(modes) :] + modes[: run % len(modes)]:
            times[mode].append(timed_ms(clients[mode], sql_of[mode]))
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks of the generated process")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        servers = {mode: stack.enter_context(spanlake_server(extra_env=env)) for mode, env in SERVER_ENV.items()}
        clients = {mode: micromegas.connect(s.flightsql_url) for mode, s in servers.items()}
        sql_of = {mode: queries(generate(s.http_url, args.tasks)) for mode, s in servers.items()}
        print(f"{'query':24} {'off ms':>9} {'all ms':>9} {'rule ms':>9} {'rule/all':>9} {'rule/off':>9}")
        mixed = {mode: 0.0 for mode in servers}
        for label in sql_of["rule"]:
            figures = medians(clients, {mode: sql_of[mode][label] for mode in servers}, args.runs)
            if label != "select 1":
                mixed = {mode: mixed[mode] + figures[mode] for mode in servers}
            _print_row(label, figures)
        _print_row("mixed set (sum)", mixed)


def _print_row(label: str, ms: dict[str, float]) -> None:
    print(
        f"{label:24} {ms['off']:9.2f} {ms['all']:9.2f} {ms['rule']:9.2f}"
        f" {ms['rule'] / ms['all']:9.3f} {ms['rule'] / ms['off']:9.3f}"
    )


if __name__ == "__main__":
    main()
