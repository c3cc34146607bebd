"""Streaming a DataFusion result to a Flight client, batch by batch, with its audit record.

Nothing is collected: each batch DataFusion produces is conformed to the announced schema
(dictionaries hydrated unless the client asked to keep them), split if it would make an oversized
gRPC message, and handed to pyarrow.flight. The generator's `finally` tells the audit how the stream
ended; a client that disconnects closes the generator, which drops DataFusion's stream and with it the
running query (one blocked in DataFusion meanwhile is stopped by its QueryThread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from spanlake import tracing
from spanlake.server.flightsql.audit import QueryAudit
from spanlake.server.flightsql.errors import Failure, classify, log_failure

# Many gRPC clients refuse messages above 4 MiB by default (grpc-go, hence ADBC's Go driver, unless
# configured); larger batches are cut into ~2 MiB slices, as arrow-flight's encoder does.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SLICE_TARGET_BYTES = 2 * 1024 * 1024


def hydrated_type(data_type: pa.DataType) -> pa.DataType:
    """The type with every dictionary (also inside lists, structs and maps) replaced by its values."""
    if pa.types.is_dictionary(data_type):
        return hydrated_type(data_type.value_type)
    if pa.types.is_list(data_type):
        return pa.list_(_hydrated_field(data_type.value_field))
    if pa.types.is_large_list(data_type):
        return pa.large_list(_hydrated_field(data_type.value_field))
    if pa.types.is_fixed_size_list(data_type):
        return pa.list_(_hydrated_field(data_type.value_field), data_type.list_size)
    if pa.types.is_map(data_type):
        return pa.map_(
            _hydrated_field(data_type.key_field),
            _hydrated_field(data_type.item_field),
            keys_sorted=data_type.keys_sorted,
        )
    if pa.types.is_struct(data_type):
        return pa.struct([_hydrated_field(data_type.field(i)) for i in range(data_type.num_fields)])
    return data_type


def _hydrated_field(field: pa.Field) -> pa.Field:
    return field.with_type(hydrated_type(field.type))


def output_schema(schema: pa.Schema, preserve_dictionary: bool) -> pa.Schema:
    """The schema announced to the client (FlightInfo, prepared statement, stream)."""
    if preserve_dictionary:
        return schema
    return pa.schema([_hydrated_field(field) for field in schema], metadata=schema.metadata)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly the announced schema: pyarrow.flight refuses any other."""
    if batch.schema == schema:
        return batch
    columns = [_conformed(column, field.type) for column, field in zip(batch.columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _conformed(column: pa.Array, data_type: pa.DataType) -> pa.Array:
    if column.type == data_type:
        return column
    if pa.types.is_dictionary(column.type) and column.type.value_type == data_type:
        return column.dictionary.take(column.indices)  # cast cannot decode dictionaries of lists
    return column.cast(data_type)


def split(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    """The batch, or zero-copy slices of it when it is larger than one gRPC message should be."""
    size = batch.nbytes
    if size <= MAX_MESSAGE_BYTES or batch.num_rows <= 1:
        yield batch
        return
    rows_per_slice = max(1, math.ceil(batch.num_rows * SLICE_TARGET_BYTES / size))
    for offset in range(0, batch.num_rows, rows_per_slice):
        yield batch.slice(offset, rows_per_slice)


def has_dictionary(schema: pa.Schema) -> bool:
    return any(hydrated_type(field.type) != field.type for field in schema)


class DataFusionBatches:
    """Pyarrow batches pulled from a DataFusion stream. `close` drops the stream, and with it
    DataFusion's tasks for the query, even while a stopped step or an exception's traceback still
    holds this object."""

    def __init__(self, stream: Any, execution: tracing.SpanContext) -> None:
        self._stream = stream
        self._execution = execution

    def next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None at the end (or once closed)."""
        if self._stream is None:
            return None
        # DataFusion's work for the batch runs as a child of the execution span. No local variable
        # holds the stream: a traceback through this frame would keep it (and its tasks) alive.
        with tracing.attach(self._execution):
            batch = next(self._stream, None)
        return None if batch is None else batch.to_pyarrow()

    def close(self) -> None:
        self._stream = None


def result_batches(
    fetch: Callable[[], pa.RecordBatch | None],
    schema: pa.Schema,
    audit: QueryAudit,
    spans: tuple[tracing.OpenAsyncSpan, ...],
    on_end: Callable[[], None],
) -> Iterator[pa.RecordBatch | pa.Table]:
    """The batches `fetch` gives (None at the end) → items for `flight.GeneratorStream`, counting
    rows and bytes; audits ok/error/incomplete, ends `spans` (innermost first) and calls `on_end`
    when the stream ends. A `Failure` from `fetch` (the query stopped) is sent as it is.

    A GeneratorStream sends a yielded RecordBatch without its dictionaries, so when dictionaries are
    kept each batch goes out as a one-batch Table, which pyarrow sends with its dictionaries (the
    client takes them as replacements).
    """
    as_table = has_dictionary(schema)
    started = time.perf_counter()

    def record_duration() -> None:
        audit.execution_ms = (time.perf_counter() - started) * 1000.0

    finished = False
    try:
        while (datafusion_batch := fetch()) is not None:
            batch = conform(datafusion_batch, schema)
            for part in split(batch):
                audit.rows += part.num_rows
                audit.bytes += part.nbytes
                yield pa.Table.from_batches([part]) if as_table else part
        finished = True
    except Exception as exc:
        record_duration()
        failure = exc if isinstance(exc, Failure) else classify("error building data stream", exc, audit.query_id)
        raise log_failure(audit.fail(failure)).to_flight_error() from None
    finally:
        record_duration()
        on_end()
        for span in spans:
            span.end()
        if finished:
            audit.ok()
        else:
            audit.incomplete()  # no-op when the failure was already recorded
