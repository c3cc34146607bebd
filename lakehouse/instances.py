"""A view instance as a table: bring its partitions up to date, then read them as one dataset."""

from __future__ import annotations

import uuid

import pyarrow.dataset as ds

from lakehouse.errors import QueryError
from lakehouse.jit import jit_update
from lakehouse.lake import Lake
from lakehouse.metadata_views import collapse_processes, collapse_streams
from lakehouse.partitions import fetch_for_query
from lakehouse.source_blocks import ProcessTiming, find_stream_process, find_timings, source_blocks
from lakehouse.view_sets import VIEW_SETS, ViewSet

GLOBAL = "global"


def view_set(name: str) -> ViewSet:
    view = VIEW_SETS.get(name)
    if view is None:
        raise QueryError(f"unknown view set '{name}'; view_instance accepts {', '.join(sorted(VIEW_SETS))}")
    return view


def canonical_instance_id(view: ViewSet, instance_id: str) -> str:
    """'global', or the lower-case hyphenated UUID of a process or stream; QueryError otherwise."""
    if instance_id == GLOBAL:
        if not view.has_global_instance:
            raise QueryError(f"{view.name} has no global instance: name a {view.instance_kind} id")
        return GLOBAL
    if view.instance_kind is None:
        raise QueryError(f"{view.name} has only a global instance: use view_instance('{view.name}', 'global')")
    try:
        return str(uuid.UUID(instance_id))
    except ValueError:
        also_global = " or 'global'" if view.has_global_instance else ""
        raise QueryError(f"{view.name} instances are named by a {view.instance_kind} id (a UUID){also_global},"
                         f" got '{instance_id}'") from None


def _process_of(lake: Lake, view: ViewSet, instance: uuid.UUID) -> ProcessTiming:
    process_id = instance
    if view.instance_kind == "stream":
        found = lake.loop.run(find_stream_process(lake.pool, instance))
        if found is None:
            raise QueryError(f"unknown stream '{instance}'")
        process_id = found
    timing = lake.loop.run(find_timings(lake.pool, [process_id])).get(str(process_id))
    if timing is None:
        raise QueryError(f"unknown process '{process_id}'")
    return timing


def materialize_instance(lake: Lake, view: ViewSet, instance_id: str, query_range: tuple[int, int] | None) -> int:
    """JIT: writes the stale partitions of the instance for the range; returns how many."""
    if instance_id == GLOBAL:
        blocks = lake.loop.run(source_blocks(lake.pool, tags=view.stream_tags, event_range=query_range))
        process_ids = sorted({uuid.UUID(b.meta.process_id) for b in blocks}) if view.reads_payloads else []
        timings = lake.loop.run(find_timings(lake.pool, process_ids))
    else:
        instance = uuid.UUID(instance_id)
        timing = _process_of(lake, view, instance)
        timings = {timing.process.process_id: timing}
        if view.instance_kind == "stream":
            blocks = lake.loop.run(source_blocks(lake.pool, stream_id=instance, event_range=query_range))
        else:
            blocks = lake.loop.run(source_blocks(lake.pool, process_id=instance, tags=view.stream_tags,
                                                 event_range=query_range))
    return jit_update(lake, view, instance_id, timings, blocks)


def instance_dataset(lake: Lake, view: ViewSet, instance_id: str, query_range: tuple[int, int] | None) -> ds.Dataset:
    """The instance's up-to-date partitions (those the query range may need) as a pyarrow dataset."""
    instance_id = canonical_instance_id(view, instance_id)
    materialize_instance(lake, view, instance_id, query_range)
    partitions = lake.loop.run(fetch_for_query(lake.pool, view.name, instance_id, view.file_schema_hash, query_range))
    filesystem, root = lake.store.arrow_filesystem()
    dataset = ds.dataset([f"{root}/{p.file_path}" for p in partitions], schema=view.schema, format="parquet",
                         filesystem=filesystem)
    if view.name in _COLLAPSED:
        # One row per process (stream) across partitions, as micromegas's merge query gives.
        dataset = ds.dataset(_COLLAPSED[view.name](dataset.to_table()))
    return dataset


_COLLAPSED = {"processes": collapse_processes, "streams": collapse_streams}


