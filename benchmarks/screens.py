"""How fast a 10-cell notebook screen renders: its cells run in page order through their real route
(`POST /api/screen-cell`, as `screens.js` runs them: one after the other, each variable feeding the
cells below), over a day's range (`now-24h`) of a busy `spanlake generate` process, on one
`spanlake serve`. Timed: the first cell, and all ten; cold (the first open, which materializes the
partitions just in time) and warm (the median of `--runs` opens). Aims: first cell < 1 s, all < 5 s.

    .venv/bin/python benchmarks/screens.py [--tasks 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request

import micromegas
from _servers import spanlake_server
from harness import PROJECT_ROOT, wait_until
from micromegas.web_client import WebClient

from spanlake.lakehouse.timestamps import format_rfc3339_ns

SPANS = "view_instance('thread_spans', '$stream')"
EVENTS = "view_instance('async_events', '$process')"
CELLS = [
    {"name": "process", "type": "variable", "variableType": "combobox", "sql": "SELECT process_id FROM processes"},
    {
        "name": "stream",
        "type": "variable",
        "variableType": "combobox",
        "sql": "SELECT stream_id FROM streams WHERE process_id = '$process' AND array_has(tags, 'cpu')",
    },
    {
        "name": "levels",
        "type": "table",
        "sql": "SELECT level, count(*) AS n FROM view_instance('log_entries', "
        "'$process') GROUP BY level ORDER BY level",
    },
    {
        "name": "logs",
        "type": "log",
        "sql": "SELECT time, level, target, msg FROM view_instance('log_entries', "
        "'$process') ORDER BY time DESC LIMIT 200",
    },
    {
        "name": "progress",
        "type": "chart",
        "sql": "SELECT time, value FROM view_instance('measures', '$process') "
        "WHERE name = 'Worker Progress' ORDER BY time",
    },
    {
        "name": "metrics",
        "type": "table",
        "sql": "SELECT name, count(*) AS n, max(value) AS top FROM view_instance('measures', '$process') GROUP BY name",
    },
    {
        "name": "flame",
        "type": "flamegraph",
        "sql": f'SELECT id, parent, depth, name, begin, "end" FROM {SPANS} WHERE depth <= 3 ORDER BY begin LIMIT 10000',
    },
    {
        "name": "lanes",
        "type": "swimlane",
        "sql": f"SELECT b.span_id AS id, b.name AS name, b.time AS begin, "
        f"e.time AS \"end\" FROM {EVENTS} b JOIN {EVENTS} e ON b.span_id = e.span_id AND b.event_type = 'begin' "
        "AND e.event_type = 'end' WHERE b.depth = 0 ORDER BY b.time LIMIT 200",
    },
    {
        "name": "span_names",
        "type": "table",
        "sql": f"SELECT name, count(*) AS n FROM {SPANS} GROUP BY name ORDER BY n DESC LIMIT 50",
    },
    {"name": "note", "type": "markdown", "content": "# $process"},
]


def generate(url: str, tasks: int) -> str:
    arguments = ["generate", "--url", url, "--tasks", str(tasks), "--threads", "4", "--async-tasks", "6"]
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", *arguments, "--flush-period", "0.5"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return result.stdout.splitlines()[0].strip()


def run_cell(url: str, name: str, variables: dict, begin: str, end: str) -> dict:
    body = json.dumps({"screen": "busy", "cell": name, "variables": variables, "begin": begin, "end": end})
    request = urllib.request.Request(f"{url}/api/screen-cell", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.loads(answer.read())


def open_screen(url: str) -> tuple[float, float]:
    """(first cell, all cells) in seconds: the cells in page order, variables from the first rows."""
    end_ns = time.time_ns()
    begin, end = format_rfc3339_ns(end_ns - 86_400 * 10**9), format_rfc3339_ns(end_ns)
    variables: dict[str, str] = {}
    started = time.perf_counter()
    first = None
    for cell in CELLS:
        if cell["type"] != "markdown":  # markdown is drawn by the page, no request
            answer = run_cell(url, cell["name"], variables, begin, end)
            if cell["type"] == "variable":
                variables[cell["name"]] = str(answer["rows"][0][0])
        first = first if first is not None else time.perf_counter() - started
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks of the generated process")
    parser.add_argument("--runs", type=int, default=5, help="warm opens timed")
    args = parser.parse_args()
    with spanlake_server() as server:
        process_id = generate(server.http_url, args.tasks)
        flight = micromegas.connect(server.flightsql_url)
        listed = f"SELECT count(*) AS n FROM streams WHERE process_id = '{process_id}' AND array_has(tags, 'cpu')"
        wait_until(lambda: flight.query(listed)["n"][0] > 0, 60, "the process's streams in the global views")
        client = WebClient(server.http_url)
        client.create_screen("busy", "notebook", {"timeRangeFrom": "now-24h", "timeRangeTo": "now", "cells": CELLS})
        cold = open_screen(server.http_url)
        warm = [open_screen(server.http_url) for _ in range(args.runs)]
        print(f"process {process_id}: {args.tasks} tasks; 10 cells over the last 24 h")
        print(f"cold: first cell {cold[0]:.3f} s, all {cold[1]:.3f} s")
        first, whole = statistics.median(w[0] for w in warm), statistics.median(w[1] for w in warm)
        print(f"warm (median of {args.runs}): first cell {first:.3f} s, all {whole:.3f} s")


if __name__ == "__main__":
    main()
