"""Bulk ingestion of replicated rows (micromegas's `bulk_ingest`, the Flight SQL
CommandStatementIngest behind the client's `bulk_ingest(table_name, table)`): `processes`,
`streams` and `blocks` rows go to PostgreSQL in one transaction per call, `payloads` rows
(process_id, stream_id, block_id, payload) to the object store. Rows already present are kept as
they are (idempotent, as the ingestion API). Columns are read by name; extra columns are ignored.
Blocks are queued for the trace index before their rows are inserted: the maintenance daemon indexes
their traces once their streams, processes and payloads are stored (`lakehouse.trace_catch_up`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pyarrow as pa

from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import blob_key
from spanlake.views import jsonb

TABLES = ("processes", "streams", "blocks", "payloads")


class BulkIngestError(QueryError):
    """Rows that cannot be ingested (unknown table, missing column, bad value): nothing is stored."""


def _column(table: pa.Table, name: str, what: str) -> list[Any]:
    if name not in table.column_names:
        raise BulkIngestError(f"error ingesting into {what}: missing column '{name}'")
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_pylist()


def _times(table: pa.Table, name: str, what: str) -> list[Any]:
    if name not in table.column_names:
        raise BulkIngestError(f"error ingesting into {what}: missing column '{name}'")
    column = table.column(name)
    if not pa.types.is_timestamp(column.type):
        raise BulkIngestError(f"error ingesting into {what}: column '{name}' must be a timestamp, got {column.type}")
    return [
        None if ns is None else ns_to_datetime(ns)
        for ns in column.cast(pa.timestamp("ns")).cast(pa.int64()).to_pylist()
    ]


def _uuids(values: list[Any], name: str, what: str, optional: bool = False) -> list[uuid.UUID | None]:
    parsed = []
    for value in values:
        if optional and not value:
            parsed.append(None)
            continue
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            raise BulkIngestError(f"error ingesting into {what}: '{value}' in column '{name}' is not a UUID") from None
    return parsed


def _properties(values: list[Any], what: str) -> list[list[tuple[str, str]]]:
    """A properties column as a list of (key, value) structs or as JSONB objects → rows of pairs."""
    rows = []
    for value in values:
        if value is None:
            rows.append([])
        elif isinstance(value, bytes):
            try:
                rows.append([(str(k), str(v)) for k, v in jsonb.decode(value).items()])
            except (jsonb.JsonbError, AttributeError):
                raise BulkIngestError(
                    f"error ingesting into {what}: a properties value is not a JSONB object"
                ) from None
        else:
            rows.append([(item["key"], item["value"]) for item in value])
    return rows


def _processes(table: pa.Table) -> list[tuple]:
    what = "processes"
    rows = zip(
        _uuids(_column(table, "process_id", what), "process_id", what),
        *(_column(table, name, what) for name in ("exe", "username", "realname", "computer", "distro", "cpu_brand")),
        _column(table, "tsc_frequency", what),
        _times(table, "start_time", what),
        _column(table, "start_ticks", what),
        _times(table, "insert_time", what),
        _uuids(_column(table, "parent_process_id", what), "parent_process_id", what, optional=True),
        _properties(_column(table, "properties", what), what),
        strict=True,
    )
    return list(rows)


def _streams(table: pa.Table) -> list[tuple]:
    what = "streams"
    rows = zip(
        _uuids(_column(table, "stream_id", what), "stream_id", what),
        _uuids(_column(table, "process_id", what), "process_id", what),
        _column(table, "dependencies_metadata", what),
        _column(table, "objects_metadata", what),
        [[tag or "" for tag in tags or []] for tags in _column(table, "tags", what)],
        _properties(_column(table, "properties", what), what),
        _times(table, "insert_time", what),
        _column(table, "format", what),
        strict=True,
    )
    return list(rows)


def _blocks(table: pa.Table) -> list[tuple]:
    what = "blocks"
    rows = zip(
        *(_uuids(_column(table, name, what), name, what) for name in ("block_id", "stream_id", "process_id")),
        _times(table, "begin_time", what),
        _column(table, "begin_ticks", what),
        _times(table, "end_time", what),
        _column(table, "end_ticks", what),
        _column(table, "nb_objects", what),
        _column(table, "object_offset", what),
        _column(table, "payload_size", what),
        _times(table, "insert_time", what),
        strict=True,
    )
    return list(rows)


_ROWS: dict[str, Callable[[pa.Table], list[tuple]]] = {
    "processes": _processes,
    "streams": _streams,
    "blocks": _blocks,
}


async def _insert(lake: Lake, rows: list[tuple], what: str) -> None:
    try:
        if what == "blocks":  # block_id first, insert_time last (_blocks)
            await lake.catalog.queue_trace_indexing([row[0] for row in rows], [row[-1] for row in rows])
        await lake.catalog.bulk_insert(what, rows)
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as err:
        raise BulkIngestError(f"error ingesting into {what}: {err}") from None


def _store_payloads(lake: Lake, table: pa.Table) -> None:
    what = "payloads"
    ids = [_uuids(_column(table, name, what), name, what) for name in ("process_id", "stream_id", "block_id")]
    payloads = _column(table, "payload", what)
    for process_id, stream_id, block_id, payload in zip(*ids, payloads, strict=True):
        if payload is None:
            raise BulkIngestError(f"error ingesting into payloads: block {block_id} has no payload")
        lake.store.put_if_absent(blob_key(process_id, stream_id, block_id), payload)


def bulk_ingest(lake: Lake, table_name: str, table: pa.Table) -> int:
    """Stores the rows; returns how many were received. BulkIngestError for what cannot be stored."""
    if table_name not in TABLES:
        raise BulkIngestError(
            f"bulk ingest for table {table_name} not supported (supported tables: {', '.join(TABLES)})"
        )
    if table.num_rows == 0:
        return 0
    if table_name == "payloads":
        _store_payloads(lake, table)
    else:
        lake.loop.run(_insert(lake, _ROWS[table_name](table), table_name))
    return table.num_rows
