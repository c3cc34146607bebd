"""One trace across processes as a Perfetto trace: one Perfetto process per spanlake process, its spans
on that process's async lanes (`writer`, `lanes`), and a flow arrow from a parent to each child that
ran in another process or began after its parent ended (a hand-off to a queue, an executor).

A flow is Perfetto's v2 flow ids on TrackEvents: the parent's SLICE_BEGIN lists the flow in `flow_ids`
(47), the child's in `terminating_flow_ids` (48); a flow's id is the child's span id, unique in the
trace. trace_processor's `flow` table then holds one row per arrow (`slice_out` the parent's slice,
`slice_in` the child's). The processes are written one after the other on the writer's one sequence,
each starting with cleared incremental state; each span's flow fields are laid out with numpy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.perfetto.wire import key
from spanlake.views.perfetto.writer import CHUNK_THRESHOLD, SPANS_PER_FLUSH, PerfettoTraceWriter

FIXED64 = 1
_FLOW_ID = np.frombuffer(key(47, FIXED64), dtype=np.uint8)
_TERMINATING_FLOW_ID = np.frombuffer(key(48, FIXED64), dtype=np.uint8)
_FIELD = len(_FLOW_ID) + 8  # one flow field: its key, then the id as 8 little-endian bytes
_NIBBLES = np.zeros(256, dtype=np.uint64)
_NIBBLES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint64)


def hex_ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """16-hex-digit ids (W3C span ids, as trace_spans writes them) as uint64; null: 0."""
    text = pc.fill_null(column, "0" * 16)
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    if len(text) and not pc.all(pc.equal(pc.utf8_length(text), 16)).as_py():
        raise ValueError("span ids must be 16 hexadecimal digits")
    start = int(np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset]) if len(text) else 0
    digits = np.frombuffer(text.buffers()[2], dtype=np.uint8)[start : start + 16 * len(text)].reshape(-1, 16)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    return (_NIBBLES[digits] << shifts).sum(axis=1, dtype=np.uint64)


def _flow_fields(ids: np.ndarray, parent: np.ndarray, linked: np.ndarray) -> pa.Array:
    """Per span, its BEGIN event's flow fields: a `flow_ids` entry per linked child, then its own
    `terminating_flow_ids` entry when it is linked to its parent."""
    children = np.flatnonzero(linked)
    owners = np.concatenate([parent[children], children])
    keys = np.concatenate([np.tile(_FLOW_ID, (len(children), 1)), np.tile(_TERMINATING_FLOW_ID, (len(children), 1))])
    flow_ids = np.concatenate([ids[children], ids[children]]).astype("<u8").view(np.uint8).reshape(-1, 8)
    order = np.argsort(owners, kind="stable")
    data = np.hstack([keys, flow_ids])[order].ravel() if len(owners) else np.zeros(0, np.uint8)
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(np.bincount(owners, minlength=len(ids)) * _FIELD, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(ids), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _writer_columns(spans: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """`spans` (trace_spans rows) in begin order as the writer's async span columns, with per span
    its process code (processes numbered in order of their first span)."""
    spans = spans.sort_by([("begin", "ascending"), ("span_id", "ascending")])
    begin = spans.column("begin").cast(pa.int64()).to_numpy()
    end = pc.fill_null(spans.column("end").cast(pa.int64()), 0).to_numpy()
    end = np.maximum(end, begin + 1)  # an open span is drawn as an instant, never dropped
    ids = hex_ids(spans.column("span_id"))
    found = pc.index_in(spans.column("parent_span_id"), value_set=spans.column("span_id").combine_chunks())
    parent = pc.fill_null(found, -1).to_numpy().astype(np.int64)
    process = pc.dictionary_encode(spans.column("process_id").combine_chunks()).indices.to_numpy().astype(np.int64)
    has_parent = parent >= 0
    of_parent = np.maximum(parent, 0)
    same_process = has_parent & (process[of_parent] == process)
    linked = has_parent & (~same_process | (begin >= end[of_parent]))
    local_parent = pa.array(np.where(same_process, ids[of_parent], 0).view(np.int64), mask=~same_process)
    columns = pa.table(
        {
            "begin": begin,
            "end": end,
            "name": spans.column("name"),
            "target": spans.column("target"),
            "filename": pa.nulls(len(spans), pa.utf8()),
            "line": pa.nulls(len(spans), pa.uint32()),
            "span_id": ids.view(np.int64),
            "parent_span_id": local_parent,
            "flows": _flow_fields(ids, parent, linked),
            "process_id": spans.column("process_id"),
            "exe": spans.column("exe"),
        }
    )
    return columns, process


def trace_chunks(
    spans: pa.Table, chunk_threshold: int = CHUNK_THRESHOLD, spans_per_flush: int | None = SPANS_PER_FLUSH
) -> Iterator[bytes]:
    """The Perfetto trace of one trace's spans (trace_spans' columns) as chunks, lazily; chunked as
    `PerfettoTraceWriter` is told."""
    columns, process = _writer_columns(spans)
    for code in range(int(process.max(initial=-1)) + 1):
        rows = columns.filter(pa.array(process == code))
        process_id = rows.column("process_id")[0].as_py()
        writer = PerfettoTraceWriter(process_id, chunk_threshold=chunk_threshold, spans_per_flush=spans_per_flush)
        yield from writer.process_descriptor(rows.column("exe")[0].as_py() or "")
        yield from writer.async_track_descriptor()
        yield from writer.async_spans(rows.drop_columns(["process_id", "exe"]))
        yield from writer.finish()
