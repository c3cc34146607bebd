"""The `spanlake` command line: run the servers, migrate, manage keys, and client tools."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from spanlake.lakehouse.settings import SERVING, Settings, SettingsError, add_setting_arguments, load_settings
from spanlake.server import client_flags
from spanlake.server.startup import (
    GETTING_STARTED,
    DataDirLock,
    StartupError,
    check_ports_free,
    listen_error,
    print_ready,
    set_allocator_options,
    uses_data_dir,
    where_data_lives,
)

# Each command imports what it runs when it runs: `spanlake --help`, `query` and `perfetto` start in
# the time pyarrow.flight takes to import, without DataFusion, pandas, aiohttp or the lakehouse;
# `api-key` and `migrate` in the time asyncpg takes.
if TYPE_CHECKING:
    from spanlake.lakehouse.cluster.engine import QueryCluster  # imports Daft, an optional extra
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger("spanlake")


def _shutdown_requested() -> threading.Event:
    """Set on SIGINT or SIGTERM; installed before the roles start, so a signal during start-up (or
    right after the ready text) still shuts down cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_roles(settings: Settings, roles: tuple[str, ...]) -> int:
    """Runs the given server roles in this process until SIGINT or SIGTERM."""
    ports = {"--http-port": settings.http_port} if "ingest" in roles or "web" in roles else {}
    if "flightsql" in roles:
        ports["--flightsql-port"] = settings.flightsql_port
    check_ports_free(settings.host, ports)  # before anything starts, PostgreSQL included
    data_dir_lock = DataDirLock(settings.data_dir)
    if len(roles) > 1 and uses_data_dir(settings):
        holder = f"spanlake serve (pid {os.getpid()}, http port {settings.http_port})"
        data_dir_lock.acquire(holder)
    try:
        print(where_data_lives(settings), flush=True)
        return _serve_lake(settings, roles)
    finally:
        data_dir_lock.release()


def _serve_lake(settings: Settings, roles: tuple[str, ...]) -> int:
    import functools

    from spanlake.lakehouse.bulk_ingest import bulk_ingest
    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.query import slow_queries
    from spanlake.lakehouse.query.admission import lakehouse_runner
    from spanlake.lakehouse.query.loop_joins import reserve_datafusion_workers
    from spanlake.server.auth import AuthConfigError, make_authenticator
    from spanlake.server.flightsql.service import FlightSqlServer
    from spanlake.server.ingestion import start_ingestion
    from spanlake.server.maintenance import MaintenanceDaemon
    from spanlake.server.self_tracing import start_self_tracing

    reserve_datafusion_workers()  # before DataFusion's runtime starts (the first query)
    shutdown = _shutdown_requested()
    lake = Lake.open(settings)
    self_tracing = start_self_tracing(lake, _role_name(roles)) if settings.self_tracing else None
    slow_queries.configure(slow_queries.SlowQueryRule(settings.slow_query_seconds, settings.slow_span_ms))
    try:
        serves_requests = "ingest" in roles or "flightsql" in roles or "web" in roles
        try:
            authenticator = make_authenticator(settings, lake) if serves_requests else None
        except AuthConfigError as err:
            raise StartupError(str(err)) from None
        stoppers: list[Callable[[], None]] = [authenticator.close] if authenticator is not None else []
        runner = lakehouse_runner(lake)  # every door's queries, Flight SQL's and the web UI's
        if "flightsql" in roles:  # listening before /health answers: then every door takes requests
            try:
                flight_server = FlightSqlServer(
                    f"grpc://{settings.host}:{settings.flightsql_port}",
                    runner,
                    authenticator,
                    cluster=query_cluster(lake, settings),
                    bulk_ingest=functools.partial(bulk_ingest, lake),
                )
            except OSError as err:
                raise listen_error(settings.host, settings.flightsql_port, "--flightsql-port", err) from None
            flight_server.serve_in_thread()
            stoppers.append(flight_server.shutdown)
            print(f"spanlake Flight SQL: grpc://{settings.host}:{flight_server.port}", flush=True)
        if "ingest" in roles or "web" in roles:
            http = start_ingestion(
                lake,
                authenticator,
                settings.host,
                settings.http_port,
                "ingest" in roles,
                "web" in roles,
                runner,
                settings.ingestion_workers,
            )
            try:  # the port was free at the start-up check; another process may have taken it since
                http_runner = lake.loop.run(http)
            except OSError as err:
                raise listen_error(settings.host, settings.http_port, "--http-port", err) from None
            stoppers.append(lambda: lake.loop.run(http_runner.cleanup(), timeout=30))
            stoppers.append(runner.shutdown)  # first: the web's queries stop, then the HTTP server
            if "ingest" in roles:
                print(f"spanlake ingestion: http://{settings.host}:{settings.http_port}", flush=True)
            if "web" in roles:
                print(f"spanlake web UI: http://{settings.host}:{settings.http_port}/", flush=True)
        if "maintain" in roles:
            daemon = MaintenanceDaemon(lake, settings.retention_days)
            daemon.start()
            stoppers.append(daemon.stop)
            print("spanlake maintenance daemon running", flush=True)
        print_ready(settings, roles, sys.stdout)
        shutdown.wait()
        for stop in reversed(stoppers):
            stop()
        return 0
    finally:
        if self_tracing is not None:
            self_tracing.stop()
        lake.close()


def _role_name(roles: tuple[str, ...]) -> str:
    """The role part of the self-traced process's exe: `spanlake-flightsql`, ..., `spanlake-serve`."""
    return roles[0] if len(roles) == 1 else "serve"


def query_cluster(lake: Lake, settings: Settings) -> QueryCluster | None:
    """The query cluster of SPANLAKE_QUERY_CLUSTER, or None: every query on this process."""
    if not settings.query_cluster:
        return None
    try:
        from spanlake.lakehouse.cluster.engine import QueryCluster
    except ImportError as err:
        raise SettingsError(
            f"SPANLAKE_QUERY_CLUSTER (--query-cluster) needs the cluster extra, pip install 'spanlake[cluster]': {err}"
        ) from None
    print(f"spanlake query cluster: {settings.query_cluster} (from {settings.cluster_min_bytes} bytes)", flush=True)
    return QueryCluster(lake, settings.query_cluster, settings.cluster_min_bytes)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("ingest", "flightsql", "maintain", "web"))


def _cmd_flightsql(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("flightsql",))


def _cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("maintain",))


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("ingest",))


def _cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("web",))


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from spanlake.server import catalog_command

    return catalog_command.run_migrate(settings)


def _cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> int:
    from spanlake.server import catalog_command

    return catalog_command.run_api_key(args, settings)


def _cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from spanlake.server import query_command

    return query_command.run(args)


def _cmd_perfetto(args: argparse.Namespace, settings: Settings) -> int:
    from spanlake.server import perfetto_command

    return perfetto_command.run(args)


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from spanlake.tracing import generator

    return generator.run(args)


def build_parser(generate_flags: bool = True) -> argparse.ArgumentParser:
    """The `spanlake` command line parser: every command with its settings flags. Without
    `generate_flags`, `generate` is listed without its flags (they import the tracing SDK: main leaves
    them out unless the command is `generate`)."""
    parser = argparse.ArgumentParser(
        prog="spanlake", description="A telemetry lakehouse speaking the micromegas protocols."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace, Settings], int], help_text: str, with_settings: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if with_settings:
            add_setting_arguments(sub, name)
        sub.set_defaults(run=run)
        return sub

    command("serve", _cmd_serve, "run every role in one process (ingestion, Flight SQL, maintenance, web UI)")
    command("ingest", _cmd_ingest, "run the HTTP ingestion API only")
    command("flightsql", _cmd_flightsql, "run the Arrow Flight SQL API only")
    command("maintain", _cmd_maintain, "run the maintenance daemon only (global views, merges, retention)")
    command("web", _cmd_web, "run the web UI only (queries the lakehouse in process)")
    command("migrate", _cmd_migrate, "create or upgrade the PostgreSQL schema")
    generate = command(
        "generate",
        _cmd_generate,
        "send generated telemetry (threads, nested and named async spans, logs, metrics)",
        with_settings=False,
    )
    if generate_flags:
        from spanlake.tracing import generator

        generator.add_arguments(generate)
    query = command(
        "query",
        _cmd_query,
        "run one SQL statement on a running server and print the result",
        with_settings=False,
    )
    client_flags.add_query_arguments(query)
    perfetto = command(
        "perfetto",
        _cmd_perfetto,
        "write a process's Perfetto trace from a running server",
        with_settings=False,
    )
    client_flags.add_perfetto_arguments(perfetto)
    key = command("api-key", _cmd_api_key_create, "create an API key stored in the database")
    key.add_argument("name", help="a name for the key (shown in logs and audit records)")
    key.add_argument("--admin", action="store_true", help="allow admin functions with this key")
    kind = key.add_mutually_exclusive_group()
    kind.add_argument("--audience", help="an ingestion key: what it writes is stamped with this audience")
    kind.add_argument("--read-audiences", metavar="A,B", help="an analytics key reading these audiences (and public)")
    return parser


def configure_logging(level_name: str, serving: bool) -> None:
    """Log lines at `level_name`; below DEBUG, no PostgreSQL tool output and no per-query audit lines
    (the audit still reaches its own logger's handlers, self-tracing's included)."""
    level = logging.getLevelName(level_name.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    verbose = level == logging.DEBUG
    logging.getLogger("pgserver").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if serving:  # the audit logger belongs to the query runner, which the other commands never import
        from spanlake.lakehouse.query.audit import AUDIT_LOGGER

        logging.getLogger(AUDIT_LOGGER).propagate = verbose


def main(argv: list[str] | None = None) -> int:
    """Runs the `spanlake` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(generate_flags=argv[:1] == ["generate"]).parse_args(argv)
    if args.command is None:
        print(GETTING_STARTED, end="")
        return 0
    try:
        settings = load_settings(args)
    except SettingsError as err:
        print(f"spanlake: {err}", file=sys.stderr)
        return 2
    if args.command in SERVING:
        set_allocator_options()  # before anything loads DataFusion or pyarrow (logging's set-up does)
    configure_logging(settings.log_level, args.command in SERVING)
    try:
        return args.run(args, settings)
    except (StartupError, ValueError) as err:
        print(f"spanlake: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
