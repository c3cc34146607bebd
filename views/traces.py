"""The `traces` view: one row per trace, over every process (global, kept by the maintenance daemon
like `processes` and `streams`): its root span's name, process and exe, its begin, end and duration,
its span and process counts, the processes it went through, and whether a span failed.

Its rows come from OTLP traces blocks (span status `ERROR` is an error) and from the SDK's cpu blocks
(the spans of `span_traces`, async spans named by their begin events in `async_events`, and the thread
spans that ran under them, counted as `trace_spans` lists them; an `error` attribute, which the SDK
sets to the exception's type, is an error). A partition holds one
row per trace and process seen in its blocks; a query collapses the rows of all partitions into one
row per trace (`collapse`), as `processes` does. The root is a span without parent (no parent id in
OTLP; no remote or hand-off parent and no parent in its process for the SDK), the earliest one if
several. An SDK span's end counts when its end event is among the same partition's blocks (else its
begin does): a trace's `end` is the latest known end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views import async_events, span_traces
from spanlake.views.columns import matching_rows
from spanlake.views.meta import OTLP_TRACES_FORMAT
from spanlake.views.otel_spans import STATUS_CODES, OtelSpanColumns
from spanlake.views.schema_types import TIMESTAMP, optional, required, schema_hash
from spanlake.views.view import DAY_SECONDS, OtlpBlock, OtlpRun, TransitBlock, View, process_runs

VIEW_SET_NAME = "traces"

SCHEMA = pa.schema(
    [
        required("trace_id", pa.utf8()),
        optional("root_name", pa.utf8()),
        optional("root_process_id", pa.utf8()),
        optional("root_exe", pa.utf8()),
        required("begin", TIMESTAMP),
        required("end", TIMESTAMP),
        required("duration", pa.int64()),
        required("span_count", pa.int64()),
        required("process_count", pa.int64()),
        required("process_ids", pa.list_(pa.field("item", pa.utf8(), nullable=False))),
        required("has_error", pa.bool_()),
    ]
)
FILE_SCHEMA_HASH = schema_hash(SCHEMA)

# One row per span, whatever its source: what a trace's row is made of.
_SPANS = pa.schema(
    [
        ("trace_id", pa.utf8()),
        ("process_id", pa.utf8()),
        ("exe", pa.utf8()),
        ("name", pa.utf8()),
        ("begin", pa.int64()),
        ("end", pa.int64()),
        ("is_root", pa.bool_()),
        ("is_error", pa.bool_()),
    ]
)
_ERROR = STATUS_CODES.index("ERROR")
SDK_ERROR_ATTRIBUTE = "error"


def otlp_rows(blocks: Iterable[OtlpBlock[OtelSpanColumns]]) -> Iterator[pa.RecordBatch]:
    """The partial trace rows of OTLP traces blocks."""
    parts = [_otlp_spans(OtlpRun.of(run)) for run in process_runs(blocks)]
    yield from _trace_rows(parts)


def _otlp_spans(run: OtlpRun[OtelSpanColumns]) -> pa.Table:
    columns, process = run.columns, run.process
    n = len(columns.start_ns)
    halves = np.frombuffer(np.ascontiguousarray(columns.trace_id, "S16").tobytes(), ">i8").reshape(n, 2)
    return pa.table(
        [
            span_traces.hex_strings(np.ascontiguousarray(halves[:, 0]), np.ascontiguousarray(halves[:, 1])),
            _repeat(process.process_id, n),
            _repeat(process.exe, n),
            columns.name.cast(pa.utf8()),
            pa.array(columns.start_ns, pa.int64()),
            pa.array(np.maximum(columns.start_ns, columns.end_ns), pa.int64()),
            pa.array(~columns.has_parent),
            pa.array(columns.status == _ERROR),
        ],
        schema=_SPANS,
    )


def transit_rows(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    """The partial trace rows of SDK cpu blocks (their spans with trace facts)."""
    blocks = list(blocks)
    facts = pa.Table.from_batches(list(span_traces.rows(blocks)), span_traces.SCHEMA)
    if not facts.num_rows:
        return
    events = pa.Table.from_batches(list(async_events.VIEW.rows_from_transit(blocks)), async_events.SCHEMA)
    begins = events.filter(pc.equal(events.column("event_type"), async_events.BEGIN))
    # A thread span (in `thread_spans`, not here) has no begin event: a null name, never a root.
    rows, found = matching_rows(facts.column("span_id").to_numpy(), begins.column("span_id").to_numpy())
    begins = begins.take(pa.array(rows, mask=~found))
    process_of_stream = {block.block.stream_id: block.process for block in blocks}
    streams = pa.array(list(process_of_stream), pa.utf8())
    stream_rows = pc.index_in(facts.column("stream_id"), value_set=streams)
    processes = process_of_stream.values()
    begin = facts.column("begin").cast(pa.int64())
    spans = pa.table(
        [
            facts.column("trace_id"),
            pa.array([p.process_id for p in processes], pa.utf8()).take(stream_rows),
            pa.array([p.exe for p in processes], pa.utf8()).take(stream_rows),
            begins.column("name").cast(pa.utf8()),
            begin,
            pc.coalesce(facts.column("end").cast(pa.int64()), begin),
            pc.and_kleene(pc.is_null(facts.column("parent_span_hex")), pc.equal(begins.column("parent_span_id"), 0)),
            sdk_errors(facts.column("attributes")),
        ],
        schema=_SPANS,
    )
    yield from _trace_rows([spans])


def sdk_errors(attributes: pa.ChunkedArray) -> pa.Array:
    """Whether each SDK span failed: its attributes (JSON text) name an `error` (the SDK records the
    exception's type there). Parsed once per distinct attributes text."""
    encoded = pc.dictionary_encode(
        attributes.combine_chunks() if isinstance(attributes, pa.ChunkedArray) else attributes
    )
    failed = [SDK_ERROR_ATTRIBUTE in json.loads(text) for text in encoded.dictionary.to_pylist()]
    return pa.array(failed, pa.bool_()).take(encoded.indices)


def _repeat(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.utf8()), n)


def _trace_rows(parts: list[pa.Table]) -> Iterator[pa.RecordBatch]:
    """One row per trace and process of the spans."""
    spans = pa.concat_tables([p for p in parts if p.num_rows] or [_SPANS.empty_table()])
    if not spans.num_rows:
        return
    keys = ["trace_id", "process_id"]
    totals = spans.group_by(keys, use_threads=False).aggregate(
        [("begin", "min"), ("end", "max"), ("begin", "count"), ("is_error", "any")]
    )
    roots = _first_by(spans.filter(spans.column("is_root")), keys, "begin").select([*keys, "name", "exe"])
    totals = totals.sort_by([(k, "ascending") for k in keys])
    root_rows = pc.index_in(_joined(totals, keys), value_set=_joined(roots, keys))
    n = totals.num_rows
    process_ids = totals.column("process_id").combine_chunks()
    begin, end = totals.column("begin_min"), totals.column("end_max")
    table = pa.table(
        [
            totals.column("trace_id"),
            roots.column("name").take(root_rows),
            pc.if_else(pc.is_null(root_rows), pa.scalar(None, pa.utf8()), process_ids),
            roots.column("exe").take(root_rows),
            begin.cast(TIMESTAMP),
            end.cast(TIMESTAMP),
            pc.subtract(end, begin),
            totals.column("begin_count").cast(pa.int64()),
            pa.repeat(pa.scalar(1, pa.int64()), n),
            pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), process_ids),
            totals.column("is_error_any"),
        ],
        schema=SCHEMA,
    )
    yield from table.to_batches()


def _joined(table: pa.Table, keys: list[str]) -> pa.Array:
    """The key columns of each row as one string (keys never hold the separator: hex ids, UUIDs)."""
    return pc.binary_join_element_wise(*(table.column(k) for k in keys), "/").combine_chunks()


def _first_by(table: pa.Table, keys: list[str], order: str) -> pa.Table:
    """The row with the smallest `order` of each key."""
    ordered = table.sort_by([*((k, "ascending") for k in keys), (order, "ascending")])
    joined = _joined(ordered, keys).to_numpy(zero_copy_only=False)
    first = np.ones(len(joined), bool)
    first[1:] = joined[1:] != joined[:-1]
    return ordered.filter(pa.array(first))


def collapse(partitions: pa.Table) -> pa.Table:
    """Rows of several partitions → one row per trace."""
    if not partitions.num_rows:
        return SCHEMA.empty_table()
    parents = pc.list_parent_indices(partitions.column("process_ids"))
    pairs = pa.table(
        {
            "trace_id": partitions.column("trace_id").take(parents),
            "process_id": pc.list_flatten(partitions.column("process_ids")),
        }
    )
    pairs = pairs.group_by(["trace_id", "process_id"], use_threads=False).aggregate([])
    processes = pairs.group_by("trace_id", use_threads=False).aggregate([("process_id", "list")]).sort_by("trace_id")
    totals = (
        partitions.group_by("trace_id", use_threads=False)
        .aggregate([("begin", "min"), ("end", "max"), ("span_count", "sum"), ("has_error", "any")])
        .sort_by("trace_id")
    )
    with_root = partitions.filter(pc.is_valid(partitions.column("root_name")))
    roots = _first_by(with_root, ["trace_id"], "begin")
    root_rows = pc.index_in(totals.column("trace_id"), value_set=roots.column("trace_id").combine_chunks())
    process_lists = processes.column("process_id_list").combine_chunks()
    begin, end = totals.column("begin_min"), totals.column("end_max")
    return pa.table(
        [
            totals.column("trace_id"),
            *(roots.column(name).take(root_rows) for name in ("root_name", "root_process_id", "root_exe")),
            begin,
            end,
            pc.subtract(end.cast(pa.int64()), begin.cast(pa.int64())),
            totals.column("span_count_sum"),
            pc.list_value_length(process_lists).cast(pa.int64()),
            process_lists.cast(SCHEMA.field("process_ids").type),
            totals.column("has_error_any"),
        ],
        schema=SCHEMA,
    )


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind=None,
    has_global_instance=True,
    stream_tags=("cpu", "trace"),
    time_columns=("begin", "end"),
    rows_from_transit=transit_rows,
    rows_from_otlp=otlp_rows,
    otlp_format=OTLP_TRACES_FORMAT,
    merge=collapse,
    max_partition_seconds=DAY_SECONDS,
)
