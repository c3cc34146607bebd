"""spanlake's Arrow Flight SQL server (micromegas dialect), independent of the lakehouse.

The lakehouse plugs in through a `SessionFactory`: a callable that builds a DataFusion
`SessionContext` for each query from its `QueryContext`.
"""

from spanlake.server.flightsql.errors import UserError
from spanlake.server.flightsql.service import FlightSqlServer, run_flightsql
from spanlake.server.flightsql.session import QueryContext, SessionFactory, default_session_config

__all__ = ["FlightSqlServer", "QueryContext", "SessionFactory", "UserError", "default_session_config", "run_flightsql"]
