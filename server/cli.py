"""The `spanlake` command line: run the servers, migrate, manage keys, and client tools."""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable

from datafusion import SessionContext

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.settings import Settings, SettingsError, add_setting_arguments, load_settings
from spanlake.server import perfetto_command, query_command
from spanlake.server.auth import AuthConfigError, hash_key, make_authenticator
from spanlake.server.flightsql.limits import QueryLimits
from spanlake.server.flightsql.service import FlightSqlServer
from spanlake.server.flightsql.session import QueryContext, SessionFactory
from spanlake.server.ingestion import start_ingestion
from spanlake.server.maintenance import MaintenanceDaemon
from spanlake.server.self_tracing import start_self_tracing
from spanlake.tracing import generator

log = logging.getLogger("spanlake")


def _wait_for_shutdown() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def run_roles(settings: Settings, roles: tuple[str, ...]) -> int:
    """Runs the given server roles in this process until SIGINT or SIGTERM."""
    lake = Lake.open(settings)
    self_tracing = start_self_tracing(lake, _role_name(roles)) if settings.self_tracing else None
    try:
        authenticator = make_authenticator(settings, lake)
        stoppers: list[Callable[[], None]] = []
        if "ingest" in roles:
            runner = lake.loop.run(start_ingestion(lake, authenticator, settings.host, settings.http_port))
            stoppers.append(lambda: lake.loop.run(runner.cleanup(), timeout=30))
            print(f"spanlake ingestion: http://{settings.host}:{settings.http_port}", flush=True)
        if "flightsql" in roles:
            flight_server = FlightSqlServer(
                f"grpc://{settings.host}:{settings.flightsql_port}",
                lakehouse_sessions(lake, settings.query_memory_limit_mb * 1024 * 1024),
                authenticator,
                limits=QueryLimits(settings.max_sql_bytes, settings.max_sql_depth, settings.query_timeout_seconds),
            )
            flight_server.serve_in_thread()
            stoppers.append(flight_server.shutdown)
            print(f"spanlake Flight SQL: grpc://{settings.host}:{flight_server.port}", flush=True)
        if "maintain" in roles:
            daemon = MaintenanceDaemon(lake, settings.retention_days)
            daemon.start()
            stoppers.append(daemon.stop)
            print("spanlake maintenance daemon running", flush=True)
        print(f"spanlake ready (lake {settings.lake_uri})", flush=True)
        _wait_for_shutdown()
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


def lakehouse_sessions(lake: Lake, memory_limit_bytes: int = 0) -> SessionFactory:
    """Flight SQL's session factory: a lakehouse session per query; admin functions for admins only."""

    def make(query: QueryContext) -> SessionContext:
        is_admin = query.principal is None or query.principal.is_admin
        return make_session_context(lake, query.query_range, is_admin=is_admin, memory_limit_bytes=memory_limit_bytes)

    return make


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("ingest", "flightsql", "maintain"))


def _cmd_flightsql(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("flightsql",))


def _cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("maintain",))


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    return run_roles(settings, ("ingest",))


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    Lake.open(settings).close()  # opening applies the missing migrations
    print("database schema is up to date")
    return 0


def _cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> int:
    key = "slk_" + secrets.token_urlsafe(32)
    lake = Lake.open(settings)
    try:
        lake.loop.run(lake.catalog.add_api_key(args.name, hash_key(key), args.admin))
    finally:
        lake.close()
    print(key)
    print(f"# API key '{args.name}' created; only its SHA-256 is stored: keep the key now.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spanlake", description="A telemetry lakehouse speaking the micromegas protocols."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace, Settings], int], help_text: str, with_settings: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if with_settings:
            add_setting_arguments(sub)
        sub.set_defaults(run=run)
        return sub

    command("serve", _cmd_serve, "run every role in one process (ingestion, Flight SQL, maintenance)")
    command("ingest", _cmd_ingest, "run the HTTP ingestion API only")
    command("flightsql", _cmd_flightsql, "run the Arrow Flight SQL API only")
    command("maintain", _cmd_maintain, "run the maintenance daemon only (global views, merges, retention)")
    command("migrate", _cmd_migrate, "create or upgrade the PostgreSQL schema")
    generate = command(
        "generate",
        lambda args, _: generator.run(args),
        "send generated telemetry (threads, nested and named async spans, logs, metrics)",
        with_settings=False,
    )
    generator.add_arguments(generate)
    query = command(
        "query",
        lambda args, _: query_command.run(args),
        "run one SQL statement on a running server and print the result",
        with_settings=False,
    )
    query_command.add_arguments(query)
    perfetto = command(
        "perfetto",
        lambda args, _: perfetto_command.run(args),
        "write a process's Perfetto trace from a running server",
        with_settings=False,
    )
    perfetto_command.add_arguments(perfetto)
    key = command("api-key", _cmd_api_key_create, "create an API key stored in the database")
    key.add_argument("name", help="a name for the key (shown in logs and audit records)")
    key.add_argument("--admin", action="store_true", help="allow admin functions with this key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as err:
        print(f"spanlake: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, settings)
    except (AuthConfigError, ValueError) as err:
        print(f"spanlake: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
