"""Start-up times, medians of --repeats runs in seconds.

1. The commands, on this code and on the previous code (`--baseline`, a git revision, default
   `main`), alternately, next to `import pyarrow.flight` (all a client command needs): `spanlake
   --help`, `spanlake query "SELECT 1"` and `spanlake perfetto` (of a small process `spanlake
   generate` sent) against a running `spanlake serve`, and `spanlake api-key` three ways: on that
   server's database (`--database-url`), on an embedded PostgreSQL another process runs (adopted),
   and on a stopped one (cold: the command starts it, and stops it at its exit). Prints each one's
   ratio to the import (the aim: at most 1.5), in wall time and in CPU time (the command's own work,
   which a loaded machine moves less), and the cold key's to the embedded PostgreSQL's own start
   (`pg start`: a process starting it, as part 2 measures). Which code runs first alternates.
2. `spanlake serve` to its ready text, on the embedded default, this code and the previous one
   alternately, next to its floor: the embedded PostgreSQL alone (pgserver creating or starting the
   same kind of data directory), plus the imports of the roles (a process importing the modules
   `serve` runs).

  cold  a fresh directory: the database is created (initdb), started and migrated
  warm  the same directory again: PostgreSQL started, nothing to migrate

    python benchmarks/startup.py [--repeats 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import source_env, spanlake_server

from spanlake.lakehouse.embedded_postgres import open_embedded_postgres

_PGSERVER_ALONE = """
import sys, warnings
warnings.simplefilter("ignore")
import pgserver
pgserver.get_server(sys.argv[1], cleanup_mode="stop").get_uri()
print("ready", flush=True)
"""


# What `spanlake serve` imports to run its roles.
_ROLES_IMPORTS = (
    "import spanlake.lakehouse.lake, spanlake.lakehouse.query.admission, spanlake.server.flightsql.service,"
    " spanlake.server.ingestion, spanlake.server.maintenance, spanlake.server.self_tracing, spanlake.server.auth"
)
_API_KEY = "startup-benchmark-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_bytecode(env: dict[str, str]) -> dict[str, str]:
    """This environment and `env`, bytecode written and read: as an installed package has its `.pyc`
    files, neither code compiles its modules on every run (the previous code, extracted afresh, sets
    PYTHONDONTWRITEBYTECODE, and so may the shell)."""
    merged = {**os.environ, **env}
    merged.pop("PYTHONDONTWRITEBYTECODE", None)
    return merged


def serve_until_ready(cwd: Path, env: dict[str, str]) -> float:
    """Seconds from starting `spanlake serve` in `cwd` to its ready line; then stops it cleanly."""
    ports = ["--http-port", str(_free_port()), "--flightsql-port", str(_free_port())]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "spanlake.server.cli", "serve", *ports],
        cwd=cwd,
        env=with_bytecode(env),
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
    process = subprocess.Popen(
        command, env=with_bytecode({}), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait(60)
    return elapsed


def seconds(command: list[str], env: dict[str, str]) -> float:
    """Seconds the command takes (it must succeed)."""
    return wall_and_cpu_seconds(command, env)[0]


def wall_and_cpu_seconds(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds the command takes (it must succeed), and the CPU seconds (user and system) it and the
    processes it waited for used: its own work, which the machine's load moves little, unlike the wall
    time (a server's work, a PostgreSQL started for it, are not counted)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=with_bytecode(env), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def in_turn(codes: tuple[tuple[str, dict[str, str]], ...], round_number: int) -> tuple[tuple[str, dict[str, str]], ...]:
    """The codes in this round's order: which runs first alternates, as the second of a pair may find
    the server's caches warm or the first one's PostgreSQL still stopping."""
    return codes if round_number % 2 == 0 else codes[::-1]


def median_table(what: str, times: dict[tuple[str, str], list[float]], names: list[str]) -> None:
    """Prints the import's median and each command's, this code and the previous one, with their
    ratios to the import's."""
    median = {key: statistics.median(values) for key, values in times.items()}
    floor = median["import", ""]
    print(f"{what}: import pyarrow.flight {floor:.3f}s; load {os.getloadavg()[0]:.2f}")
    print(f"{'command':22} {'this s':>7} {'/import':>8} {'previous s':>11} {'/import':>8}")
    for name in names:
        ours, theirs = median[name, "this"], median[name, "previous"]
        print(f"{name:22} {ours:7.3f} {ours / floor:8.2f} {theirs:11.3f} {theirs / floor:8.2f}")


def commands(repeats: int, baseline: str) -> None:
    """Part 1: the client commands next to `import pyarrow.flight`, this code and the previous one."""
    cli = [sys.executable, "-m", "spanlake.server.cli"]
    # A key from the start: keys created by `api-key` turn authentication on.
    with (
        spanlake_server(api_key=_API_KEY) as server,
        source_env(None) as here,
        source_env(baseline) as previous,
        tempfile.TemporaryDirectory() as tmp,
    ):
        client = ["--uri", server.flightsql_url, "--api-key", _API_KEY]
        generate = [*cli, "generate", "--url", server.http_url, "--api-key", _API_KEY, "--tasks", "20"]
        process_id = subprocess.run(generate, capture_output=True, text=True, check=True).stdout.split()[0]
        trace = [*cli, "perfetto", "--process-id", process_id, "-o", f"{tmp}/trace.pftrace", *client]
        subprocess.run(trace, capture_output=True, check=True)  # materializes the process's views
        adopted, stopped = Path(tmp, "adopted"), Path(tmp, "stopped")
        runs = {
            "--help": [*cli, "--help"],
            "query": [*cli, "query", "SELECT 1", *client],
            "perfetto": trace,
            "api-key": [*cli, "api-key", "bench", "--database-url", server.database_url],
            "api-key adopted": [*cli, "api-key", "bench", "--data-dir", str(adopted)],
            "api-key cold": [*cli, "api-key", "bench", "--data-dir", str(stopped)],
        }
        floors = {
            "import": [sys.executable, "-c", "import pyarrow.flight"],
            "pg start": [sys.executable, "-c", _PGSERVER_ALONE, str(stopped / "postgres")],
        }
        subprocess.run(runs["api-key cold"], capture_output=True, check=True)  # its database created once
        codes = (("this", here), ("previous", previous))
        embedded = open_embedded_postgres(adopted)  # held by this process: the commands adopt it
        try:
            for command in runs.values():  # once untimed: every module compiled
                for _, env in codes:
                    seconds(command, env)
            times: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            for round_number in range(repeats):
                measured = [(name, "", command, {}) for name, command in floors.items()]
                for name, command in runs.items():
                    measured += [(name, code, command, env) for code, env in in_turn(codes, round_number)]
                for name, code, command, env in measured:
                    wall, used = wall_and_cpu_seconds(command, env)
                    times.setdefault((name, code), []).append(wall)
                    cpu.setdefault((name, code), []).append(used)
        finally:
            embedded.server.cleanup()
    median_table("wall time", times, list(runs))
    median_table("CPU time of the command", cpu, list(runs))
    pg_start = statistics.median(times["pg start", ""])
    ratios = " ".join(f"{code} {statistics.median(times['api-key cold', code]) / pg_start:.2f}" for code, _ in codes)
    print(f"PostgreSQL's own start (pg start): {pg_start:.3f}s; api-key cold / pg start: {ratios}")


def serve_starts(repeats: int, baseline: str) -> None:
    """Part 2: `spanlake serve` cold and warm, this code and the previous one, next to PostgreSQL
    alone plus the roles' imports."""
    times: dict[str, list[float]] = {}
    with source_env(None) as here, source_env(baseline) as previous:
        codes = (("this", here), ("previous", previous))
        for round_number in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                for code, env in in_turn(codes, round_number):
                    serve_dir = Path(tmp, code)
                    serve_dir.mkdir()
                    times.setdefault(f"{code} cold", []).append(serve_until_ready(serve_dir, env))
                    times.setdefault(f"{code} warm", []).append(serve_until_ready(serve_dir, env))
                pg_dir = Path(tmp, "postgres")
                pg_dir.mkdir()
                times.setdefault("pg cold", []).append(postgres_alone(pg_dir))
                times.setdefault("pg warm", []).append(postgres_alone(pg_dir))
                times.setdefault("imports", []).append(seconds([sys.executable, "-c", _ROLES_IMPORTS], {}))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"the roles' imports: {median['imports']:.2f}s; load {os.getloadavg()[0]:.2f}")
    header = f"{'start':6} {'code':9} {'spanlake serve':>15} {'PostgreSQL alone':>17} {'ratio':>6}"
    print(f"{header} {'PG + imports':>13} {'ratio':>6}")
    for kind in ("cold", "warm"):
        floor = median[f"pg {kind}"]
        with_imports = floor + median["imports"]
        for code in ("this", "previous"):
            ours = median[f"{code} {kind}"]
            ratios = f"{ours / floor:6.2f} {with_imports:12.2f}s {ours / with_imports:6.2f}"
            print(f"{kind:6} {code:9} {ours:14.2f}s {floor:16.2f}s {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git revision of the previous code")
    args = parser.parse_args()
    commands(args.repeats, args.baseline)
    serve_starts(args.repeats, args.baseline)


if __name__ == "__main__":
    main()
