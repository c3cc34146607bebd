"""`spanlake perfetto`: writes a process's Perfetto trace (`--process-id`), or one trace across its
processes (`--trace`), from a running server to a file.

It runs `perfetto_trace_chunks(...)` (or `perfetto_trace_of(...)`) over Flight SQL (the micromegas
dialect: DoGet with the SQL in the ticket), writes the chunks as they arrive, checks that their ids
have no gap, and shows progress.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from spanlake.lakehouse.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from spanlake.server.client_flags import flight_uri, server_message
from spanlake.server.flightsql.statement_ticket import statement_ticket

UI_URL = "https://ui.perfetto.dev"


def _range(args: argparse.Namespace) -> tuple[int, int]:
    end = parse_rfc3339_ns(args.end) if args.end else dt.datetime.now(dt.UTC).timestamp() * 1e9
    begin = parse_rfc3339_ns(args.begin) if args.begin else end - 3600e9
    if begin >= end:
        raise ValueError("--begin must be before --end")
    return int(begin), int(end)


def run(args: argparse.Namespace) -> int:
    """Writes the trace the arguments ask for; the exit status (1 on a bad argument or a failed query)."""
    try:
        begin, end = (format_rfc3339_ns(t) for t in _range(args))
        name, sql = _trace_query(args, begin, end)
        output = _output(args.output, name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    headers = [
        (b"x-client-type", b"spanlake-cli"),
        (b"x-client-entrypoint", b"cli-perfetto"),
        (b"query_range_begin", begin.encode()),
        (b"query_range_end", end.encode()),
    ]
    if args.api_key:
        headers.append((b"authorization", f"Bearer {args.api_key}".encode()))
    ticket = flight.Ticket(statement_ticket(sql))
    partial = output.with_name(output.name + ".partial")
    try:
        with flight.connect(flight_uri(args.uri)) as client, partial.open("wb") as out:
            chunks = _write_chunks(client.do_get(ticket, flight.FlightCallOptions(headers=headers)), out)
    except (flight.FlightError, pa.ArrowException, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        print(f"error: {server_message(err)}", file=sys.stderr)
        return 1
    partial.replace(output)
    print(f"wrote {output} ({output.stat().st_size:,} bytes, {chunks} chunks)")
    print(f"open it at {UI_URL}: 'Open trace file' and choose {output.resolve()}")
    return 0


def _trace_query(args: argparse.Namespace, begin: str, end: str) -> tuple[str, str]:
    """The name of what is traced (the process or trace id) and the SQL writing its chunks; ValueError
    for a process id that is not a UUID. A trace id is checked by the server (its answer names it)."""
    if args.trace is not None:
        trace_id = args.trace.strip().lower().replace("'", "''")
        return trace_id, f"SELECT chunk_id, chunk_data FROM perfetto_trace_of('{trace_id}') ORDER BY chunk_id"
    process_id = str(uuid.UUID(args.process_id))
    sql = (
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{process_id}', '{args.spans}',"
        f" TIMESTAMP '{begin}', TIMESTAMP '{end}')"
    )
    return process_id, sql


def _output(given: Path | None, name: str) -> Path:
    """The file to write: `-o` as given (the user named it), else one named after the process or
    trace that must not exist yet, so two traces never silently replace each other."""
    if given is not None:
        return given
    default = Path(f"{name}.pftrace")
    if default.exists():
        raise ValueError(f"{default} already exists: remove it, or name the file with -o")
    return default


class _NoProgressBar:
    """Stands for the progress bar where nobody watches it."""

    def __enter__(self) -> _NoProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def update(self, done: int) -> None:
        """Nothing to show."""


def _progress_bar() -> Any:
    """tqdm's bar on a terminal; elsewhere none, nor tqdm's imports (a tenth of a second)."""
    if not sys.stderr.isatty():
        return _NoProgressBar()
    from tqdm import tqdm

    return tqdm(unit="B", unit_scale=True, desc="trace", file=sys.stderr)


# Chunks are read from the batches' buffers as they come: `to_numpy` imports pandas, and a `cast`
# pyarrow.compute (a tenth of the command's start).
def _values(ids: pa.Array) -> np.ndarray:
    """The values of a signed integer array without nulls, read from its buffer."""
    return np.frombuffer(ids.buffers()[1], f"<i{ids.type.bit_width // 8}")[ids.offset : ids.offset + len(ids)]


def _offsets(data: pa.Array) -> np.ndarray:
    """The value offsets of a binary array (32-bit, or 64-bit for large binary), from its buffer."""
    is_large = pa.types.is_large_binary(data.type) or pa.types.is_large_string(data.type)
    offsets = np.frombuffer(data.buffers()[1], np.int64 if is_large else np.int32)
    return offsets[data.offset : data.offset + len(data) + 1]


def _write_chunks(reader: flight.FlightStreamReader, out: object) -> int:
    """Writes each batch's chunks at once, after checking that their ids continue the sequence."""
    expected = 0
    with _progress_bar() as bar:
        for chunk in reader:
            batch = chunk.data
            ids = _values(batch.column("chunk_id"))
            wrong = np.flatnonzero(ids != np.arange(expected, expected + len(ids)))
            if len(wrong):
                raise ValueError(f"chunk {ids[wrong[0]]} received, expected {expected + wrong[0]}")
            data = batch.column("chunk_data")
            offsets, payload = _offsets(data), data.buffers()[2]
            if payload is not None:
                out.write(payload[offsets[0] : offsets[-1]])
            bar.update(int(offsets[-1] - offsets[0]))
            expected += len(ids)
    return expected
