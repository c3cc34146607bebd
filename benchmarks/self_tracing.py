"""Query latency with self-tracing on and off, side by side.

Two `spanlake serve` processes (embedded PostgreSQL, local lake), one with `SPANLAKE_SELF_TRACING=true`
and one with `false`, receive the same generated process (`spanlake generate`, same seed). Each query
below then runs `--runs` times on each server, alternating servers run by run; figures are medians
in ms, with the on/off ratio (the aim: ≤ 1.03). Queries are warm (the instances are materialized by a
first, untimed run), so the figures show the per-query cost of tracing planning, session creation,
view resolution and streaming.

    .venv/bin/python benchmarks/self_tracing.py [--runs 41] [--tasks 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import micromegas
from _servers import spanlake_server
from harness import PROJECT_ROOT, SpanlakeServer


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


@contextlib.contextmanager
def traced_server(on: bool) -> Iterator[SpanlakeServer]:
    with spanlake_server(extra_env={"SPANLAKE_SELF_TRACING": "true" if on else "false"}) as server:
        yield server


def timed_ms(client: micromegas.flightsql.client.FlightSQLClient, sql: str) -> float:
    started = time.perf_counter()
    client.query(sql)
    return (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks of the generated process")
    args = parser.parse_args()
    with traced_server(True) as on_server, traced_server(False) as off_server:
        servers = {"on": on_server, "off": off_server}
        clients = {mode: micromegas.connect(s.flightsql_url) for mode, s in servers.items()}
        sql_of = {mode: queries(generate(s.http_url, args.tasks)) for mode, s in servers.items()}
        print(f"{'query':24} {'off ms':>9} {'on ms':>9} {'on/off':>7}")
        for label in sql_of["on"]:
            times: dict[str, list[float]] = {"on": [], "off": []}
            for mode in times:
                timed_ms(clients[mode], sql_of[mode][label])  # materializes; not timed
            for run in range(args.runs):
                order = ("on", "off") if run % 2 == 0 else ("off", "on")
                for mode in order:
                    times[mode].append(timed_ms(clients[mode], sql_of[mode][label]))
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            print(f"{label:24} {off:9.2f} {on:9.2f} {on / off:7.3f}")


if __name__ == "__main__":
    main()
