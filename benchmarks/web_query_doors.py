"""How the web UI's query doors behave under abandoned CPU-bound queries.

Starts a `spanlake serve` (embedded PostgreSQL, an API key), then:
* posts an endless query to `/api/sql` and `/api/query-stream` whose client leaves after 1.5 s, and
  prints the delay from the client leaving to the server's CPU going idle (3 runs each);
* keeps six such queries running (clients leave after 5 s) and prints how long `/ready` takes
  meanwhile (it uses the event loop's default thread pool), then the delay to idle once they left;
* starts six endless web queries whose clients wait, sends SIGTERM, and prints how long the server
  takes to exit (killed after 60 s).

With `--baseline REV`, the same runs against the code of git revision REV, side by side.

    .venv/bin/python benchmarks/web_query_doors.py [--baseline main]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
import urllib.request

import psutil
from _servers import source_env, spanlake_server
from harness import SpanlakeServer, http, stop_process

ENDLESS = "SELECT sum(a.value * b.value) AS s FROM range(10) a CROSS JOIN range(1000000000000000) b"
KEY = "bench-key-0123456789"
IDLE_CPU_SECONDS = 0.05  # per 0.25 s window: a fifth of a core
EXIT_WAIT_SECONDS = 60.0


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _seconds_to_idle(process: psutil.Process, limit: float = 60.0) -> float:
    """Seconds until the process uses under a fifth of a core over a quarter second."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = _cpu_seconds(process)
        time.sleep(0.25)
        if _cpu_seconds(process) - before < IDLE_CPU_SECONDS:
            break
    return time.monotonic() - started


def _leave_after(url: str, seconds: float) -> None:
    """Posts the endless query; the client gives up (closes its connection) after `seconds`."""
    body = json.dumps({"sql": ENDLESS}).encode()
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=seconds) as response:
            response.read()
    except OSError:
        pass


def _in_threads(count: int, url: str, seconds: float) -> list[threading.Thread]:
    threads = [threading.Thread(target=_leave_after, args=(url, seconds), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _ready_seconds(server: SpanlakeServer) -> str:
    started = time.monotonic()
    try:
        status, _ = http("GET", server.http_url + "/ready")
    except OSError as err:
        return f"failed after {time.monotonic() - started:.1f} s ({type(err).__name__})"
    return f"{status} in {time.monotonic() - started:.3f} s"


def measure(revision: str | None) -> list[tuple[str, str]]:
    """(what, figure) lines for the code of `revision` (None: this checkout)."""
    env = {"SPANLAKE_API_KEYS": json.dumps([{"name": "bench", "key": KEY}])}
    lines = []
    with source_env(revision) as source, spanlake_server(extra_env={**env, **source}) as server:
        assert server.process is not None
        process = psutil.Process(server.process.pid)
        for path in ("/api/sql", "/api/query-stream"):
            for run in range(3):
                _leave_after(server.http_url + path, 1.5)
                lines.append((f"{path} client left, to idle (run {run + 1})", f"{_seconds_to_idle(process):.2f} s"))
        clients = _in_threads(6, server.http_url + "/api/sql", 5)
        time.sleep(1.5)
        lines += [(f"/ready with 6 endless web queries ({n + 1})", _ready_seconds(server)) for n in range(3)]
        for client in clients:
            client.join()
        lines.append(("6 clients left, to idle", f"{_seconds_to_idle(process):.2f} s"))
        _in_threads(6, server.http_url + "/api/sql", EXIT_WAIT_SECONDS + 30)
        time.sleep(2)
        started = time.monotonic()
        server.process.terminate()
        try:
            server.process.wait(EXIT_WAIT_SECONDS)
            lines.append(("SIGTERM with 6 endless web queries, to exit", f"{time.monotonic() - started:.2f} s"))
        except subprocess.TimeoutExpired:
            lines.append(("SIGTERM with 6 endless web queries, to exit", f"> {EXIT_WAIT_SECONDS:g} s (killed)"))
            stop_process(server.process, grace=1)
    return lines


def main() -> None:
    """Runs the measurements (and the baseline's) and prints them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare with")
    args = parser.parse_args()
    runs = {"this checkout": measure(None)}
    if args.baseline:
        runs[f"baseline {args.baseline}"] = measure(args.baseline)
    names = list(runs)
    print(f"\n{'':<48}" + "".join(f"{name:>32}" for name in names))
    for row, (what, _) in enumerate(runs[names[0]]):
        print(f"{what:<48}" + "".join(f"{runs[name][row][1]:>32}" for name in names))


if __name__ == "__main__":
    main()
