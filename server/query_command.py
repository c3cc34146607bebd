"""`spanlake query "SQL"`: runs one statement on a running Flight SQL server and prints the result.

It speaks the same wire dialect as the micromegas client (DoGet with the SQL in the ticket, the
query range and API key as headers), with pyarrow.flight directly. `--format csv|json` streams rows
as they arrive; `table` waits for the whole result to size its columns.

Every format prints what people read: JSONB and properties columns as JSON (objects in `json`), other
binary values as hex (trace and span ids), durations as `1.5ms`, timestamps in RFC 3339. It imports
no datafusion: the JSONB decoding is `views/jsonb.py`'s.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.flight as flight

from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.server.client_flags import flight_uri, server_message
from spanlake.server.flightsql.statement_ticket import statement_ticket
from spanlake.views import jsonb

_NULL = "NULL"
# Field metadata marking a column whose text is JSON: `--format json` writes its values as JSON.
_JSON_TEXT = {b"spanlake.text": b"json"}
# micromegas's views keep span durations as int64 nanoseconds in a column of this name.
_NANOSECOND_DURATION_COLUMN = "duration"
_DURATION_UNITS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "µs"))


def run(args: argparse.Namespace) -> int:
    """Prints the result on stdout; on failure prints `error: …` on stderr and returns 1."""
    try:
        headers = _headers(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ticket = flight.Ticket(statement_ticket(args.sql))
    try:
        with flight.connect(flight_uri(args.uri)) as client:
            reader = client.do_get(ticket, flight.FlightCallOptions(headers=headers))
            _print(reader, args.format, sys.stdout)
    except (flight.FlightError, pa.ArrowException, OSError) as err:
        print(f"error: {server_message(err)}", file=sys.stderr)
        return 1
    return 0


def _headers(args: argparse.Namespace) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-client-type", b"spanlake-cli"), (b"x-client-entrypoint", b"cli-query")]
    if (args.begin is None) != (args.end is None):
        raise ValueError("--begin and --end go together")
    for name, value in (("query_range_begin", args.begin), ("query_range_end", args.end)):
        if value is not None:
            parse_rfc3339_ns(value)  # fail here, with the flag's value, rather than on the server
            headers.append((name.encode(), value.encode()))
    if args.api_key:
        headers.append((b"authorization", f"Bearer {args.api_key}".encode()))
    return headers


def _batches(reader: flight.FlightStreamReader) -> Iterator[pa.RecordBatch]:
    for chunk in reader:
        yield chunk.data


def _texts_for_times(array: pa.Array) -> pa.Array:
    """Timestamps, times and durations (also inside lists and structs) as text: Python's datetime has
    no nanoseconds, and pyarrow converts nanosecond values to Python only through pandas, which the
    plain install does not have. Timestamps become RFC 3339 (`2026-01-02T03:04:05.123456789Z`)."""
    kind = array.type
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:  # shown in UTC, with the `Z` suffix
            array = array.cast(pa.timestamp(kind.unit, "UTC"))
        return pc.replace_substring(array.cast(pa.string()), " ", "T", max_replacements=1)
    if pa.types.is_time(kind):
        return array.cast(pa.string())
    if pa.types.is_duration(kind):
        return pc.binary_join_element_wise(array.cast(pa.int64()).cast(pa.string()), pa.scalar(kind.unit), "")
    if not _holds_times(kind):
        return array
    if pa.types.is_struct(kind):
        children = [_texts_for_times(child) for child in array.flatten()]
        return pa.StructArray.from_arrays(children, names=[f.name for f in kind], mask=array.is_null())
    if pa.types.is_large_list(kind):
        return pa.LargeListArray.from_arrays(array.offsets, _texts_for_times(array.values), mask=array.is_null())
    return pa.ListArray.from_arrays(array.offsets, _texts_for_times(array.values), mask=array.is_null())


def _holds_times(kind: pa.DataType) -> bool:
    """A timestamp, time or duration type, or a list or struct of them (maps are left to pyarrow)."""
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind) or pa.types.is_duration(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_holds_times(field.type) for field in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _holds_times(kind.value_type)
    return False


def readable(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """The batch with its JSONB, properties, binary and duration columns as text people read."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        # One array per column: a column is JSON or hex as a whole, whatever its batches hold.
        text = _readable_text(column.combine_chunks(), field.name)
        if text is None:
            fields.append(field)
            columns.append(column)
        else:
            fields.append(pa.field(field.name, pa.string(), metadata=_JSON_TEXT if text[1] else None))
            columns.append(pa.chunked_array([text[0]], pa.string()))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _readable_text(array: pa.Array, name: str) -> tuple[pa.Array, bool] | None:
    """(text, whether it is JSON) of an array people cannot read as it is; None for the others."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        values = _readable_text(array.dictionary, name)
        return None if values is None else (values[0].take(array.indices), values[1])
    if pa.types.is_fixed_size_binary(kind):  # trace and span ids
        return pa.array([None if v is None else v.hex() for v in array.to_pylist()], pa.string()), False
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return _binary_text(array.to_pylist())
    if _is_properties(kind):
        objects = [None if v is None else {p["key"]: p["value"] for p in v} for v in array.to_pylist()]
        return pa.array([None if v is None else jsonb.compact_json(v) for v in objects], pa.string()), True
    if pa.types.is_duration(kind):
        return _duration_text(array.cast(pa.duration("ns")).cast(pa.int64())), False
    if name == _NANOSECOND_DURATION_COLUMN and pa.types.is_integer(kind):
        return _duration_text(array.cast(pa.int64())), False
    return None


def _binary_text(values: list[bytes | None]) -> tuple[pa.Array, bool]:
    """JSON when every value is JSONB (properties, parse_block values, jsonb_* results), else hex."""
    try:
        texts = [None if v is None else jsonb.compact_json(jsonb.decode(v)) for v in values]
    except jsonb.JsonbError:
        return pa.array([None if v is None else v.hex() for v in values], pa.string()), False
    return pa.array(texts, pa.string()), True


def _is_properties(kind: pa.DataType) -> bool:
    """micromegas's properties: a list of {key, value} string structs."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    return sorted(field.name for field in kind.value_type) == ["key", "value"]


def _duration_text(nanoseconds: pa.Array) -> pa.Array:
    return pa.array([None if ns is None else duration_text(ns) for ns in nanoseconds.to_pylist()], pa.string())


def duration_text(nanoseconds: int) -> str:
    """A duration in its largest whole unit, exact: 1500000 → `1.5ms`, 42 → `42ns`."""
    for scale, unit in _DURATION_UNITS:
        if abs(nanoseconds) >= scale:
            whole, rest = divmod(abs(nanoseconds), scale)
            fraction = f"{rest:0{len(str(scale)) - 1}d}".rstrip("0")
            sign = "-" if nanoseconds < 0 else ""
            return f"{sign}{whole}{'.' + fraction if fraction else ''}{unit}"
    return f"{nanoseconds}ns"


def printable(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """The batch readable (see `readable`), its time columns as text: `to_pylist()` needs no pandas."""
    table = readable(batch)
    columns = [
        pa.chunked_array([_texts_for_times(chunk) for chunk in column.chunks], _texts_type(column.type))
        if _holds_times(column.type)
        else column
        for column in table.columns
    ]
    fields = [field.with_type(column.type) for field, column in zip(table.schema, columns, strict=True)]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _texts_type(kind: pa.DataType) -> pa.DataType:
    """The type `_texts_for_times` gives an array of `kind` (for columns without chunks)."""
    return _texts_for_times(pa.array([], kind)).type


def _print(reader: flight.FlightStreamReader, output_format: str, out: TextIO) -> None:
    if output_format == "csv":
        _print_csv(reader, out)
    elif output_format == "json":
        for batch in _batches(reader):
            table = printable(batch)
            json_columns = [field.name for field in table.schema if field.metadata == _JSON_TEXT]
            for row in table.to_pylist():
                row.update((name, None if row[name] is None else json.loads(row[name])) for name in json_columns)
                out.write(json.dumps(row, default=_json_value, ensure_ascii=False) + "\n")
    else:
        _print_table(printable(reader.read_all()), out)
    out.flush()


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal | dt.timedelta):
        return str(value)
    return repr(value)


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV has no nested values: lists, structs and maps are written as JSON text."""
    table = readable(batch)
    columns = [
        pa.array(
            [None if v is None else json.dumps(v, default=_json_value) for v in _texts_for_times(col).to_pylist()],
            pa.string(),
        )
        if pa.types.is_nested(col.type)
        else col
        for col in (column.combine_chunks() for column in table.columns)
    ]
    return pa.RecordBatch.from_arrays(columns, names=table.schema.names)


def _csv_text(batch: pa.RecordBatch, header: bool) -> str:
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(_csv_ready(batch), buffer, pa_csv.WriteOptions(include_header=header))
    return buffer.getvalue().to_pybytes().decode()


def _print_csv(reader: flight.FlightStreamReader, out: TextIO) -> None:
    header = True
    for batch in _batches(reader):
        out.write(_csv_text(batch, header))
        header = False
    if header:  # no batch at all: still print the column names
        out.write(_csv_text(pa.RecordBatch.from_pylist([], schema=reader.schema), True))


def _cell(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _print_table(table: pa.Table, out: TextIO) -> None:
    names = table.schema.names
    columns = [[_cell(v) for v in table.column(i).to_pylist()] for i in range(table.num_columns)]
    widths = [max([len(name), *(len(c) for c in column)]) for name, column in zip(names, columns, strict=True)]
    out.write(" | ".join(name.ljust(w) for name, w in zip(names, widths, strict=True)).rstrip() + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in zip(*columns, strict=True):
        out.write(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    out.write(f"({table.num_rows} row{'' if table.num_rows == 1 else 's'})\n")
