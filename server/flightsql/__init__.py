"""spanlake's Arrow Flight SQL server (micromegas dialect), independent of the lakehouse.

The lakehouse plugs in through a `SessionFactory`: a callable that builds a DataFusion
`SessionContext` for each query from its `QueryContext`.

Modules:

    service       the server: RPC dispatch, auth, statements, prepared statements, sessions
    protocol      the Flight SQL protobuf messages, built at import time in a private pool
    headers       the request headers (range, limit, dictionaries, bearer) and the auth middleware
    session       the seam to the lakehouse: `QueryContext`, `SessionFactory`
    streaming     a DataFusion result streamed batch by batch, with its audit record
    statement     a statement and its bound parameter values, carried in stateless handles
    plan_cache    planned DataFrames kept for a few seconds (one ADBC query planned once)
    limits        what a query may ask: SQL size, expression depth, time (`QueryLimits`)
    query_thread  each query's DataFusion work on a stoppable thread with a large stack
    metadata      GetCatalogs, GetDbSchemas, GetTables, GetTableTypes
    sql_info      GetSqlInfo
    errors        failures → gRPC status codes, messages without tracebacks or paths
    audit         one structured JSON line per query
"""

from spanlake.server.flightsql.errors import UserError
from spanlake.server.flightsql.limits import QueryLimits
from spanlake.server.flightsql.service import FlightSqlServer, run_flightsql
from spanlake.server.flightsql.session import QueryContext, SessionFactory, default_session_config

__all__ = [
    "FlightSqlServer",
    "QueryContext",
    "QueryLimits",
    "SessionFactory",
    "UserError",
    "default_session_config",
    "run_flightsql",
]
