"""The ticket of a SQL statement, Flight SQL's `TicketStatementQuery` in a `google.protobuf.Any`, encoded
by hand: it is all the clients (`spanlake query`, `spanlake perfetto`) send, and building protobuf's
descriptors (`protocol`) would cost them a tenth of their start-up."""

from __future__ import annotations

from spanlake.lakehouse.protobuf_wire import length_delimited

_TYPE_URL = b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field; none when empty (proto3 leaves default values out)."""
    if not payload:
        return b""
    return length_delimited(number, payload)


def statement_ticket(sql: str) -> bytes:
    """The bytes `protocol.pack(TicketStatementQuery(statement_handle=sql))` gives: Any {type_url 1,
    value 2 = TicketStatementQuery {statement_handle 1}}."""
    return _field(1, _TYPE_URL) + _field(2, _field(1, sql.encode()))
