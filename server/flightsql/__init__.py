"""spanlake's Arrow Flight SQL server (micromegas dialect): a door of the query runner.

Queries run through `lakehouse.query.runner.QueryRunner` (limits, deny list, query thread, audit,
error classification, shared with the web UI's doors); the tables come from its `SessionFactory`: a
callable that builds a DataFusion `SessionContext` for each query from its `QueryContext`.

Modules:

    service       the server: RPC dispatch, auth, statements, prepared statements, sessions
    protocol      the Flight SQL protobuf messages, built at import time in a private pool
    statement_ticket  a statement's ticket encoded without protobuf (what the clients send)
    headers       the request headers (range, limit, dictionaries, bearer) and the auth middleware
    streaming     a DataFusion result streamed batch by batch, with its audit record
    statement     a statement and its bound parameter values, carried in stateless handles
    plan_cache    planned DataFrames kept for a few seconds (one ADBC query planned once)
    metadata      GetCatalogs, GetDbSchemas, GetTables, GetTableTypes
    sql_info      GetSqlInfo
    errors        classified failures → gRPC status codes, messages without tracebacks

The names below are imported on first use: the clients (`spanlake query`, `spanlake perfetto`) import
this package without DataFusion.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spanlake.lakehouse.query.context import QueryContext, SessionFactory, default_session_config
    from spanlake.lakehouse.query.failures import UserError
    from spanlake.lakehouse.query.limits import QueryLimits
    from spanlake.server.flightsql.service import FlightSqlServer, run_flightsql

# Each exported name → the module defining it.
_EXPORTS = {
    "FlightSqlServer": "spanlake.server.flightsql.service",
    "QueryContext": "spanlake.lakehouse.query.context",
    "QueryLimits": "spanlake.lakehouse.query.limits",
    "SessionFactory": "spanlake.lakehouse.query.context",
    "UserError": "spanlake.lakehouse.query.failures",
    "default_session_config": "spanlake.lakehouse.query.context",
    "run_flightsql": "spanlake.server.flightsql.service",
}

__all__ = [
    "FlightSqlServer",
    "QueryContext",
    "QueryLimits",
    "SessionFactory",
    "UserError",
    "default_session_config",
    "run_flightsql",
]


def __getattr__(name: str) -> Any:
    """Imports an exported name's module when the name is first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
