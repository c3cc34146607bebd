"""What the read scope costs a query: the mixed query set through the micromegas client, as an admin
(unscoped: nothing filtered) and as an analytics key reading one audience (its process ids looked up
and the global views filtered by them; a view instance's process checked), on one `spanlake serve`.

Two generated processes (`spanlake generate`), each written with an ingestion key of its own audience
(team-a, team-b). Each query runs `--runs` times per key, the keys alternating run by run; figures
are medians in ms, `scoped/admin` the overhead (aim: ≤ 1.05 on the mixed set, the sum of the
queries' medians). Queries are warm (a first, untimed run materializes).

    .venv/bin/python benchmarks/read_scope.py [--runs 41] [--tasks 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request

from _servers import spanlake_server
from harness import PROJECT_ROOT, wait_until
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql.client import FlightSQLClient

ADMIN_KEY = "bench-admin-0123456789"


def queries(process_id: str) -> dict[str, str]:
    return {
        "async_events count": f"SELECT count(*) AS n FROM view_instance('async_events', '{process_id}')",
        "async_events by name": f"SELECT name, count(*) AS n FROM view_instance('async_events', '{process_id}')"
        " GROUP BY name ORDER BY n DESC",
        "log_entries scan": f"SELECT time, msg FROM view_instance('log_entries', '{process_id}')",
        "global log_entries": "SELECT level, count(*) AS n FROM log_entries GROUP BY level",
        "global processes": "SELECT process_id, exe FROM processes",
        "global blocks": "SELECT process_id, count(*) AS n FROM blocks GROUP BY process_id",
    }


def mint(http_url: str, kind: str, body: dict) -> str:
    request = urllib.request.Request(
        f"{http_url}/api/{kind}",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())["key"]


def generate(url: str, key: str, tasks: int) -> str:
    arguments = ["generate", "--url", url, "--api-key", key, "--tasks", str(tasks), "--threads", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", *arguments, "--async-tasks", "6", "--flush-period", "0.5"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout.splitlines()[0].strip()


def timed_ms(client: FlightSQLClient, sql: str) -> float:
    started = time.perf_counter()
    client.query(sql)
    return (time.perf_counter() - started) * 1000.0


def medians(clients: dict[str, FlightSQLClient], sql: str, runs: int) -> dict[str, float]:
    """The median latency of one query with each key, the keys' order alternating run by run."""
    names = list(clients)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        timed_ms(clients[name], sql)  # materializes; not timed
    for run in range(runs):
        for name in names[run % 2 :] + names[: run % 2]:
            times[name].append(timed_ms(clients[name], sql))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks of each generated process")
    args = parser.parse_args()
    keys = json.dumps([{"name": "admin", "key": ADMIN_KEY}])
    with spanlake_server(extra_env={"SPANLAKE_API_KEYS": keys, "SPANLAKE_ADMINS": "admin"}) as server:
        writers = {
            team: mint(server.http_url, "ingestion-api-keys", {"name": team, "audience": team})
            for team in ("team-a", "team-b")
        }
        process_id = generate(server.http_url, writers["team-a"], args.tasks)
        generate(server.http_url, writers["team-b"], args.tasks)
        reader = mint(server.http_url, "analytics-api-keys", {"name": "reader", "read_audiences": ["team-a"]})
        clients = {
            "admin": FlightSQLClient(server.flightsql_url, auth_provider=StaticTokenAuthProvider(ADMIN_KEY)),
            "scoped": FlightSQLClient(server.flightsql_url, auth_provider=StaticTokenAuthProvider(reader)),
        }
        count = "SELECT count(*) AS n FROM processes"
        wait_until(lambda: clients["admin"].query(count)["n"][0] == 2, 60, "both processes in the global views")
        assert clients["scoped"].query(count)["n"][0] == 1
        print(f"{'query':24} {'admin ms':>9} {'scoped ms':>10} {'scoped/admin':>13}")
        mixed = {"admin": 0.0, "scoped": 0.0}
        for label, sql in queries(process_id).items():
            figures = medians(clients, sql, args.runs)
            mixed = {name: mixed[name] + figures[name] for name in mixed}
            _print_row(label, figures)
        _print_row("mixed set (sum)", mixed)


def _print_row(label: str, ms: dict[str, float]) -> None:
    print(f"{label:24} {ms['admin']:9.2f} {ms['scoped']:10.2f} {ms['scoped'] / ms['admin']:13.3f}")


if __name__ == "__main__":
    main()
