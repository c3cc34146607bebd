"""Just-in-time materialization of one view instance (a process's or a stream's partitions).

The instance's blocks are cut into partition specs: one per insert hour, split further where a spec
would exceed `MAX_OBJECTS_PER_PARTITION` (only between blocks of different insert times, so ranges
never overlap). A spec is fresh when exactly one live partition overlaps it, with the view's schema
hash and at least as many source objects; the others are rebuilt from their blocks, replacing the
partitions they overlap. Two queries materializing the same instance at once end with one consistent
partition set: commits serialize on the instance's advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from spanlake import tracing
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import Partition, PartitionTarget, RetireMatch, fetch_overlapping, write_partition
from spanlake.lakehouse.source_blocks import HOUR_NS, HourSummary
from spanlake.lakehouse.view_rows import Timings, view_rows
from spanlake.views.meta import SourceBlock
from spanlake.views.view import View

log = logging.getLogger(__name__)

MAX_OBJECTS_PER_PARTITION = 4 * 1024 * 1024
# A partition's insert range is [first block insert, last block insert + 1 µs): PostgreSQL keeps µs.
_INSERT_RESOLUTION_NS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    view: View
    instance_id: str
    blocks: tuple[SourceBlock, ...]

    @property
    def begin_insert_ns(self) -> int:
        return self.blocks[0].meta.insert_time_ns

    @property
    def end_insert_ns(self) -> int:
        return self.blocks[-1].meta.insert_time_ns + _INSERT_RESOLUTION_NS

    @property
    def source_count(self) -> int:
        if self.view.counts_blocks:
            return len(self.blocks)
        return sum(b.meta.nb_objects for b in self.blocks)


def plan_specs(
    view: View, instance_id: str, blocks: list[SourceBlock], max_objects: int = MAX_OBJECTS_PER_PARTITION
) -> list[PartitionSpec]:
    """Cuts insert-ordered blocks into specs by insert hour and size."""
    specs: list[PartitionSpec] = []
    current: list[SourceBlock] = []
    objects = 0
    for block in blocks:
        new_hour = current and block.meta.insert_time_ns // HOUR_NS != current[0].meta.insert_time_ns // HOUR_NS
        too_big = (
            current
            and objects + block.meta.nb_objects > max_objects
            and block.meta.insert_time_ns > current[-1].meta.insert_time_ns
        )
        if new_hour or too_big:
            specs.append(PartitionSpec(view, instance_id, tuple(current)))
            current, objects = [], 0
        current.append(block)
        objects += block.meta.nb_objects
    if current:
        specs.append(PartitionSpec(view, instance_id, tuple(current)))
    return specs


def is_fresh(spec: PartitionSpec, existing: Iterable[Partition]) -> bool:
    return _covered(spec.view, spec.begin_insert_ns, spec.end_insert_ns, spec.source_count, existing)


def _covered(view: View, begin_ns: int, end_ns: int, source_count: int, existing: Iterable[Partition]) -> bool:
    """Exactly one live partition overlaps [begin, end), of the view's schema, from as many source objects."""
    overlapping = [p for p in existing if p.begin_insert_ns < end_ns and p.end_insert_ns > begin_ns]
    return (
        len(overlapping) == 1
        and overlapping[0].file_schema_hash == view.schema_hash
        and overlapping[0].source_count >= source_count
    )


def hours_are_fresh(
    view: View, hours: Iterable[HourSummary], existing: list[Partition], max_objects: int = MAX_OBJECTS_PER_PARTITION
) -> bool:
    """The spec check of `plan_specs` + `is_fresh`, from per-hour summaries: an hour within the size limit
    is exactly one spec; a larger one is several, checked together."""
    for hour in hours:
        count = hour.blocks if view.counts_blocks else hour.objects
        end = hour.last_insert_ns + _INSERT_RESOLUTION_NS
        if hour.objects > max_objects:
            # Split into several specs: fresh when the partitions over the hour, all of this schema and
            # inside the hour, account for every source object.
            parts = [p for p in existing if p.begin_insert_ns < end and p.end_insert_ns > hour.first_insert_ns]
            if not (
                parts
                and all(p.file_schema_hash == view.schema_hash for p in parts)
                and all(p.begin_insert_ns // HOUR_NS == hour.first_insert_ns // HOUR_NS for p in parts)
                and sum(p.source_count for p in parts) >= count
            ):
                return False
        elif not _covered(view, hour.first_insert_ns, end, count, existing):
            return False
    return True


def stale_specs(lake: Lake, specs: list[PartitionSpec]) -> list[PartitionSpec]:
    if not specs:
        return []
    with tracing.async_span("catalog.fetch_overlapping"):
        existing = lake.loop.run(
            fetch_overlapping(
                lake.pool, specs[0].view.name, specs[0].instance_id, specs[0].begin_insert_ns, specs[-1].end_insert_ns
            )
        )
    return [spec for spec in specs if not is_fresh(spec, existing)]


def materialize(lake: Lake, spec: PartitionSpec, timings: Timings) -> Partition | None:
    """Builds the spec's rows, writes its file and commits it. None if a twin was committed meanwhile."""
    with tracing.async_span("lakehouse.materialize_partition"):
        target = PartitionTarget(
            spec.view.name,
            spec.instance_id,
            spec.begin_insert_ns,
            spec.end_insert_ns,
            spec.view.schema,
            spec.view.schema_hash,
            spec.view.time_columns,
            RetireMatch.OVERLAPPING,
        )
        rows = view_rows(lake, spec.view, timings, spec.blocks)
        return write_partition(lake, target, spec.source_count, rows)


def jit_update(lake: Lake, view: View, instance_id: str, timings: Timings, blocks: list[SourceBlock]) -> int:
    """Brings the instance's partitions covering `blocks` up to date; returns how many were written."""
    written = 0
    for spec in stale_specs(lake, plan_specs(view, instance_id, blocks)):
        if materialize(lake, spec, timings) is not None:
            written += 1
    return written
