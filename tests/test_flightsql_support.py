"""Shared parts of the Flight SQL tests (this module holds no tests): an in-memory session factory
that records what the server asked for, a server on a free loopback port, and small client helpers."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from spanlake.lakehouse.query.audit import AUDIT_LOGGER
from spanlake.server.auth import Authenticator
from spanlake.server.flightsql import FlightSqlServer, QueryContext, default_session_config, protocol

EVENT_ROWS = 1_000_000
BASE_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def events_table(rows: int = EVENT_ROWS) -> pa.Table:
    """id 0..rows-1, value = id/2, ts = 2024-01-01 + id ms, name = 'n{id % 7}' (dictionary)."""
    ids = np.arange(rows, dtype=np.int64)
    names = pa.DictionaryArray.from_arrays(pa.array(ids % 7, pa.int32()), pa.array([f"n{i}" for i in range(7)]))
    return pa.table(
        {
            "id": ids,
            "value": ids * 0.5,
            "ts": pa.array(BASE_NS + ids * 1_000_000, pa.timestamp("ns", tz="UTC")),
            "name": names,
        }
    ).combine_chunks()


@dataclass
class RecordingFactory:
    """A SessionFactory over in-memory tables; remembers every QueryContext it was given."""

    tables: dict[str, pa.Table]
    configure: Callable[[datafusion.SessionContext], None] | None = None
    runtime: datafusion.RuntimeEnvBuilder | None = None
    contexts: list[QueryContext] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, query: QueryContext) -> datafusion.SessionContext:
        with self._lock:
            self.contexts.append(query)
        ctx = datafusion.SessionContext(default_session_config(), self.runtime)
        for name, table in self.tables.items():
            ctx.register_record_batches(name, [table.to_batches(max_chunksize=65536)])
        if self.configure is not None:
            self.configure(ctx)
        return ctx


@contextlib.contextmanager
def running_server(
    factory: Callable[[QueryContext], datafusion.SessionContext], authenticator: Authenticator | None = None
) -> Iterator[str]:
    """A FlightSqlServer on 127.0.0.1 (free port), stopped on exit; yields its URI."""
    server = FlightSqlServer("grpc://127.0.0.1:0", factory, authenticator)
    port = server.serve_in_thread()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.shutdown()


def statement_ticket(sql: str) -> flight.Ticket:
    """The ticket the micromegas client sends: Any(TicketStatementQuery(statement_handle=sql))."""
    return flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode())))


def command_descriptor(command: Any) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(protocol.pack(command))


def call_options(**headers: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in headers.items()])


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]


def capture_audit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)


_GRPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}

_EXCEPTION_CODES = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightInternalError, "INTERNAL"),
    (flight.FlightServerError, "UNKNOWN"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
)


def grpc_status(err: BaseException) -> tuple[str | None, str]:
    """(gRPC status name, server message) from a pyarrow.flight client exception. Streaming calls
    carry the gRPC debug context; unary ones only the exception class pyarrow chose from the code."""
    text = str(err)
    found = re.search(r"grpc_status:(\d+)", text)
    if found is not None:
        code = _GRPC_CODES.get(int(found.group(1)), found.group(1))
    else:
        code = next((name for cls, name in _EXCEPTION_CODES if isinstance(err, cls)), None)
    return code, re.split(r"\. (?:Detail: |gRPC client debug context)", text, maxsplit=1)[0]
