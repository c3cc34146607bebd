"""A view instance as a table: bring its partitions up to date, then read them as one dataset."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.dataset as ds

from spanlake import tracing
from spanlake.lakehouse.catalog_changes import Generation, QueryMark
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.jit import FreshRows, Instance, fresh_partitions
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import for_query
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.source_blocks import ProcessTiming
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.view import View

GLOBAL = "global"


def view_set(lake: Lake, name: str) -> View:
    """The view set of that name, built-in or SQL-defined; QueryError for an unknown one."""
    view = VIEW_SETS.get(name)
    if view is not None:
        return view
    stored = lake.sql_views.views(lake).get(name)
    if stored is None:
        known = sorted([*VIEW_SETS, *lake.sql_views.views(lake)])
        raise QueryError(f"unknown view set '{name}'; view_instance accepts {', '.join(known)}")
    return stored.view


def canonical_instance_id(view: View, instance_id: str) -> str:
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
        raise QueryError(
            f"{view.name} instances are named by a {view.instance_kind} id (a UUID){also_global}, got '{instance_id}'"
        ) from None


def check_readable(read_scope: ReadScope, view: View, instance_id: str) -> None:
    """QueryError, as for an unknown process or stream, when the instance is outside the read scope."""
    instance = uuid.UUID(instance_id)
    if view.instance_kind == "stream":
        if not read_scope.stream_readable(instance):
            raise QueryError(f"unknown stream '{instance}'")
    elif not read_scope.process_readable(instance):
        raise QueryError(f"unknown process '{instance}'")


def _process_of(lake: Lake, view: View, instance: uuid.UUID) -> ProcessTiming:
    process_id = instance
    if view.instance_kind == "stream":
        found = lake.loop.run(lake.catalog.stream_process(instance))
        if found is None:
            raise QueryError(f"unknown stream '{instance}'")
        process_id = found
    timing = lake.loop.run(lake.catalog.find_timings([process_id])).get(str(process_id))
    if timing is None:
        raise QueryError(f"unknown process '{process_id}'")
    return timing


def _source_filter(view: View, instance_id: str) -> dict[str, object]:
    if view.instance_kind == "stream":
        return {"stream_id": uuid.UUID(instance_id)}
    return {"process_id": uuid.UUID(instance_id), "tags": view.stream_tags}


def instance_rows(
    lake: Lake,
    view: View,
    instance_id: str,
    query_range: tuple[int, int] | None,
    query_began: QueryMark | None = None,
    memory_tail: bool = False,
) -> FreshRows:
    """The up-to-date partitions of a view instance that the query range may need (see `lakehouse/jit.py`);
    with the mark of the query's beginning, as of then (`CatalogChanges.began_query`), else as of now.
    With `memory_tail` (a reader that takes rows as well as files), a small part not committed yet comes
    as rows decoded in memory (`FreshRows.tail`) instead of being written first.

    No catalog round trip when nothing was written to the instance (a stream's: to its process) since a
    query found it fresh (the usual warm query: `fresh_instances`), one when it is fresh; for a live
    process, only what arrived since the last query is materialized. Global instances are not
    materialized here: the maintenance daemon keeps them (as micromegas)."""
    instance_id = canonical_instance_id(view, instance_id)
    if instance_id == GLOBAL:

        def fetch_global() -> FreshRows:
            with tracing.async_span("catalog.fetch_for_query"):
                return FreshRows(
                    lake.loop.run(lake.catalog.partitions_for_query(view.name, GLOBAL, view.schema_hash, query_range))
                )

        # The global set is fetched for its range: reused for that range only (in the key).
        key = (view.name, GLOBAL, view.schema_hash, query_range)
        return lake.fresh_instances.rows(
            key, None, lake.catalog_changes.generation(lake, GLOBAL, query_began), fetch_global
        )

    def timings_of() -> dict[str, ProcessTiming]:
        timing = _process_of(lake, view, uuid.UUID(instance_id))
        return {timing.process.process_id: timing}

    instance = Instance(view, instance_id, _source_filter(view, instance_id))
    generation = _instance_generation(lake, view, instance_id, query_began)
    # Views merged at query time (`collapsed`) read files only.
    in_memory = memory_tail and view.merge is None
    fresh = lake.fresh_instances.rows(
        (view.name, instance_id, view.schema_hash),
        query_range,
        generation,
        lambda: fresh_partitions(lake, instance, query_range, timings_of, in_memory),
    )
    return FreshRows(for_query(fresh.partitions, view.schema_hash, query_range), fresh.tail, fresh.frames)


def _instance_generation(lake: Lake, view: View, instance_id: str, query_began: QueryMark | None) -> Generation | None:
    """What changes when an instance's query could find something else: the generation of its process
    (its blocks announce their process) and, for a stream, of the stream (its partitions announce it);
    None when changes cannot be followed (nor an unknown stream's process found)."""
    changes = lake.catalog_changes
    if view.instance_kind == "process":
        return changes.generation(lake, instance_id, query_began)
    process_id = lake.fresh_instances.stream_process(instance_id, lambda: _stream_process(lake, instance_id))
    if process_id is None:
        return None
    return changes.generation_of(lake, (process_id, instance_id), query_began)


def _stream_process(lake: Lake, stream_id: str) -> str | None:
    found = lake.loop.run(lake.catalog.stream_process(uuid.UUID(stream_id)))
    return None if found is None else str(found)


def instance_files(
    lake: Lake, view: View, instance_id: str, query_range: tuple[int, int] | None, query_began: QueryMark | None = None
) -> list[str]:
    """Object-store keys of the instance's up-to-date partitions (`instance_rows`, everything committed)."""
    return [p.file_path for p in instance_rows(lake, view, instance_id, query_range, query_began).partitions]


def collapsed(view: View, lake: Lake, keys: list[str]) -> pa.Table | None:
    """For `processes` and `streams`: one row per process (stream) across partitions, as micromegas's
    merge query gives. None for the other views."""
    if view.merge is None:
        return None
    filesystem, root = lake.store.arrow_filesystem()
    with tracing.async_span("parquet.read"):
        partitions = ds.dataset(
            [f"{root}/{key}" for key in keys], schema=view.schema, format="parquet", filesystem=filesystem
        )
        table = partitions.to_table()
    with tracing.async_span("lakehouse.merge_rows"):
        return lake.off_runtime.run(view.merge, table)  # a SQL view's merge query plans: off the runtime
