"""Just-in-time materialization of one view instance (a process's or a stream's partitions).

A query first asks, in one statement, which live partition holds each of the instance's source blocks
(`instance_coverage`). When every block sits in a valid partition (`jit_layout`), those partitions
are the answer: each block's rows are in exactly one file, none is missing. Otherwise only the dirty
insert range is rebuilt — for a live process, the few blocks that arrived since the last query — and
the check runs again, so a query never returns a partition set that misses or doubles a block it saw,
whatever concurrent inserts, queries and merges do meanwhile. Blocks inserted after its first check
are included only if some partition already holds them (whole): the query's snapshot is its first check.

Writers never lock while they decode: each round writes its files, then swaps them in with
`write_and_commit`, whose swap succeeds only if the partitions it replaces are still exactly the live
ones (under the instance's advisory lock, in one transaction). A writer that lost the race drops its
files and the next check sees the winner's work.

A query may instead read the rows of a small dirty range in memory (`FreshRows.tail`, up to
`memory_tail_objects` objects): decoded from the blocks as a rebuild would, unioned with the committed
partitions for that query only, and written and swapped in afterwards on the settle queue (`persist_tail`),
as any rebuild is. So a live process's late query never waits on a parquet write or a catalog commit; a
tail in memory is never a catalog fact (a crash loses nothing but work the next query redoes). When this
server ingested the tail's blocks after such a query, they were decoded as they arrived (`decode_ahead`):
the coverage check lists them, and the query takes their rows with no further catalog round trip and
nothing to decode (`decoded_ahead`): built ahead, with their frame, when the tail is the one the worker
built, else built then. The partitions written from such rows keep them in memory (as one frame) until a
merge replaces them (`WrittenTails`): the next late queries read those rows instead of the files, so that
the scan of the instance's files stays the one they planned before.

With `live_refresh_seconds` set, an instance queried lately is also brought up to date in the
background as its process's blocks arrive (`live_refresh`), so that a live process's next query
usually finds it fresh.

Small tail partitions settle on the lake's settle queue (`settle`): merges planned by `jit_layout`,
swapped in the same way. A merge reads its partitions' parquet: concatenated when each block's rows
come from that block alone (`View.blockwise_formats`), else joined by the view's `merge_rows` from the
notes each file keeps in its footer (call trees); it rebuilds from the blocks only when neither can
(span depths, partitions written before notes, chains the notes cannot join).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import DataFrame

from spanlake import tracing
from spanlake.lakehouse.catalog.partitions import partition_identity, replacing_exactly
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.jit_layout import (
    HeldCount,
    PartitionSpec,
    dirty_insert_range,
    held_by_blocks,
    held_counts,
    live_of_schema,
    plan_merges,
    plan_rebuild,
)
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.partitions import (
    Partition,
    PartitionTarget,
    RetireMatch,
    partition_batches,
    write_and_commit,
    write_partition_file,
)
from spanlake.lakehouse.source_blocks import CoverageGroup, ProcessTiming
from spanlake.lakehouse.view_rows import view_rows
from spanlake.views.meta import SourceBlock
from spanlake.views.view import PartitionRows, View

# Rounds of check-and-rebuild a query tries before giving up: each round that does not end fresh
# means blocks arrived (or a concurrent writer won) meanwhile, so this bounds a pathological race.
MAX_ROUNDS = 16


@dataclass(frozen=True)
class Instance:
    """A process or stream instance of a view, and the filter selecting its source blocks."""

    view: View
    instance_id: str
    source: Mapping[str, object]  # keyword arguments of `source_blocks`: process_id + tags, or stream_id


TimingsOf = Callable[[], Mapping[str, ProcessTiming]]


@dataclass(frozen=True)
class FreshRows:
    """What a query reads of an instance: its committed partitions, and the rows of the blocks they do not
    hold yet, decoded in memory for this query (`memory_tail`; empty when everything is committed), as
    batches, or as frames made before the query (`decode_ahead`) — and the rows kept of partitions it
    reads from memory instead of their files (`WrittenTails`), the same way."""

    partitions: list[Partition]
    tail: list[pa.RecordBatch] = field(default_factory=list)
    frames: list[DataFrame] = field(default_factory=list)


# A tail a query read in memory is written this long after, once that query has most likely answered:
# writing it meanwhile would compete with the query for the interpreter.
PERSIST_DELAY_SECONDS = 0.05

# The largest nanosecond time: a refresh covers the hours from its query's range begin on.
MAX_NS = 2**63 - 1


def fresh_partitions(
    lake: Lake,
    instance: Instance,
    query_range: tuple[int, int] | None,
    timings_of: TimingsOf,
    memory_tail: bool = False,
) -> FreshRows:
    """The instance's live partitions, once each of its source blocks (of the hours the query range
    concerns) sits in exactly one valid partition; rebuilds what is stale first (with `memory_tail`, a
    small stale part in memory instead). `timings_of` gives the process timing (and raises QueryError
    for an unknown process or stream). With live refresh on, the instance is then followed
    (`live_refresh`): its process's next blocks are materialized in the background."""
    timings = functools.cache(timings_of)
    fresh = up_to_date(lake, instance, query_range, timings, memory_tail)
    if lake.live_refresh.seconds > 0:
        key = (instance.view.name, instance.instance_id)
        process_id = instance.instance_id if instance.view.instance_kind == "process" else None
        process_id = process_id or lake.live_refresh.process_of(key) or next(iter(timings()))
        since = None if query_range is None else (query_range[0], MAX_NS)
        lake.live_refresh.queried(process_id, key, functools.partial(up_to_date, lake, instance, since, timings_of))
        lake.catalog_changes.listen(lake)  # the announcements of its blocks
    return fresh


def up_to_date(
    lake: Lake,
    instance: Instance,
    query_range: tuple[int, int] | None,
    timings_of: TimingsOf,
    memory_tail: bool = False,
) -> FreshRows:
    """`fresh_partitions` without following the instance (a query's, or a background refresh's)."""
    timings_of = functools.cache(timings_of)
    view = instance.view
    seen_until_ns = None  # the latest insert time of the blocks the first check saw
    for _ in range(MAX_ROUNDS):
        with tracing.async_span("catalog.instance_coverage"):
            groups, partitions = lake.loop.run(
                lake.catalog.instance_coverage(
                    event_range=query_range,
                    partitions_of=(view.name, instance.instance_id, view.schema_hash),
                    **instance.source,
                )
            )
        if seen_until_ns is None and groups:
            seen_until_ns = max(group.last_insert_ns for group in groups)
        dirty = dirty_insert_range(view, groups, partitions, seen_until_ns)
        if dirty is None:
            if not groups:
                timings_of()  # no block yet: still an error for an unknown process or stream
            schedule_settle(lake, instance, held_counts(view, groups, partitions), timings_of)
            return FreshRows(partitions)
        outside = [p for p in partitions if p.end_insert_ns <= dirty[0] or p.begin_insert_ns >= dirty[1]]
        # A tail: blocks after partitions already committed (a first query writes what it reads).
        limit = lake.settings.memory_tail_objects
        tail = memory_tail and limit > 0 and bool(live_of_schema(view, partitions))
        if tail and dirty_objects(groups, dirty) <= limit:
            inside = [p for p in partitions if p not in outside]
            outside_held = held_counts(view, groups, outside)
            around = Around(inside, outside, outside_held, uncovered_ids(groups))
            return in_memory(lake, instance, query_range, dirty, around, timings_of)
        rebuilt = rebuild(lake, instance, dirty, timings_of())
        if rebuilt is not None:
            held = sorted(held_counts(view, groups, outside) + rebuilt, key=lambda h: h.partition.begin_insert_ns)
            schedule_settle(lake, instance, held, timings_of)
            return FreshRows(outside + [h.partition for h in rebuilt])
    raise QueryError(
        f"{view.name} instance {instance.instance_id} could not be brought up to date:"
        f" its blocks changed during {MAX_ROUNDS} rounds of materialization"
    )


def rebuild(
    lake: Lake,
    instance: Instance,
    dirty: tuple[int, int],
    timings: Mapping[str, ProcessTiming],
    rows_of: SpecRows | None = None,
) -> list[HeldCount] | None:
    """Rebuilds the blocks of the dirty insert range that no valid partition holds (their rows from
    `rows_of`, by default `decoded_rows`). Returns the
    partitions meeting the range once swapped in — a consistent set for the blocks of the range: the
    valid ones kept and the new ones — with what they hold, or None if a concurrent writer changed the
    range first.

    (Partitions outside the range that a concurrent merge replaces meanwhile stay readable: retired
    files are kept an hour, so a query may still use the set its check saw there.)"""
    with tracing.async_span("lakehouse.jit_update"):
        with tracing.async_span("catalog.source_blocks"):
            blocks = lake.loop.run(lake.catalog.source_blocks(insert_range=dirty, **instance.source))
            existing = lake.loop.run(
                lake.catalog.overlapping_partitions(instance.view.name, instance.instance_id, *dirty)
            )
        specs = plan_rebuild(instance.view, instance.instance_id, blocks, existing)
        written = swap_in(lake, specs, rows_of or functools.partial(decoded_rows, lake, timings))
        if written is None:
            return None
        replaced = {partition_identity(p) for spec in specs for p in spec.replaces}
        kept = [p for p in existing if p.file_schema_hash == instance.view.schema_hash]
        return held_by_blocks([p for p in kept if partition_identity(p) not in replaced] + written, blocks)


def dirty_objects(groups: Sequence[CoverageGroup], dirty: tuple[int, int]) -> int:
    """The source objects of the blocks inside the dirty insert range (what rebuilding it decodes)."""
    return sum(g.objects for g in groups if g.first_insert_ns < dirty[1] and g.last_insert_ns >= dirty[0])


@dataclass(frozen=True)
class Tail:
    """The specs of a dirty range a query read in memory, with their decoded rows, and what it knew of the
    rest: the range's blocks, its valid partitions kept, the partitions outside it with what they hold."""

    instance: Instance
    query_range: tuple[int, int] | None
    specs: Sequence[PartitionSpec]
    rows: Sequence[Sequence[pa.RecordBatch]]
    blocks: Sequence[SourceBlock]
    kept: Sequence[Partition]
    outside: Sequence[HeldCount]


@dataclass(frozen=True)
class Around:
    """The live partitions a coverage check found, by whether they meet its dirty insert range: those
    outside it with what they hold (`held_counts`); and the ids of the blocks no partition holds (in insert
    order; empty when too many to list)."""

    inside: list[Partition]
    outside: list[Partition]
    outside_held: Sequence[HeldCount]
    uncovered: tuple[str, ...] = ()


def uncovered_ids(groups: Sequence[CoverageGroup]) -> tuple[str, ...]:
    """The ids of the blocks no partition holds, as the coverage check listed them (when few)."""
    return next((g.block_ids for g in groups if g.partition_begin_ns is None), ())


def in_memory(
    lake: Lake,
    instance: Instance,
    query_range: tuple[int, int] | None,
    dirty: tuple[int, int],
    around: Around,
    timings_of: TimingsOf,
) -> FreshRows:
    """The instance's rows with the dirty range decoded in memory: the committed partitions outside it
    and the valid ones inside it, and the rows the rebuild's specs would write (`rebuild`'s set, nothing
    committed). The specs are then written and swapped in on the settle queue (`persist_tail`).

    The partitions are the coverage check's, the blocks are read after it: a partition committed in
    between is not used (the specs hold its blocks' rows), so each block is read once either way.

    When the blocks were all decoded ahead (`decoded_ahead`), the rows are built from them; else the
    query decodes them, and the blocks its process sends next are decoded ahead for the view."""
    fresh = decoded_ahead(lake, instance, query_range, dirty, around, timings_of)
    if fresh is not None:
        return fresh
    view = instance.view
    with tracing.async_span("lakehouse.memory_tail"):
        with tracing.async_span("catalog.source_blocks"):
            # The process timing is read meanwhile: both round trips at once.
            found = asyncio.run_coroutine_threadsafe(
                lake.catalog.source_blocks(insert_range=dirty, **instance.source), lake.loop.loop
            )
            timings = timings_of()
            blocks = found.result()
        for process_id in timings:
            lake.decode_ahead.follow(process_id, view)
        specs = plan_rebuild(view, instance.instance_id, blocks, around.inside)
        rows = [[b for b in decoded_rows(lake, timings, spec) if b.num_rows] for spec in specs]
    replaced = {partition_identity(p) for spec in specs for p in spec.replaces}
    kept = [
        p for p in around.inside if p.file_schema_hash == view.schema_hash and partition_identity(p) not in replaced
    ]
    if specs:
        tail = Tail(instance, query_range, specs, rows, blocks, kept, around.outside_held)
        write_tail_later(lake, instance, functools.partial(persist_tail, lake, tail, timings_of))
    partitions = sorted(around.outside + kept, key=lambda p: p.begin_insert_ns)
    return FreshRows(partitions, [batch for batches in rows for batch in batches])


def write_tail_later(lake: Lake, instance: Instance, write: Callable[[float], None]) -> None:
    """Queues `write(due)` on the settle queue, due PERSIST_DELAY_SECONDS from now: the instance's tail
    written after the query that read it (a later query's tail replaces one still queued)."""
    due = time.monotonic() + PERSIST_DELAY_SECONDS
    lake.settler.submit_latest(("tail", instance.view.name, instance.instance_id), functools.partial(write, due))


def decoded_ahead(
    lake: Lake,
    instance: Instance,
    query_range: tuple[int, int] | None,
    dirty: tuple[int, int],
    around: Around,
    timings_of: TimingsOf,
) -> FreshRows | None:
    """`in_memory`'s answer when no partition meets the dirty range and its blocks (those no partition
    holds) were all decoded ahead (`decode_ahead`): no further catalog round trip, nothing decoded, the
    rows built at once. Their partition is written from these rows after the query, as `in_memory`'s
    (`persist_range`), and keeps them: the partitions written so before are read from their rows
    (`WrittenTails`). None otherwise."""
    if around.inside or not around.uncovered:
        return None
    with tracing.async_span("lakehouse.decoded_ahead"):
        ready = lake.decode_ahead.tail_rows(instance.view, around.uncovered)
    if ready is None:
        return None
    rows = [batch for batch in ready.rows if batch.num_rows]
    tail = ReadTail(dirty, around.outside_held, around.uncovered, rows)
    write_tail_later(lake, instance, functools.partial(persist_range, lake, instance, query_range, tail, timings_of))
    # The partitions written from earlier tails are read from their rows, still in memory (`WrittenTails`).
    written = lake.decode_ahead.written
    kept = written.rows_of(instance.view, instance.instance_id, around.outside)
    files = sorted((p for p in around.outside if p.file_path not in kept), key=lambda p: p.begin_insert_ns)
    fresh = FreshRows(files)
    kept_rows = [batch for batches in kept.values() for batch in batches]
    add_rows(fresh, kept_rows, written.frame_of(instance.view, instance.instance_id, kept))
    add_rows(fresh, rows, ready.frame)
    return fresh


def add_rows(fresh: FreshRows, rows: list[pa.RecordBatch], frame: DataFrame | None) -> None:
    """Adds rows in memory to what a query reads: as their frame when one was made, else as batches."""
    if frame is not None:
        fresh.frames.append(frame)
    else:
        fresh.tail.extend(rows)


@dataclass(frozen=True)
class ReadTail:
    """A dirty range a query read from blocks decoded ahead: what it knew of the partitions outside it
    (`held_counts`), and its blocks (insert order) with the rows it read."""

    dirty: tuple[int, int]
    outside: Sequence[HeldCount]
    block_ids: tuple[str, ...]
    rows: list[pa.RecordBatch]

    def rows_or_decoded(self, lake: Lake, timings_of: TimingsOf, spec: PartitionSpec) -> Iterable[pa.RecordBatch]:
        """The spec's rows: those read when its blocks are the tail's, else `decoded_rows`."""
        if tuple(block.meta.block_id for block in spec.blocks) == self.block_ids:
            return self.rows
        return decoded_rows(lake, timings_of(), spec)


def persist_range(
    lake: Lake,
    instance: Instance,
    query_range: tuple[int, int] | None,
    tail: ReadTail,
    timings_of: TimingsOf,
    due: float,
) -> None:
    """Once the monotonic clock reaches `due`, writes the dirty range a query read from blocks decoded
    ahead (`rebuild`, with the rows it read; the partition written from them keeps them, `WrittenTails`)
    and settles what became mergeable. If a concurrent writer changed the range first, the instance is
    brought up to date as a query would (`up_to_date`)."""
    time.sleep(max(0.0, due - time.monotonic()))
    from_tail: list[PartitionSpec] = []

    def rows_of(spec: PartitionSpec) -> Iterable[pa.RecordBatch]:
        rows = tail.rows_or_decoded(lake, timings_of, spec)
        if rows is tail.rows:
            from_tail.append(spec)
        return rows

    rebuilt = rebuild(lake, instance, tail.dirty, timings_of(), rows_of)
    if rebuilt is None:
        up_to_date(lake, instance, query_range, timings_of)
        return
    keep_tail_rows(lake, instance.view, tail.rows, from_tail, rebuilt)
    held = sorted([*tail.outside, *rebuilt], key=lambda h: h.partition.begin_insert_ns)
    if plan_merges(held):
        settle(lake, instance, held, timings_of())


def keep_tail_rows(
    lake: Lake, view: View, rows: list[pa.RecordBatch], specs: Sequence[PartitionSpec], rebuilt: Sequence[HeldCount]
) -> None:
    """The partitions of the view written for these specs from a tail's rows keep them (`WrittenTails`)."""
    ranges = {(spec.begin_insert_ns, spec.end_insert_ns) for spec in specs}
    for written in rebuilt:
        if (written.partition.begin_insert_ns, written.partition.end_insert_ns) in ranges:
            lake.decode_ahead.written.keep(written.partition, written.objects, rows, view.schema)


def persist_tail(lake: Lake, tail: Tail, timings_of: TimingsOf, due: float) -> None:
    """Once the monotonic clock reaches `due`, writes the specs a query read in memory (their rows already
    decoded) and swaps them in, then settles what became mergeable. If a concurrent writer changed their
    range first, the instance is brought up to date as a query would (`up_to_date`), writing what is
    still missing: a tail is committed even if no query follows."""
    time.sleep(max(0.0, due - time.monotonic()))
    rows_of = {id(spec): spec_rows for spec, spec_rows in zip(tail.specs, tail.rows, strict=True)}
    written = swap_in(lake, tail.specs, lambda spec: rows_of[id(spec)])
    if written is None:
        up_to_date(lake, tail.instance, tail.query_range, timings_of)
        return
    held = sorted(
        [*tail.outside, *held_by_blocks([*tail.kept, *written], tail.blocks)], key=lambda h: h.partition.begin_insert_ns
    )
    if plan_merges(held):
        settle(lake, tail.instance, held, timings_of())


SpecRows = Callable[[PartitionSpec], Iterable[pa.RecordBatch]]


def swap_in(lake: Lake, specs: Sequence[PartitionSpec], rows_of: SpecRows) -> list[Partition] | None:
    """Writes the specs' files (their rows from `rows_of`), then commits them in one transaction in place
    of what they replace. Returns the new partitions, or None (files removed) if the partitions they
    replace were no longer exactly the live ones."""
    if not specs:
        return []
    writes = [functools.partial(_write, lake, spec, rows_of) for spec in specs]
    replaced = [p for spec in specs for p in spec.replaces]
    written = write_and_commit(lake, writes, RetireMatch.OVERLAPPING, replacing_exactly(replaced))
    if written is not None:
        for spec in specs:
            lake.decode_ahead.forget(spec.view, (block.meta.block_id for block in spec.blocks))
    return written


def decoded_rows(lake: Lake, timings: Mapping[str, ProcessTiming], spec: PartitionSpec) -> Iterable[pa.RecordBatch]:
    """The spec's rows: those decoded ahead when each of its blocks was (`decode_ahead`), else decoded."""
    ahead = lake.decode_ahead.rows_of(spec.view, spec.blocks)
    return view_rows(lake, spec.view, timings, spec.blocks) if ahead is None else ahead


def merged_rows(lake: Lake, timings: Mapping[str, ProcessTiming], spec: PartitionSpec) -> Iterable[pa.RecordBatch]:
    """The rows of a merge, the same rows its blocks would give: its partitions' files in insert order when
    every block's rows come from that block alone, else the view's `merge_rows` of them, else decoded."""
    ordered = sorted(spec.replaces, key=lambda p: p.begin_insert_ns)
    if all(block.stream.format in spec.view.blockwise_formats for block in spec.blocks):
        return partition_batches(lake.store, [p.file_path for p in ordered if p.file_path])
    merge = spec.view.merge_rows
    if merge is not None and all(p.file_path for p in ordered):
        merged = merge([partition_rows(lake.store, p.file_path) for p in ordered if p.file_path])
        if merged is not None:
            return merged.to_batches()
    return decoded_rows(lake, timings, spec)


def partition_rows(store: ObjectStore, file: str) -> PartitionRows:
    """A partition file's rows, with its footer's key-value metadata."""
    filesystem, root = store.arrow_filesystem()
    with filesystem.open_input_file(f"{root}/{file}") as source:
        parquet = pq.ParquetFile(source)
        return PartitionRows(parquet.read(), parquet.metadata.metadata)


def _write(lake: Lake, spec: PartitionSpec, rows_of: SpecRows) -> Partition:
    with tracing.async_span("lakehouse.materialize_partition"):
        view = spec.view
        target = PartitionTarget(
            view.name,
            spec.instance_id,
            spec.begin_insert_ns,
            spec.end_insert_ns,
            view.schema,
            view.schema_hash,
            view.time_columns,
            RetireMatch.OVERLAPPING,
        )
        return write_partition_file(lake, target, spec.source_count, rows_of(spec))


def settle(lake: Lake, instance: Instance, held: Sequence[HeldCount], timings: Mapping[str, ProcessTiming]) -> int:
    """Merges the small partitions `jit_layout.plan_merges` picks (`merged_rows`); returns how many
    merges were committed. A group whose blocks changed meanwhile is left to the next check."""
    merged = 0
    for group in plan_merges(held):
        insert_range = (group[0].partition.begin_insert_ns, group[-1].partition.end_insert_ns)
        with tracing.async_span("lakehouse.merge_partitions"):
            blocks = lake.loop.run(lake.catalog.source_blocks(insert_range=insert_range, **instance.source))
            if len(blocks) != sum(member.blocks for member in group):
                continue
            spec = PartitionSpec(
                instance.view, instance.instance_id, tuple(blocks), tuple(member.partition for member in group)
            )
            merged += swap_in(lake, [spec], functools.partial(merged_rows, lake, timings)) is not None
    return merged


def schedule_settle(lake: Lake, instance: Instance, held: Sequence[HeldCount], timings_of: TimingsOf) -> None:
    """Queues `settle` on the lake's settle queue if the instance has partitions to merge."""
    if plan_merges(held):
        key = (instance.view.name, instance.instance_id)
        lake.settler.submit(key, lambda: settle(lake, instance, held, timings_of()))
