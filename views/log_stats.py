"""The `log_stats` view (global): the number of log entries per minute, process, level and target, as
micromegas's `log_stats_view.rs` computes it from `log_entries`:

    SELECT date_bin('1 minute', time) AS time_bin, process_id, level, target, count(*) AS count
    FROM log_entries GROUP BY process_id, level, target, time_bin ORDER BY time_bin, process_id, level, target

Partitions (of the `log` streams' blocks, transit or OTLP) hold those counts; merging partitions, and
reading several at query time, sums `count` per group. The schema is what DataFusion gives that
query (time_bin nullable, as `date_bin` returns). Maintained on the daemon's schedules, no JIT.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views import log_entries
from spanlake.views.meta import OTLP_LOGS_FORMAT
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, optional, required
from spanlake.views.view import DAY_SECONDS, OtlpBlock, TransitBlock, View

VIEW_SET_NAME = "log_stats"
FILE_SCHEMA_HASH = bytes([1])
BIN_NS = 60 * 1_000_000_000
GROUP_KEYS = ("time_bin", "process_id", "level", "target")

SCHEMA = pa.schema(
    [
        optional("time_bin", TIMESTAMP),
        required("process_id", DICT_UTF8),
        required("level", pa.int32()),
        required("target", DICT_UTF8),
        required("count", pa.int64()),
    ]
)


def counts(entries: Iterable[pa.RecordBatch]) -> pa.Table:
    """log_entries rows → their counts per (minute, process, level, target), sorted by those keys."""
    table = pa.Table.from_batches(list(entries), schema=log_entries.SCHEMA)
    time_ns = table.column("time").cast(pa.int64()).to_numpy()
    keys = pa.table(
        {
            "time_bin": pa.array(time_ns // BIN_NS * BIN_NS, pa.int64()),  # floor: date_bin from the epoch
            "process_id": table.column("process_id").cast(pa.utf8()),
            "level": table.column("level"),
            "target": table.column("target").cast(pa.utf8()),
            "count": pa.array(np.ones(len(time_ns), np.int64)),
        }
    )
    return _summed(keys)


def merge(partitions: pa.Table) -> pa.Table:
    """Rows of several partitions as one: `count` summed per group (micromegas's merge query)."""
    keys = pa.table(
        {
            "time_bin": partitions.column("time_bin").cast(pa.int64()),
            "process_id": partitions.column("process_id").cast(pa.utf8()),
            "level": partitions.column("level"),
            "target": partitions.column("target").cast(pa.utf8()),
            "count": partitions.column("count"),
        }
    )
    return _summed(keys)


def _summed(rows: pa.Table) -> pa.Table:
    grouped = rows.group_by(list(GROUP_KEYS)).aggregate([("count", "sum")])
    grouped = grouped.sort_by([(key, "ascending") for key in GROUP_KEYS])
    arrays = [
        grouped.column("time_bin").cast(TIMESTAMP),
        pc.dictionary_encode(grouped.column("process_id")),
        grouped.column("level"),
        pc.dictionary_encode(grouped.column("target")),
        grouped.column("count_sum"),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA).combine_chunks()


def _from_transit(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    yield from counts(log_entries.VIEW.rows_from_transit(blocks)).to_batches()  # type: ignore[misc]


def _from_otlp(blocks: Iterable[OtlpBlock[Any]]) -> Iterator[pa.RecordBatch]:
    yield from counts(log_entries.VIEW.rows_from_otlp(blocks)).to_batches()  # type: ignore[misc]


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind=None,
    has_global_instance=True,
    stream_tags=("log",),
    time_columns=("time_bin", "time_bin"),
    rows_from_transit=_from_transit,
    rows_from_otlp=_from_otlp,
    otlp_format=OTLP_LOGS_FORMAT,
    merge=merge,
    max_partition_seconds=DAY_SECONDS,
)
