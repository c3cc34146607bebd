"""`spanlake query "SQL"`: runs one statement on a running Flight SQL server and prints the result.

It speaks the same wire dialect as the micromegas client (DoGet with the SQL in the ticket, the
query range and API key as headers), with pyarrow.flight directly. `--format csv|json` streams rows
as they arrive; `table` waits for the whole result to size its columns.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.flight as flight

from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.server.flightsql import protocol

DEFAULT_URI = "grpc://127.0.0.1:50051"
_NULL = "NULL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    """Prints the result on stdout; on failure prints `error: …` on stderr and returns 1."""
    try:
        headers = _headers(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ticket = flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=args.sql.encode())))
    try:
        with flight.connect(flight_uri(args.uri)) as client:
            reader = client.do_get(ticket, flight.FlightCallOptions(headers=headers))
            _print(reader, args.format, sys.stdout)
    except (flight.FlightError, pa.ArrowException, OSError) as err:
        print(f"error: {server_message(err)}", file=sys.stderr)
        return 1
    return 0


def flight_uri(uri: str) -> str:
    """Accepts http(s):// as the micromegas client does: Flight speaks gRPC (grpc://, grpc+tls://)."""
    if uri.startswith("https://"):
        return "grpc+tls://" + uri[len("https://") :]
    if uri.startswith("http://"):
        return "grpc://" + uri[len("http://") :]
    return uri


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


_CLIENT_PREFIX = re.compile(r"^Flight returned [a-z ]+ error, with message: ")
_CLIENT_SUFFIX = re.compile(r"\. (?:Detail: |gRPC client debug context: ).*$", re.DOTALL)


def server_message(err: BaseException) -> str:
    """The server's message without pyarrow's decorations (status prefix, detail, debug context)."""
    return _CLIENT_SUFFIX.sub("", _CLIENT_PREFIX.sub("", str(err))) or type(err).__name__


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


def printable(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """The batch with its time columns as text, ready for `to_pylist()` without pandas."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    columns = [
        pa.chunked_array([_texts_for_times(chunk) for chunk in column.chunks], _texts_type(column.type))
        if _holds_times(column.type)
        else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.schema.names)


def _texts_type(kind: pa.DataType) -> pa.DataType:
    """The type `_texts_for_times` gives an array of `kind` (for columns without chunks)."""
    return _texts_for_times(pa.array([], kind)).type


def _print(reader: flight.FlightStreamReader, output_format: str, out: TextIO) -> None:
    if output_format == "csv":
        _print_csv(reader, out)
    elif output_format == "json":
        for batch in _batches(reader):
            for row in printable(batch).to_pylist():
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
    columns = [
        pa.array(
            [None if v is None else json.dumps(v, default=_json_value) for v in _texts_for_times(col).to_pylist()],
            pa.string(),
        )
        if pa.types.is_nested(col.type)
        else col
        for col in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


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
