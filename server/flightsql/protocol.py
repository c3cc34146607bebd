"""The Flight SQL protobuf messages spanlake reads and writes, built at import time in a private pool.

pyarrow ships no Flight SQL messages, and generated modules (micromegas's `FlightSql_pb2`, for one)
register `arrow.flight.protocol.sql.*` in protobuf's default pool, where a second copy would clash.
A private `DescriptorPool` cannot clash and needs no protoc. Field numbers and types follow
apache/arrow `format/FlightSql.proto` and `format/Flight.proto`; the bytes on the wire are identical.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message, message_factory

SQL_PACKAGE = "arrow.flight.protocol.sql"
FLIGHT_PACKAGE = "arrow.flight.protocol"
_TYPE_URL_PREFIX = "type.googleapis.com/"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL, _UINT32, _ENUM = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL, _F.TYPE_UINT32, _F.TYPE_ENUM
_INT64 = _F.TYPE_INT64

# (field name, number, type, kind) with kind "plain", "optional" (proto3 optional: presence is
# tracked, which the metadata commands need to tell "omitted" from "empty"), or "repeated".
_SQL_MESSAGES: dict[str, list[tuple[str, int, int, str]]] = {
    "CommandGetSqlInfo": [("info", 1, _UINT32, "repeated")],
    "CommandGetCatalogs": [],
    "CommandGetDbSchemas": [("catalog", 1, _STRING, "optional"), ("db_schema_filter_pattern", 2, _STRING, "optional")],
    "CommandGetTables": [
        ("catalog", 1, _STRING, "optional"),
        ("db_schema_filter_pattern", 2, _STRING, "optional"),
        ("table_name_filter_pattern", 3, _STRING, "optional"),
        ("table_types", 4, _STRING, "repeated"),
        ("include_schema", 5, _BOOL, "plain"),
    ],
    "CommandGetTableTypes": [],
    "CommandStatementQuery": [("query", 1, _STRING, "plain"), ("transaction_id", 2, _BYTES, "optional")],
    "TicketStatementQuery": [("statement_handle", 1, _BYTES, "plain")],
    "CommandPreparedStatementQuery": [("prepared_statement_handle", 1, _BYTES, "plain")],
    "ActionCreatePreparedStatementRequest": [("query", 1, _STRING, "plain"), ("transaction_id", 2, _BYTES, "optional")],
    "ActionCreatePreparedStatementResult": [
        ("prepared_statement_handle", 1, _BYTES, "plain"),
        ("dataset_schema", 2, _BYTES, "plain"),
        ("parameter_schema", 3, _BYTES, "plain"),
    ],
    "ActionClosePreparedStatementRequest": [("prepared_statement_handle", 1, _BYTES, "plain")],
    "DoPutPreparedStatementResult": [("prepared_statement_handle", 1, _BYTES, "optional")],
    # table_definition_options (1) and options (1000) are not read: spanlake appends to existing tables.
    "CommandStatementIngest": [
        ("table", 2, _STRING, "plain"),
        ("schema", 3, _STRING, "optional"),
        ("catalog", 4, _STRING, "optional"),
        ("temporary", 5, _BOOL, "plain"),
        ("transaction_id", 6, _BYTES, "optional"),
    ],
    "DoPutUpdateResult": [("record_count", 1, _INT64, "plain")],
}

# CloseSessionResult.Status from Flight.proto.
CLOSE_SESSION_CLOSED = 1


def _add_message(
    fdp: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple[str, int, int, str]]
) -> descriptor_pb2.DescriptorProto:
    msg = fdp.message_type.add(name=name)
    for field_name, number, field_type, kind in fields:
        field = msg.field.add(
            name=field_name,
            number=number,
            type=field_type,
            label=_F.LABEL_REPEATED if kind == "repeated" else _F.LABEL_OPTIONAL,
        )
        if kind == "optional":
            field.proto3_optional = True
            field.oneof_index = len(msg.oneof_decl)
            msg.oneof_decl.add(name=f"_{field_name}")
    return msg


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    sql = descriptor_pb2.FileDescriptorProto(name="spanlake_flightsql.proto", package=SQL_PACKAGE, syntax="proto3")
    for name, fields in _SQL_MESSAGES.items():
        _add_message(sql, name, fields)
    pool.Add(sql)

    flight = descriptor_pb2.FileDescriptorProto(name="spanlake_flight.proto", package=FLIGHT_PACKAGE, syntax="proto3")
    _add_message(flight, "CloseSessionRequest", [])
    result = _add_message(flight, "CloseSessionResult", [])
    status = result.enum_type.add(name="Status")
    for value_name, number in (("UNSPECIFIED", 0), ("CLOSED", 1), ("CLOSING", 2), ("NOT_CLOSEABLE", 3)):
        status.value.add(name=value_name, number=number)
    result.field.add(
        name="status",
        number=1,
        type=_ENUM,
        label=_F.LABEL_OPTIONAL,
        type_name=f".{FLIGHT_PACKAGE}.CloseSessionResult.Status",
    )
    pool.Add(flight)
    return pool


_POOL = _build_pool()


def _message_class(full_name: str) -> type[message.Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


CommandGetSqlInfo = _message_class(f"{SQL_PACKAGE}.CommandGetSqlInfo")
CommandGetCatalogs = _message_class(f"{SQL_PACKAGE}.CommandGetCatalogs")
CommandGetDbSchemas = _message_class(f"{SQL_PACKAGE}.CommandGetDbSchemas")
CommandGetTables = _message_class(f"{SQL_PACKAGE}.CommandGetTables")
CommandGetTableTypes = _message_class(f"{SQL_PACKAGE}.CommandGetTableTypes")
CommandStatementQuery = _message_class(f"{SQL_PACKAGE}.CommandStatementQuery")
TicketStatementQuery = _message_class(f"{SQL_PACKAGE}.TicketStatementQuery")
CommandPreparedStatementQuery = _message_class(f"{SQL_PACKAGE}.CommandPreparedStatementQuery")
ActionCreatePreparedStatementRequest = _message_class(f"{SQL_PACKAGE}.ActionCreatePreparedStatementRequest")
ActionCreatePreparedStatementResult = _message_class(f"{SQL_PACKAGE}.ActionCreatePreparedStatementResult")
ActionClosePreparedStatementRequest = _message_class(f"{SQL_PACKAGE}.ActionClosePreparedStatementRequest")
DoPutPreparedStatementResult = _message_class(f"{SQL_PACKAGE}.DoPutPreparedStatementResult")
CommandStatementIngest = _message_class(f"{SQL_PACKAGE}.CommandStatementIngest")
DoPutUpdateResult = _message_class(f"{SQL_PACKAGE}.DoPutUpdateResult")
CloseSessionResult = _message_class(f"{FLIGHT_PACKAGE}.CloseSessionResult")

_SQL_CLASSES = {name: _message_class(f"{SQL_PACKAGE}.{name}") for name in _SQL_MESSAGES}


class ProtocolError(ValueError):
    """A command, ticket or action body that is not a well-formed Flight SQL message."""


def pack(msg: message.Message) -> bytes:
    """A message wrapped in `google.protobuf.Any`, as Flight SQL puts commands and tickets on the wire."""
    wrapper = any_pb2.Any()
    wrapper.Pack(msg)
    return wrapper.SerializeToString()


def unpack(data: bytes) -> tuple[str, Any]:
    """`Any`-wrapped bytes → (short type name, message), the message being None for types spanlake
    does not parse (the name still tells which command was refused). ProtocolError if not an Any."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(data)
    except message.DecodeError:
        raise ProtocolError("not a protobuf Any message") from None
    if not wrapper.type_url.startswith(_TYPE_URL_PREFIX):
        raise ProtocolError("not a protobuf Any message")
    full_name = wrapper.type_url[len(_TYPE_URL_PREFIX) :]
    package, _, short = full_name.rpartition(".")
    cls = _SQL_CLASSES.get(short) if package == SQL_PACKAGE else None
    if cls is None:
        return short or full_name, None
    msg = cls()
    try:
        msg.ParseFromString(wrapper.value)
    except message.DecodeError:
        raise ProtocolError(f"malformed {short} message") from None
    return short, msg


def parse_raw_ticket(data: bytes) -> Any:
    """A `TicketStatementQuery` sent without the Any wrapper (micromegas's own server hands these out)."""
    msg = TicketStatementQuery()
    try:
        msg.ParseFromString(data)
    except message.DecodeError:
        raise ProtocolError("ticket is neither a Flight SQL command nor a TicketStatementQuery") from None
    return msg


def close_session_result() -> bytes:
    """The body of a successful CloseSession action (plain message, Flight session actions use no Any)."""
    return CloseSessionResult(status=CLOSE_SESSION_CLOSED).SerializeToString()


def do_put_prepared_statement_result(handle: bytes) -> bytes:
    """The PutResult metadata answering a parameter binding: the handle to execute (a plain message)."""
    return DoPutPreparedStatementResult(prepared_statement_handle=handle).SerializeToString()


def do_put_update_result(record_count: int) -> bytes:
    """The PutResult metadata answering an ingestion: how many rows were taken (a plain message)."""
    return DoPutUpdateResult(record_count=record_count).SerializeToString()
