"""`trace_spans('<trace id>')`: every span of one trace, across processes, OpenTelemetry (OTLP) and
spanlake SDK spans alike, in one table.

The trace index (`trace_index`, filled at ingestion) names the processes holding the trace and the
time range of its spans in each: only those processes are read, and in each only the partitions of
that range (materialized just in time, like `view_instance`). The query's own time range is not
applied: the trace defines its range.

Ids are one type across sources: `span_id` and `parent_span_id` are 16 lowercase hex characters (a
W3C parent-id), so a child's `parent_span_id` equals its parent's `span_id`, also across processes.
`depth` counts the span's ancestors within the trace; a span whose parent is not in the trace is a
root (depth 0). SDK thread spans that ran under an async span of the trace are in it too
(`span_traces` lists them, `thread_spans` gives their names, times and nesting). Depths are resolved
level by level over the whole trace with numpy (pointer jumping, `views.async_events.chain_depths`),
never span by span. `attributes` and `events` are
jsonb, as the properties columns (read them with `jsonb_format_json`, `jsonb_get`, ...); `links` are
`{trace_id, span_id}` in hex. `status` is OTLP's (`UNSET`, `OK`, `ERROR`); an SDK span is `ERROR` when
it has an `error` attribute (the exception's type, set by the SDK), else `UNSET`. Rows come in begin order.
"""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from spanlake.lakehouse.errors import QueryError, shown
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.instances import instance_files
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views import async_events, jsonb, otel_spans, span_traces, thread_spans, traces
from spanlake.views.async_events import chain_depths
from spanlake.views.columns import matching_rows
from spanlake.views.properties import property_get
from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required

LINK = pa.struct([pa.field("trace_id", pa.utf8(), nullable=False), pa.field("span_id", pa.utf8(), nullable=False)])
SCHEMA = pa.schema(
    [
        required("trace_id", pa.utf8()),
        required("process_id", pa.utf8()),
        optional("exe", pa.utf8()),
        required("stream_id", pa.utf8()),
        required("span_id", pa.utf8()),
        optional("parent_span_id", pa.utf8()),
        required("name", pa.utf8()),
        required("target", pa.utf8()),
        required("begin", TIMESTAMP),
        optional("end", TIMESTAMP),
        optional("duration", pa.int64()),
        required("depth", pa.uint32()),
        required("kind", pa.utf8()),
        required("status", pa.utf8()),
        required("attributes", DICT_JSONB),
        required("events", pa.binary()),
        required("links", pa.list_(LINK)),
    ]
)
TRACE_READERS = 4  # processes whose spans are read at once
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SCOPE_NAME = "otel.scope.name"
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TraceLocation:
    """One process holding spans of the trace, and the range (ns) of their times there."""

    process_id: str
    exe: str
    begin_ns: int
    end_ns: int


def parse_trace_id(text: str) -> bytes:
    """The 16 bytes of a W3C trace id (32 hex characters, not all zero); QueryError naming the input."""
    lowered = text.strip().lower()
    if not _TRACE_ID.fullmatch(lowered) or lowered == "0" * 32:
        raise QueryError(
            f"trace_spans: the trace id must be 32 hexadecimal characters, not all zero (a W3C trace id),"
            f" given {shown(text)}"
        )
    return bytes.fromhex(lowered)


def trace_locations(lake: Lake, trace_id: bytes) -> list[TraceLocation]:
    """Where the trace's spans are, from the trace index (one indexed lookup, whatever the lake's size)."""
    rows = lake.loop.run(lake.catalog.trace_processes(trace_id))
    return [TraceLocation(str(r["process_id"]), r["exe"], r["begin_ns"], r["end_ns"]) for r in rows]


def trace_spans(lake: Lake, trace_id_text: str, read_scope: ReadScope | None = None) -> pa.Table:
    """The spans of the trace across the processes the index names (empty for an unknown trace). With a
    read scope, only its readable processes' spans: another audience's process is as absent."""
    trace_id = parse_trace_id(trace_id_text)
    locations = trace_locations(lake, trace_id)
    if read_scope is not None:
        locations = [loc for loc in locations if read_scope.process_readable(uuid.UUID(loc.process_id))]
    # Each process's spans are read (and materialized just in time) concurrently: their catalog round
    # trips and file writes overlap instead of adding up.
    reads = [(source, location) for location in locations for source in (_otlp_spans, _sdk_spans)]
    with ThreadPoolExecutor(TRACE_READERS, thread_name_prefix="trace-spans") as readers:
        parts = list(readers.map(lambda read: read[0](lake, trace_id, read[1]), reads))
    spans = pa.concat_tables([p for p in parts if p.num_rows] or [_SPANS.empty_table()])
    return _finished(spans, trace_id.hex())


# ---------------------------------------------------------------------------------------------------
# Spans of each source, as one intermediate schema: ids as uint64, times as int64 ns.

_SPANS = pa.schema(
    [
        ("process_id", pa.utf8()),
        ("exe", pa.utf8()),
        ("stream_id", pa.utf8()),
        ("span", pa.uint64()),
        ("parent", pa.uint64()),  # 0: none
        ("name", pa.utf8()),
        ("target", pa.utf8()),
        ("begin", pa.int64()),
        ("end", pa.int64()),
        ("kind", pa.utf8()),
        ("status", pa.utf8()),
        ("attributes", DICT_JSONB),
        ("events", pa.binary()),
        ("links", pa.list_(LINK)),
    ]
)
_OTEL_COLUMNS = [
    "stream_id",
    "span_id",
    "parent_span_id",
    "start_time",
    "end_time",
    "name",
    "kind",
    "status",
    "properties",
    "events",
    "links",
]


def _otlp_spans(lake: Lake, trace_id: bytes, location: TraceLocation) -> pa.Table:
    """The trace's OTLP spans in one process (its `otel_spans` partitions of the trace's range)."""
    view = VIEW_SETS[otel_spans.VIEW_SET_NAME]
    rows = _read(lake, view.name, location, _OTEL_COLUMNS, ds.field("trace_id") == pa.scalar(trace_id, pa.binary(16)))
    n = rows.num_rows
    properties = rows.column("properties").combine_chunks() if n else pa.array([], DICT_JSONB)
    columns = {
        "process_id": _repeat(location.process_id, n),
        "exe": _repeat(location.exe, n),
        "stream_id": rows.column("stream_id").cast(pa.utf8()),
        "span": _ids(rows.column("span_id")),
        "parent": _ids(rows.column("parent_span_id")),
        "name": rows.column("name").cast(pa.utf8()),
        "target": pc.fill_null(property_get(properties, _SCOPE_NAME).cast(pa.utf8()), ""),
        "begin": rows.column("start_time").cast(pa.int64()),
        "end": rows.column("end_time").cast(pa.int64()),
        "kind": pc.utf8_lower(rows.column("kind").cast(pa.utf8())),
        "status": rows.column("status").cast(pa.utf8()),
        "attributes": properties,
        "events": rows.column("events"),
        "links": _otlp_links(rows.column("links")),
    }
    return pa.table(columns, schema=_SPANS)


def _sdk_spans(lake: Lake, trace_id: bytes, location: TraceLocation) -> pa.Table:
    """The trace's SDK spans in one process, async and thread spans (`span_traces` lists both; a thread
    span's derived id is negative as int64)."""
    facts = _read(lake, span_traces.VIEW_SET_NAME, location, _FACT_COLUMNS, ds.field("trace_id") == trace_id.hex())
    is_thread = pc.less(facts.column("span_id"), 0)
    return pa.concat_tables(
        [
            _async_spans(lake, location, facts.filter(pc.invert(is_thread))),
            _thread_spans(lake, location, facts.filter(is_thread)),
        ]
    )


def _async_spans(lake: Lake, location: TraceLocation, facts: pa.Table) -> pa.Table:
    """The trace's SDK async spans in one process: their trace facts with their names, targets and
    parents within the process from their begin events (`async_events`); ends missing from the facts (a
    span ending in a later partition) are read from the end events after the trace's range."""
    if not facts.num_rows:
        return _SPANS.empty_table()
    span_ids = facts.column("span_id").combine_chunks()
    begin_events = _events(lake, location, async_events.BEGIN, span_ids, ["parent_span_id", "name", "target"])
    rows, found = matching_rows(span_ids.to_numpy(), begin_events.column("span_id").to_numpy())
    facts, rows = facts.filter(pa.array(found)), rows[found]  # a begin event left out of async_events
    begins = begin_events.take(pa.array(rows))
    n = facts.num_rows
    in_process_parent = pa.array(begins.column("parent_span_id").to_numpy().view(np.uint64))
    columns = {
        "process_id": _repeat(location.process_id, n),
        "exe": _repeat(location.exe, n),
        "stream_id": facts.column("stream_id"),
        "span": pa.array(facts.column("span_id").to_numpy().view(np.uint64)),
        "parent": pc.coalesce(_hex_to_ids(facts.column("parent_span_hex")), in_process_parent),
        "name": begins.column("name").cast(pa.utf8()),
        "target": begins.column("target").cast(pa.utf8()),
        "begin": facts.column("begin").cast(pa.int64()),
        "end": _ends(lake, location, facts),
        "kind": facts.column("kind"),
        "status": pc.if_else(traces.sdk_errors(facts.column("attributes")), "ERROR", "UNSET"),
        "attributes": _json_to_jsonb(facts.column("attributes")),
        "events": pa.repeat(pa.scalar(_EMPTY_ARRAY, pa.binary()), n),
        "links": _sdk_links(facts.column("links")),
    }
    return pa.table(columns, schema=_SPANS)


_FACT_COLUMNS = ["stream_id", "span_id", "parent_span_hex", "kind", "attributes", "links", "begin", "end"]
_THREAD_COLUMNS = ["id", "parent", "begin", "end", "name", "target"]


def _thread_spans(lake: Lake, location: TraceLocation, facts: pa.Table) -> pa.Table:
    """The trace's SDK thread spans in one process, stream by stream (`_stream_thread_spans`)."""
    streams = pc.unique(facts.column("stream_id")).to_pylist()
    parts = [
        _stream_thread_spans(lake, location, stream, facts.filter(pc.equal(facts.column("stream_id"), stream)))
        for stream in streams
    ]
    return pa.concat_tables(parts) if parts else _SPANS.empty_table()


def _stream_thread_spans(lake: Lake, location: TraceLocation, stream_id: str, facts: pa.Table) -> pa.Table:
    """The thread spans of one stream that the trace facts list: names, targets, times and thread parents
    from the stream's call tree (`thread_spans`). A span's parent is its thread parent when that one ran
    under the same async span (it is listed here with the same one), else the async span it ran under."""
    span_ids = facts.column("span_id").to_numpy().view(np.uint64)
    event_ids = thread_spans.thread_event_ids(stream_id, span_ids)
    keep = ds.field("id").isin(pa.array(event_ids))
    tree = _read(lake, thread_spans.VIEW_SET_NAME, location, _THREAD_COLUMNS, keep, instance_id=stream_id)
    rows, found = matching_rows(event_ids, tree.column("id").to_numpy())
    facts, tree = facts.filter(pa.array(found)), tree.take(pa.array(rows[found]))
    own = thread_spans.thread_span_ids(stream_id, tree.column("id").to_numpy())
    thread_parent = thread_spans.thread_span_ids(stream_id, tree.column("parent").to_numpy())
    ran_under = _hex_to_ids(facts.column("parent_span_hex")).to_numpy(zero_copy_only=False)
    parent_rows, listed = matching_rows(thread_parent, own)
    nested = listed & (ran_under[parent_rows] == ran_under)
    n = facts.num_rows
    columns = {
        "process_id": _repeat(location.process_id, n),
        "exe": _repeat(location.exe, n),
        "stream_id": _repeat(stream_id, n),
        "span": pa.array(own),
        "parent": pa.array(np.where(nested, thread_parent, ran_under)),
        "name": tree.column("name").cast(pa.utf8()),
        "target": tree.column("target").cast(pa.utf8()),
        "begin": tree.column("begin").cast(pa.int64()),
        "end": tree.column("end").cast(pa.int64()),
        "kind": facts.column("kind"),
        "status": pa.repeat(pa.scalar("UNSET", pa.utf8()), n),
        "attributes": _json_to_jsonb(facts.column("attributes")),
        "events": pa.repeat(pa.scalar(_EMPTY_ARRAY, pa.binary()), n),
        "links": _sdk_links(facts.column("links")),
    }
    return pa.table(columns, schema=_SPANS)


_EMPTY_ARRAY = jsonb.encode([])


def _events(lake: Lake, location: TraceLocation, event_type: str, span_ids: pa.Array, columns: list[str]) -> pa.Table:
    """The process's async events of this type for these spans, in the location's range."""
    keep = (ds.field("event_type") == event_type) & ds.field("span_id").isin(span_ids)
    return _read(lake, async_events.VIEW_SET_NAME, location, ["span_id", *columns], keep)


def _ends(lake: Lake, location: TraceLocation, facts: pa.Table) -> pa.Array:
    """Each span's end: from its facts, else from its end event after the trace's range (NULL while open)."""
    ends = facts.column("end").cast(pa.int64()).combine_chunks()
    missing = pc.is_null(ends)
    if not pc.any(missing).as_py():
        return ends
    after = TraceLocation(location.process_id, location.exe, location.begin_ns, _NEVER)
    span_ids = facts.column("span_id").combine_chunks()
    end_events = _events(lake, after, async_events.END, span_ids.filter(missing), ["time"])
    if not end_events.num_rows:
        return ends
    rows, found = matching_rows(span_ids.to_numpy(), end_events.column("span_id").to_numpy())
    late = end_events.column("time").cast(pa.int64()).take(pa.array(rows))
    return pc.coalesce(ends, pc.if_else(pa.array(found), late, pa.scalar(None, pa.int64())))


def _hex_to_ids(column: pa.ChunkedArray) -> pa.Array:
    """16-hex span ids as uint64 (NULL stays NULL)."""
    texts = column.combine_chunks()
    n = len(texts)
    if not n:
        return pa.array([], pa.uint64())
    filled = pc.fill_null(texts, "0" * 16)
    offsets = np.frombuffer(filled.buffers()[1], np.int32, count=n + 1, offset=filled.offset * 4)
    digits = bytes(filled.buffers()[2])[offsets[0] : offsets[0] + 16 * n]
    values = np.frombuffer(bytes.fromhex(digits.decode()), ">u8").astype(np.uint64)
    return pa.array(values, pa.uint64(), mask=~texts.is_valid().to_numpy(zero_copy_only=False))


def _sdk_links(column: pa.ChunkedArray) -> pa.Array:
    """span_traces' links (`span_hex`) with this table's field names (`span_id`)."""
    links = column.combine_chunks()
    items = links.values  # the whole child array: `offsets` index into it, also for a slice
    renamed = pa.StructArray.from_arrays([items.field("trace_id"), items.field("span_hex")], fields=list(LINK))
    return pa.ListArray.from_arrays(links.offsets, renamed, pa.list_(LINK))


def _json_to_jsonb(column: pa.ChunkedArray) -> pa.Array:
    """JSON text attributes as the jsonb dictionary the OTLP spans have, encoded once per distinct text."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = [jsonb.encode(json.loads(text)) for text in encoded.dictionary.to_pylist()]
    return pa.DictionaryArray.from_arrays(encoded.indices, pa.array(distinct, pa.binary()))


def _read(
    lake: Lake,
    view_name: str,
    location: TraceLocation,
    columns: list[str],
    keep: ds.Expression,
    instance_id: str | None = None,
) -> pa.Table:
    """The rows of the view's instance (by default the location's process), in the partitions of the
    trace's range there, that `keep` keeps."""
    view = VIEW_SETS[view_name]
    keys = instance_files(lake, view, instance_id or location.process_id, (location.begin_ns, location.end_ns))
    if not keys:
        return view.schema.empty_table().select(columns)
    filesystem, root = lake.store.arrow_filesystem()
    dataset = ds.dataset([f"{root}/{k}" for k in keys], schema=view.schema, format="parquet", filesystem=filesystem)
    return dataset.to_table(columns=columns, filter=keep)


def _repeat(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.utf8()), n)


def _ids(column: pa.ChunkedArray) -> pa.Array:
    """8-byte big-endian ids (fixed-size binary) as uint64, 0 where null."""
    ids = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    data = ids.buffers()[1]
    values = np.frombuffer(data, ">u8", count=len(ids), offset=ids.offset * 8) if len(ids) else np.zeros(0)
    return pa.array(np.where(ids.is_valid(), values.astype(np.uint64), 0), pa.uint64())


def _otlp_links(column: pa.ChunkedArray) -> pa.Array:
    """otel_spans' jsonb link arrays as lists of {trace_id, span_id}, decoded once per distinct value."""
    encoded = pc.dictionary_encode(column.combine_chunks() if column.num_chunks else pa.array([], pa.binary()))
    distinct = [_links_of(value) for value in encoded.dictionary.to_pylist()]
    return pa.array(distinct, pa.list_(LINK)).take(encoded.indices)


def _links_of(value: bytes) -> list[dict[str, str]]:
    links = jsonb.decode(value)
    return [{"trace_id": str(link["trace_id"]), "span_id": str(link["span_id"])} for link in links]


# ---------------------------------------------------------------------------------------------------
# The trace as one table


def _finished(spans: pa.Table, trace_hex: str) -> pa.Table:
    """Depths over the whole trace, ids as hex, rows in begin order."""
    spans = spans.sort_by([("begin", "ascending"), ("span", "ascending")])
    span_ids = spans.column("span").to_numpy()
    parent_ids = spans.column("parent").to_numpy()
    n = len(span_ids)
    begin = spans.column("begin")
    end = spans.column("end")
    columns = [
        pa.repeat(pa.scalar(trace_hex, pa.utf8()), n),
        spans.column("process_id"),
        spans.column("exe"),
        spans.column("stream_id"),
        span_traces.hex_strings(span_ids.view(np.int64)),
        pc.if_else(pa.array(parent_ids != 0), span_traces.hex_strings(parent_ids.view(np.int64)), None),
        spans.column("name"),
        spans.column("target"),
        begin.cast(TIMESTAMP),
        end.cast(TIMESTAMP),
        pc.subtract(end, begin),
        pa.array(_depths(span_ids, parent_ids), pa.uint32()),
        spans.column("kind"),
        spans.column("status"),
        spans.column("attributes"),
        spans.column("events"),
        spans.column("links"),
    ]
    return pa.table(columns, schema=SCHEMA)


def _depths(span_ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """Each span's number of ancestors in the trace (a parent not in the trace makes a root)."""
    rows, found = matching_rows(parent_ids, span_ids)
    return chain_depths(np.where(found & (parent_ids != 0), rows, -1))
