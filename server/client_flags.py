"""The flags of the client commands, `spanlake query` and `spanlake perfetto`, and how both read the
server's address and its errors: apart from the commands themselves so that building the command line
(and `spanlake --help`) imports no pyarrow, and neither command imports the other's modules."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

DEFAULT_URI = "grpc://127.0.0.1:50051"


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `spanlake query` options to `parser`."""
    parser.add_argument("sql", help="the SQL statement to run")
    parser.add_argument(
        "--begin", help="start of the query range, RFC3339 (with --end); lets the server skip partitions outside it"
    )
    parser.add_argument("--end", help="end of the query range, RFC3339 (with --begin)")
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table (aligned text, default), csv, or json (one object per line)",
    )
    _add_server_arguments(parser)


def add_perfetto_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `spanlake perfetto` options to `parser`."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--process-id", help="the process to trace (a UUID)")
    which.add_argument("--trace", help="a trace id (32 hex digits): its spans in every process, with flows")
    parser.add_argument("--spans", choices=("thread", "async", "both"), default="both", help="span types (both)")
    parser.add_argument("--begin", help="start of the trace, RFC3339 (default: 1 hour before --end)")
    parser.add_argument("--end", help="end of the trace, RFC3339 (default: now)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="file to write (default: <process-id or trace>.pftrace here, never over an existing file)",
    )
    _add_server_arguments(parser)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The Flight SQL server to ask, and the key to ask with."""
    parser.add_argument(
        "--uri",
        default=os.environ.get("SPANLAKE_FLIGHTSQL_URI", DEFAULT_URI),
        help=f"Flight SQL server (env SPANLAKE_FLIGHTSQL_URI, default {DEFAULT_URI})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SPANLAKE_API_KEY"),
        help="API key sent as 'Authorization: Bearer …' (env SPANLAKE_API_KEY)",
    )


def flight_uri(uri: str) -> str:
    """Accepts http(s):// as the micromegas client does: Flight speaks gRPC (grpc://, grpc+tls://)."""
    if uri.startswith("https://"):
        return "grpc+tls://" + uri[len("https://") :]
    if uri.startswith("http://"):
        return "grpc://" + uri[len("http://") :]
    return uri


_CLIENT_PREFIX = re.compile(r"^Flight returned [a-z ]+ error, with message: ")
_CLIENT_SUFFIX = re.compile(r"\. (?:Detail: |gRPC client debug context: ).*$", re.DOTALL)


def server_message(err: BaseException) -> str:
    """The server's message without pyarrow's decorations (status prefix, detail, debug context)."""
    return _CLIENT_SUFFIX.sub("", _CLIENT_PREFIX.sub("", str(err))) or type(err).__name__
