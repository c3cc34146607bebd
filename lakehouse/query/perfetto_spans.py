"""The spans of a Perfetto trace, read from the views' parquet partitions in begin order, a slab at a time.

Thread spans: a stream's partition files are ordered by their smallest begin (parquet statistics) and
grouped where their begin ranges overlap; groups are read one after another, each sorted if it must
be, so memory holds one group, not the thread.

Async spans: micromegas pairs begin and end events with a join over every event of the window. Here
the end events are read first as two numpy columns (span id, time); the begin events are read with
their strings left dictionary-encoded, paired by a binary search, and handed to the writer in begin
order a slab at a time (the lane layout follows them incrementally). About 70 bytes per span stay in
memory, never a decoded string per span.

A begin without an end (a process that crashed or still runs) ends at the process's last event in the
window, flagged `unfinished`; so is a thread span the call tree closed at the end of the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

SLAB_ROWS = 64 * 1024
SPAN_BYTES_ESTIMATE = 160  # an upper estimate of a span's two packets, interned strings aside
THREAD_COLUMNS = ["id", "begin", "end", "name", "target", "filename", "line"]
ASYNC_BEGIN_COLUMNS = ["span_id", "parent_span_id", "time", "name", "target", "filename", "line"]
STRING_COLUMNS = ("name", "target", "filename")
TIMESTAMP = pa.timestamp("ns", tz="+00:00")


def _ts(ns: int) -> pa.Scalar:
    return pa.scalar(ns, TIMESTAMP)


@dataclass(frozen=True)
class _Footer:
    fragment: ds.Fragment
    min_begin: int
    max_begin: int
    max_end: int
    estimated_bytes: int


def _footer(fragment: ds.Fragment) -> _Footer | None:
    """What a thread_spans file's footer tells; None for a file without rows."""
    metadata = fragment.metadata
    if not metadata.num_rows:
        return None
    bounds = {"begin": [], "end": []}
    strings = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            name = column.path_in_schema
            if name in STRING_COLUMNS:
                strings += column.total_uncompressed_size
            elif name in bounds and column.statistics is not None and column.statistics.has_min_max:
                bounds[name] += [column.statistics.min_raw, column.statistics.max_raw]
    if not bounds["begin"] or not bounds["end"]:
        raise ValueError(f"thread_spans file {fragment.path} has no begin/end statistics")
    estimate = metadata.num_rows * SPAN_BYTES_ESTIMATE + strings
    return _Footer(fragment, min(bounds["begin"]), max(bounds["begin"]), max(bounds["end"]), estimate)


@dataclass(frozen=True)
class ThreadSpans:
    """A thread's spans in the window, read group by group (see the module docstring)."""

    groups: list[list[ds.Fragment]]
    range_ns: tuple[int, int]
    last_end_ns: int | None  # the end of the thread's data: spans ending there were cut by it
    estimated_bytes: int  # an upper estimate of their trace bytes (strings interned at most once each)

    @classmethod
    def of(cls, dataset: ds.Dataset, range_ns: tuple[int, int]) -> ThreadSpans:
        """The thread's spans in the window, its partition files grouped where their begin ranges overlap."""
        footers = sorted((f for f in map(_footer, dataset.get_fragments()) if f is not None), key=lambda f: f.min_begin)
        groups: list[list[ds.Fragment]] = []
        reach = None
        for footer in footers:
            if reach is None or footer.min_begin >= reach:
                groups.append([])
            groups[-1].append(footer.fragment)
            reach = footer.max_begin if reach is None else max(reach, footer.max_begin)
        last_end = max((f.max_end for f in footers), default=None)
        return cls(groups, range_ns, last_end, sum(f.estimated_bytes for f in footers))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spans in begin order, group by group, with their `unfinished` flag."""
        begin, end = self.range_ns
        window = (ds.field("begin") <= _ts(end)) & (ds.field("end") >= _ts(begin))
        for group in self.groups:
            table = pa.concat_tables(fragment.to_table(columns=THREAD_COLUMNS, filter=window) for fragment in group)
            if table.num_rows > 1 and not _is_sorted(table.column("begin")):
                table = table.sort_by("begin")
            # The call tree ends a span never closed at the end of the data; the thread root (id -1)
            # is not one of them.
            cut = pc.and_(
                pc.equal(table.column("end"), _ts(-1 if self.last_end_ns is None else self.last_end_ns)),
                pc.not_equal(table.column("id"), -1),
            )
            yield from table.append_column("unfinished", cut).to_batches(max_chunksize=SLAB_ROWS)


def _is_sorted(column: pa.ChunkedArray) -> bool:
    values = column.cast(pa.int64()).to_numpy()
    return bool((values[1:] >= values[:-1]).all())


@dataclass(frozen=True)
class AsyncSpans:
    """A process's async spans in the window, paired, in begin order (see the module docstring)."""

    begins: pa.Table  # begin events: one chunk, dictionaries unified
    end_ns: np.ndarray  # per begin row
    unfinished: np.ndarray  # per begin row
    order: np.ndarray  # the begin rows kept (begin < end), by begin

    @classmethod
    def of(cls, dataset: ds.Dataset, range_ns: tuple[int, int], last_event_ns: int) -> AsyncSpans:
        """The process's async spans in the window: begins paired with their ends, sorted by begin."""
        in_window = (ds.field("time") >= _ts(range_ns[0])) & (ds.field("time") <= _ts(range_ns[1]))
        ends = dataset.to_table(columns=["span_id", "time"], filter=in_window & (ds.field("event_type") == "end"))
        end_ids = ends.column("span_id").to_numpy()
        end_times = ends.column("time").cast(pa.int64()).to_numpy()
        by_id = np.argsort(end_ids, kind="stable")
        end_ids, end_times = end_ids[by_id], end_times[by_id]
        begins = dataset.to_table(columns=ASYNC_BEGIN_COLUMNS, filter=in_window & (ds.field("event_type") == "begin"))
        begins = begins.unify_dictionaries().combine_chunks()
        begin_ns = begins.column("time").cast(pa.int64()).to_numpy()
        span_ids = begins.column("span_id").to_numpy()
        slot = np.minimum(np.searchsorted(end_ids, span_ids), max(len(end_ids) - 1, 0))
        matched = (end_ids[slot] == span_ids) if len(end_ids) else np.zeros(len(span_ids), bool)
        last_event_ns = max(last_event_ns, int(end_times.max(initial=0)), int(begin_ns.max(initial=0)))
        # At least 1 ns long: a span begun at the last event would otherwise be dropped as empty.
        end_ns = np.where(matched, end_times[slot] if len(end_ids) else 0, np.maximum(last_event_ns, begin_ns + 1))
        keep = np.flatnonzero(begin_ns < end_ns)
        order = keep[np.argsort(begin_ns[keep], kind="stable")]
        return cls(begins, end_ns, ~matched, order)

    @property
    def count(self) -> int:
        """How many spans are drawn."""
        return len(self.order)

    @property
    def estimated_bytes(self) -> int:
        """An upper estimate of the spans' trace bytes."""
        strings = sum(
            self.begins.column(name).chunk(0).dictionary.nbytes for name in STRING_COLUMNS if self.begins.num_rows
        )
        return self.count * SPAN_BYTES_ESTIMATE + strings

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spans in begin order, as slabs of rows with their ends."""
        for start in range(0, self.count, SLAB_ROWS):
            rows = self.order[start : start + SLAB_ROWS]
            slab = self.begins.take(rows).rename_columns(
                ["span_id", "parent_span_id", "begin", "name", "target", "filename", "line"]
            )
            slab = slab.append_column("end", pa.array(self.end_ns[rows], pa.int64()).cast(TIMESTAMP))
            yield from slab.append_column("unfinished", pa.array(self.unfinished[rows])).to_batches()
