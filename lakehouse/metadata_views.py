"""Rows of the global metadata views — `blocks`, `processes`, `streams` — from source blocks.

These views need no payload: a block's row is its PostgreSQL row joined with its stream and process.
`processes` and `streams` partitions hold one row per process (stream) seen in the partition's blocks;
a query collapses the rows of all partitions (`collapse`), as micromegas's merge query does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from spanlake.lakehouse.source_blocks import SourceBlock
from spanlake.views import blocks as blocks_view
from spanlake.views import processes as processes_view
from spanlake.views import streams as streams_view
from spanlake.views.properties import properties_dictionary_array
from spanlake.views.schema_types import TIMESTAMP


def _ts(values: Iterable[int]) -> pa.Array:
    return pa.array(np.fromiter(values, np.int64), pa.int64()).cast(TIMESTAMP)


def blocks_batch(blocks: Sequence[SourceBlock]) -> pa.RecordBatch:
    metas = [b.meta for b in blocks]
    processes = [b.process for b in blocks]
    streams = [b.stream for b in blocks]
    columns = [
        pa.array([m.block_id for m in metas], pa.utf8()),
        pa.array([m.stream_id for m in metas], pa.utf8()),
        pa.array([m.process_id for m in metas], pa.utf8()),
        _ts(m.begin_time_ns for m in metas),
        pa.array([m.begin_ticks for m in metas], pa.int64()),
        _ts(m.end_time_ns for m in metas),
        pa.array([m.end_ticks for m in metas], pa.int64()),
        pa.array([m.nb_objects for m in metas], pa.int32()),
        pa.array([m.object_offset for m in metas], pa.int64()),
        pa.array([b.payload_size for b in blocks], pa.int64()),
        _ts(m.insert_time_ns for m in metas),
        pa.array([s.dependencies_metadata for s in streams], pa.binary()),
        pa.array([s.objects_metadata for s in streams], pa.binary()),
        pa.array([list(s.meta.tags) for s in streams], blocks_view.SCHEMA.field("streams.tags").type),
        properties_dictionary_array(s.meta.properties for s in streams),
        _ts(s.insert_time_ns for s in streams),
        pa.array([s.format for s in streams], pa.utf8()),
        _ts(p.meta.start_time_ns for p in processes),
        pa.array([p.meta.start_ticks for p in processes], pa.int64()),
        pa.array([p.meta.tsc_frequency for p in processes], pa.int64()),
        pa.array([p.meta.exe for p in processes], pa.utf8()),
        pa.array([p.meta.username for p in processes], pa.utf8()),
        pa.array([p.realname for p in processes], pa.utf8()),
        pa.array([p.meta.computer for p in processes], pa.utf8()),
        pa.array([p.distro for p in processes], pa.utf8()),
        pa.array([p.cpu_brand for p in processes], pa.utf8()),
        _ts(p.insert_time_ns for p in processes),
        pa.array([p.parent_process_id for p in processes], pa.utf8()),
        properties_dictionary_array(p.meta.properties for p in processes),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=blocks_view.SCHEMA)


_PROCESS_COLUMNS = {  # processes column ← blocks column
    "process_id": "process_id",
    "exe": "processes.exe",
    "username": "processes.username",
    "realname": "processes.realname",
    "computer": "processes.computer",
    "distro": "processes.distro",
    "cpu_brand": "processes.cpu_brand",
    "tsc_frequency": "processes.tsc_frequency",
    "start_time": "processes.start_time",
    "start_ticks": "processes.start_ticks",
    "insert_time": "processes.insert_time",
    "parent_process_id": "processes.parent_process_id",
    "properties": "processes.properties",
}
_STREAM_COLUMNS = {
    "stream_id": "stream_id",
    "process_id": "process_id",
    "dependencies_metadata": "streams.dependencies_metadata",
    "objects_metadata": "streams.objects_metadata",
    "tags": "streams.tags",
    "properties": "streams.properties",
    "insert_time": "streams.insert_time",
    "format": "streams.format",
}
_LAST_OF_PROCESS = {
    "last_update_time": "insert_time",
    "last_block_end_ticks": "end_ticks",
    "last_block_end_time": "end_time",
}
_LAST_OF_STREAM = {"last_update_time": "insert_time"}


def _first_and_max(
    table: pa.Table, key: str, firsts: dict[str, str], maxes: dict[str, str], schema: pa.Schema
) -> pa.Table:
    """One row per `key`: `firsts` from its first row, `maxes` as the maximum over its rows."""
    table = table.append_column("__row", pa.array(np.arange(table.num_rows), pa.int64()))
    grouped = table.group_by(key, use_threads=False).aggregate(
        [("__row", "min")] + [(source, "max") for source in maxes.values()]
    )
    first = table.take(grouped["__row_min"])
    columns = [first[source] for source in firsts.values()]
    columns += [grouped[f"{source}_max"] for source in maxes.values()]
    return pa.Table.from_arrays(columns, names=list(firsts) + list(maxes)).cast(schema)


def processes_table(blocks: pa.Table) -> pa.Table:
    return _first_and_max(blocks, "process_id", _PROCESS_COLUMNS, _LAST_OF_PROCESS, processes_view.SCHEMA)


def streams_table(blocks: pa.Table) -> pa.Table:
    return _first_and_max(blocks, "stream_id", _STREAM_COLUMNS, _LAST_OF_STREAM, streams_view.SCHEMA)


def collapse_processes(partitions: pa.Table) -> pa.Table:
    """Rows of `processes` partitions → one row per process (attributes of its first row)."""
    identity = {name: name for name in _PROCESS_COLUMNS}
    return _first_and_max(partitions, "process_id", identity, {n: n for n in _LAST_OF_PROCESS}, processes_view.SCHEMA)


def collapse_streams(partitions: pa.Table) -> pa.Table:
    identity = {name: name for name in _STREAM_COLUMNS}
    return _first_and_max(partitions, "stream_id", identity, {n: n for n in _LAST_OF_STREAM}, streams_view.SCHEMA)


def metadata_batches(kind: str, blocks: Sequence[SourceBlock]) -> Iterator[pa.RecordBatch]:
    if not blocks:
        return
    batch = blocks_batch(blocks)
    if kind == "blocks":
        yield batch
        return
    table = pa.Table.from_batches([batch])
    summary = processes_table(table) if kind == "processes" else streams_table(table)
    yield from summary.to_batches()
