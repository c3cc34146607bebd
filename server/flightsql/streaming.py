"""Streaming a query's result to a Flight client, batch by batch, with its audit record.

Nothing is collected: each batch DataFusion produces is conformed to the announced schema
(dictionaries hydrated unless the client asked to keep them), split if it would make an oversized
gRPC message, and handed to pyarrow.flight. The generator's `finally` tells the audit how the stream
ended; a client that disconnects closes the generator, which drops DataFusion's stream and with it the
running query (one blocked in DataFusion meanwhile is stopped by its query's thread).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import pyarrow as pa

from spanlake.lakehouse.query.audit import QueryAudit
from spanlake.lakehouse.query.failures import Failure, classify, log_failure
from spanlake.lakehouse.query.runner import arrow_bytes
from spanlake.server.flightsql.errors import to_flight_error

# Many gRPC clients refuse messages above 4 MiB by default (grpc-go, hence ADBC's Go driver, unless
# configured); larger batches are cut into ~2 MiB slices, as arrow-flight's encoder does.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SLICE_TARGET_BYTES = 2 * 1024 * 1024


@functools.lru_cache(maxsize=1024)
def hydrated_type(data_type: pa.DataType) -> pa.DataType:
    """The type with every dictionary (also inside lists, structs and maps) replaced by its values
    (kept per type: every stream asks for each of its columns)."""
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
    if preserve_dictionary or not has_dictionary(schema):
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
    size = arrow_bytes(batch)
    if size <= MAX_MESSAGE_BYTES or batch.num_rows <= 1:
        yield batch
        return
    rows_per_slice = max(1, math.ceil(batch.num_rows * SLICE_TARGET_BYTES / size))
    for offset in range(0, batch.num_rows, rows_per_slice):
        yield batch.slice(offset, rows_per_slice)


def wire_batches(batch: pa.RecordBatch, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A DataFusion batch as sent: conformed to the announced schema, in slices gRPC takes."""
    return split(conform(batch, schema))


def has_dictionary(schema: pa.Schema) -> bool:
    """Whether any field of the schema holds a dictionary (also nested)."""
    return any(hydrated_type(field.type) != field.type for field in schema)


def result_batches(
    fetch: Callable[[], pa.RecordBatch | None],
    schema: pa.Schema,
    audit: QueryAudit,
    on_end: Callable[[], None],
) -> Iterator[pa.RecordBatch | pa.Table]:
    """The batches `fetch` gives (None at the end) → items for `flight.GeneratorStream`; calls
    `on_end` (which closes the query) then audits ok/error/incomplete when the stream ends. A
    `Failure` from `fetch` (the query stopped) is sent as it is.

    A GeneratorStream sends a yielded RecordBatch without its dictionaries, so when dictionaries are
    kept each batch goes out as a one-batch Table, which pyarrow sends with its dictionaries (the
    client takes them as replacements).
    """
    as_table = has_dictionary(schema)
    finished = False
    try:
        while (datafusion_batch := fetch()) is not None:
            for part in wire_batches(datafusion_batch, schema):
                yield pa.Table.from_batches([part]) if as_table else part
            # Sent: dropped before `fetch` waits for room for the next batch, as the result buffer
            # counts it no longer (kept, 50 unread streams held a batch each beyond the bound).
            datafusion_batch = part = None
        finished = True
    except Exception as exc:
        failure = exc if isinstance(exc, Failure) else classify("error building data stream", exc, audit.query_id)
        raise to_flight_error(log_failure(audit.fail(failure))) from None
    finally:
        # Dropped before the query closes, which sweeps the heaps of ended threads (heap_sweeps).
        datafusion_batch = part = None
        on_end()
        if finished:
            audit.ok()
        else:
            audit.incomplete()  # no-op when the failure was already recorded
