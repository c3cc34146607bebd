"""The `blocks` view: the join blocks ⋈ streams ⋈ processes, one row per block, from the block rows alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.columns import timestamp_array
from spanlake.views.meta import SourceBlock
from spanlake.views.properties import properties_dictionary_array
from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required
from spanlake.views.view import View

VIEW_SET_NAME = "blocks"
FILE_SCHEMA_HASH = bytes([3])

# The dotted names are literal column names. begin_ticks/end_ticks are relative to processes.start_ticks.
SCHEMA = pa.schema(
    [
        required("block_id", pa.utf8()),
        required("stream_id", pa.utf8()),
        required("process_id", pa.utf8()),
        required("begin_time", TIMESTAMP),
        required("begin_ticks", pa.int64()),
        required("end_time", TIMESTAMP),
        required("end_ticks", pa.int64()),
        required("nb_objects", pa.int32()),
        required("object_offset", pa.int64()),
        required("payload_size", pa.int64()),
        required("insert_time", TIMESTAMP),
        required("streams.dependencies_metadata", pa.binary()),
        required("streams.objects_metadata", pa.binary()),
        optional("streams.tags", pa.list_(pa.field("tag", pa.utf8(), nullable=False))),
        required("streams.properties", DICT_JSONB),
        required("streams.insert_time", TIMESTAMP),
        required("streams.format", pa.utf8()),
        required("processes.start_time", TIMESTAMP),
        required("processes.start_ticks", pa.int64()),
        required("processes.tsc_frequency", pa.int64()),
        required("processes.exe", pa.utf8()),
        required("processes.username", pa.utf8()),
        required("processes.realname", pa.utf8()),
        required("processes.computer", pa.utf8()),
        required("processes.distro", pa.utf8()),
        required("processes.cpu_brand", pa.utf8()),
        required("processes.insert_time", TIMESTAMP),
        required("processes.parent_process_id", pa.utf8()),
        required("processes.properties", DICT_JSONB),
    ]
)


def _ts(values: Iterable[int]) -> pa.Array:
    return timestamp_array(np.fromiter(values, np.int64))


def blocks_batch(blocks: Sequence[SourceBlock]) -> pa.RecordBatch:
    """One row per block, in the order given."""
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
        pa.array([list(s.meta.tags) for s in streams], SCHEMA.field("streams.tags").type),
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
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


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


@dataclass(frozen=True)
class BlockSummary:
    """Rows aggregated from the blocks' rows, one per `key` (the processes and streams views): the `first`
    columns from its first block, the `latest` ones as their maximum over its blocks."""

    key: str
    first: Mapping[str, str]  # column ← blocks column
    latest: Mapping[str, str]  # column ← the blocks column it is the maximum of
    schema: pa.Schema

    def rows(self, blocks: Sequence[SourceBlock]) -> Iterator[pa.RecordBatch]:
        """The summary rows of a partition's blocks."""
        if blocks:
            table = pa.Table.from_batches([blocks_batch(blocks)])
            yield from _first_and_max(table, self.key, self.first, self.latest, self.schema).to_batches()

    def collapse(self, partitions: pa.Table) -> pa.Table:
        """Rows of several partitions → one row per key (attributes of its first row)."""
        same = {name: name for name in self.first}
        return _first_and_max(partitions, self.key, same, {name: name for name in self.latest}, self.schema)


def block_batches(blocks: Sequence[SourceBlock]) -> Iterator[pa.RecordBatch]:
    """The rows of a partition's blocks (none for no block)."""
    if blocks:
        yield blocks_batch(blocks)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind=None,
    has_global_instance=True,
    stream_tags=(),
    time_columns=("begin_time", "insert_time"),
    rows_from_blocks=block_batches,
)
