"""How a process's or stream's blocks are laid out in partitions, so that a live instance costs what is new.

Blocks are ordered by insert time. A partition holds a run of them, inside one insert hour, at most
`MAX_PARTITION_BLOCKS` blocks and `MAX_PARTITION_OBJECTS` objects (cut only between blocks of
different insert times, so insert ranges never overlap). A partition is never rewritten while it is
valid: it is valid while it was built from at least as many source objects (blocks, for the metadata
views) as its insert range holds now. New blocks therefore become a new small partition at the tail;
a block that became visible late, inside an older partition's range, makes that one partition stale.

Small partitions settle by tiers, as a log-structured merge: `MERGE_FANIN` neighbours of one tier
(blocks < 8, < 64, < 512, ...) become one partition of the next tier, so a row is rewritten about
log8(MAX_PARTITION_BLOCKS) times over its life and an hour holds a bounded number of partitions. A
merge concatenates its partitions' files when every block gives its rows alone (`View.blockwise_formats`);
views that span blocks (thread call trees, OTLP span depths) are rebuilt from the blocks instead, as
they would be had the partition been built at once.

Pure: blocks and partitions in, specs out; `lakehouse/jit.py` writes and commits them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spanlake.lakehouse.partitions import Partition
from spanlake.lakehouse.source_blocks import HOUR_NS, CoverageGroup
from spanlake.views.meta import SourceBlock
from spanlake.views.view import View

MAX_PARTITION_BLOCKS = 1024
MAX_PARTITION_OBJECTS = 4 * 1024 * 1024
MERGE_FANIN = 8
# A partition's insert range is [first block insert, last block insert + 1 µs): PostgreSQL keeps µs.
INSERT_RESOLUTION_NS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to build from `blocks` (its insert range is theirs), replacing `replaces`: the stale or
    merged partitions that range meets."""

    view: View
    instance_id: str
    blocks: tuple[SourceBlock, ...]
    replaces: tuple[Partition, ...]

    @property
    def begin_insert_ns(self) -> int:
        """Start of the insert range: the first block's insert time."""
        return self.blocks[0].meta.insert_time_ns

    @property
    def end_insert_ns(self) -> int:
        """End of the insert range (exclusive): just after the last block's insert time."""
        return self.blocks[-1].meta.insert_time_ns + INSERT_RESOLUTION_NS

    @property
    def source_count(self) -> int:
        """What the partition's source_count records for its blocks (blocks or objects, as the view counts)."""
        return source_measure(self.view, len(self.blocks), sum(b.meta.nb_objects for b in self.blocks))


def source_measure(view: View, blocks: int, objects: int) -> int:
    """What a partition's source count counts for this view: blocks (metadata views) or objects."""
    return blocks if view.counts_blocks else objects


def live_of_schema(view: View, partitions: Sequence[Partition]) -> list[Partition]:
    """The partitions of the view's current schema, by begin (they never overlap)."""
    return sorted((p for p in partitions if p.file_schema_hash == view.schema_hash), key=lambda p: p.begin_insert_ns)


def dirty_insert_range(
    view: View, groups: Sequence[CoverageGroup], partitions: Sequence[Partition], seen_until_ns: int | None = None
) -> tuple[int, int] | None:
    """The insert range holding every block no valid partition holds (and the stale partitions), or None
    when the instance is fresh. Any partition meeting that range is stale or lies inside it.

    Blocks no partition holds yet that were all inserted after `seen_until_ns` do not count: a query
    needs the blocks it saw first, and chasing newer ones under a steady stream of inserts would
    never end."""
    by_begin = {p.begin_insert_ns: p for p in live_of_schema(view, partitions)}
    dirty: list[tuple[int, int]] = []
    for group in groups:
        holder = None if group.partition_begin_ns is None else by_begin[group.partition_begin_ns]
        if holder is None:
            if seen_until_ns is None or group.first_insert_ns <= seen_until_ns:
                dirty.append((group.first_insert_ns, group.last_insert_ns + INSERT_RESOLUTION_NS))
        elif holder.source_count < source_measure(view, group.blocks, group.objects):
            dirty.append((holder.begin_insert_ns, holder.end_insert_ns))
    if not dirty:
        return None
    return min(lo for lo, _ in dirty), max(hi for _, hi in dirty)


def plan_rebuild(
    view: View, instance_id: str, blocks: Sequence[SourceBlock], partitions: Sequence[Partition]
) -> list[PartitionSpec]:
    """Specs for the blocks (insert-ordered) that no valid partition holds, each replacing the stale
    partitions its range meets (one that two specs meet is listed by both). Valid partitions are left
    alone."""
    live = live_of_schema(view, partitions)
    begins = [p.begin_insert_ns for p in live]
    holder_of = []
    held: dict[int, list[SourceBlock]] = {}
    for block in blocks:
        index = bisect.bisect_right(begins, block.meta.insert_time_ns) - 1
        holds = index >= 0 and live[index].end_insert_ns > block.meta.insert_time_ns
        holder_of.append(index if holds else None)
        if holds:
            held.setdefault(index, []).append(block)
    valid = {
        index
        for index, its_blocks in held.items()
        if live[index].source_count >= source_measure(view, len(its_blocks), sum(b.meta.nb_objects for b in its_blocks))
    }
    runs: list[list[SourceBlock]] = [[]]
    for block, holder in zip(blocks, holder_of, strict=True):
        if holder in valid:
            runs.append([])
        else:
            runs[-1].append(block)
    specs = []
    for run in runs:
        for cut in cut_blocks(run):
            lo, hi = cut[0].meta.insert_time_ns, cut[-1].meta.insert_time_ns + INSERT_RESOLUTION_NS
            stale = tuple(p for p in live if p.begin_insert_ns < hi and p.end_insert_ns > lo)
            specs.append(PartitionSpec(view, instance_id, tuple(cut), stale))
    return specs


def cut_blocks(blocks: Sequence[SourceBlock]) -> list[list[SourceBlock]]:
    """Insert-ordered blocks cut by insert hour and size, never between blocks of one insert time."""
    cuts: list[list[SourceBlock]] = []
    objects = 0
    for block in blocks:
        if cuts:
            last = cuts[-1][-1].meta.insert_time_ns
            new_hour = block.meta.insert_time_ns // HOUR_NS != cuts[-1][0].meta.insert_time_ns // HOUR_NS
            full = len(cuts[-1]) >= MAX_PARTITION_BLOCKS or objects + block.meta.nb_objects > MAX_PARTITION_OBJECTS
            if new_hour or (full and block.meta.insert_time_ns > last):
                cuts.append([])
                objects = 0
        else:
            cuts.append([])
        cuts[-1].append(block)
        objects += block.meta.nb_objects
    return cuts


@dataclass(frozen=True)
class HeldCount:
    """A valid partition with the blocks and objects its range holds."""

    partition: Partition
    blocks: int
    objects: int


def held_counts(view: View, groups: Sequence[CoverageGroup], partitions: Sequence[Partition]) -> list[HeldCount]:
    """The instance's partitions of the view's schema with what they hold, by begin (a fresh instance)."""
    by_begin = {g.partition_begin_ns: g for g in groups if g.partition_begin_ns is not None}
    return [
        HeldCount(p, by_begin[p.begin_insert_ns].blocks, by_begin[p.begin_insert_ns].objects)
        for p in live_of_schema(view, partitions)
        if p.begin_insert_ns in by_begin
    ]


def held_by_blocks(partitions: Sequence[Partition], blocks: Sequence[SourceBlock]) -> list[HeldCount]:
    """`held_counts` from the blocks themselves (insert-ordered): what each partition's range holds."""
    ordered = sorted(partitions, key=lambda p: p.begin_insert_ns)
    times = [b.meta.insert_time_ns for b in blocks]
    objects = np.cumsum([0] + [b.meta.nb_objects for b in blocks])
    held = []
    for partition in ordered:
        lo = bisect.bisect_left(times, partition.begin_insert_ns)
        hi = bisect.bisect_left(times, partition.end_insert_ns)
        held.append(HeldCount(partition, hi - lo, int(objects[hi] - objects[lo])))
    return held


def tier(blocks: int) -> int:
    """0 below MERGE_FANIN blocks, 1 below MERGE_FANIN², ..."""
    level = 0
    while blocks >= MERGE_FANIN ** (level + 1):
        level += 1
    return level


def plan_merges(held: Sequence[HeldCount]) -> list[list[HeldCount]]:
    """Groups of neighbouring partitions to merge: MERGE_FANIN of one tier in one insert hour, or fewer
    when the next would overflow the partition bounds (the group is then as full as it gets)."""
    merges = []
    start = 0
    while start < len(held):
        group = _merge_group(held, start)
        if group:
            merges.append(group)
            start += len(group)
        else:
            start += 1
    return merges


def _merge_group(held: Sequence[HeldCount], start: int) -> list[HeldCount]:
    first = held[start]
    if _is_full(first.blocks, first.objects):
        return []
    hour = first.partition.begin_insert_ns // HOUR_NS
    group = [first]
    blocks, objects = first.blocks, first.objects
    for candidate in held[start + 1 : start + MERGE_FANIN]:
        same_run = (
            tier(candidate.blocks) == tier(first.blocks) and candidate.partition.begin_insert_ns // HOUR_NS == hour
        )
        if not same_run:
            return []
        if blocks + candidate.blocks > MAX_PARTITION_BLOCKS or objects + candidate.objects > MAX_PARTITION_OBJECTS:
            return group if len(group) >= 2 else []
        group.append(candidate)
        blocks, objects = blocks + candidate.blocks, objects + candidate.objects
    return group if len(group) == MERGE_FANIN else []


def _is_full(blocks: int, objects: int) -> bool:
    return blocks >= MAX_PARTITION_BLOCKS or objects >= MAX_PARTITION_OBJECTS
