"""Time from `spanlake serve` to its ready text, on the embedded default, next to its floor: the
embedded PostgreSQL alone (pgserver creating or starting the same kind of data directory).

  cold  a fresh directory: the database is created (initdb), started and migrated
  warm  the same directory again: PostgreSQL started, nothing to migrate

Prints the median of --repeats runs in seconds and the ratio spanlake / PostgreSQL alone.

    python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PGSERVER_ALONE = """
import sys, warnings
warnings.simplefilter("ignore")
import pgserver
pgserver.get_server(sys.argv[1], cleanup_mode="stop").get_uri()
print("ready", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_ready(cwd: Path) -> float:
    """Seconds from starting `spanlake serve` in `cwd` to its ready line; then stops it cleanly."""
    ports = ["--http-port", str(_free_port()), "--flightsql-port", str(_free_port())]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "spanlake.server.cli", "serve", *ports],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("spanlake ready"):
            break
    elapsed = time.perf_counter() - started
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    return elapsed


def postgres_alone(pg_dir: Path) -> float:
    """Seconds from starting a Python process that starts the embedded PostgreSQL to its answer
    (the process then exits, which stops PostgreSQL: not counted, as for spanlake)."""
    started = time.perf_counter()
    command = [sys.executable, "-c", _PGSERVER_ALONE, str(pg_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait(60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"spanlake cold": [], "spanlake warm": [], "pg cold": [], "pg warm": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            here, pg_dir = Path(tmp, "serve"), Path(tmp, "postgres")
            here.mkdir()
            pg_dir.mkdir()
            times["spanlake cold"].append(serve_until_ready(here))
            times["spanlake warm"].append(serve_until_ready(here))
            times["pg cold"].append(postgres_alone(pg_dir))
            times["pg warm"].append(postgres_alone(pg_dir))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'start':6} {'spanlake serve':>15} {'PostgreSQL alone':>17} {'ratio':>6}")
    for kind in ("cold", "warm"):
        ours, floor = median[f"spanlake {kind}"], median[f"pg {kind}"]
        print(f"{kind:6} {ours:14.2f}s {floor:16.2f}s {ours / floor:6.2f}")


if __name__ == "__main__":
    main()
