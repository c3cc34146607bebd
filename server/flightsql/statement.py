"""A statement and the parameter values bound to it, carried in stateless handles.

A prepared statement's handle is its SQL (micromegas's: UTF-8 text, the same bytes as a ticket).
Binding parameters (DoPut of CommandPreparedStatementQuery with one row of values) answers a new
handle holding both: a NUL byte (never the start of SQL text), the SQL's length (u32 LE), the SQL,
then the values as an Arrow IPC stream. Any server process can execute it; `$1`, `$2`, … take the
values of the first, second, … parameter column (named columns also bind `$name`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

_BOUND = b"\x00"
_LENGTH = struct.Struct("<I")


class StatementError(ValueError):
    """A handle or a parameter batch that cannot be read."""


@dataclass(frozen=True)
class Statement:
    """A statement and its bound parameter values, carried in a stateless handle."""

    sql: str
    parameters: pa.RecordBatch | None = field(default=None, compare=False)
    handle: bytes = b""

    @classmethod
    def from_sql(cls, sql: str) -> Statement:
        """A statement without parameters; its handle is the SQL."""
        return cls(sql, None, sql.encode())

    @classmethod
    def from_handle(cls, handle: bytes) -> Statement:
        """The statement a handle carries: the SQL as is, or the SQL with bound parameter values."""
        if not handle.startswith(_BOUND):
            try:
                return cls(handle.decode("utf-8"), None, handle)
            except UnicodeDecodeError:
                raise StatementError("statement handle is not UTF-8 SQL text") from None
        try:
            (length,) = _LENGTH.unpack_from(handle, 1)
            start = 1 + _LENGTH.size
            sql = handle[start : start + length].decode("utf-8")
            with pa.ipc.open_stream(handle[start + length :]) as reader:
                parameters = reader.read_next_batch()
        except (struct.error, UnicodeDecodeError, pa.ArrowInvalid, StopIteration):
            raise StatementError("malformed bound statement handle") from None
        return cls(sql, parameters, handle)

    def bind(self, parameters: pa.RecordBatch) -> Statement:
        """The statement with one row of parameter values; StatementError unless exactly one row."""
        if parameters.num_rows != 1:
            raise StatementError(
                f"parameter binding takes exactly one row of values per execution, got {parameters.num_rows}"
            )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, parameters.schema) as writer:
            writer.write_batch(parameters)
        sql = self.sql.encode()
        handle = _BOUND + _LENGTH.pack(len(sql)) + sql + sink.getvalue().to_pybytes()
        return Statement(self.sql, parameters, handle)

    def param_values(self) -> dict[str, Any] | None:
        """DataFusion's `param_values`: `$1`… by position, and `$name` by column name."""
        if self.parameters is None:
            return None
        values: dict[str, Any] = {}
        for index, (name, column) in enumerate(zip(self.parameters.schema.names, self.parameters.columns, strict=True)):
            scalar = column[0]
            values[str(index + 1)] = scalar
            if name and not name.isdigit():
                values.setdefault(name, scalar)
        return values


def read_parameters(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """The parameter row(s) a client sent in a DoPut, as one batch."""
    rows = [b for b in batches if b.num_rows]
    if not rows:
        raise StatementError("parameter binding received no values")
    if len(rows) == 1:
        return rows[0]
    return pa.Table.from_batches(rows).combine_chunks().to_batches()[0]
