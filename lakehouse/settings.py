"""spanlake's settings: one table of options, each an environment variable with a matching flag.

`SETTINGS` is the single source: `spanlake --help` and the README list the same names. A value comes
from the command line if given, else from the environment, else from the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected 0 or more, got {text!r}")
    return value


# The commands that run servers; `serve` runs every role in one process.
SERVING = ("serve", "ingest", "flightsql", "maintain", "web")
LISTENING = ("serve", "ingest", "flightsql", "web")
QUERYING = ("serve", "flightsql", "web")  # the roles whose doors run queries (the query runner)


@dataclass(frozen=True)
class Option:
    """One setting: its environment variable, its flag, how it is parsed, its default and help."""

    name: str  # attribute of Settings; the flag is --name-with-dashes
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    commands: tuple[str, ...] | None = None  # the commands that take its flag; None: every command

    @property
    def flag(self) -> str:
        """The command-line flag of the setting."""
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Option, ...] = (
    Option(
        "data_dir",
        "SPANLAKE_DATA_DIR",
        Path,
        Path("spanlake-data"),
        "directory of the embedded PostgreSQL and of the default local object store",
    ),
    Option(
        "database_url",
        "SPANLAKE_DATABASE_URL",
        str,
        None,
        "postgresql:// URL of the catalog database; unset: an embedded PostgreSQL in the data directory",
    ),
    Option(
        "object_store_uri",
        "SPANLAKE_OBJECT_STORE_URI",
        str,
        None,
        "file:///path or s3://bucket/prefix; unset: file://<data-dir>/lake",
        SERVING,
    ),
    Option(
        "s3_endpoint",
        "SPANLAKE_S3_ENDPOINT",
        str,
        None,
        "S3 endpoint URL for S3-compatible stores such as MinIO (credentials from the AWS_* variables)",
        SERVING,
    ),
    Option("host", "SPANLAKE_HOST", str, "127.0.0.1", "address the servers listen on", LISTENING),
    Option(
        "http_port",
        "SPANLAKE_HTTP_PORT",
        int,
        9000,
        "port of the HTTP ingestion API and the web UI",
        ("serve", "ingest", "web"),
    ),
    Option(
        "flightsql_port",
        "SPANLAKE_FLIGHTSQL_PORT",
        int,
        50051,
        "port of the Arrow Flight SQL API",
        ("serve", "flightsql"),
    ),
    Option(
        "api_keys",
        "SPANLAKE_API_KEYS",
        str,
        None,
        'bearer API keys, JSON list of {"name": ..., "key": ...} (keys in the api_keys table also work)',
        LISTENING,
    ),
    Option(
        "admins",
        "SPANLAKE_ADMINS",
        str,
        "",
        "comma-separated API key names allowed to run admin functions",
        QUERYING,
    ),
    Option(
        "disable_auth",
        "SPANLAKE_DISABLE_AUTH",
        _bool,
        False,
        "accept requests without a key even on a non-loopback address",
        LISTENING,
    ),
    Option(
        "public_url",
        "SPANLAKE_PUBLIC_URL",
        str,
        None,
        "URL browsers open the web UI at (https://spanlake.example.com); its host and origin are allowed"
        " besides loopback names and IP addresses",
        ("serve", "web"),
    ),
    Option(
        "allowed_hosts",
        "SPANLAKE_ALLOWED_HOSTS",
        str,
        "",
        "comma-separated further host names the web UI answers to (any other name gets 421)",
        ("serve", "web"),
    ),
    Option(
        "login_failures_per_ip",
        "SPANLAKE_LOGIN_FAILURES_PER_IP",
        int,
        10,
        "wrong-key sign-ins a client address may make in a minute before the web UI answers 429",
        ("serve", "web"),
    ),
    Option(
        "login_failures",
        "SPANLAKE_LOGIN_FAILURES",
        int,
        100,
        "wrong-key sign-ins all clients together may make in a minute before the web UI answers 429",
        ("serve", "web"),
    ),
    Option(
        "ingestion_workers",
        "SPANLAKE_INGESTION_WORKERS",
        _count,
        0,
        "processes serving the ingestion API on the HTTP port (SO_REUSEPORT); 0: this process",
        ("serve", "ingest"),
    ),
    Option(
        "oidc_issuer",
        "SPANLAKE_OIDC_ISSUER",
        str,
        None,
        "OpenID Connect issuer URL: its bearer tokens are accepted on Flight SQL and the web UI offers its"
        " sign-in (keys keep working)",
        QUERYING,
    ),
    Option(
        "oidc_audience",
        "SPANLAKE_OIDC_AUDIENCE",
        str,
        None,
        "the audience tokens must carry: spanlake's client id at the issuer",
        QUERYING,
    ),
    Option(
        "oidc_client_secret",
        "SPANLAKE_OIDC_CLIENT_SECRET",
        str,
        None,
        "the client secret the web sign-in presents to the token endpoint (none: a public client, PKCE only)",
        ("serve", "web"),
    ),
    Option(
        "oidc_groups_claim",
        "SPANLAKE_OIDC_GROUPS_CLAIM",
        str,
        "groups",
        "the token claim listing the signed-in user's groups",
        QUERYING,
    ),
    Option(
        "oidc_group_audiences",
        "SPANLAKE_OIDC_GROUP_AUDIENCES",
        str,
        "",
        "comma-separated group=audience pairs: the audiences each token group reads (a group may repeat)",
        QUERYING,
    ),
    Option(
        "oidc_admin_group",
        "SPANLAKE_OIDC_ADMIN_GROUP",
        str,
        "",
        "the token group whose members are admins",
        QUERYING,
    ),
    Option(
        "retention_days",
        "SPANLAKE_RETENTION_DAYS",
        int,
        90,
        "days of telemetry kept by maintenance",
        ("serve", "maintain"),
    ),
    Option(
        "self_tracing",
        "SPANLAKE_SELF_TRACING",
        _bool,
        True,
        "trace spanlake's own work into its own lake",
        SERVING,
    ),
    Option("log_level", "SPANLAKE_LOG_LEVEL", str, "INFO", "logging level (DEBUG, INFO, WARNING, ERROR)"),
    Option(
        "query_cluster",
        "SPANLAKE_QUERY_CLUSTER",
        str,
        None,
        "Ray cluster for long scans of global views (head host:port, or ray://head:10001); unset: none",
        ("serve", "flightsql"),
    ),
    Option(
        "cluster_min_bytes",
        "SPANLAKE_CLUSTER_MIN_BYTES",
        int,
        1 << 30,
        "partition bytes a query must read before it goes to the query cluster",
        ("serve", "flightsql"),
    ),
    Option(
        "max_inflated_block_bytes",
        "SPANLAKE_MAX_INFLATED_BLOCK_BYTES",
        int,
        64 * 1024 * 1024,
        "most bytes one LZ4 buffer of a block may inflate to (checked at ingestion and at decoding)",
        SERVING,
    ),
    Option(
        "max_inflation_ratio",
        "SPANLAKE_MAX_INFLATION_RATIO",
        int,
        100,
        "most times its compressed size a block buffer may inflate to, past 1 MiB",
        SERVING,
    ),
    Option(
        "row_group_rows",
        "SPANLAKE_ROW_GROUP_ROWS",
        _positive_int,
        256 * 1024,
        "rows per row group of the parquet partitions written (just in time, by the daemon and by merges)",
        (*QUERYING, "maintain"),
    ),
    Option(
        "request_body_timeout_s",
        "SPANLAKE_REQUEST_BODY_TIMEOUT_S",
        float,
        30.0,
        "seconds a request (ingestion, /api/sql, /api/query-stream) may take to send its body before the server"
        " closes it (408)",
        ("serve", "ingest", "web"),
    ),
    Option(
        "max_sql_bytes",
        "SPANLAKE_MAX_SQL_BYTES",
        int,
        1_048_576,
        "longest SQL text a query may have, in bytes",
        QUERYING,
    ),
    Option(
        "max_sql_depth",
        "SPANLAKE_MAX_SQL_DEPTH",
        int,
        1000,
        "deepest expression a query may have (operators chained plus parentheses nested)",
        QUERYING,
    ),
    Option(
        "max_sql_joins",
        "SPANLAKE_MAX_SQL_JOINS",
        int,
        128,
        "joins, FROM-list items and set operations (UNION, INTERSECT, EXCEPT) a query's text may combine",
        QUERYING,
    ),
    Option(
        "max_plan_nodes",
        "SPANLAKE_MAX_PLAN_NODES",
        int,
        10_000,
        "nodes a query's logical plan may have, common table expressions counted at each reference",
        QUERYING,
    ),
    Option(
        "perfetto_chunk_kib",
        "SPANLAKE_PERFETTO_CHUNK_KIB",
        int,
        64,
        "size of perfetto_trace_chunks' chunks in KiB (a client reads a chunk at a time);"
        " 0: micromegas's chunks (8 KiB, cut every 10 spans)",
        QUERYING,
    ),
    Option(
        "stream_buffer_mb",
        "SPANLAKE_STREAM_BUFFER_MB",
        int,
        16,
        "result batches (MiB) a query may compute ahead of its client (Flight SQL or web); past it the query waits",
        QUERYING,
    ),
    Option(
        "result_buffer_mb",
        "SPANLAKE_RESULT_BUFFER_MB",
        int,
        256,
        "result batches (MiB) all queries together may compute ahead of their clients; past it they wait",
        QUERYING,
    ),
    Option(
        "result_buffer_wait_seconds",
        "SPANLAKE_RESULT_BUFFER_WAIT_SECONDS",
        float,
        30.0,
        "seconds a query may wait for room in the full result buffer of all queries; past it → UNAVAILABLE",
        QUERYING,
    ),
    Option(
        "query_timeout_seconds",
        "SPANLAKE_QUERY_TIMEOUT_SECONDS",
        float,
        300.0,
        "time limit of a query (Flight SQL or web UI), planning and streaming included; 0: none",
        QUERYING,
    ),
    Option(
        "query_memory_limit_mb",
        "SPANLAKE_QUERY_MEMORY_LIMIT_MB",
        int,
        4096,
        "DataFusion memory pool of one query (MiB; sorts and aggregations spill past it); 0: unlimited",
        QUERYING,
    ),
    Option(
        "slow_query_seconds",
        "SPANLAKE_SLOW_QUERY_SECONDS",
        float,
        1.0,
        "a query running at least this long keeps its detailed spans in self-tracing; faster: its root only",
        QUERYING,
    ),
    Option(
        "live_refresh_seconds",
        "SPANLAKE_LIVE_REFRESH_SECONDS",
        float,
        0.0,
        "a process instance queried within this many seconds is materialized in the background as its blocks"
        " arrive, so that its next query finds it fresh (0: off)",
        QUERYING,
    ),
    Option(
        "memory_tail_objects",
        "SPANLAKE_MEMORY_TAIL_OBJECTS",
        int,
        65536,
        "a query reads blocks no partition holds yet, up to this many objects, decoded in memory, and writes"
        " their partition after answering; more are written before it reads (0: always before)",
        QUERYING,
    ),
    Option(
        "decode_ahead_objects",
        "SPANLAKE_DECODE_AHEAD_OBJECTS",
        int,
        262144,
        "the blocks this server ingests of a process whose tail a query read in memory lately are decoded"
        " as they arrive, for its next query, up to this many objects held (and as many objects' rows of the"
        " partitions written from tails, until merged; 0: off)",
        QUERYING,
    ),
    Option(
        "slow_span_ms",
        "SPANLAKE_SLOW_SPAN_MS",
        float,
        5.0,
        "of a slow query, the spans running at least this long are kept (with their ancestors)",
        QUERYING,
    ),
)


@dataclass(frozen=True)
class Settings:
    """Every setting of a spanlake process, from flags, then the environment, then defaults."""

    data_dir: Path = Path("spanlake-data")
    database_url: str | None = None
    object_store_uri: str | None = None
    s3_endpoint: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 9000
    flightsql_port: int = 50051
    api_keys: str | None = None
    admins: str = ""
    disable_auth: bool = False
    public_url: str | None = None
    allowed_hosts: str = ""
    login_failures_per_ip: int = 10
    login_failures: int = 100
    ingestion_workers: int = 0
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_client_secret: str | None = None
    oidc_groups_claim: str = "groups"
    oidc_group_audiences: str = ""
    oidc_admin_group: str = ""
    retention_days: int = 90
    self_tracing: bool = True
    log_level: str = "INFO"
    query_cluster: str | None = None
    cluster_min_bytes: int = 1 << 30
    max_inflated_block_bytes: int = 64 * 1024 * 1024
    max_inflation_ratio: int = 100
    row_group_rows: int = 256 * 1024
    request_body_timeout_s: float = 30.0
    max_sql_bytes: int = 1_048_576
    max_sql_depth: int = 1000
    max_sql_joins: int = 128
    max_plan_nodes: int = 10_000
    perfetto_chunk_kib: int = 64
    stream_buffer_mb: int = 16
    result_buffer_mb: int = 256
    result_buffer_wait_seconds: float = 30.0
    query_timeout_seconds: float = 300.0
    query_memory_limit_mb: int = 4096
    slow_query_seconds: float = 1.0
    live_refresh_seconds: float = 0.0
    memory_tail_objects: int = 65536
    decode_ahead_objects: int = 262144
    slow_span_ms: float = 5.0

    @property
    def lake_uri(self) -> str:
        """The object store's URI: the configured one, or the data directory's `lake` folder."""
        if self.object_store_uri:
            return self.object_store_uri
        return (self.data_dir.resolve() / "lake").as_uri()

    @property
    def admin_names(self) -> frozenset[str]:
        """The API key names given admin rights by SPANLAKE_ADMINS."""
        return frozenset(name.strip() for name in self.admins.split(",") if name.strip())


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable and the flag."""


def add_setting_arguments(parser: argparse.ArgumentParser, command: str | None = None) -> None:
    """Adds one flag per setting `command` uses (every setting without a command). Defaults are left
    unset so the environment can fill them."""
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for option in SETTINGS:
        if command is not None and option.commands is not None and command not in option.commands:
            continue
        kwargs: dict[str, Any] = {
            "dest": option.name,
            "default": None,
            "help": f"{option.help} [{option.env}; default: {option.default}]",
        }
        if option.parse is _bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = option.env.removeprefix("SPANLAKE_")
        group.add_argument(option.flag, **kwargs)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of the flags given, else of the environment, else the defaults; SettingsError if one is bad."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in SETTINGS:
        given = getattr(args, option.name, None) if args is not None else None
        if given is not None:
            values[option.name] = option.parse(given) if isinstance(given, str) else given
        elif environ.get(option.env) not in (None, ""):
            try:
                values[option.name] = option.parse(environ[option.env])
            except ValueError as err:
                raise SettingsError(f"{option.env} ({option.flag}): {err}") from None
    return Settings(**values)
